//! Where blobs come from: the [`BlobSource`] trait and its implementation
//! over any REAPI CAS, [`CasBlobSource`].
//!
//! The vfs never trusts a source: the [`BlobCache`](crate::BlobCache) and the
//! input tree check every byte against its digest. Tests wrap a source to
//! count fetches or inject failures.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use lazybarn_cas::{CasClient, Digest};

/// A supplier of blobs, usually a CAS.
#[async_trait]
pub trait BlobSource: Send + Sync + 'static {
    /// Writes the blob's bytes into a new file at `path`. On error the file
    /// may be left behind; the caller removes it.
    async fn fetch_to_file(&self, digest: Digest, path: &Path) -> Result<(), tonic::Status>;

    /// The whole blob in memory; used for Directory messages, which are small.
    async fn fetch_blob(&self, digest: Digest) -> Result<Bytes, tonic::Status>;
}

/// A [`BlobSource`] reading from a CAS through [`CasClient`].
#[derive(Clone)]
pub struct CasBlobSource {
    client: CasClient,
}

impl CasBlobSource {
    /// A source over `client`.
    pub fn new(client: CasClient) -> Self {
        CasBlobSource { client }
    }
}

#[async_trait]
impl BlobSource for CasBlobSource {
    async fn fetch_to_file(&self, digest: Digest, path: &Path) -> Result<(), tonic::Status> {
        self.client.download_to_file(digest, path).await
    }

    async fn fetch_blob(&self, digest: Digest) -> Result<Bytes, tonic::Status> {
        self.client.download(digest).await
    }
}
