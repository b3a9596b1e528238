//! Shared test helpers: an in-process CAS, trees uploaded from local
//! directories, a counting and failure-injecting blob source, and a mounted
//! fixture that unmounts when dropped.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use lazybarn_cas::server::{self, Storage};
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};
use lazybarn_vfs::{BlobCache, BlobSource, CasBlobSource, Mount, MountConfig, VfsError};
use parking_lot::Mutex;
use prost::Message;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// A multi-threaded runtime: FUSE requests are answered from its tasks
/// while test threads block in file system calls.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An in-memory CAS on a free loopback port, stopped when dropped.
pub struct TestCas {
    pub client: CasClient,
    stop: Option<oneshot::Sender<()>>,
}

impl TestCas {
    pub async fn start() -> Self {
        let storage = Storage::in_memory(4 << 30, 4 << 20);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        let routes = storage.routes();
        tokio::spawn(async move {
            let _ = server::serve(listener, routes, async {
                let _ = stopped.await;
            })
            .await;
        });
        let client = CasClient::connect(&format!("grpc://{addr}"), "")
            .await
            .expect("connect");
        TestCas {
            client,
            stop: Some(stop),
        }
    }
}

impl Drop for TestCas {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An input tree built from a local directory.
pub struct UploadedTree {
    pub root: Digest,
    pub blobs: Vec<(Digest, Bytes)>,
    /// Bytes of all files (not Directory messages).
    pub file_bytes: u64,
    pub files: usize,
    pub directories: usize,
}

/// Builds the REAPI tree of `dir`.
pub fn tree_of(dir: &Path) -> UploadedTree {
    let mut blobs = BTreeMap::new();
    let mut tree = UploadedTree {
        root: Digest::EMPTY,
        blobs: vec![],
        file_bytes: 0,
        files: 0,
        directories: 0,
    };
    tree.root = add_dir(dir, &mut blobs, &mut tree);
    tree.blobs = blobs.into_iter().collect();
    tree
}

fn add_dir(dir: &Path, blobs: &mut BTreeMap<Digest, Bytes>, tree: &mut UploadedTree) -> Digest {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut directory = Directory::default();
    for entry in entries {
        let name = entry.file_name().into_string().expect("utf-8 name");
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("readlink");
            directory.symlinks.push(SymlinkNode {
                name,
                target: target.to_string_lossy().into_owned(),
                node_properties: None,
            });
        } else if meta.is_dir() {
            let digest = add_dir(&path, blobs, tree);
            directory.directories.push(DirectoryNode {
                name,
                digest: Some(digest.to_proto()),
            });
        } else {
            let data = Bytes::from(fs::read(&path).expect("read"));
            let digest = Digest::of(&data);
            tree.file_bytes += data.len() as u64;
            tree.files += 1;
            blobs.insert(digest, data);
            directory.files.push(FileNode {
                name,
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o100 != 0,
                node_properties: None,
            });
        }
    }
    tree.directories += 1;
    let bytes = Bytes::from(directory.encode_to_vec());
    let digest = Digest::of(&bytes);
    blobs.insert(digest, bytes);
    digest
}

/// The tree of hand-made Directory messages: `root` and every other one it
/// names (files' blobs are not included unless given in `files`).
pub fn tree_of_messages(root: &Directory, others: &[Directory], files: &[&[u8]]) -> UploadedTree {
    let encode = |d: &Directory| {
        let bytes = Bytes::from(d.encode_to_vec());
        (Digest::of(&bytes), bytes)
    };
    let (root, root_bytes) = encode(root);
    let mut blobs = vec![(root, root_bytes)];
    blobs.extend(others.iter().map(encode));
    blobs.extend(
        files
            .iter()
            .map(|f| (Digest::of(f), Bytes::copy_from_slice(f))),
    );
    UploadedTree {
        root,
        blobs,
        file_bytes: files.iter().map(|f| f.len() as u64).sum(),
        files: files.len(),
        directories: others.len() + 1,
    }
}

/// The tree of a root directory holding `dir` under the name `name`.
pub fn tree_with(name: &str, dir: &Path) -> UploadedTree {
    let mut tree = tree_of(dir);
    let root = Directory {
        directories: vec![DirectoryNode {
            name: name.to_string(),
            digest: Some(tree.root.to_proto()),
        }],
        ..Default::default()
    };
    let bytes = Bytes::from(root.encode_to_vec());
    tree.root = Digest::of(&bytes);
    tree.blobs.push((tree.root, bytes));
    tree.directories += 1;
    tree
}

