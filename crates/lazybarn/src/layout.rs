//! Where a node keeps its files: the data directory, the worker's blob cache
//! and build directories, and the runner's socket.
//!
//! Commands run as an unprivileged uid (nobody), and that uid must reach the
//! action directories: every directory above them needs the "others may
//! search" bit. A data directory under `/root` (mode 0700), or one made by
//! `mktemp -d` (0700), lacks it, so the build directories then go
//! to a place of their own with 0755 parents (see [`Layout::plan`]).

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::LazybarnError;

/// Where build directories go when the data directory is out of reach of
/// the commands' uid and this process runs as root.
pub const SYSTEM_BUILD_ROOT: &str = "/var/lib/lazybarn";

/// The "others may search" bit of a directory's mode.
const OTHERS_SEARCH: u32 = 0o001;

/// The files and directories of one worker node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    /// The worker's blob cache.
    pub cache_dir: PathBuf,
    /// Where the worker creates one directory per action.
    pub build_dir: PathBuf,
    /// The runner's Unix socket.
    pub runner_socket: PathBuf,
    /// Why the build directory is not under the data directory, if it is not.
    pub relocated_because: Option<String>,
}

impl Layout {
    /// Creates `data_dir` and places the cache, build directories and socket
    /// for commands that run as `action_uid`.
    ///
    /// The build directory is `<data_dir>/worker/build` when `action_uid` can
    /// reach it: it is this process's own uid, or every directory from `/`
    /// down to the data directory is searchable by others. Otherwise it is
    /// `/var/lib/lazybarn/build-<hash>` (as root) or
    /// `/tmp/lazybarn-<uid>-<hash>/build`, where the hash names the data
    /// directory, so each data directory keeps its own. The blob cache moves
    /// along only if it would otherwise sit on another filesystem, because
    /// native build directories hardlink from it.
    pub fn plan(data_dir: &Path, action_uid: u32) -> Result<Layout, LazybarnError> {
        fs::create_dir_all(data_dir).map_err(LazybarnError::io("creating", data_dir))?;
        let data_dir =
            fs::canonicalize(data_dir).map_err(LazybarnError::io("resolving", data_dir))?;
        let worker_dir = data_dir.join("worker");
        let mut cache_dir = worker_dir.join("cache");
        create_dir(&cache_dir, 0o700)?;
        let own_uid = nix::unistd::geteuid().as_raw();
        let reachable = action_uid == own_uid || searchable_by_others(&data_dir);
        let (build_dir, relocated_because) = if reachable {
            set_mode(&worker_dir, 0o755)?;
            let build_dir = worker_dir.join("build");
            create_dir(&build_dir, 0o755)?;
            (build_dir, None)
        } else {
            let why = format!(
                "{} is not searchable by uid {action_uid}, which commands run as",
                data_dir.display()
            );
            (relocated_build_dir(&data_dir, own_uid)?, Some(why))
        };
        if relocated_because.is_some() && device_of(&build_dir)? != device_of(&cache_dir)? {
            let parent = build_dir.parent().unwrap_or(&build_dir);
            let name = format!("cache-{}", short_hash(&data_dir));
            cache_dir = parent.join(name);
            create_dir(&cache_dir, 0o700)?;
        }
        Ok(Layout {
            runner_socket: data_dir.join("runner.sock"),
            data_dir,
            cache_dir,
            build_dir,
            relocated_because,
        })
    }
}

/// Whether others (any uid but the owner's and group's) may search every
/// directory from `/` down to `dir`.
pub fn searchable_by_others(dir: &Path) -> bool {
    dir.ancestors()
        .all(|ancestor| fs::metadata(ancestor).is_ok_and(|meta| meta.mode() & OTHERS_SEARCH != 0))
}

