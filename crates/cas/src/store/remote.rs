//! A blob store that is another REAPI CAS (bb-storage, bazel-remote,
//! NativeLink, or a `lazybarn storage`), reached through [`CasClient`].
//!
//! The store keeps the promises every [`BlobStore`] makes, whatever the
//! remote does: data is checked against its digest here before it is sent,
//! the empty blob is present without asking, and a NOT_FOUND about a blob
//! comes back as [`CasError::NotFound`], so the scheduler still reports
//! missing inputs as a MISSING precondition failure. Large blobs travel
//! through ByteStream and small ones in batches, as [`CasClient`] decides
//! from the remote's advertised batch limit; UNAVAILABLE is retried there.
//!
//! A streamed write ([`BlobStore::begin_write`]) is held in memory, as the
//! pieces that arrived, and uploaded on commit. Memory rather than a
//! temporary file, because the upload itself keeps the whole blob's pieces
//! in memory so that it can start over after UNAVAILABLE, so a file would
//! not lower the peak; because the pieces are kept as they came, nothing is
//! copied; and because a scheduler whose CAS is remote then needs no
//! writable disk. The cost is that each blob a client is uploading through
//! the scheduler occupies its size in the scheduler's memory until it is
//! committed; clients that upload very large blobs should be pointed at the
//! remote CAS directly.

use async_trait::async_trait;
use bytes::Bytes;
use tonic::{Code, Status};

use super::{BlobStore, BlobWriter, check_write_fits, clamp_range};
use crate::client::CasClient;
use crate::digest::{Digest, DigestHasher, check_hashed, verify};
use crate::error::{CasError, Result};

/// The blobs of a remote REAPI CAS instance.
#[derive(Clone)]
pub struct RemoteStore {
    client: CasClient,
}

impl RemoteStore {
    /// Connects to the CAS at `endpoint` (`grpc://host:port`) and its
    /// instance `instance`, retrying while it is unavailable.
    pub async fn connect(endpoint: &str, instance: &str) -> Result<Self> {
        let client = CasClient::connect(endpoint, instance)
            .await
            .map_err(|e| CasError::from_remote(&e, None))?;
        Ok(Self::new(client))
    }

    /// A store over an existing client.
    pub fn new(client: CasClient) -> Self {
        RemoteStore { client }
    }

    /// The client every call goes through.
    pub fn client(&self) -> &CasClient {
        &self.client
    }

    async fn read_nothing(&self, digest: &Digest) -> Result<Bytes> {
        // ByteStream takes a read limit of 0 to mean "to the end", so a read
        // of no bytes asks only whether the blob is there.
        if self.contains(digest).await? {
            Ok(Bytes::new())
        } else {
            Err(CasError::NotFound(*digest))
        }
    }
}

