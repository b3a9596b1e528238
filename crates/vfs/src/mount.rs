//! Mount lifecycle: mount an input root on an empty directory, served to
//! the action's uid (or every uid); unmount at the end even while processes
//! still hold files; and at start-up, clean mounts a crashed predecessor
//! left behind.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use lazybarn_cas::Digest;

use crate::access::AccessPolicy;
use crate::blob_cache::BlobCache;
use crate::capture::{CapturedOutput, unshare};
use crate::core::{FetchFailure, VfsCore};
use crate::error::{Result, VfsError};
use crate::fs::LazyFs;
use crate::input_tree::InputOwner;
use crate::metrics::MountStats;
use crate::node::{EntryCaps, ROOT};
use crate::source::BlobSource;
use crate::sys_linux;

/// The source name every Lazybarn mount carries in /proc/self/mountinfo.
pub const FS_NAME: &str = "lazybarn";
/// How long unmount waits for the request threads to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The default of [`MountConfig::max_input_entries`]: twelve times what a
/// compile against all of Boost loads (about 16,500 entries), far below
/// what a memory-hungry tree of shared subtrees would cost.
pub const DEFAULT_MAX_INPUT_ENTRIES: u64 = 200_000;
/// The default of [`MountConfig::max_created_entries`]. Every name an
/// action creates costs the worker memory in the node table (about 300
/// bytes with a short name: a 120-byte node in a hash map, and the name in
/// its directory's map), so an action looping over `touch` or `ln` could
/// otherwise take the worker's memory. The biggest legitimate writers (a
/// build tree of object files, an unpacked `node_modules`) create tens to a
/// few hundred thousand names; a million leaves them room while bounding
/// the table at about 300 MB. Names near the kernel's 255 bytes cost about
/// twice that, and symlinks with targets near its 4,096 bytes up to about
/// 4.5 GB in all, so lower the cap where workers have little memory per
/// slot.
pub const DEFAULT_MAX_CREATED_ENTRIES: u64 = 1_000_000;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Use FUSE passthrough where the kernel offers it (Linux 6.9+, needs
    /// CAP_SYS_ADMIN), so reads of input files never enter the daemon.
    /// Recommended: true.
    pub passthrough: bool,
    /// Threads serving FUSE requests. Recommended: 4.
    pub threads: usize,
    /// Owner of input files and directories: the uid the runner runs
    /// actions as, so `ls -l` shows them as the action's own.
    pub input_uid: u32,
    /// Group of input files and directories.
    pub input_gid: u32,
    /// The most input entries (files, directories and symlinks, counted per
    /// path as their Directory is loaded) one mount loads. A load past it
    /// fails: at mount time `Mount::new` returns the error; later the
    /// request gets ENOSPC and the failure is recorded (`Mount::failures`),
    /// of kind `FailureKind::TooLarge`. Recommended:
    /// [`DEFAULT_MAX_INPUT_ENTRIES`] (200,000).
    pub max_input_entries: u64,
    /// The most names the action may have added to its mount at once
    /// (files, FIFOs, sockets, directories, symlinks and hard links: each
    /// create, mknod, mkdir, symlink and link adds one; unlink, rmdir, and
    /// a rename over an existing name take one of its names away again).
    /// Counted apart from input entries; a hard link to an input file
    /// counts, renaming does not. A request past it gets ENOSPC and the
    /// failure is recorded once (`Mount::failures`), of kind
    /// `FailureKind::TooLarge`, which the worker answers with
    /// RESOURCE_EXHAUSTED. Recommended: [`DEFAULT_MAX_CREATED_ENTRIES`]
    /// (1,000,000).
    pub max_created_entries: u64,
    /// The uid the mount serves: requests from any other uid but this
    /// process's own get EACCES, and the root directory is made 0700 and
    /// owned by it, so the kernel refuses other uids even paths it has
    /// cached. None serves every uid. Recommended: the uid the action runs
    /// as, one per worker slot, so concurrent actions cannot touch each
    /// other's mounts.
    pub allowed_uid: Option<u32>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            passthrough: true,
            threads: 4,
            input_uid: 0,
            input_gid: 0,
            max_input_entries: DEFAULT_MAX_INPUT_ENTRIES,
            max_created_entries: DEFAULT_MAX_CREATED_ENTRIES,
            allowed_uid: None,
        }
    }
}

/// One mounted input root. Dropping it unmounts.
pub struct Mount {
    core: Arc<VfsCore>,
    mount_point: PathBuf,
    session: Option<BackgroundSession>,
    connection: Option<u64>,
}

