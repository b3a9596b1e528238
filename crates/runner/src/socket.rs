//! The runner's Unix socket: only the worker may connect.
//!
//! The socket is created in a fresh private directory beside its final path,
//! given its owner, group and mode there, and only then renamed into place,
//! so there is no moment at which anyone else could connect. Without a
//! socket group the mode is 0600 (root only); with one it is 0660.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::error::ServeError;

/// The socket's file and its identity, so that shutdown removes the file
/// only if it is still the one this runner created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this runner created.
    pub fn remove_file(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.dev_ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn socket_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Socket {
        action,
        path,
        source,
    }
}

/// Replaces a stale socket at `path`; refuses a live one or a non-socket.
fn remove_stale(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_error("inspect", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_path_buf()));
    }
    if StdUnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse(path.to_path_buf()));
    }
    tracing::info!(?path, "removing stale socket");
    std::fs::remove_file(path).map_err(socket_error("remove stale", path))
}

/// Binds the runner's socket at `path`, connectable by root and, if given,
/// members of `group`. Must be called within a tokio runtime.
pub fn bind(path: &Path, group: Option<u32>) -> Result<(UnixListener, SocketFile), ServeError> {
    remove_stale(path)?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(socket_error("create the directory of", path))?;
    let private = tempfile::Builder::new()
        .prefix(".lazybarn-runner-")
        .tempdir_in(parent)
        .map_err(socket_error("create a directory beside", path))?;
    let staging = private.path().join("sock");
    let listener = StdUnixListener::bind(&staging).map_err(socket_error("bind", path))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(&staging, None, Some(gid))
                .map_err(socket_error("chown", path))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .map_err(socket_error("chmod", path))?;
    std::fs::rename(&staging, path).map_err(socket_error("move into place", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(socket_error("inspect", path))?;
    listener
        .set_nonblocking(true)
        .map_err(socket_error("configure", path))?;
    let listener = UnixListener::from_std(listener).map_err(socket_error("register", path))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev_ino: (meta.dev(), meta.ino()),
    };
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_a_stale_socket_with_a_root_only_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runner.sock");
        drop(StdUnixListener::bind(&path).expect("bind stale"));
        let (_listener, socket) = bind(&path, None).expect("stale socket replaced");
        let meta = std::fs::symlink_metadata(&path).expect("socket exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), 0);
        // Only the socket is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
        socket.remove_file();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_socket_group_gets_0660() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runner.sock");
        let _socket = bind(&path, Some(65534)).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket exists");
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65534));
    }

    #[tokio::test]
    async fn refuses_live_sockets_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runner.sock");
        let _live = bind(&path, None).expect("first bind");
        assert!(matches!(bind(&path, None), Err(ServeError::SocketInUse(_))));
        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").expect("write");
        assert!(matches!(bind(&file, None), Err(ServeError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");
    }
}
