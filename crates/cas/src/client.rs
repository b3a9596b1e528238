//! `CasClient`: how the worker and the vfs talk to any REAPI CAS, Lazybarn's
//! own or another (bb-storage, bazel-remote, NativeLink).
//!
//! Small blobs travel in batches sized to the server's advertised
//! `max_batch_total_size_bytes`; larger ones through ByteStream. Every
//! download is checked against its digest. Calls that fail with UNAVAILABLE
//! are retried with exponential backoff; every other error is returned at
//! once with context naming the call and the blob.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lazybarn_proto::bytestream::{ReadRequest, WriteRequest, byte_stream_client::ByteStreamClient};
use lazybarn_proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, FindMissingBlobsRequest,
    GetCapabilitiesRequest, GetTreeRequest, batch_update_blobs_response,
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::digest::{Digest, DigestHasher, verify};
use crate::service::{DEFAULT_MAX_BATCH_BYTES, message_size_limit};

/// Digests per FindMissingBlobs call: about 1 MB of request.
const FIND_MISSING_CHUNK: usize = 16_384;
/// Bytes of framing assumed per blob when packing a batch.
const PER_BLOB_OVERHEAD: usize = 256;
/// Bytes per ByteStream WriteRequest.
const WRITE_CHUNK: usize = 1 << 20;
/// Batches or streams in flight at once during an upload or download.
const PARALLEL_CALLS: usize = 4;

/// A client of one CAS instance.
#[derive(Clone)]
pub struct CasClient {
    instance: String,
    channel: Channel,
    cas: ContentAddressableStorageClient<Channel>,
    bytestream: ByteStreamClient<Channel>,
    max_batch_bytes: usize,
    retry: ExponentialBuilder,
}

impl CasClient {
    /// Connects to `endpoint` (`grpc://host:port` or `http://host:port`) and
    /// asks it for its batch limit. Retries while the server is unavailable.
    pub async fn connect(endpoint: &str, instance: &str) -> Result<Self, Status> {
        let url = endpoint.replacen("grpc://", "http://", 1);
        let channel = Endpoint::from_shared(url)
            .map_err(|e| Status::invalid_argument(format!("bad CAS endpoint {endpoint:?}: {e}")))?
            .tcp_nodelay(true)
            .max_frame_size(crate::server::MAX_FRAME)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(64 << 20)
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        let mut client = CasClient::from_channel(channel, instance, DEFAULT_MAX_BATCH_BYTES);
        let advertised = client.fetch_max_batch().await.map_err(|e| {
            Status::new(
                e.code(),
                format!("asking {endpoint} for its capabilities: {}", e.message()),
            )
        })?;
        if advertised > 0 {
            client.max_batch_bytes = advertised;
        }
        Ok(client)
    }

    /// A client over an existing channel, assuming the given batch limit.
    pub fn from_channel(channel: Channel, instance: &str, max_batch_bytes: usize) -> Self {
        let limit = message_size_limit(max_batch_bytes);
        CasClient {
            instance: instance.to_string(),
            channel: channel.clone(),
            cas: ContentAddressableStorageClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            bytestream: ByteStreamClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            max_batch_bytes,
            retry: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(8)
                .with_jitter(),
        }
    }

    /// The same connection, addressing another instance name.
    pub fn for_instance(&self, instance: &str) -> Self {
        let mut client = self.clone();
        client.instance = instance.to_string();
        client
    }

    /// Replaces the retry policy (tests use a short one).
    pub fn with_retry(mut self, retry: ExponentialBuilder) -> Self {
        self.retry = retry;
        self
    }

    /// The batch limit in use.
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// The retry policy for UNAVAILABLE, for other clients of the same
    /// server to share.
    pub fn retry_policy(&self) -> ExponentialBuilder {
        self.retry
    }

