//! The vfs error type; how each error reaches a FUSE caller as an errno, and
//! the worker as a gRPC code through its [`FailureKind`].

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
    /// A fetched blob (a file or a Directory message) whose bytes do not
    /// hash to its digest; never served or used.
    #[error("blob {digest} arrived corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The blob asked for.
        digest: Digest,
        /// What the bytes really hash to.
        actual: Digest,
    },
    /// The input root breaks REAPI's rules (a bad name, a malformed digest, a
    /// Directory message that does not decode). Never turned into a path on
    /// the worker's disk.
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
    /// A name in an output directory that is not UTF-8: REAPI names are
    /// strings, so the output cannot be reported as the action left it.
    #[error("output {path:?} has a name that is not UTF-8, which REAPI cannot carry")]
    OutputNameNotUtf8 {
        /// The entry, from the root of the input root (non-UTF-8 bytes
        /// shown escaped).
        path: PathBuf,
    },
    /// Loading a Directory would take the mount past
    /// `MountConfig::max_input_entries`; nothing of it was loaded.
    #[error(
        "input root too large: loading Directory {digest} would make {entries} input entries, \
         over max_input_entries = {limit}"
    )]
    InputTooLarge {
        /// The Directory that did not fit.
        digest: Digest,
        /// Entries the mount would hold with it.
        entries: u64,
        /// The cap.
        limit: u64,
    },
    /// The action tried to add a name to its mount (create, mknod, mkdir,
    /// symlink, link) while `MountConfig::max_created_entries` of the names
    /// it added were live; nothing was added.
    #[error(
        "the action created more than {limit} files, directories, symlinks and links in its \
         mount, over max_created_entries"
    )]
    CreatedTooMany {
        /// The cap.
        limit: u64,
    },
}

/// What kind of failure an error is, which decides the gRPC code the worker
/// answers with ([`FailureKind::code`]) and whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The CAS does not have a blob the input root names: the client must
    /// upload it again. FAILED_PRECONDITION, as REAPI asks.
    Missing,
    /// The CAS failed or sent bytes that do not match their digest (a file
    /// or a Directory: the CAS checks digests on upload, so such bytes are
    /// its fault, not the client's); another try may succeed. UNAVAILABLE.
    Unavailable,
    /// The input root, or an output path, breaks REAPI's rules (a bad or
    /// duplicate name, a malformed digest, a Directory that does not
    /// decode, an output name that is not UTF-8); it never will succeed.
    /// INVALID_ARGUMENT.
    InvalidInput,
    /// The input root is larger than the mount's cap, or the action created
    /// more entries in its mount than their cap allows. RESOURCE_EXHAUSTED.
    TooLarge,
    /// Something on the worker itself failed (its disk, the mount point).
    /// INTERNAL.
    Internal,
}

impl FailureKind {
    /// The gRPC code a request failing this way gets.
    pub fn code(self) -> tonic::Code {
        match self {
            FailureKind::Missing => tonic::Code::FailedPrecondition,
            FailureKind::Unavailable => tonic::Code::Unavailable,
            FailureKind::InvalidInput => tonic::Code::InvalidArgument,
            FailureKind::TooLarge => tonic::Code::ResourceExhausted,
            FailureKind::Internal => tonic::Code::Internal,
        }
    }
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
    /// failure for a missing file; ENOSPC for an entry cap (input root or
    /// created entries).
    pub fn errno(&self) -> Errno {
        self.errno_inner()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        match self {
            VfsError::Fetch {
                code: tonic::Code::NotFound,
                ..
            } => FailureKind::Missing,
            VfsError::Fetch { .. } | VfsError::Corrupt { .. } => FailureKind::Unavailable,
            VfsError::InvalidInputRoot(_)
            | VfsError::InvalidOutputPath(_)
            | VfsError::OutputNameNotUtf8 { .. } => FailureKind::InvalidInput,
            VfsError::InputTooLarge { .. } | VfsError::CreatedTooMany { .. } => {
                FailureKind::TooLarge
            }
            VfsError::MountPoint { .. } | VfsError::Io { .. } => FailureKind::Internal,
        }
    }

    /// The gRPC code the worker answers with: `self.kind().code()`.
    pub fn code(&self) -> tonic::Code {
        self.kind().code()
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
            // The mount is out of room for entries, as a disk out of inodes
            // is: ENOSPC. (EFBIG would blame one file's size, and is
            // what the action sees when it hits its own file size limit.)
            VfsError::InputTooLarge { .. } | VfsError::CreatedTooMany { .. } => Errno::ENOSPC,
            _ => Errno::EIO,
        }
    }
}

/// Result with a [`VfsError`].
pub type Result<T, E = VfsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes() {
        let digest = Digest::of(b"x");
        let fetch = |code| VfsError::Fetch {
            what: "file",
            digest,
            message: String::new(),
            code,
        };
        let too_large = VfsError::InputTooLarge {
            digest,
            entries: 12,
            limit: 10,
        };
        let cases = [
            (
                fetch(tonic::Code::NotFound),
                tonic::Code::FailedPrecondition,
            ),
            (fetch(tonic::Code::Unavailable), tonic::Code::Unavailable),
            (
                VfsError::Corrupt {
                    digest,
                    actual: Digest::of(b"y"),
                },
                tonic::Code::Unavailable,
            ),
            (
                VfsError::InvalidInputRoot("bad".into()),
                tonic::Code::InvalidArgument,
            ),
            (too_large, tonic::Code::ResourceExhausted),
            (
                VfsError::io("x", io::Error::other("disk")),
                tonic::Code::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
        let too_large = VfsError::InputTooLarge {
            digest,
            entries: 12,
            limit: 10,
        };
        assert_eq!(too_large.errno(), Errno::ENOSPC);
        let message = too_large.to_string();
        assert!(message.contains("max_input_entries = 10"), "{message}");

        let created = VfsError::CreatedTooMany { limit: 10 };
        assert_eq!(created.kind(), FailureKind::TooLarge);
        assert_eq!(created.code(), tonic::Code::ResourceExhausted);
        assert_eq!(created.errno(), Errno::ENOSPC);
        let message = created.to_string();
        assert!(
            message.contains("more than 10 ") && message.contains("max_created_entries"),
            "{message}"
        );
    }
}
