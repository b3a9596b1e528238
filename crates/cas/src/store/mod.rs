//! Blob stores: where the bytes of the CAS live.
//!
//! [`BlobStore`] is the one interface the services, the scheduler and the
//! worker use. [`DiskStore`] keeps blobs as files and survives crashes and
//! restarts; [`MemoryStore`] keeps them in memory for tests and small setups;
//! [`RemoteStore`] is another REAPI CAS, for deployments that outgrow a disk.
//! Every store verifies a blob against its digest before anyone can read it,
//! and every store holds the empty blob without being told.

mod disk;
mod memory;
mod remote;

use async_trait::async_trait;
use bytes::Bytes;

pub use disk::DiskStore;
pub(crate) use disk::create_private_dir;
pub use memory::MemoryStore;
pub use remote::RemoteStore;

use crate::digest::Digest;
use crate::error::{CasError, Result};

/// A content-addressed blob store.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Reads up to `length` bytes (all when `None`) starting at `offset`.
    /// An offset past the end is [`CasError::OutOfRange`].
    async fn get_range(&self, digest: &Digest, offset: u64, length: Option<u64>) -> Result<Bytes>;

    /// Stores blobs after checking each against its digest; one result per
    /// blob, in order. A blob that fails verification is not stored.
    async fn put_batch(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>>;

    /// The subset of `digests` the store does not hold, in request order.
    /// Blobs found count as used, for eviction.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// Starts a streamed write of a blob whose digest is known up front. The
    /// blob becomes visible only when [`BlobWriter::commit`] verifies it.
    async fn begin_write(&self, digest: Digest) -> Result<Box<dyn BlobWriter>>;

    /// Reads a whole blob.
    async fn get(&self, digest: &Digest) -> Result<Bytes> {
        self.get_range(digest, 0, None).await
    }

    /// Reads several whole blobs; one result per digest, in order. Stores
    /// override this to do the work in one batch.
    async fn get_batch(&self, digests: &[Digest]) -> Vec<Result<Bytes>> {
        futures::future::join_all(digests.iter().map(|d| self.get(d))).await
    }

    /// Stores one blob after verifying it.
    async fn put(&self, digest: Digest, data: Bytes) -> Result<()> {
        self.put_batch(vec![(digest, data)])
            .await
            .pop()
            .expect("put_batch answers once per blob")
    }

    /// Whether the store holds the blob.
    async fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .find_missing(std::slice::from_ref(digest))
            .await?
            .is_empty())
    }
}

/// A blob being written in pieces; dropping it without commit discards it.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// How many bytes have been appended so far.
    fn written(&self) -> u64;

    /// Verifies size and hash and makes the blob visible.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Works out which bytes of a blob of `size` a ranged read covers.
pub(crate) fn clamp_range(digest: &Digest, offset: u64, length: Option<u64>) -> Result<(u64, u64)> {
    let size = digest.size();
    if offset > size {
        return Err(CasError::OutOfRange(format!(
            "read offset {offset} is past the end of blob {digest}"
        )));
    }
    let available = size - offset;
    Ok((offset, length.map_or(available, |l| l.min(available))))
}