    /// The instance name every call carries.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The connection, for other REAPI clients of the same server (the
    /// Action Cache).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    async fn fetch_max_batch(&self) -> Result<usize, Status> {
        let call = || async {
            let mut caps = CapabilitiesClient::new(self.channel.clone());
            caps.get_capabilities(GetCapabilitiesRequest {
                instance_name: self.instance.clone(),
            })
            .await
        };
        let caps = call
            .retry(self.retry)
            .when(is_transient)
            .await?
            .into_inner();
        Ok(caps
            .cache_capabilities
            .map_or(0, |c| c.max_batch_total_size_bytes.max(0) as usize))
    }

    /// The digests among `digests` that the CAS lacks.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Status> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_CHUNK) {
            let request = FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: chunk.iter().map(|d| d.to_proto()).collect(),
                digest_function: 0,
            };
            let call = || {
                let mut cas = self.cas.clone();
                let request = request.clone();
                async move { cas.find_missing_blobs(request).await }
            };
            let response = call
                .retry(self.retry)
                .when(is_transient)
                .await
                .map_err(|e| context(e, format!("FindMissingBlobs of {} digests", chunk.len())))?;
            for d in response.into_inner().missing_blob_digests {
                missing.push(Digest::from_proto(Some(&d)).map_err(|e| {
                    Status::internal(format!("FindMissingBlobs answered a bad digest: {e}"))
                })?);
            }
        }
        Ok(missing)
    }

    /// Uploads the blobs the CAS lacks; returns how many were uploaded.
    pub async fn upload_missing(&self, blobs: Vec<(Digest, Bytes)>) -> Result<usize, Status> {
        let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let missing: std::collections::HashSet<Digest> =
            self.find_missing(&digests).await?.into_iter().collect();
        let wanted: Vec<_> = blobs
            .into_iter()
            .filter(|(d, _)| missing.contains(d))
            .collect();
        let count = wanted.len();
        self.upload(wanted).await?;
        Ok(count)
    }

    /// Uploads blobs: small ones packed into batches, large ones streamed.
    pub async fn upload(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), Status> {
        let (large, small): (Vec<_>, Vec<_>) = blobs
            .into_iter()
            .partition(|(d, _)| d.size() as usize + PER_BLOB_OVERHEAD > self.max_batch_bytes);
        let batches = self.pack(small);
        futures::stream::iter(batches)
            .map(|batch| self.batch_update(batch))
            .buffer_unordered(PARALLEL_CALLS)
            .try_collect::<()>()
            .await?;
        futures::stream::iter(large)
            .map(|(digest, data)| self.write_bytes(digest, data))
            .buffer_unordered(PARALLEL_CALLS)
            .try_collect::<()>()
            .await
    }

    fn pack(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Vec<(Digest, Bytes)>> {
        let mut batches = vec![];
        let mut current = vec![];
        let mut bytes = 0;
        for (digest, data) in blobs {
            let cost = digest.size() as usize + PER_BLOB_OVERHEAD;
            if bytes + cost > self.max_batch_bytes && !current.is_empty() {
                batches.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += cost;
            current.push((digest, data));
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }

    async fn batch_update(&self, batch: Vec<(Digest, Bytes)>) -> Result<(), Status> {
        first_failure(self.batch_update_statuses(batch).await?)
    }

    /// One BatchUpdateBlobs call; the per-blob statuses as the server gave them.
    async fn batch_update_statuses(
        &self,
        batch: Vec<(Digest, Bytes)>,
    ) -> Result<Vec<batch_update_blobs_response::Response>, Status> {
        let request = BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests: batch
                .iter()
                .map(
                    |(d, data)| lazybarn_proto::reapi::batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data: data.clone(),
                        compressor: 0,
                    },
                )
                .collect(),
            digest_function: 0,
        };
        let call = || {
            let mut cas = self.cas.clone();
            let request = request.clone();
            async move { cas.batch_update_blobs(request).await }
        };
        let response = call
            .retry(self.retry)
            .when(is_transient)
            .await
            .map_err(|e| context(e, format!("BatchUpdateBlobs of {} blobs", batch.len())))?;
        Ok(response.into_inner().responses)
    }

    /// Uploads blobs like [`Self::upload`], but answers for each blob, in
    /// order: one bad blob in a batch does not fail the others.
    pub async fn upload_each(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), Status>> {
        let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let (large, small): (Vec<_>, Vec<_>) = blobs
            .into_iter()
            .partition(|(d, _)| d.size() as usize + PER_BLOB_OVERHEAD > self.max_batch_bytes);
        let batches = self.pack(small);
        let batched = futures::stream::iter(batches)
            .map(|batch| async move {
                let sent: Vec<Digest> = batch.iter().map(|(d, _)| *d).collect();
                match self.batch_update_statuses(batch).await {
                    Ok(responses) => per_blob_upload_results(&sent, responses),
                    Err(e) => sent.into_iter().map(|d| (d, Err(e.clone()))).collect(),
                }
            })
            .buffer_unordered(PARALLEL_CALLS)
            .collect::<Vec<_>>();
        let streamed = futures::stream::iter(large)
            .map(|(digest, data)| async move { (digest, self.write_bytes(digest, data).await) })
            .buffer_unordered(PARALLEL_CALLS)
            .collect::<Vec<_>>();
        let (batched, streamed) = futures::join!(batched, streamed);
        let by_digest: std::collections::HashMap<Digest, Result<(), Status>> =
            batched.into_iter().flatten().chain(streamed).collect();
        digests
            .iter()
            .map(|d| {
                by_digest.get(d).cloned().unwrap_or_else(|| {
                    Err(Status::internal(format!("no upload result for blob {d}")))
                })
            })
            .collect()
    }

    /// Uploads one blob given as consecutive pieces, in one batch call when
    /// it fits and through ByteStream otherwise, without copying the pieces.
    pub async fn upload_chunks(&self, digest: Digest, chunks: Vec<Bytes>) -> Result<(), Status> {
        if digest.size() as usize + PER_BLOB_OVERHEAD <= self.max_batch_bytes {
            let mut data = bytes::BytesMut::with_capacity(digest.size() as usize);
            for chunk in &chunks {
                data.extend_from_slice(chunk);
            }
            return self.batch_update(vec![(digest, data.freeze())]).await;
        }
        self.write_chunks(digest, chunks).await
    }

    /// Streams one blob held in memory through ByteStream Write.
    async fn write_bytes(&self, digest: Digest, data: Bytes) -> Result<(), Status> {
        let chunks: Vec<Bytes> = (0..data.len())
            .step_by(WRITE_CHUNK)
            .map(|at| data.slice(at..data.len().min(at + WRITE_CHUNK)))
            .collect();
        self.write_chunks(digest, chunks).await
    }

    async fn write_chunks(&self, digest: Digest, chunks: Vec<Bytes>) -> Result<(), Status> {
        let call = || {
            let mut bytestream = self.bytestream.clone();
            let requests = self.write_requests(digest, chunks.clone());
            async move { bytestream.write(futures::stream::iter(requests)).await }
        };
        let response = call
            .retry(self.retry)
            .when(is_transient)
            .await
            .map_err(|e| context(e, format!("ByteStream Write of blob {digest}")))?;
        let committed = response.into_inner().committed_size;
        if committed != digest.size() as i64 {
            return Err(Status::internal(format!(
                "ByteStream Write of blob {digest} committed {committed} bytes"
            )));
        }
        Ok(())
    }

    /// A fresh ByteStream resource name to upload `digest` under.
    fn upload_name(&self, digest: Digest) -> String {
        format!(
            "{}uploads/{}/blobs/{}/{}",
            instance_prefix(&self.instance),
            uuid::Uuid::new_v4(),
            digest.hash_hex(),
            digest.size()
        )
    }

    fn write_requests(&self, digest: Digest, chunks: Vec<Bytes>) -> Vec<WriteRequest> {
        let name = self.upload_name(digest);
        let mut offset = 0;
        let count = chunks.len().max(1);
        let mut chunks = chunks.into_iter();
        (0..count)
            .map(|i| {
                let data = chunks.next().unwrap_or_default();
                let request = WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: offset,
                    finish_write: i + 1 == count,
                    data,
                };
                offset += request.data.len() as i64;
                request
            })
            .collect()
    }

    /// Uploads a file's contents under `digest` (which the caller computed).
    /// A large file is streamed: one chunk is read while the previous one is
    /// on its way, so memory stays at a few chunks whatever the file's size.
    pub async fn upload_file(&self, digest: Digest, path: &Path) -> Result<(), Status> {
        if digest.size() as usize + PER_BLOB_OVERHEAD <= self.max_batch_bytes {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))?;
            return self.batch_update(vec![(digest, Bytes::from(data))]).await;
        }
        let read_failure = Arc::new(Mutex::new(None));
        let call = || {
            let mut bytestream = self.bytestream.clone();
            let name = self.upload_name(digest);
            let read_failure = read_failure.clone();
            async move {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Status::internal(format!("opening {}: {e}", path.display())))?;
                let requests = file_write_requests(file, name, digest.size(), read_failure);
                bytestream.write(requests).await
            }
        };
        let response = call.retry(self.retry).when(is_transient).await;
        let failure = read_failure.lock().expect("read failure lock").take();
        if let Some(failure) = failure {
            return Err(Status::internal(format!(
                "reading {} for blob {digest}: {failure}",
                path.display()
            )));
        }
        let committed = response
            .map_err(|e| context(e, format!("ByteStream Write of blob {digest}")))?
            .into_inner()
            .committed_size;
        if committed != digest.size() as i64 {
            return Err(Status::internal(format!(
                "ByteStream Write of blob {digest} committed {committed} bytes"
            )));
        }
        Ok(())
    }

    /// Downloads a whole blob and checks it against its digest.
    pub async fn download(&self, digest: Digest) -> Result<Bytes, Status> {
        if digest.is_empty() {
            return Ok(Bytes::new());
        }
        let data = self.download_range(digest, 0, None).await?;
        verify(&digest, &data).map_err(|e| Status::data_loss(format!("downloaded {e}")))?;
        Ok(data)
    }

    /// Downloads `length` bytes (all when `None`) from `offset`; a partial
    /// read cannot be verified against the digest.
    pub async fn download_range(
        &self,
        digest: Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Bytes, Status> {
        let request = ReadRequest {
            resource_name: self.read_name(&digest),
            read_offset: offset as i64,
            read_limit: length.unwrap_or(0) as i64,
        };
        let call = || {
            let mut bytestream = self.bytestream.clone();
            let request = request.clone();
            async move {
                let mut stream = bytestream.read(request).await?.into_inner();
                let mut data = bytes::BytesMut::new();
                while let Some(chunk) = stream.message().await? {
                    data.extend_from_slice(&chunk.data);
                }
                Ok::<_, Status>(data.freeze())
            }
        };
        call.retry(self.retry)
            .when(is_transient)
            .await
            .map_err(|e| context(e, format!("ByteStream Read of blob {digest}")))
    }

    /// Streams a blob into a new file at `path`, verifying it; on any error
    /// the file is removed.
    pub async fn download_to_file(&self, digest: Digest, path: &Path) -> Result<(), Status> {
        let result = self.try_download_to_file(digest, path).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        result
    }

    async fn try_download_to_file(&self, digest: Digest, path: &Path) -> Result<(), Status> {
        let io = |e: std::io::Error| Status::internal(format!("writing {}: {e}", path.display()));
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut hasher = DigestHasher::new();
        if !digest.is_empty() {
            let mut bytestream = self.bytestream.clone();
            let request = ReadRequest {
                resource_name: self.read_name(&digest),
                read_offset: 0,
                read_limit: 0,
            };
            let mut stream = bytestream
                .read(request)
                .await
                .map_err(|e| context(e, format!("ByteStream Read of blob {digest}")))?
                .into_inner();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| context(e, format!("ByteStream Read of blob {digest}")))?
            {
                hasher.update(&chunk.data);
                file.write_all(&chunk.data).await.map_err(io)?;
            }
        }
        file.flush().await.map_err(io)?;
        let actual = hasher.finish();
        if actual != digest {
            return Err(Status::data_loss(format!(
                "blob {digest} downloaded as {actual}: the CAS served corrupt data"
            )));
        }
        Ok(())
    }

    /// Downloads many small blobs in batches; each blob is verified.
    pub async fn download_batch(&self, digests: &[Digest]) -> Result<Vec<(Digest, Bytes)>, Status> {
        let batches = self.pack(digests.iter().map(|d| (*d, Bytes::new())).collect());
        let results: Vec<Vec<(Digest, Bytes)>> = futures::stream::iter(batches)
            .map(|batch| self.batch_read(batch.into_iter().map(|(d, _)| d).collect()))
            .buffer_unordered(PARALLEL_CALLS)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn batch_read(&self, digests: Vec<Digest>) -> Result<Vec<(Digest, Bytes)>, Status> {
        if digests.len() == 1
            && digests[0].size() as usize + PER_BLOB_OVERHEAD > self.max_batch_bytes
        {
            return Ok(vec![(digests[0], self.download(digests[0]).await?)]);
        }
        self.batch_read_each(&digests)
            .await?
            .into_iter()
            .map(|(digest, data)| Ok((digest, data?)))
            .collect()
    }

    /// One BatchReadBlobs call; each blob verified, each failure its own.
    async fn batch_read_each(
        &self,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, Result<Bytes, Status>)>, Status> {
        let request = BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: digests.iter().map(|d| d.to_proto()).collect(),
            acceptable_compressors: vec![],
            digest_function: 0,
        };
        let call = || {
            let mut cas = self.cas.clone();
            let request = request.clone();
            async move { cas.batch_read_blobs(request).await }
        };
        let response = call
            .retry(self.retry)
            .when(is_transient)
            .await
            .map_err(|e| context(e, format!("BatchReadBlobs of {} blobs", digests.len())))?;
        response
            .into_inner()
            .responses
            .into_iter()
            .map(|r| {
                let digest = Digest::from_proto(r.digest.as_ref()).map_err(|e| {
                    Status::internal(format!("BatchReadBlobs answered a bad digest: {e}"))
                })?;
                let status = r.status.unwrap_or_default();
                if status.code != Code::Ok as i32 {
                    let error = Status::new(
                        Code::from(status.code),
                        format!("reading blob {digest}: {}", status.message),
                    );
                    return Ok((digest, Err(error)));
                }
                let checked = verify(&digest, &r.data)
                    .map(|()| r.data)
                    .map_err(|e| Status::data_loss(format!("downloaded {e}")));
                Ok((digest, checked))
            })
            .collect()
    }

    /// Downloads whole blobs, small ones in batches and large ones through
    /// ByteStream, and answers for each digest in order, so that one missing
    /// blob does not fail the others.
    pub async fn download_each(&self, digests: &[Digest]) -> Vec<Result<Bytes, Status>> {
        let (large, small): (Vec<Digest>, Vec<Digest>) = digests
            .iter()
            .filter(|d| !d.is_empty())
            .partition(|d| d.size() as usize + PER_BLOB_OVERHEAD > self.max_batch_bytes);
        let batches = self.pack(small.into_iter().map(|d| (d, Bytes::new())).collect());
        let batched = futures::stream::iter(batches)
            .map(|batch| async move {
                let wanted: Vec<Digest> = batch.into_iter().map(|(d, _)| d).collect();
                match self.batch_read_each(&wanted).await {
                    Ok(found) => found,
                    Err(e) => wanted.into_iter().map(|d| (d, Err(e.clone()))).collect(),
                }
            })
            .buffer_unordered(PARALLEL_CALLS)
            .collect::<Vec<_>>();
        let streamed = futures::stream::iter(large)
            .map(|digest| async move { (digest, self.download(digest).await) })
            .buffer_unordered(PARALLEL_CALLS)
            .collect::<Vec<_>>();
        let (batched, streamed) = futures::join!(batched, streamed);
        let by_digest: std::collections::HashMap<Digest, Result<Bytes, Status>> =
            batched.into_iter().flatten().chain(streamed).collect();
        digests
            .iter()
            .map(|d| {
                if d.is_empty() {
                    return Ok(Bytes::new());
                }
                by_digest.get(d).cloned().unwrap_or_else(|| {
                    Err(Status::internal(format!(
                        "BatchReadBlobs did not answer for blob {d}"
                    )))
                })
            })
            .collect()
    }

    /// Every Directory below `root`, following page tokens.
    pub async fn get_tree(&self, root: Digest) -> Result<Vec<Directory>, Status> {
        let mut directories = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = GetTreeRequest {
                instance_name: self.instance.clone(),
                root_digest: Some(root.to_proto()),
                page_size: 0,
                page_token: page_token.clone(),
                digest_function: 0,
            };
            let call = || {
                let mut cas = self.cas.clone();
                let request = request.clone();
                async move {
                    let mut stream = cas.get_tree(request).await?.into_inner();
                    let mut pages = Vec::new();
                    while let Some(page) = stream.message().await? {
                        pages.push(page);
                    }
                    Ok::<_, Status>(pages)
                }
            };
            let pages = call
                .retry(self.retry)
                .when(is_transient)
                .await
                .map_err(|e| context(e, format!("GetTree of {root}")))?;
            page_token.clear();
            for page in pages {
                directories.extend(page.directories);
                if !page.next_page_token.is_empty() {
                    page_token = page.next_page_token;
                }
            }
            if page_token.is_empty() {
                return Ok(directories);
            }
        }
    }

    fn read_name(&self, digest: &Digest) -> String {
        format!(
            "{}blobs/{}/{}",
            instance_prefix(&self.instance),
            digest.hash_hex(),
            digest.size()
        )
    }
}