/// Writes `files` (path -> contents; a trailing "*" in the path marks it
/// executable, "@target" contents make a symlink) under a new directory.
pub fn write_files(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, contents) in files {
        let (path, executable) = match path.strip_suffix('*') {
            Some(p) => (p, true),
            None => (*path, false),
        };
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        if let Some(target) = contents.strip_prefix('@') {
            std::os::unix::fs::symlink(target, &full).expect("symlink");
            continue;
        }
        fs::write(&full, contents).expect("write");
        if executable {
            fs::set_permissions(&full, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    dir
}

/// A source that counts fetches per digest, fails the digests it is told
/// to, and serves those it is told to corrupt with a byte flipped.
pub struct CountingSource {
    inner: CasBlobSource,
    pub fetches: Mutex<HashMap<Digest, usize>>,
    pub failing: Mutex<HashSet<Digest>>,
    pub corrupt: Mutex<HashSet<Digest>>,
}

impl CountingSource {
    pub fn new(client: CasClient) -> Arc<Self> {
        Arc::new(CountingSource {
            inner: CasBlobSource::new(client),
            fetches: Mutex::default(),
            failing: Mutex::default(),
            corrupt: Mutex::default(),
        })
    }

    fn count(&self, digest: Digest) -> Result<(), tonic::Status> {
        *self.fetches.lock().entry(digest).or_default() += 1;
        if self.failing.lock().contains(&digest) {
            return Err(tonic::Status::unavailable("injected failure"));
        }
        Ok(())
    }

    pub fn fetches_of(&self, digest: &Digest) -> usize {
        self.fetches.lock().get(digest).copied().unwrap_or(0)
    }
}

#[async_trait]
impl BlobSource for CountingSource {
    async fn fetch_to_file(&self, digest: Digest, path: &Path) -> Result<(), tonic::Status> {
        self.count(digest)?;
        self.inner.fetch_to_file(digest, path).await
    }

    async fn fetch_blob(&self, digest: Digest) -> Result<Bytes, tonic::Status> {
        self.count(digest)?;
        let bytes = self.inner.fetch_blob(digest).await?;
        if !self.corrupt.lock().contains(&digest) || bytes.is_empty() {
            return Ok(bytes);
        }
        let mut flipped = bytes.to_vec();
        flipped[0] ^= 0xff;
        Ok(Bytes::from(flipped))
    }
}

/// A world-traversable temporary directory: the runner's uid must reach
/// mounts below it (tempdirs are 0700).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-vfs-test-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A CAS holding one tree, a cache and a mount of the tree.
pub struct Fixture {
    pub mount: Option<Mount>,
    pub config: MountConfig,
    pub tree: UploadedTree,
    pub source: Arc<CountingSource>,
    pub cache: Arc<BlobCache>,
    pub dir: tempfile::TempDir,
    pub cas: TestCas,
    pub rt: Runtime,
}

impl Fixture {
    /// Uploads the tree of `input` and mounts it.
    pub fn new(input: &Path, passthrough: bool) -> Self {
        Self::with_tree(tree_of(input), passthrough)
    }

    /// Uploads `tree` and mounts it.
    pub fn with_tree(tree: UploadedTree, passthrough: bool) -> Self {
        let config = MountConfig {
            passthrough,
            ..MountConfig::default()
        };
        Self::with_config(tree, config).expect("mount")
    }

    /// Uploads `tree` and mounts it with `config`.
    pub fn with_config(tree: UploadedTree, config: MountConfig) -> Result<Self, VfsError> {
        let rt = runtime();
        let cas = rt.block_on(async {
            let cas = TestCas::start().await;
            cas.client
                .upload_missing(tree.blobs.clone())
                .await
                .expect("upload");
            cas
        });
        let source = CountingSource::new(cas.client.clone());
        let dir = open_tempdir();
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 34).expect("cache");
        let mut fixture = Fixture {
            mount: None,
            config,
            tree,
            source,
            cache,
            dir,
            cas,
            rt,
        };
        fixture.try_remount()?;
        Ok(fixture)
    }

    /// Unmounts (if mounted) and mounts the tree again on a fresh directory.
    pub fn remount(&mut self, passthrough: bool) {
        self.config.passthrough = passthrough;
        self.try_remount().expect("mount");
    }

    fn try_remount(&mut self) -> Result<(), VfsError> {
        if let Some(mount) = self.mount.take() {
            self.rt.block_on(mount.unmount()).expect("unmount");
        }
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos();
        let point = self.dir.path().join(format!("mnt-{n}"));
        fs::create_dir(&point).expect("mkdir");
        fs::set_permissions(&point, fs::Permissions::from_mode(0o755)).expect("chmod");
        let scratch = self.dir.path().join(format!("scratch-{n}"));
        let source: Arc<dyn BlobSource> = self.source.clone();
        let mount = self.rt.block_on(Mount::new(
            &point,
            &scratch,
            self.tree.root,
            self.cache.clone(),
            source,
            &self.config,
        ))?;
        self.mount = Some(mount);
        Ok(())
    }

    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mount().mount_point().join(relative)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            let _ = self.rt.block_on(mount.unmount());
        }
    }
}

/// Runs a shell command (as `uid` when given) in `dir`.
pub fn sh(dir: &Path, uid: Option<u32>, script: &str) -> Output {
    sh_as(dir, uid.map(|uid| (uid, uid)), script)
}

/// Runs a shell command (as `(uid, gid)` when given) in `dir`.
pub fn sh_as(dir: &Path, ids: Option<(u32, u32)>, script: &str) -> Output {
    let mut command = match ids {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_string(),
                "sh".to_string(),
            ]);
            c
        }
        None => Command::new("sh"),
    };
    command
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh")
}

/// Runs a shell command and asserts it succeeds; returns its stdout.
pub fn sh_ok(dir: &Path, uid: Option<u32>, script: &str) -> String {
    let out = sh(dir, uid, script);
    assert!(
        out.status.success(),
        "{script} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