impl Mount {
    /// Mounts the input root `root` at `mount_point` (an existing, empty
    /// directory). Only the root Directory is read before this returns; if
    /// that fails, the error's [`VfsError::code`] says how to answer.
    /// Files the action writes go to `scratch_dir`, which must not exist yet
    /// and is removed at unmount.
    pub async fn new(
        mount_point: &Path,
        scratch_dir: &Path,
        root: Digest,
        cache: Arc<BlobCache>,
        source: Arc<dyn BlobSource>,
        config: &MountConfig,
    ) -> Result<Mount> {
        check_mount_point(mount_point)?;
        sys_linux::keep_large_allocations_mapped();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(scratch_dir)
            .map_err(|e| VfsError::io(format!("creating {}", scratch_dir.display()), e))?;
        let owner = InputOwner {
            uid: config.input_uid,
            gid: config.input_gid,
            private_to: config.allowed_uid,
        };
        let core = Arc::new(VfsCore::new(
            root,
            EntryCaps {
                input: config.max_input_entries,
                created: config.max_created_entries,
            },
            cache,
            source,
            scratch_dir.to_path_buf(),
            owner,
            tokio::runtime::Handle::current(),
        ));
        let mut mount = Mount {
            core: core.clone(),
            mount_point: mount_point.to_path_buf(),
            session: None,
            connection: None,
        };
        core.load_dir(ROOT).await.map_err(unshare)?;
        let fs = LazyFs::new(
            core,
            config.passthrough,
            AccessPolicy::new(config.allowed_uid),
        );
        let options = fuse_config(config);
        let point = mount_point.to_path_buf();
        let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &point, &options))
            .await
            .map_err(|e| VfsError::io("mounting", std::io::Error::other(e.to_string())))?
            .map_err(|e| VfsError::io(format!("mounting FUSE at {}", mount_point.display()), e))?;
        mount.session = Some(session);
        mount.connection = sys_linux::connection_of(mount_point).ok();
        Ok(mount)
    }

    /// Where the input root is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Whether reads of input files use FUSE passthrough.
    pub fn passthrough(&self) -> bool {
        self.core.passthrough()
    }

    /// What this mount fetched so far.
    pub fn stats(&self) -> MountStats {
        self.core.counters.snapshot()
    }

    /// What failed while the action ran, first first: loads of the input
    /// root (each returned EIO, or ENOSPC for the input entry cap, to its
    /// reader) and the action passing `max_created_entries` (ENOSPC).
    pub fn failures(&self) -> Vec<FetchFailure> {
        self.core.failures.lock().clone()
    }

    /// Captures the outputs at `paths` (relative to the input root); a name
    /// below one that is not UTF-8 fails it with
    /// [`VfsError::OutputNameNotUtf8`].
    pub async fn capture(&self, paths: &[String]) -> Result<Vec<CapturedOutput>> {
        self.core.capture(paths).await
    }

    /// Unmounts, even if processes still hold files open (they then see
    /// ENOTCONN), unpins this mount's blobs and removes the scratch files.
    pub async fn unmount(mut self) -> Result<()> {
        tokio::task::spawn_blocking(move || self.shutdown())
            .await
            .map_err(|e| VfsError::io("unmounting", std::io::Error::other(e.to_string())))?
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(session) = self.session.take() {
            // Abort before detaching: while mounted, the connection number is
            // surely ours; after, another mount may have been given it.
            if let Some(id) = self.connection
                && let Err(e) = sys_linux::abort_connection(id)
            {
                tracing::warn!("vfs: aborting FUSE connection {id}: {e}");
            }
            result = sys_linux::lazy_unmount(&self.mount_point)
                .map_err(|e| VfsError::io(format!("unmounting {}", self.mount_point.display()), e));
            let started = Instant::now();
            while !session.guard.is_finished() && started.elapsed() < STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(5));
            }
            if session.guard.is_finished() {
                let _ = session.join();
            } else {
                tracing::warn!(
                    "vfs: FUSE threads of {} still running; leaving them",
                    self.mount_point.display()
                );
            }
        }
        self.core.handles.clear();
        for digest in self.core.pinned.lock().drain() {
            self.core.cache.unpin(&digest);
        }
        if self.core.scratch.exists()
            && let Err(e) = fs::remove_dir_all(&self.core.scratch)
        {
            tracing::warn!("vfs: removing {}: {e}", self.core.scratch.display());
        }
        result
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("vfs: {e}");
        }
    }
}

fn check_mount_point(path: &Path) -> Result<()> {
    let bad = |reason: String| VfsError::MountPoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut entries = fs::read_dir(path).map_err(|e| bad(e.to_string()))?;
    if entries.next().is_some() {
        return Err(bad("it is not empty".to_string()));
    }
    Ok(())
}

fn fuse_config(config: &MountConfig) -> Config {
    let mut options = Config::default();
    options.mount_options = vec![
        MountOption::FSName(FS_NAME.to_string()),
        // The kernel checks mode bits; the filesystem itself refuses every
        // change to input files, since root passes every mode check.
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Exec,
    ];
    // The runner's uid must be able to use the mount; which uid that is,
    // the AccessPolicy decides (fuser's ACLs know only the mounting uid).
    options.acl = SessionACL::All;
    options.n_threads = Some(config.threads.max(1));
    options.clone_fd = true;
    options
}

/// Finds Lazybarn mounts under `root` left by a crashed predecessor and
/// detaches them (deepest first). Returns the mount points cleaned.
pub fn clean_stale_mounts(root: &Path) -> Result<Vec<PathBuf>> {
    let mut stale: Vec<_> = sys_linux::mounts()
        .map_err(|e| VfsError::io("reading /proc/self/mountinfo", e))?
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.source == FS_NAME)
        .filter(|m| m.mount_point.starts_with(root))
        .collect();
    stale.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    let mut cleaned = Vec::new();
    for entry in stale {
        if entry.major == 0
            && let Err(e) = sys_linux::abort_connection(u64::from(entry.minor))
        {
            tracing::warn!("vfs: aborting stale FUSE connection {}: {e}", entry.minor);
        }
        sys_linux::lazy_unmount(&entry.mount_point)
            .map_err(|e| VfsError::io(format!("unmounting {}", entry.mount_point.display()), e))?;
        cleaned.push(entry.mount_point);
    }
    Ok(cleaned)
}