/// Rejects a write that would run past the blob's declared size.
pub(crate) fn check_write_fits(digest: &Digest, written: u64, more: usize) -> Result<()> {
    let total = written + more as u64;
    if total > digest.size() {
        return Err(CasError::SizeMismatch {
            digest: *digest,
            actual: total,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every [`BlobStore`] must show; each store's tests run these.

    use super::*;

    fn blob(text: &str) -> (Digest, Bytes) {
        (Digest::of(text.as_bytes()), Bytes::from(text.to_string()))
    }

    pub async fn round_trip(store: &dyn BlobStore) {
        let (d, data) = blob("hello world");
        assert_eq!(store.find_missing(&[d]).await.expect("find"), vec![d]);
        store.put(d, data.clone()).await.expect("put");
        assert_eq!(store.get(&d).await.expect("get"), data);
        assert!(store.find_missing(&[d]).await.expect("find").is_empty());
        assert_eq!(
            store.get_range(&d, 6, Some(3)).await.expect("range"),
            Bytes::from_static(b"wor")
        );
        assert_eq!(
            store.get_range(&d, 6, Some(100)).await.expect("range"),
            Bytes::from_static(b"world")
        );
        assert_eq!(store.get_range(&d, 11, None).await.expect("at end"), "");
        let err = store.get_range(&d, 12, None).await.expect_err("past end");
        assert!(matches!(err, CasError::OutOfRange(_)), "{err}");
        let (missing, _) = blob("not stored");
        let batch = store.get_batch(&[d, missing, Digest::EMPTY]).await;
        assert_eq!(batch[0].as_ref().expect("present"), &data);
        assert!(matches!(batch[1], Err(CasError::NotFound(x)) if x == missing));
        assert!(batch[2].as_ref().expect("empty blob").is_empty());
    }

    pub async fn empty_blob_always_present(store: &dyn BlobStore) {
        assert!(
            store
                .find_missing(&[Digest::EMPTY])
                .await
                .expect("find")
                .is_empty()
        );
        assert!(store.get(&Digest::EMPTY).await.expect("get").is_empty());
        store
            .put(Digest::EMPTY, Bytes::new())
            .await
            .expect("put empty");
    }

    pub async fn missing_blob_is_not_found(store: &dyn BlobStore) {
        let (d, _) = blob("never stored");
        let err = store.get(&d).await.expect_err("missing");
        assert!(matches!(err, CasError::NotFound(x) if x == d), "{err}");
    }

    pub async fn rejects_bad_data(store: &dyn BlobStore) {
        let (d, _) = blob("right");
        let results = store
            .put_batch(vec![
                (d, Bytes::from_static(b"wrong")),
                (d, Bytes::from_static(b"short")),
                (d, Bytes::from_static(b"right")),
            ])
            .await;
        assert!(matches!(results[0], Err(CasError::HashMismatch { .. })));
        assert!(matches!(results[1], Err(CasError::HashMismatch { .. })));
        assert!(results[2].is_ok());
        let (d2, _) = blob("other");
        let err = store
            .put(d2, Bytes::from_static(b"other!"))
            .await
            .expect_err("size");
        assert!(matches!(err, CasError::SizeMismatch { actual: 6, .. }));
        assert_eq!(store.find_missing(&[d2]).await.expect("find"), vec![d2]);
    }

    pub async fn streamed_write(store: &dyn BlobStore) {
        let data = Bytes::from(vec![7u8; 100_000]);
        let d = Digest::of(&data);
        let mut w = store.begin_write(d).await.expect("begin");
        w.write(data.slice(..40_000)).await.expect("write");
        w.write(data.slice(40_000..)).await.expect("write");
        assert_eq!(w.written(), 100_000);
        assert_eq!(store.find_missing(&[d]).await.expect("find"), vec![d]);
        w.commit().await.expect("commit");
        assert_eq!(store.get(&d).await.expect("get"), data);

        // Wrong bytes: nothing becomes visible.
        let d2 = Digest::of(b"abc");
        let mut w = store.begin_write(d2).await.expect("begin");
        w.write(Bytes::from_static(b"abd")).await.expect("write");
        assert!(w.commit().await.is_err());
        assert_eq!(store.find_missing(&[d2]).await.expect("find"), vec![d2]);

        // Too many bytes are refused as they arrive.
        let mut w = store.begin_write(d2).await.expect("begin");
        assert!(w.write(Bytes::from_static(b"abcd")).await.is_err());

        // Too few bytes fail at commit; an abandoned writer leaves nothing.
        let mut w = store.begin_write(d2).await.expect("begin");
        w.write(Bytes::from_static(b"ab")).await.expect("write");
        assert!(matches!(
            w.commit().await,
            Err(CasError::SizeMismatch { .. })
        ));
        let w = store.begin_write(d2).await.expect("begin");
        drop(w);
        assert_eq!(store.find_missing(&[d2]).await.expect("find"), vec![d2]);
    }

    pub async fn concurrent_writers_of_one_blob(store: std::sync::Arc<dyn BlobStore>) {
        let data = Bytes::from(vec![42u8; 1 << 20]);
        let d = Digest::of(&data);
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                let data = data.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        store.put(d, data).await
                    } else {
                        let mut w = store.begin_write(d).await?;
                        for chunk in data.chunks(100_000) {
                            w.write(data.slice_ref(chunk)).await?;
                        }
                        w.commit().await
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("every writer succeeds");
        }
        assert_eq!(store.get(&d).await.expect("get"), data);
    }
}
