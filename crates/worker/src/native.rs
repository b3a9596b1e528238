//! The native build directory: every input downloaded into the blob cache
//! and hardlinked into a plain directory before the command starts.
//!
//! Directories are fetched a level at a time with BatchReadBlobs (those the
//! worker has seen before come from its DirectoryCache); files are
//! brought into the cache with bounded concurrency, then linked in one
//! blocking task. Cached blobs are read-only (0444) files owned by root, so
//! a hardlink cannot be written through by the action's uid; executables
//! need mode 0555, which a shared inode cannot have for only some of its
//! names, so they are linked from an executable copy the cache keeps beside
//! the blob (made once per blob, not once per action: Bazel marks every
//! input executable). When the action runs as the worker's own uid
//! (a worker that is not root), it owns the cache's files and could chmod
//! and rewrite them, so every input is a copy: [`InputFiles::Copied`].
//! Directories are 0777: the action may create, rename and delete entries
//! anywhere, as in the virtual mode.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::Directory;
use lazybarn_vfs::{BlobCache, BlobSource, DirectoryCache};
use tonic::Status;

use crate::action::missing_blob_status;

/// What preparing a native directory did.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeStats {
    /// Input files linked or copied into place.
    pub files: u64,
    /// Distinct blobs that had to be fetched from the CAS.
    pub files_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
}

/// How input files get into an action's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFiles {
    /// Hardlinks to the cache's read-only files, which the action's uid
    /// does not own (executables to the cache's executable copies).
    Linked,
    /// Copies: the action's uid owns the cache's files.
    Copied,
}

impl InputFiles {
    /// [`InputFiles::Copied`] when the action runs as this process's uid.
    pub fn for_action_uid(action_uid: u32) -> InputFiles {
        // SAFETY: geteuid has no preconditions.
        if action_uid == unsafe { libc::geteuid() } {
            InputFiles::Copied
        } else {
            InputFiles::Linked
        }
    }
}

/// One entry to create, relative to the input root.
enum Entry {
    Dir(PathBuf),
    File {
        path: PathBuf,
        digest: Digest,
        executable: bool,
    },
    Symlink {
        path: PathBuf,
        target: String,
    },
}

/// How an input root is laid out.
#[derive(Clone, Copy, Debug)]
pub struct LayoutOptions {
    /// Blobs fetched at once.
    pub concurrency: usize,
    /// Links or copies.
    pub files: InputFiles,
    /// Most paths the tree may hold (`max_input_entries`).
    pub max_entries: u64,
}

/// Lays out the input root `root` under `dir` (which exists and is empty).
pub async fn populate(
    dir: &Path,
    root: Digest,
    cas: &CasClient,
    cache: &Arc<BlobCache>,
    source: &Arc<dyn BlobSource>,
    options: LayoutOptions,
) -> Result<NativeStats, Status> {
    let LayoutOptions {
        concurrency,
        files,
        max_entries,
    } = options;
    let entries = list_entries(root, cas, cache.directories(), max_entries).await?;
    let mut wanted: Vec<Digest> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut stats = NativeStats::default();
    let pins = futures::stream::iter(wanted.iter().copied())
        .map(|digest| async move { (digest, cache.pin(digest, source).await) })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut pinned = Vec::new();
    let mut failure = None;
    for (digest, result) in pins {
        match result {
            Ok(obtained) => {
                pinned.push(digest);
                if matches!(obtained, lazybarn_vfs::Obtained::Fetched(_)) {
                    stats.files_fetched += 1;
                    stats.bytes_fetched += digest.size();
                }
            }
            Err(e) if failure.is_none() => {
                failure = Some(match e.missing_blob() {
                    Some(missing) => missing_blob_status(missing),
                    None => Status::unavailable(format!("fetching input {digest}: {e}")),
                });
            }
            Err(_) => {}
        }
    }
    let result = match failure {
        Some(status) => Err(status),
        None => {
            let cache = cache.clone();
            let dir = dir.to_path_buf();
            // A panicked task is an error like any other: the pins below
            // must be released whatever happened.
            tokio::task::spawn_blocking(move || materialize(&dir, &entries, &cache, files))
                .await
                .unwrap_or_else(|e| Err(Status::internal(format!("laying out inputs: {e}"))))
        }
    };
    // Links keep their inodes alive, so the cache may evict from now on.
    for digest in &pinned {
        cache.unpin(digest);
    }
    stats.files = result?;
    Ok(stats)
}

