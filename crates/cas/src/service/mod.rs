//! The REAPI storage services: Capabilities, ContentAddressableStorage,
//! ByteStream and ActionCache, each in its own file over the store traits.
//!
//! Instance names are accepted and ignored: all instances share one store.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;

pub use action_cache::ActionCacheService;
pub use bytestream::ByteStreamService;
pub use capabilities::CapabilitiesService;
pub use cas::CasService;

use lazybarn_proto::reapi::digest_function;
use tonic::Status;

/// The batch limit advertised by default: the sum of blob sizes in one
/// BatchUpdateBlobs or BatchReadBlobs call. Bazel sends anything larger
/// through ByteStream.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;

/// The largest gRPC message accepted or sent. Generously above the batch
/// limit (which counts blob bytes only) so that per-blob framing and
/// FindMissingBlobs calls with ~100,000 digests fit, and an oversized batch
/// gets an INVALID_ARGUMENT that names the real limit.
pub fn message_size_limit(max_batch_bytes: usize) -> usize {
    (max_batch_bytes * 4).max(64 << 20)
}

/// Accepts SHA-256 (or unset, which means SHA-256 for 64-character hashes).
pub(crate) fn check_digest_function(value: i32) -> Result<(), Status> {
    match digest_function::Value::try_from(value) {
        Ok(digest_function::Value::Unknown | digest_function::Value::Sha256) => Ok(()),
        Ok(other) => Err(Status::invalid_argument(format!(
            "digest function {} is not supported; this server uses SHA256",
            other.as_str_name()
        ))),
        Err(_) => Err(Status::invalid_argument(format!(
            "digest function {value} is unknown; this server uses SHA256"
        ))),
    }
}