/// A build directory outside the data directory, with parents every uid
/// can search: under `/var/lib/lazybarn` when running as root, else (or if
/// that fails) under `/tmp`.
fn relocated_build_dir(data_dir: &Path, own_uid: u32) -> Result<PathBuf, LazybarnError> {
    let hash = short_hash(data_dir);
    let mut last_error = None;
    if own_uid == 0 {
        let root = Path::new(SYSTEM_BUILD_ROOT);
        match create_dir(root, 0o755).and_then(|()| {
            let dir = root.join(format!("build-{hash}"));
            create_dir(&dir, 0o755).map(|()| dir)
        }) {
            Ok(dir) if searchable_by_others(&dir) => return Ok(dir),
            Ok(dir) => last_error = Some(format!("{} is not searchable by others", dir.display())),
            Err(error) => last_error = Some(error.to_string()),
        }
    }
    let root = std::env::temp_dir().join(format!("lazybarn-{own_uid}-{hash}"));
    create_dir(&root, 0o755)?;
    // Someone else may have made this path first in the shared /tmp.
    let meta = fs::symlink_metadata(&root).map_err(LazybarnError::io("inspecting", &root))?;
    if !meta.is_dir() || meta.uid() != own_uid {
        return Err(LazybarnError::Config(format!(
            "{} exists but is not a directory of uid {own_uid}; remove it",
            root.display()
        )));
    }
    let dir = root.join("build");
    create_dir(&dir, 0o755)?;
    if !searchable_by_others(&dir) {
        return Err(LazybarnError::Config(format!(
            "no build directory every uid can reach: {} is not searchable by others{}",
            dir.display(),
            last_error.map(|e| format!(" ({e})")).unwrap_or_default()
        )));
    }
    Ok(dir)
}

/// The first 12 hex digits of the SHA-256 of `path`.
fn short_hash(path: &Path) -> String {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

/// Creates `dir` and its missing parents; sets `mode` on `dir` itself.
fn create_dir(dir: &Path, mode: u32) -> Result<(), LazybarnError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(LazybarnError::io("creating", dir))?;
    set_mode(dir, mode)
}

fn set_mode(dir: &Path, mode: u32) -> Result<(), LazybarnError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(LazybarnError::io("setting the mode of", dir))
}

fn device_of(path: &Path) -> Result<u64, LazybarnError> {
    Ok(fs::metadata(path)
        .map_err(LazybarnError::io("inspecting", path))?
        .dev())
}

/// The default data directory: `~/.cache/<name>`.
pub fn default_data_dir(name: &str) -> Result<PathBuf, LazybarnError> {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or_else(|| LazybarnError::Config("HOME is not set; give --data-dir".to_string()))?;
    Ok(PathBuf::from(home).join(".cache").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_uid_keeps_everything_in_the_data_dir() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let own = nix::unistd::geteuid().as_raw();
        let layout = Layout::plan(&dir.path().join("data"), own).expect("layout");
        assert!(layout.build_dir.starts_with(&layout.data_dir));
        assert!(layout.cache_dir.starts_with(&layout.data_dir));
        assert!(layout.build_dir.is_dir() && layout.cache_dir.is_dir());
        assert_eq!(layout.relocated_because, None);
        assert_eq!(layout.runner_socket, layout.data_dir.join("runner.sock"));
    }

    #[test]
    fn a_private_data_dir_moves_build_directories_out() {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Mode 0700, like /root.
        set_mode(dir.path(), 0o700).expect("chmod");
        let other_uid = nix::unistd::geteuid().as_raw().wrapping_add(4242);
        let layout = Layout::plan(&dir.path().join("data"), other_uid).expect("layout");
        assert!(!layout.build_dir.starts_with(dir.path()), "{layout:?}");
        assert!(searchable_by_others(&layout.build_dir), "{layout:?}");
        let why = layout.relocated_because.clone().expect("a reason");
        assert!(why.contains("not searchable"), "{why}");
        // The same data directory always gets the same build directory.
        let again = Layout::plan(&dir.path().join("data"), other_uid).expect("layout");
        assert_eq!(again.build_dir, layout.build_dir);
        let _ = fs::remove_dir(&layout.build_dir);
    }

    #[test]
    fn hashes_are_short_and_stable() {
        let a = short_hash(Path::new("/root/.cache/lazybarn"));
        assert_eq!(a.len(), 12);
        assert_eq!(a, short_hash(Path::new("/root/.cache/lazybarn")));
        assert_ne!(a, short_hash(Path::new("/root/.cache/lazybarn2")));
    }
}