/// The WriteRequests of a `size`-byte file, read a chunk at a time as the
/// stream is polled. A read error or a file shorter than `size` ends the
/// stream before `finish_write`, so the server refuses the upload; the
/// error is left in `failure` for the caller's message.
fn file_write_requests(
    file: tokio::fs::File,
    name: String,
    size: u64,
    failure: Arc<Mutex<Option<std::io::Error>>>,
) -> impl futures::Stream<Item = WriteRequest> {
    futures::stream::unfold(Some((file, 0u64)), move |state| {
        let name = name.clone();
        let failure = failure.clone();
        async move {
            let (mut file, offset) = state?;
            let want = (size - offset).min(WRITE_CHUNK as u64);
            let mut data = vec![0u8; want as usize];
            if let Err(e) = file.read_exact(&mut data).await {
                *failure.lock().expect("read failure lock") = Some(e);
                return None;
            }
            let next = offset + want;
            let request = WriteRequest {
                resource_name: if offset == 0 { name } else { String::new() },
                write_offset: offset as i64,
                finish_write: next == size,
                data: Bytes::from(data),
            };
            Some((request, (next < size).then_some((file, next))))
        }
    })
}

fn instance_prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

fn is_transient(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

fn context(status: Status, what: String) -> Status {
    Status::new(status.code(), format!("{what}: {}", status.message()))
}

/// Each blob's upload result from one BatchUpdateBlobs answer; a blob the
/// server did not mention counts as failed.
fn per_blob_upload_results(
    sent: &[Digest],
    responses: Vec<batch_update_blobs_response::Response>,
) -> Vec<(Digest, Result<(), Status>)> {
    let mut answered = std::collections::HashMap::new();
    for r in responses {
        let Ok(digest) = Digest::from_proto(r.digest.as_ref()) else {
            continue;
        };
        let status = r.status.unwrap_or_default();
        let result = if status.code == Code::Ok as i32 {
            Ok(())
        } else {
            Err(Status::new(
                Code::from(status.code),
                format!("uploading blob {digest}: {}", status.message),
            ))
        };
        answered.insert(digest, result);
    }
    sent.iter()
        .map(|d| {
            let result = answered.get(d).cloned().unwrap_or_else(|| {
                Err(Status::internal(format!(
                    "BatchUpdateBlobs did not answer for blob {d}"
                )))
            });
            (*d, result)
        })
        .collect()
}

fn first_failure(responses: Vec<batch_update_blobs_response::Response>) -> Result<(), Status> {
    for r in responses {
        let status = r.status.unwrap_or_default();
        if status.code != Code::Ok as i32 {
            let digest = r
                .digest
                .map(|d| format!("{}/{}", d.hash, d.size_bytes))
                .unwrap_or_default();
            return Err(Status::new(
                Code::from(status.code),
                format!("uploading blob {digest}: {}", status.message),
            ));
        }
    }
    Ok(())
}