#[async_trait]
impl BlobStore for RemoteStore {
    async fn get_range(&self, digest: &Digest, offset: u64, length: Option<u64>) -> Result<Bytes> {
        let (start, len) = clamp_range(digest, offset, length)?;
        if digest.is_empty() {
            return Ok(Bytes::new());
        }
        let remote_error = |e: Status| CasError::from_remote(&e, Some(*digest));
        if start == 0 && len == digest.size() {
            // The whole blob: the client verifies it against its digest.
            return self.client.download(*digest).await.map_err(remote_error);
        }
        if len == 0 {
            return self.read_nothing(digest).await;
        }
        let data = self
            .client
            .download_range(*digest, start, Some(len))
            .await
            .map_err(remote_error)?;
        if data.len() as u64 != len {
            return Err(CasError::Remote {
                code: Code::DataLoss,
                message: format!(
                    "reading {len} bytes at offset {start} of blob {digest}: the remote CAS sent {}",
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    async fn put_batch(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(blobs.len());
        let mut to_send = Vec::new();
        let mut sent_at = Vec::new();
        for (digest, data) in blobs {
            let checked = verify(&digest, &data);
            if checked.is_ok() && !digest.is_empty() {
                sent_at.push(results.len());
                to_send.push((digest, data));
            }
            results.push(checked);
        }
        let digests: Vec<Digest> = to_send.iter().map(|(d, _)| *d).collect();
        let uploaded = self.client.upload_each(to_send).await;
        for ((at, digest), result) in sent_at.into_iter().zip(digests).zip(uploaded) {
            results[at] = result.map_err(|e| CasError::from_remote(&e, Some(digest)));
        }
        results
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let asked: Vec<Digest> = digests.iter().filter(|d| !d.is_empty()).copied().collect();
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let missing = self
            .client
            .find_missing(&asked)
            .await
            .map_err(|e| CasError::from_remote(&e, None))?;
        // Answer in request order, whatever order the remote used.
        let missing: std::collections::HashSet<Digest> = missing.into_iter().collect();
        Ok(asked.into_iter().filter(|d| missing.contains(d)).collect())
    }

    async fn begin_write(&self, digest: Digest) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(RemoteWriter {
            client: self.client.clone(),
            digest,
            pieces: Vec::new(),
            hasher: DigestHasher::new(),
        }))
    }

    async fn get_batch(&self, digests: &[Digest]) -> Vec<Result<Bytes>> {
        self.client
            .download_each(digests)
            .await
            .into_iter()
            .zip(digests)
            .map(|(result, digest)| result.map_err(|e| CasError::from_remote(&e, Some(*digest))))
            .collect()
    }
}

/// A streamed write held in memory until commit (see the module doc).
struct RemoteWriter {
    client: CasClient,
    digest: Digest,
    pieces: Vec<Bytes>,
    hasher: DigestHasher,
}

#[async_trait]
impl BlobWriter for RemoteWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        check_write_fits(&self.digest, self.hasher.size(), data.len())?;
        self.hasher.update(&data);
        self.pieces.push(data);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.hasher.size()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let RemoteWriter {
            client,
            digest,
            pieces,
            hasher,
        } = *self;
        let actual = hasher.finish();
        check_hashed(&digest, &actual)?;
        if digest.is_empty() {
            return Ok(());
        }
        client
            .upload_chunks(digest, pieces)
            .await
            .map_err(|e| CasError::from_remote(&e, Some(digest)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::server::{Loopback, Storage};
    use crate::service::DEFAULT_MAX_BATCH_BYTES;
    use crate::store::conformance;

    /// A Lazybarn storage in memory on a loopback port, stopped when dropped.
    async fn loopback_storage() -> Loopback {
        let storage = Storage::in_memory(1 << 30, DEFAULT_MAX_BATCH_BYTES);
        Loopback::serve(storage.routes())
            .await
            .expect("serve on loopback")
    }

    async fn remote_store() -> (RemoteStore, Loopback) {
        let server = loopback_storage().await;
        let store = RemoteStore::connect(&server.url(), "")
            .await
            .expect("connect");
        (store, server)
    }

    #[tokio::test]
    async fn conforms() {
        let (store, _stop) = remote_store().await;
        conformance::round_trip(&store).await;
        conformance::empty_blob_always_present(&store).await;
        conformance::missing_blob_is_not_found(&store).await;
        conformance::rejects_bad_data(&store).await;
        conformance::streamed_write(&store).await;
        let (store, _stop) = remote_store().await;
        conformance::concurrent_writers_of_one_blob(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn blobs_above_the_batch_limit_round_trip() {
        let (store, _stop) = remote_store().await;
        assert_eq!(store.client().max_batch_bytes(), DEFAULT_MAX_BATCH_BYTES);
        let put: Bytes = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
        let streamed: Bytes = (0..5u32 << 20).map(|i| (i % 241) as u8).collect();
        let (put_digest, streamed_digest) = (Digest::of(&put), Digest::of(&streamed));

        store.put(put_digest, put.clone()).await.expect("put");
        let mut writer = store.begin_write(streamed_digest).await.expect("begin");
        for piece in streamed.chunks(700_000) {
            writer
                .write(streamed.slice_ref(piece))
                .await
                .expect("write");
        }
        writer.commit().await.expect("commit");

        assert_eq!(store.get(&put_digest).await.expect("get"), put);
        let range = store
            .get_range(&streamed_digest, 4 << 20, Some(2 << 20))
            .await
            .expect("range");
        assert_eq!(range, streamed.slice(4 << 20..));
        let missing = Digest::of(b"never stored");
        let batch = store
            .get_batch(&[streamed_digest, missing, put_digest])
            .await;
        assert_eq!(batch[0].as_ref().expect("streamed blob"), &streamed);
        assert!(matches!(batch[1], Err(CasError::NotFound(d)) if d == missing));
        assert_eq!(batch[2].as_ref().expect("put blob"), &put);
    }

    #[tokio::test]
    async fn one_bad_blob_does_not_fail_its_batch() {
        let (store, _stop) = remote_store().await;
        let good = Bytes::from_static(b"good");
        let good_digest = Digest::of(&good);
        let results = store
            .put_batch(vec![
                (good_digest, Bytes::from_static(b"evil")),
                (good_digest, good),
                (Digest::EMPTY, Bytes::new()),
            ])
            .await;
        assert!(matches!(results[0], Err(CasError::HashMismatch { .. })));
        assert!(results[1].is_ok());
        assert!(results[2].is_ok());
        assert!(store.contains(&good_digest).await.expect("find"));
    }

    #[tokio::test]
    async fn an_unreachable_remote_is_not_a_missing_blob() {
        let (store, stop) = remote_store().await;
        drop(stop);
        // Give the server a moment to close its listener.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let store = RemoteStore::new(
            store
                .client()
                .clone()
                .with_retry(backon::ExponentialBuilder::default().with_max_times(1)),
        );
        let err = store
            .get(&Digest::of(b"anything"))
            .await
            .expect_err("no server");
        assert!(!matches!(err, CasError::NotFound(_)), "{err}");
    }
}