/// Lists what to create for the whole tree, a level at a time: Directory
/// messages the worker has seen before come from its DirectoryCache, the
/// others are fetched with one BatchReadBlobs per level (and cached).
/// Directories shared by many paths are listed once per path, so the count
/// is checked against `max_entries` as the list grows, before anything is
/// created: a few kilobytes of Directory messages can name millions of paths.
async fn list_entries(
    root: Digest,
    cas: &CasClient,
    directories: &DirectoryCache,
    max_entries: u64,
) -> Result<Vec<Entry>, Status> {
    let mut entries = Vec::new();
    // Every path so far, the root included.
    let mut listed: u64 = 1;
    let mut level: Vec<(PathBuf, Digest)> = vec![(PathBuf::new(), root)];
    let mut known: HashMap<Digest, Arc<Directory>> = HashMap::new();
    while !level.is_empty() {
        let mut unknown = HashSet::new();
        for (_, digest) in &level {
            if known.contains_key(digest) {
                continue;
            }
            match directories.get(digest) {
                Some(directory) => {
                    known.insert(*digest, directory);
                }
                None => {
                    unknown.insert(*digest);
                }
            }
        }
        let unknown: Vec<Digest> = unknown.into_iter().collect();
        for digest in &unknown {
            lazybarn_vfs::check_directory_size(*digest)
                .map_err(|e| Status::invalid_argument(format!("invalid input root: {e}")))?;
        }
        let fetched = cas.download_batch(&unknown).await.map_err(|e| {
            if e.code() == tonic::Code::NotFound {
                Status::failed_precondition(format!("input directory missing: {}", e.message()))
            } else {
                e
            }
        })?;
        for (digest, bytes) in fetched {
            let directory = directories
                .insert(digest, &bytes)
                .map_err(|e| Status::invalid_argument(format!("input directory {digest}: {e}")))?;
            known.insert(digest, directory);
        }
        let mut next = Vec::new();
        for (path, digest) in level {
            let directory = &known[&digest];
            check_names(directory, digest)?;
            let count =
                directory.files.len() + directory.symlinks.len() + directory.directories.len();
            listed = listed.saturating_add(count as u64);
            if listed > max_entries {
                return Err(too_many_entries(max_entries));
            }
            entries.push(Entry::Dir(path.clone()));
            for f in &directory.files {
                entries.push(Entry::File {
                    path: path.join(&f.name),
                    digest: entry_digest(f.digest.as_ref(), &f.name, digest)?,
                    executable: f.is_executable,
                });
            }
            for s in &directory.symlinks {
                entries.push(Entry::Symlink {
                    path: path.join(&s.name),
                    target: s.target.clone(),
                });
            }
            for d in &directory.directories {
                let child = entry_digest(d.digest.as_ref(), &d.name, digest)?;
                next.push((path.join(&d.name), child));
            }
        }
        level = next;
    }
    Ok(entries)
}

fn too_many_entries(limit: u64) -> Status {
    Status::resource_exhausted(format!(
        "the input root has more than {limit} files, directories and symlinks (counted per \
         path), this worker's max_input_entries"
    ))
}

/// The digest of entry `name` of Directory `directory`.
fn entry_digest(
    digest: Option<&lazybarn_proto::reapi::Digest>,
    name: &str,
    directory: Digest,
) -> Result<Digest, Status> {
    Digest::from_proto(digest).map_err(|e| {
        Status::invalid_argument(format!(
            "invalid input root: directory {directory} has an entry {name:?} with a bad digest: {e}"
        ))
    })
}

