//! The storage error type and how each error travels as a gRPC status.

use std::io;

use tonic::{Code, Status};

use crate::digest::Digest;

/// Everything that can go wrong in storage, each naming what it is about.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A digest that is not 64 lowercase hex characters and a size >= 0.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The offending value as received.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob that is not in the store.
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// Data whose length is not the digest's size.
    #[error("blob {digest}: data has {actual} bytes, the digest says {}", digest.size())]
    SizeMismatch {
        /// The digest the data was sent under.
        digest: Digest,
        /// How many bytes arrived.
        actual: u64,
    },
    /// Data whose SHA-256 is not the digest's hash.
    #[error("blob {digest}: data hashes to {actual}")]
    HashMismatch {
        /// The digest the data was sent under.
        digest: Digest,
        /// The hash the data really has.
        actual: String,
    },
    /// A read outside the blob.
    #[error("{0}")]
    OutOfRange(String),
    /// A malformed request other than a digest.
    #[error("{0}")]
    InvalidArgument(String),
    /// The disk is full or the blob is larger than the store may hold.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request asks for something Lazybarn does not do.
    #[error("{0}")]
    Unimplemented(String),
    /// An I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A stored record that cannot be decoded.
    #[error("{0}")]
    Corrupt(String),
    /// A failure reported by a remote CAS or Action Cache that no other
    /// variant describes; it keeps the remote's code, so UNAVAILABLE from
    /// the remote reaches the client as UNAVAILABLE and is retried there.
    #[error("{message}")]
    Remote {
        /// The remote's status code.
        code: Code,
        /// The remote's message, with what was being done.
        message: String,
    },
}

impl CasError {
    /// Wraps an I/O error with what was being done; a full disk becomes
    /// [`CasError::ResourceExhausted`] so clients see RESOURCE_EXHAUSTED.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if is_disk_full(&source) {
            return CasError::ResourceExhausted(format!("{context}: disk full: {source}"));
        }
        CasError::Io { context, source }
    }

    /// The gRPC status code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            CasError::InvalidDigest { .. }
            | CasError::SizeMismatch { .. }
            | CasError::HashMismatch { .. }
            | CasError::InvalidArgument(_) => Code::InvalidArgument,
            CasError::NotFound(_) => Code::NotFound,
            CasError::OutOfRange(_) => Code::OutOfRange,
            CasError::ResourceExhausted(_) => Code::ResourceExhausted,
            CasError::Unimplemented(_) => Code::Unimplemented,
            CasError::Io { .. } | CasError::Corrupt(_) => Code::Internal,
            CasError::Remote { code, .. } => *code,
        }
    }

    /// Turns a remote's status about `digest` back into the error a local
    /// store would give: NOT_FOUND becomes [`CasError::NotFound`] so callers
    /// still see a missing blob, and other codes keep their meaning.
    pub fn from_remote(status: &Status, digest: Option<Digest>) -> Self {
        let message = status.message().to_string();
        match (status.code(), digest) {
            (Code::NotFound, Some(digest)) => CasError::NotFound(digest),
            (Code::InvalidArgument, _) => CasError::InvalidArgument(message),
            (Code::OutOfRange, _) => CasError::OutOfRange(message),
            (Code::ResourceExhausted, _) => CasError::ResourceExhausted(message),
            (Code::Unimplemented, _) => CasError::Unimplemented(message),
            (code, _) => CasError::Remote { code, message },
        }
    }
}

fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl From<CasError> for Status {
    fn from(err: CasError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

/// Result with a [`CasError`].
pub type Result<T, E = CasError> = std::result::Result<T, E>;
