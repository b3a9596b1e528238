//! `CheckReadiness`: whether the runner can reach and write the directory
//! the worker will build actions in.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ReadinessError;

/// Checks that `path` (empty: nothing to check) is an absolute path to a
/// directory in which the runner can create, write and remove a file.
/// Touches the filesystem: call it off the async executor.
pub fn check_readiness(path: &str) -> Result<(), ReadinessError> {
    if path.is_empty() {
        return Ok(());
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(ReadinessError::RelativePath(path.to_path_buf()));
    }
    let unreachable = |action, source| ReadinessError::Unreachable {
        action,
        path: PathBuf::from(path),
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| unreachable("reach", e))?;
    if !meta.is_dir() {
        return Err(unreachable(
            "use as a directory",
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    // The file is removed when dropped.
    let mut probe = tempfile::Builder::new()
        .prefix(".lazybarn-runner-readiness-")
        .tempfile_in(path)
        .map_err(|e| unreachable("create a file in", e))?;
    probe
        .write_all(b"ready")
        .and_then(|()| probe.as_file().sync_data())
        .map_err(|e| unreachable("write a file in", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_directory_is_ready_and_nothing_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_readiness(&dir.path().display().to_string()).expect("ready");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        check_readiness("").expect("nothing to check");
    }

    #[test]
    fn missing_relative_and_non_directories_are_not_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert!(check_readiness(&missing.display().to_string()).is_err());
        assert!(matches!(
            check_readiness("relative/dir"),
            Err(ReadinessError::RelativePath(_))
        ));
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(check_readiness(&file.display().to_string()).is_err());
    }
}