/// Every name of a Directory must be one path component, and appear once
/// whatever its kind.
fn check_names(directory: &Directory, digest: Digest) -> Result<(), Status> {
    let names = directory
        .files
        .iter()
        .map(|f| &f.name)
        .chain(directory.symlinks.iter().map(|s| &s.name))
        .chain(directory.directories.iter().map(|d| &d.name));
    let mut seen = HashSet::new();
    for name in names {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(Status::invalid_argument(format!(
                "invalid input root: directory {digest} has an entry named {name:?}"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(Status::invalid_argument(format!(
                "invalid input root: directory {digest} has two entries named {name:?}"
            )));
        }
    }
    for link in &directory.symlinks {
        if link.target.is_empty() || link.target.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "invalid input root: directory {digest} has a symlink {:?} with target {:?}",
                link.name, link.target
            )));
        }
    }
    Ok(())
}

/// Creates every entry; returns the number of files.
fn materialize(
    dir: &Path,
    entries: &[Entry],
    cache: &BlobCache,
    files_are: InputFiles,
) -> Result<u64, Status> {
    let io = |what: &Path, e: std::io::Error| {
        Status::internal(format!("laying out input {}: {e}", what.display()))
    };
    let mut files = 0;
    for entry in entries {
        match entry {
            Entry::Dir(path) => {
                let full = dir.join(path);
                if !path.as_os_str().is_empty() {
                    fs::DirBuilder::new()
                        .mode(0o777)
                        .create(&full)
                        .map_err(|e| io(path, e))?;
                }
                // The umask narrowed the mode; the action's uid needs all of it.
                fs::set_permissions(&full, fs::Permissions::from_mode(0o777))
                    .map_err(|e| io(path, e))?;
            }
            Entry::File {
                path,
                digest,
                executable,
            } => {
                let full = dir.join(path);
                let cached = cache.path(digest);
                if files_are == InputFiles::Copied {
                    let mode = if *executable { 0o555 } else { 0o444 };
                    fs::copy(&cached, &full).map_err(|e| io(path, e))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                        .map_err(|e| io(path, e))?;
                } else if *executable {
                    let copy = cache.executable_path(digest).map_err(|e| {
                        Status::internal(format!("laying out input {}: {e}", path.display()))
                    })?;
                    link_or_copy(&copy, &full, 0o555).map_err(|e| io(path, e))?;
                } else {
                    link_or_copy(&cached, &full, 0o444).map_err(|e| io(path, e))?;
                }
                files += 1;
            }
            Entry::Symlink { path, target } => {
                std::os::unix::fs::symlink(target, dir.join(path)).map_err(|e| io(path, e))?;
            }
        }
    }
    Ok(files)
}

