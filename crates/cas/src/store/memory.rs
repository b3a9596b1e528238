//! A blob store in memory, bounded in bytes with least-recently-used eviction.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use lru::LruCache;

use super::{BlobStore, BlobWriter, check_write_fits, clamp_range};
use crate::digest::{Digest, DigestHasher, verify};
use crate::error::{CasError, Result};

/// Blobs in memory; for tests and small setups.
pub struct MemoryStore {
    shared: Arc<Shared>,
}

/// What the store and its unfinished writers share.
struct Shared {
    max_bytes: u64,
    inner: Mutex<Blobs>,
}

struct Blobs {
    lru: LruCache<Digest, Bytes>,
    bytes: u64,
}

impl MemoryStore {
    /// A store that holds at most `max_bytes` of blobs.
    pub fn new(max_bytes: u64) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                max_bytes,
                inner: Mutex::new(Blobs {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                }),
            }),
        }
    }
}

impl Shared {
    fn insert(&self, digest: Digest, data: Bytes) -> Result<()> {
        if digest.size() > self.max_bytes {
            return Err(CasError::ResourceExhausted(format!(
                "blob {digest} is larger than the store's {} bytes",
                self.max_bytes
            )));
        }
        let mut blobs = self.inner.lock().expect("memory store lock poisoned");
        if blobs.lru.get(&digest).is_some() {
            return Ok(());
        }
        blobs.bytes += digest.size();
        blobs.lru.push(digest, data);
        while blobs.bytes > self.max_bytes {
            match blobs.lru.pop_lru() {
                Some((evicted, _)) => blobs.bytes -= evicted.size(),
                None => break,
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn get_range(&self, digest: &Digest, offset: u64, length: Option<u64>) -> Result<Bytes> {
        let (start, len) = clamp_range(digest, offset, length)?;
        if digest.is_empty() {
            return Ok(Bytes::new());
        }
        let mut blobs = self
            .shared
            .inner
            .lock()
            .expect("memory store lock poisoned");
        let data = blobs.lru.get(digest).ok_or(CasError::NotFound(*digest))?;
        Ok(data.slice(start as usize..(start + len) as usize))
    }

    async fn put_batch(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        blobs
            .into_iter()
            .map(|(digest, data)| {
                verify(&digest, &data)?;
                if digest.is_empty() {
                    return Ok(());
                }
                self.shared.insert(digest, data)
            })
            .collect()
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut blobs = self
            .shared
            .inner
            .lock()
            .expect("memory store lock poisoned");
        Ok(digests
            .iter()
            .filter(|d| !d.is_empty() && blobs.lru.get(*d).is_none())
            .copied()
            .collect())
    }

    async fn begin_write(&self, digest: Digest) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            store: self.shared.clone(),
            digest,
            buffer: BytesMut::new(),
            hasher: DigestHasher::new(),
        }))
    }
}

struct MemoryWriter {
    store: Arc<Shared>,
    digest: Digest,
    buffer: BytesMut,
    hasher: DigestHasher,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        check_write_fits(&self.digest, self.hasher.size(), data.len())?;
        self.hasher.update(&data);
        self.buffer.extend_from_slice(&data);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.hasher.size()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let data = self.buffer.freeze();
        verify(&self.digest, &data)?;
        if self.digest.is_empty() {
            return Ok(());
        }
        self.store.insert(self.digest, data)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn conforms() {
        let store = MemoryStore::new(1 << 30);
        conformance::round_trip(&store).await;
        conformance::empty_blob_always_present(&store).await;
        conformance::missing_blob_is_not_found(&store).await;
        conformance::rejects_bad_data(&store).await;
        conformance::streamed_write(&store).await;
        conformance::concurrent_writers_of_one_blob(Arc::new(MemoryStore::new(1 << 30))).await;
    }

    #[tokio::test]
    async fn evicts_least_recently_used() {
        let store = MemoryStore::new(10);
        let a = Bytes::from_static(b"aaaa");
        let b = Bytes::from_static(b"bbbb");
        let c = Bytes::from_static(b"cccc");
        let (da, db, dc) = (Digest::of(&a), Digest::of(&b), Digest::of(&c));
        store.put(da, a).await.expect("a");
        store.put(db, b).await.expect("b");
        store.get(&da).await.expect("touch a");
        store.put(dc, c).await.expect("c");
        assert_eq!(
            store.find_missing(&[da, db, dc]).await.expect("find"),
            vec![db]
        );
        let big = Bytes::from_static(b"0123456789ab");
        let err = store.put(Digest::of(&big), big).await.expect_err("too big");
        assert!(matches!(err, CasError::ResourceExhausted(_)));
    }
}
