//! The vfs error type, and how each error reaches a FUSE caller as an errno.

use std::io;
use std::path::PathBuf;

use fuser::Errno;
use lazybarn_cas::Digest;

/// Everything that can go wrong in the vfs, each naming what it is about.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The CAS could not deliver a blob (a file's bytes or a Directory).
    #[error("Failed to fetch {what} {digest}: {message}")]
    Fetch {
        /// "file" or "directory".
        what: &'static str,
        /// The blob asked for.
        digest: Digest,
        /// The CAS's answer, with its status code.
        message: String,
        /// The CAS's status code (NOT_FOUND: the blob is missing).
        code: tonic::Code,
    },
    /// A fetched blob whose bytes do not hash to its digest; never served.
    #[error("blob {digest} arrived corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The blob asked for.
        digest: Digest,
        /// What the bytes really hash to.
        actual: Digest,
    },
    /// The input root breaks REAPI's rules (a bad name, a malformed digest or
    /// Directory message). Never turned into a path on the worker's disk.
    #[error("invalid input root: {0}")]
    InvalidInputRoot(String),
    /// The mount point is unusable (missing, not a directory, not empty).
    #[error("cannot mount on {path}: {reason}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A local I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the vfs was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// An output path that is not a valid relative path.
    #[error("invalid output path {0:?}")]
    InvalidOutputPath(String),
}

impl VfsError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        VfsError::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno a FUSE caller sees for this error: EIO for anything the
    /// CAS or the input root caused, so a reader never mistakes a fetch
    /// failure for a missing file.
    pub fn errno(&self) -> Errno {
        self.errno_inner()
    }

    /// The digest of the blob the CAS did not have, when that is the error.
    pub fn missing_blob(&self) -> Option<Digest> {
        match self {
            VfsError::Fetch {
                digest,
                code: tonic::Code::NotFound,
                ..
            } => Some(*digest),
            _ => None,
        }
    }

    fn errno_inner(&self) -> Errno {
        match self {
            VfsError::Io { source, .. } => source
                .raw_os_error()
                .map(Errno::from_i32)
                .unwrap_or(Errno::EIO),
            _ => Errno::EIO,
        }
    }
}

/// Result with a [`VfsError`].
pub type Result<T, E = VfsError> = std::result::Result<T, E>;
