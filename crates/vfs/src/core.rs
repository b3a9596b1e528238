//! `VfsCore`: the state of one mount that every FUSE request works on, and
//! the two mechanisms that keep request threads off the network: loading
//! input directories (single flight per directory) and [`VfsCore::drive`],
//! which runs an operation at once when it can and otherwise hands it, with
//! its reply, to a tokio task that loads what it needs first.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lazybarn_cas::Digest;
use parking_lot::Mutex;

use crate::blob_cache::BlobCache;
use crate::error::{FailureKind, VfsError};
use crate::handles::HandleTable;
use crate::input_tree::{self, InputOwner};
use crate::metrics::MountCounters;
use crate::node::{Children, EntryCaps, Ino, NodeKind, NodeTable, Pending};
use crate::source::BlobSource;

/// How long the kernel may cache entries (positive and negative) and the
/// attributes of input nodes: every change goes through the kernel, which
/// updates its caches itself.
pub(crate) const LONG_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may cache attributes of what the action writes.
pub(crate) const SHORT_TTL: Duration = Duration::from_secs(1);
/// Loads an operation may wait for before it gives up (a cycle guard).
const MAX_LOADS_PER_OP: usize = 64;
/// Failures a mount keeps for the worker; an action that retries a failing
/// lookup in a loop must not grow the list without end.
const MAX_FAILURES: usize = 100;

type SharedLoad = Shared<BoxFuture<'static, Result<(), Arc<VfsError>>>>;

/// Something that failed in the mount while the action ran, which the
/// worker reports instead of the command's own failure: a load of the input
/// root (a CAS read, an invalid Directory, the input entry cap; the reader
/// got an errno), or the action passing `max_created_entries` (it got
/// ENOSPC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchFailure {
    /// The blob that could not be read or used; None when no blob is at
    /// fault (the action created too many entries).
    pub digest: Option<Digest>,
    /// The error, naming the blob, and the entry or cap at fault.
    pub message: String,
    /// What kind of failure it was ([`FailureKind::Missing`]: the CAS
    /// answered NOT_FOUND); [`FetchFailure::code`] is its gRPC code.
    pub kind: FailureKind,
}

impl FetchFailure {
    /// The gRPC code the worker answers the action with.
    pub fn code(&self) -> tonic::Code {
        self.kind.code()
    }
}

/// The state of one mount.
pub(crate) struct VfsCore {
    pub table: Mutex<NodeTable>,
    pub cache: Arc<BlobCache>,
    pub source: Arc<dyn BlobSource>,
    pub scratch: PathBuf,
    pub handles: HandleTable,
    pub counters: Arc<MountCounters>,
    pub failures: Mutex<Vec<FetchFailure>>,
    /// Blobs this mount has pinned in the cache; unpinned at unmount.
    pub pinned: Mutex<HashSet<Digest>>,
    pub owner: InputOwner,
    pub runtime: tokio::runtime::Handle,
    /// Whether the kernel agreed to FUSE passthrough (set during init).
    pub passthrough: AtomicBool,
    loads: Mutex<HashMap<Ino, SharedLoad>>,
}

impl VfsCore {
    /// A core whose root directory is the Directory `root`, holding at most
    /// `caps` entries.
    pub fn new(
        root: Digest,
        caps: EntryCaps,
        cache: Arc<BlobCache>,
        source: Arc<dyn BlobSource>,
        scratch: PathBuf,
        owner: InputOwner,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let table = NodeTable::new(root, input_tree::root_meta(owner), caps);
        VfsCore {
            table: Mutex::new(table),
            cache,
            source,
            scratch,
            handles: HandleTable::default(),
            counters: Arc::default(),
            failures: Mutex::default(),
            pinned: Mutex::default(),
            owner,
            runtime,
            passthrough: AtomicBool::new(false),
            loads: Mutex::default(),
        }
    }

    /// Whether opens answer with a passthrough backing file.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// The scratch file backing inode `ino`.
    pub fn scratch_path(&self, ino: Ino) -> PathBuf {
        self.scratch.join(ino.to_string())
    }

    /// Records a failure for the worker's report, with the blob at fault if
    /// one is: once per distinct failure, and at most [`MAX_FAILURES`] of
    /// them.
    pub fn record_failure(&self, digest: Option<Digest>, error: &VfsError) {
        let failure = FetchFailure {
            digest,
            message: error.to_string(),
            kind: error.kind(),
        };
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_FAILURES || failures.contains(&failure) {
            return;
        }
        tracing::warn!("vfs: {error}");
        failures.push(failure);
    }

