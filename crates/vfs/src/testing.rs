//! Test helpers: an in-memory [`BlobSource`] that can corrupt blobs.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use lazybarn_cas::Digest;
use parking_lot::Mutex;

use crate::input_tree::InputOwner;
use crate::source::BlobSource;

/// Input nodes owned by root and open to every uid, as in most unit tests.
pub(crate) const OWNER: InputOwner = InputOwner {
    uid: 0,
    gid: 0,
    private_to: None,
};

/// Blobs in a map; those marked corrupt are served with a flipped byte.
#[derive(Default)]
pub(crate) struct MapSource {
    blobs: Mutex<HashMap<Digest, Bytes>>,
    corrupt: Mutex<HashSet<Digest>>,
}

impl MapSource {
    pub fn add(&self, data: Vec<u8>) -> Digest {
        let digest = Digest::of(&data);
        self.blobs.lock().insert(digest, Bytes::from(data));
        digest
    }

    pub fn corrupt(&self, digest: Digest) {
        self.corrupt.lock().insert(digest);
    }

    fn get(&self, digest: Digest) -> Result<Bytes, tonic::Status> {
        let data = self
            .blobs
            .lock()
            .get(&digest)
            .cloned()
            .ok_or_else(|| tonic::Status::not_found(format!("{digest}")))?;
        if self.corrupt.lock().contains(&digest) {
            let mut bad = data.to_vec();
            bad[0] ^= 0xff;
            return Ok(Bytes::from(bad));
        }
        Ok(data)
    }
}

#[async_trait]
impl BlobSource for MapSource {
    async fn fetch_to_file(&self, digest: Digest, path: &Path) -> Result<(), tonic::Status> {
        let data = self.get(digest)?;
        std::fs::write(path, &data).map_err(|e| tonic::Status::internal(e.to_string()))
    }

    async fn fetch_blob(&self, digest: Digest) -> Result<Bytes, tonic::Status> {
        self.get(digest)
    }
}
