//! The Action Cache: ActionResults by action digest.
//!
//! [`DiskActionCache`] writes each entry the way [`crate::DiskStore`] writes
//! blobs (temporary file, fsync, rename), so a crash never leaves a torn
//! entry. Entries are small and are not evicted; a result whose blobs were
//! evicted from the CAS is filtered out by the Action Cache service instead.
//! [`RemoteActionCache`] keeps entries in another REAPI server.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lazybarn_proto::reapi::ActionResult;
use prost::Message;

use crate::digest::Digest;
use crate::error::{CasError, Result};

mod remote;

pub use remote::RemoteActionCache;

/// A store of ActionResults keyed by action digest.
#[async_trait]
pub trait ActionCache: Send + Sync + 'static {
    /// The stored result, if any.
    async fn get(&self, action: &Digest) -> Result<Option<ActionResult>>;

    /// Stores (or replaces) a result.
    async fn put(&self, action: &Digest, result: &ActionResult) -> Result<()>;
}

/// Action Cache entries as files under one directory.
pub struct DiskActionCache {
    dir: Arc<PathBuf>,
}

impl DiskActionCache {
    /// Opens (creating if needed) an Action Cache under `dir`, removing
    /// unfinished writes left by a crash. `dir` is made 0700, like the
    /// store's.
    pub fn open(dir: &Path) -> Result<Self> {
        crate::store::create_private_dir(dir)?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(|e| CasError::io(format!("removing {}", tmp.display()), e))?;
        }
        fs::create_dir_all(&tmp)
            .map_err(|e| CasError::io(format!("creating {}", tmp.display()), e))?;
        Ok(DiskActionCache {
            dir: Arc::new(dir.to_path_buf()),
        })
    }

    fn path_of(dir: &Path, action: &Digest) -> PathBuf {
        dir.join(format!("{}-{}", action.hash_hex(), action.size()))
    }
}

#[async_trait]
impl ActionCache for DiskActionCache {
    async fn get(&self, action: &Digest) -> Result<Option<ActionResult>> {
        let path = Self::path_of(&self.dir, action);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CasError::io(format!("reading action result {action}"), e)),
        };
        match ActionResult::decode(bytes.as_slice()) {
            Ok(result) => Ok(Some(result)),
            Err(e) => {
                // Cannot happen through this code's writes; treat as a miss
                // so the client re-executes, and drop the bad entry.
                tracing::warn!(action = %action, error = %e, "dropping undecodable action result");
                let _ = tokio::fs::remove_file(&path).await;
                Ok(None)
            }
        }
    }

    async fn put(&self, action: &Digest, result: &ActionResult) -> Result<()> {
        let dir = self.dir.clone();
        let action = *action;
        let bytes = result.encode_to_vec();
        tokio::task::spawn_blocking(move || {
            let temp = dir.join("tmp").join(uuid::Uuid::new_v4().to_string());
            let written = (|| {
                let mut f = File::create_new(&temp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                fs::rename(&temp, Self::path_of(&dir, &action))
            })();
            written.map_err(|e| {
                let _ = fs::remove_file(&temp);
                CasError::io(format!("storing action result {action}"), e)
            })
        })
        .await
        .expect("action cache write task panicked")
    }
}

/// Action Cache entries in memory; for tests and small setups.
#[derive(Default)]
pub struct MemoryActionCache {
    entries: Mutex<HashMap<Digest, ActionResult>>,
}

impl MemoryActionCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ActionCache for MemoryActionCache {
    async fn get(&self, action: &Digest) -> Result<Option<ActionResult>> {
        let entries = self.entries.lock().expect("action cache lock poisoned");
        Ok(entries.get(action).cloned())
    }

    async fn put(&self, action: &Digest, result: &ActionResult) -> Result<()> {
        let mut entries = self.entries.lock().expect("action cache lock poisoned");
        entries.insert(*action, result.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i32) -> ActionResult {
        ActionResult {
            exit_code: code,
            stdout_raw: bytes::Bytes::from_static(b"out"),
            ..Default::default()
        }
    }

    async fn conforms(cache: &dyn ActionCache) {
        let a = Digest::of(b"action a");
        assert_eq!(cache.get(&a).await.expect("get"), None);
        cache.put(&a, &result(0)).await.expect("put");
        assert_eq!(cache.get(&a).await.expect("get"), Some(result(0)));
        cache.put(&a, &result(3)).await.expect("replace");
        assert_eq!(cache.get(&a).await.expect("get"), Some(result(3)));
    }

    #[tokio::test]
    async fn memory_cache_conforms() {
        conforms(&MemoryActionCache::new()).await;
    }

    #[tokio::test]
    async fn disk_cache_conforms_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        conforms(&DiskActionCache::open(dir.path()).expect("open")).await;
        fs::write(dir.path().join("tmp/torn"), b"\x08").expect("leftover");
        let cache = DiskActionCache::open(dir.path()).expect("reopen");
        assert_eq!(
            cache.get(&Digest::of(b"action a")).await.expect("get"),
            Some(result(3))
        );
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[tokio::test]
    async fn undecodable_entry_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = DiskActionCache::open(dir.path()).expect("open");
        let a = Digest::of(b"action");
        fs::write(DiskActionCache::path_of(dir.path(), &a), b"\xff\xff\xff").expect("junk");
        assert_eq!(cache.get(&a).await.expect("get"), None);
    }
}
