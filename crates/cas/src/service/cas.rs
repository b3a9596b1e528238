//! The ContentAddressableStorage service over a [`BlobStore`].

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use lazybarn_proto::reapi::{
    self, BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, Directory, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetTreeRequest, GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest,
    SplitBlobResponse, batch_read_blobs_response, batch_update_blobs_response, compressor,
};
use lazybarn_proto::rpc;
use prost::Message;
use tonic::{Code, Request, Response, Status};

use super::check_digest_function;
use crate::digest::Digest;
use crate::error::CasError;
use crate::store::BlobStore;

/// Directories per GetTree page when the client names no page size.
const DEFAULT_TREE_PAGE: usize = 10_000;

/// Serves FindMissingBlobs, the batch calls and GetTree.
#[derive(Clone)]
pub struct CasService {
    store: Arc<dyn BlobStore>,
    max_batch_bytes: usize,
}

impl CasService {
    /// A service over `store` that refuses batches above `max_batch_bytes`.
    pub fn new(store: Arc<dyn BlobStore>, max_batch_bytes: usize) -> Self {
        CasService {
            store,
            max_batch_bytes,
        }
    }

    fn check_batch_size(&self, total: u64, what: &str) -> Result<(), Status> {
        if total > self.max_batch_bytes as u64 {
            return Err(Status::invalid_argument(format!(
                "{what} totals {total} bytes, above this server's max_batch_total_size_bytes of {}; \
                 use ByteStream for large blobs",
                self.max_batch_bytes
            )));
        }
        Ok(())
    }
}

/// The sum of sizes a client named, stopping at `u64::MAX` instead of
/// wrapping: made-up digests can name sizes up to 2^63 each, and a wrapped
/// sum would pass any limit.
fn saturating_total(sizes: impl Iterator<Item = u64>) -> u64 {
    sizes.fold(0, u64::saturating_add)
}

fn status_of(result: Result<(), CasError>) -> rpc::Status {
    match result {
        Ok(()) => rpc::Status::default(),
        Err(e) => rpc::Status {
            code: e.code() as i32,
            message: e.to_string(),
            details: vec![],
        },
    }
}

fn invalid_status(message: String) -> rpc::Status {
    rpc::Status {
        code: Code::InvalidArgument as i32,
        message,
        details: vec![],
    }
}

fn parse_digests(digests: &[reapi::Digest]) -> Result<Vec<Digest>, Status> {
    digests
        .iter()
        .map(|d| Digest::from_proto(Some(d)).map_err(Status::from))
        .collect()
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl reapi::content_addressable_storage_server::ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        check_digest_function(request.digest_function)?;
        let digests = parse_digests(&request.blob_digests)?;
        let missing = self.store.find_missing(&digests).await?;
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing.into_iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        check_digest_function(request.digest_function)?;
        let total = saturating_total(request.requests.iter().map(|r| r.data.len() as u64));
        self.check_batch_size(total, "BatchUpdateBlobs request")?;

        // Malformed entries get their own status; the rest go to the store
        // in one batch, so the store can make them durable together.
        let mut statuses: Vec<Option<rpc::Status>> = Vec::with_capacity(request.requests.len());
        let mut accepted = Vec::new();
        let mut wire_digests = Vec::with_capacity(request.requests.len());
        for r in request.requests {
            wire_digests.push(r.digest.clone().unwrap_or_default());
            if r.compressor != compressor::Value::Identity as i32 {
                statuses.push(Some(invalid_status(format!(
                    "compressor {} is not supported; send blobs uncompressed",
                    r.compressor
                ))));
                continue;
            }
            match Digest::from_proto(r.digest.as_ref()) {
                Ok(d) => {
                    statuses.push(None);
                    accepted.push((d, r.data));
                }
                Err(e) => statuses.push(Some(status_of(Err(e)))),
            }
        }
        let mut stored = self.store.put_batch(accepted).await.into_iter();
        let responses = statuses
            .into_iter()
            .zip(wire_digests)
            .map(|(status, digest)| batch_update_blobs_response::Response {
                digest: Some(digest),
                status: Some(status.unwrap_or_else(|| {
                    status_of(stored.next().expect("one result per accepted blob"))
                })),
            })
            .collect();
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let request = request.into_inner();
        check_digest_function(request.digest_function)?;
        let digests = parse_digests(&request.digests)?;
        let total = saturating_total(digests.iter().map(Digest::size));
        self.check_batch_size(total, "BatchReadBlobs request")?;
        let results = self.store.get_batch(&digests).await;
        let responses = digests
            .into_iter()
            .zip(results)
            .map(|(digest, result)| {
                let (data, status) = match result {
                    Ok(data) => (data, status_of(Ok(()))),
                    Err(e) => (Bytes::new(), status_of(Err(e))),
                };
                batch_read_blobs_response::Response {
                    digest: Some(digest.to_proto()),
                    data,
                    compressor: compressor::Value::Identity as i32,
                    status: Some(status),
                }
            })
            .collect();
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let request = request.into_inner();
        check_digest_function(request.digest_function)?;
        let root = Digest::from_proto(request.root_digest.as_ref())?;
        let start = match request.page_token.as_str() {
            "" => root,
            token => Digest::parse(token).map_err(|e| {
                Status::invalid_argument(format!("invalid page_token {token:?}: {e}"))
            })?,
        };
        if request.page_size < 0 {
            return Err(Status::invalid_argument(format!(
                "page_size {} is negative",
                request.page_size
            )));
        }
        let page_size = match request.page_size {
            0 => DEFAULT_TREE_PAGE,
            n => n as usize,
        };
        if !self.store.contains(&root).await? {
            return Err(Status::not_found(format!(
                "root directory {root} of GetTree not found"
            )));
        }
        let walk = TreeWalk {
            store: self.store.clone(),
            queue: VecDeque::from([root]),
            seen: HashSet::new(),
        };
        let page = walk.page(start, page_size, self.max_batch_bytes).await?;
        let responses = page.into_iter().map(Ok);
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }

    async fn split_blob(
        &self,
        _request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        Err(Status::unimplemented(
            "SplitBlob is not supported by this server (split_blob_support is false)",
        ))
    }

    async fn splice_blob(
        &self,
        _request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(Status::unimplemented(
            "SpliceBlob is not supported by this server (splice_blob_support is false)",
        ))
    }
}