/// Hardlinks `from` at `to`; where the file has as many links as its
/// filesystem allows (EMLINK, 65,000 on ext4), makes a read-only copy.
fn link_or_copy(from: &Path, to: &Path, mode: u32) -> std::io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
            fs::copy(from, to)?;
            fs::set_permissions(to, fs::Permissions::from_mode(mode))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use async_trait::async_trait;
    use bytes::Bytes;
    use lazybarn_cas::server::{Storage, serve};
    use lazybarn_proto::reapi::{DirectoryNode, FileNode};
    use lazybarn_vfs::CasBlobSource;
    use prost::Message;

    async fn put(storage: &Storage, data: Bytes) -> Digest {
        let digest = Digest::of(&data);
        storage.store.put(digest, data).await.expect("put");
        digest
    }

    fn file(name: &str, digest: Digest) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(digest.to_proto()),
            is_executable: false,
            node_properties: None,
        }
    }

    const OPTIONS: LayoutOptions = LayoutOptions {
        concurrency: 4,
        files: InputFiles::Linked,
        max_entries: 100,
    };

    #[tokio::test]
    async fn a_second_layout_of_a_tree_needs_nothing_from_the_cas() {
        let storage = Storage::in_memory(1 << 20, 1 << 20);
        let a = put(&storage, Bytes::from_static(b"a\n")).await;
        let b = put(&storage, Bytes::from_static(b"b\n")).await;
        let sub = Directory {
            files: vec![file("a.h", a)],
            ..Default::default()
        };
        let sub = put(&storage, sub.encode_to_vec().into()).await;
        let root = Directory {
            files: vec![FileNode {
                is_executable: true,
                ..file("b.h", b)
            }],
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: Some(sub.to_proto()),
            }],
            ..Default::default()
        };
        let root = put(&storage, root.encode_to_vec().into()).await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, storage.routes(), async {
            let _ = stopped.await;
        }));
        let cas = CasClient::connect(&format!("grpc://{addr}"), "")
            .await
            .expect("connect");
        let source: Arc<dyn BlobSource> = Arc::new(CasBlobSource::new(cas.clone()));
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 20).expect("cache");

        let first = dir.path().join("first");
        fs::create_dir(&first).expect("mkdir");
        let stats = populate(&first, root, &cas, &cache, &source, OPTIONS)
            .await
            .expect("first layout");
        assert_eq!((stats.files, stats.files_fetched), (2, 2));
        assert_eq!(cache.directories().len(), 2);

        // With the CAS gone, only the worker's caches can serve the tree.
        let _ = stop.send(());
        let _ = server.await;
        let second = dir.path().join("second");
        fs::create_dir(&second).expect("mkdir");
        let stats = populate(&second, root, &cas, &cache, &source, OPTIONS)
            .await
            .expect("second layout, from the caches alone");
        assert_eq!((stats.files, stats.files_fetched), (2, 0));
        assert_eq!(
            fs::read_to_string(second.join("sub/a.h")).expect("read"),
            "a\n"
        );
        // The executable input is a link to one executable copy, not a copy
        // per action.
        use std::os::unix::fs::MetadataExt;
        let one = fs::metadata(first.join("b.h")).expect("stat");
        let two = fs::metadata(second.join("b.h")).expect("stat");
        assert_eq!(one.mode() & 0o7777, 0o555);
        assert_eq!(one.ino(), two.ino());
    }

    /// Serves the one blob it holds.
    struct OneBlob(Bytes);

    #[async_trait]
    impl BlobSource for OneBlob {
        async fn fetch_to_file(&self, _: Digest, path: &Path) -> Result<(), Status> {
            fs::write(path, &self.0).map_err(|e| Status::internal(e.to_string()))
        }

        async fn fetch_blob(&self, _: Digest) -> Result<Bytes, Status> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn inputs_share_the_cache_inode_only_when_linked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 20).expect("cache");
        let data = Bytes::from_static(b"original\n");
        let digest = Digest::of(&data);
        let source: Arc<dyn BlobSource> = Arc::new(OneBlob(data));
        cache.pin(digest, &source).await.expect("pinned");
        let cached = fs::metadata(cache.path(&digest)).expect("cached blob");
        let entries = [
            Entry::Dir(PathBuf::new()),
            Entry::File {
                path: PathBuf::from("input.txt"),
                digest,
                executable: false,
            },
        ];
        for (files, shares_inode) in [(InputFiles::Linked, true), (InputFiles::Copied, false)] {
            let root = dir.path().join(format!("{files:?}"));
            fs::create_dir(&root).expect("root");
            let count = materialize(&root, &entries, &cache, files).expect("laid out");
            assert_eq!(count, 1);
            let input = fs::metadata(root.join("input.txt")).expect("input");
            assert_eq!(input.ino() == cached.ino(), shares_inode, "{files:?}");
            assert_eq!(input.mode() & 0o777, 0o444, "{files:?}: read-only");
            assert_eq!(
                fs::read(root.join("input.txt")).expect("read"),
                b"original\n"
            );
        }
    }
}
