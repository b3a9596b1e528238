//! The scheduler's error type and how each error travels as a gRPC status.
//!
//! Missing blobs become FAILED_PRECONDITION with a `google.rpc.PreconditionFailure`
//! detail listing every blob as a `MISSING` violation (`blobs/{hash}/{size}`),
//! which is what tells Bazel to upload them again.

use bytes::Bytes;
use lazybarn_cas::{CasError, Digest};
use lazybarn_proto::rpc::{self, PreconditionFailure, precondition_failure::Violation};
use prost::Message;
use tonic::{Code, Status};

use crate::operation::any;

/// Everything that can go wrong in the scheduler, each naming what it is about.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Blobs the request needs that the CAS lacks.
    #[error("{message}")]
    MissingBlobs {
        /// What was being done, and which blobs are missing.
        message: String,
        /// Every missing blob.
        missing: Vec<Digest>,
    },
    /// A name (operation, worker) the scheduler does not know.
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be served in the scheduler's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A storage failure, with what the scheduler was doing.
    #[error("{context}: {source}")]
    Storage {
        /// What the scheduler was doing.
        context: String,
        /// The storage error.
        source: CasError,
    },
}

impl SchedulerError {
    /// Wraps a storage error with what was being done.
    pub fn storage(context: impl Into<String>, source: CasError) -> Self {
        SchedulerError::Storage {
            context: context.into(),
            source,
        }
    }

    /// The gRPC status code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            SchedulerError::InvalidArgument(_) => Code::InvalidArgument,
            SchedulerError::MissingBlobs { .. } | SchedulerError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            SchedulerError::NotFound(_) => Code::NotFound,
            SchedulerError::Storage { source, .. } => source.code(),
        }
    }

    /// The error as a `google.rpc.Status`, details included, for places that
    /// carry a status inside a message (ExecuteResponse.status).
    pub fn to_rpc_status(&self) -> rpc::Status {
        let details = match self {
            SchedulerError::MissingBlobs { missing, .. } => vec![any(
                "google.rpc.PreconditionFailure",
                &missing_blobs_failure(missing),
            )],
            _ => Vec::new(),
        };
        rpc::Status {
            code: self.code() as i32,
            message: self.to_string(),
            details,
        }
    }
}

/// A PreconditionFailure with one MISSING violation per blob, as REAPI asks.
pub fn missing_blobs_failure(missing: &[Digest]) -> PreconditionFailure {
    PreconditionFailure {
        violations: missing
            .iter()
            .map(|d| Violation {
                r#type: "MISSING".to_string(),
                subject: format!("blobs/{}/{}", d.hash_hex(), d.size()),
                description: String::new(),
            })
            .collect(),
    }
}

impl From<SchedulerError> for Status {
    fn from(err: SchedulerError) -> Self {
        match &err {
            SchedulerError::MissingBlobs { .. } => {
                let status = err.to_rpc_status();
                let details = Bytes::from(status.encode_to_vec());
                Status::with_details(err.code(), status.message, details)
            }
            _ => Status::new(err.code(), err.to_string()),
        }
    }
}

/// Result with a [`SchedulerError`].
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_blobs_travel_as_precondition_failure_details() {
        let d = Digest::of(b"x");
        let err = SchedulerError::MissingBlobs {
            message: "missing".into(),
            missing: vec![d],
        };
        let status = Status::from(err);
        assert_eq!(status.code(), Code::FailedPrecondition);
        let decoded = rpc::Status::decode(status.details()).expect("rpc status");
        let failure =
            PreconditionFailure::decode(decoded.details[0].value.as_slice()).expect("failure");
        assert_eq!(failure.violations[0].r#type, "MISSING");
        assert_eq!(
            failure.violations[0].subject,
            format!("blobs/{}/1", d.hash_hex())
        );
    }
}