    /// Loads directory `ino`'s children from the CAS, once however many
    /// requests ask at the same time. A failure is not remembered: the next
    /// request tries again.
    pub async fn load_dir(self: &Arc<Self>, ino: Ino) -> Result<(), Arc<VfsError>> {
        let load = {
            let mut loads = self.loads.lock();
            match loads.get(&ino) {
                Some(load) => load.clone(),
                None => {
                    let digest = match self.table.lock().get(ino).map(|n| &n.kind) {
                        Ok(NodeKind::Dir {
                            children: Children::Unloaded(digest),
                            ..
                        }) => *digest,
                        _ => return Ok(()),
                    };
                    let core = self.clone();
                    let task = self.runtime.spawn(async move {
                        let result = core.fetch_and_load(ino, digest).await;
                        core.loads.lock().remove(&ino);
                        result.map_err(|e| {
                            core.record_failure(Some(digest), &e);
                            Arc::new(e)
                        })
                    });
                    let load = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(VfsError::io(
                                "loading a directory",
                                std::io::Error::other(e.to_string()),
                            )))
                        })
                    }
                    .boxed()
                    .shared();
                    loads.insert(ino, load.clone());
                    load
                }
            }
        };
        load.await
    }

    async fn fetch_and_load(&self, ino: Ino, digest: Digest) -> Result<(), VfsError> {
        let directories = self.cache.directories();
        let directory = match directories.get(&digest) {
            Some(directory) => directory,
            None => {
                crate::directory_cache::check_directory_size(digest)?;
                let bytes =
                    self.source
                        .fetch_blob(digest)
                        .await
                        .map_err(|status| VfsError::Fetch {
                            what: "directory",
                            digest,
                            message: format!("{:?}: {}", status.code(), status.message()),
                            code: status.code(),
                        })?;
                let directory = directories.insert(digest, &bytes)?;
                self.counters.directory_fetched();
                directory
            }
        };
        if input_tree::load_children(&mut self.table.lock(), ino, digest, &directory, self.owner)? {
            self.counters.directory_loaded();
        }
        Ok(())
    }

    /// Loads directory `ino` on the calling thread if its Directory is in
    /// the worker's cache: no task, no network, so a request thread may do
    /// it. Returns whether the directory is loaded now; if not (not cached,
    /// or invalid, which the asynchronous load then reports), the caller
    /// takes the asynchronous path.
    fn load_cached(&self, ino: Ino) -> bool {
        let mut table = self.table.lock();
        let digest = match table.get(ino).map(|n| &n.kind) {
            Ok(NodeKind::Dir {
                children: Children::Unloaded(digest),
                ..
            }) => *digest,
            _ => return true,
        };
        let Some(directory) = self.cache.directories().get(&digest) else {
            return false;
        };
        match input_tree::load_children(&mut table, ino, digest, &directory, self.owner) {
            Ok(loaded) => {
                if loaded {
                    self.counters.directory_loaded();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Runs `op` at once if it needs nothing from the network; otherwise
    /// moves it and `done` into a task that loads the directories `op` asks
    /// for and runs it again. `op` must not change anything before it knows
    /// it can finish.
    pub fn drive<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl Fn(&Arc<VfsCore>) -> Result<T, Pending> + Send + 'static,
        done: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        // Directories the worker has seen before load right here; a task
        // (and the busy runtime's latency) only when one must be fetched.
        let mut loads = 0;
        let first = loop {
            match op(self) {
                Ok(value) => return done(Ok(value)),
                Err(Pending::Errno(errno)) => return done(Err(errno)),
                Err(Pending::Load(ino)) => {
                    loads += 1;
                    if loads > MAX_LOADS_PER_OP || !self.load_cached(ino) {
                        break ino;
                    }
                }
            }
        };
        let core = self.clone();
        self.runtime.spawn(async move {
            let mut ino = first;
            for _ in 0..MAX_LOADS_PER_OP {
                if let Err(e) = core.load_dir(ino).await {
                    return done(Err(e.errno()));
                }
                match op(&core) {
                    Ok(value) => return done(Ok(value)),
                    Err(Pending::Errno(errno)) => return done(Err(errno)),
                    Err(Pending::Load(next)) => ino = next,
                }
            }
            done(Err(Errno::EIO));
        });
    }

    /// The attributes of `ino` as the kernel should see them.
    pub fn attr(&self, table: &NodeTable, ino: Ino) -> Result<FileAttr, Errno> {
        let node = table.get(ino)?;
        let meta = node.meta;
        let mut attr = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: meta.mtime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            crtime: meta.mtime,
            kind: node.file_type(),
            perm: meta.perm,
            nlink: node.nlink,
            uid: meta.uid,
            gid: meta.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        match &node.kind {
            NodeKind::Dir { children, .. } => {
                attr.nlink = 2 + table.subdirectories(ino);
                attr.size = match children {
                    Children::Loaded(map) => map.len() as u64,
                    Children::Unloaded(_) => 0,
                };
            }
            NodeKind::InputFile { digest } => attr.size = digest.size(),
            NodeKind::Symlink { target } => attr.size = target.len() as u64,
            NodeKind::ScratchFile => {
                let stat = fs::metadata(self.scratch_path(ino)).map_err(Errno::from)?;
                attr.size = stat.len();
                attr.atime = stat.accessed().unwrap_or(meta.mtime);
                attr.mtime = stat.modified().unwrap_or(meta.mtime);
                attr.ctime = attr.mtime.max(meta.ctime);
            }
            NodeKind::Special { .. } => {}
        }
        attr.blocks = attr.size.div_ceil(512);
        Ok(attr)
    }

    /// How long the kernel may cache `ino`'s attributes: long, since every
    /// change goes through the kernel, which invalidates what it changes;
    /// short for scratch files, whose size and times the disk keeps.
    pub fn attr_ttl(&self, table: &NodeTable, ino: Ino) -> Duration {
        match table.get(ino).map(|n| &n.kind) {
            Ok(NodeKind::ScratchFile) => SHORT_TTL,
            _ => LONG_TTL,
        }
    }
}

/// The attributes of a name that does not exist: inode 0 tells the kernel to
/// cache the absence for the entry's TTL.
pub(crate) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Now, for ctime and mtime updates.
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}
