//! What the vfs counts: per-mount [`MountCounters`] for the worker's report,
//! and process-wide metrics through the `metrics` facade, which the binaries
//! export.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Blobs brought from the CAS into the BlobCache by mounts.
pub const FILES_FETCHED: &str = "lazybarn_vfs_files_fetched_total";
/// Bytes brought from the CAS into the BlobCache by mounts.
pub const BYTES_FETCHED: &str = "lazybarn_vfs_bytes_fetched_total";
/// Opens of input files whose blob was already in the BlobCache.
pub const CACHE_HITS: &str = "lazybarn_vfs_cache_hits_total";
/// Directory messages loaded into a mount's tree, fetched or from the
/// worker's DirectoryCache.
pub const DIRECTORIES_LOADED: &str = "lazybarn_vfs_directories_loaded_total";
/// Directory messages fetched from the CAS (the rest came from the cache).
pub const DIRECTORIES_FETCHED: &str = "lazybarn_vfs_directories_fetched_total";
/// Time to fetch one blob into the BlobCache, in seconds.
pub const FETCH_SECONDS: &str = "lazybarn_vfs_fetch_seconds";

/// Counters of one mount, read by the worker when the action ends.
#[derive(Debug, Default)]
pub struct MountCounters {
    files_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    cache_hits: AtomicU64,
    directories_loaded: AtomicU64,
    directories_fetched: AtomicU64,
}

/// A snapshot of [`MountCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountStats {
    /// Blobs this mount fetched from the CAS.
    pub files_fetched: u64,
    /// Bytes of those blobs.
    pub bytes_fetched: u64,
    /// Opens served from blobs already in the BlobCache.
    pub cache_hits: u64,
    /// Directory messages loaded into this mount's tree.
    pub directories_loaded: u64,
    /// Of those, the ones fetched from the CAS rather than found in the
    /// worker's DirectoryCache.
    pub directories_fetched: u64,
}

impl MountCounters {
    /// Records one blob fetched from the CAS.
    pub(crate) fn fetched(&self, bytes: u64, took: Duration) {
        self.files_fetched.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!(FILES_FETCHED).increment(1);
        metrics::counter!(BYTES_FETCHED).increment(bytes);
        metrics::histogram!(FETCH_SECONDS).record(took.as_secs_f64());
    }

    /// Records an open served from the cache.
    pub(crate) fn hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(CACHE_HITS).increment(1);
    }

    /// Records one Directory loaded.
    pub(crate) fn directory_loaded(&self) {
        self.directories_loaded.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DIRECTORIES_LOADED).increment(1);
    }

    /// Records one Directory fetched from the CAS.
    pub(crate) fn directory_fetched(&self) {
        self.directories_fetched.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DIRECTORIES_FETCHED).increment(1);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> MountStats {
        MountStats {
            files_fetched: self.files_fetched.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            directories_loaded: self.directories_loaded.load(Ordering::Relaxed),
            directories_fetched: self.directories_fetched.load(Ordering::Relaxed),
        }
    }
}