/// A breadth-first walk of a directory tree, each directory once.
///
/// Page tokens are the digest of the first directory of the next page; the
/// walk order is deterministic, so a later call re-walks to that digest.
struct TreeWalk {
    store: Arc<dyn BlobStore>,
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
}

impl TreeWalk {
    /// The next unseen directory digest, and its Directory if it is stored.
    /// A directory missing from the CAS is left out, as REAPI allows.
    async fn next(&mut self) -> Result<Option<(Digest, Option<Directory>)>, Status> {
        while let Some(digest) = self.queue.pop_front() {
            if !self.seen.insert(digest) {
                continue;
            }
            let data = match self.store.get(&digest).await {
                Ok(data) => data,
                Err(CasError::NotFound(_)) => return Ok(Some((digest, None))),
                Err(e) => return Err(e.into()),
            };
            let directory = Directory::decode(data).map_err(|e| {
                Status::invalid_argument(format!("blob {digest} is not a Directory: {e}"))
            })?;
            for child in &directory.directories {
                let child = Digest::from_proto(child.digest.as_ref()).map_err(|e| {
                    Status::invalid_argument(format!(
                        "directory {digest} has a bad child {:?}: {e}",
                        child.name
                    ))
                })?;
                self.queue.push_back(child);
            }
            return Ok(Some((digest, Some(directory))));
        }
        Ok(None)
    }

    /// Up to `page_size` directories starting at `start`, split into
    /// responses of at most about `max_bytes` each.
    async fn page(
        mut self,
        start: Digest,
        page_size: usize,
        max_bytes: usize,
    ) -> Result<Vec<GetTreeResponse>, Status> {
        let mut started = false;
        let mut responses = vec![GetTreeResponse::default()];
        let mut count = 0;
        let mut bytes = 0;
        while let Some((digest, directory)) = self.next().await? {
            started |= digest == start;
            if !started {
                continue;
            }
            if count == page_size {
                responses
                    .last_mut()
                    .expect("at least one response")
                    .next_page_token = digest.to_string();
                break;
            }
            let Some(directory) = directory else {
                continue;
            };
            let len = directory.encoded_len();
            if bytes + len > max_bytes && bytes > 0 {
                responses.push(GetTreeResponse::default());
                bytes = 0;
            }
            bytes += len;
            count += 1;
            responses
                .last_mut()
                .expect("at least one response")
                .directories
                .push(directory);
        }
        if !started {
            return Err(Status::invalid_argument(format!(
                "page_token {start} is not a directory of this tree"
            )));
        }
        Ok(responses)
    }
}
