//! The ByteStream service: streamed reads and resumable writes of blobs.
//!
//! A write belongs to an upload session named by its resource name (which
//! holds the client's uuid). When a Write stream ends without
//! `finish_write`, the session and the bytes committed so far are kept, so
//! the client can ask QueryWriteStatus and resume at `committed_size`.
//! Sessions idle for longer than [`UPLOAD_IDLE_TIMEOUT`] are discarded.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use lazybarn_proto::bytestream::{
    self, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse,
    WriteRequest, WriteResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::digest::Digest;
use crate::resource::ResourceName;
use crate::store::{BlobStore, BlobWriter};

/// How long an interrupted upload waits to be resumed.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes per ReadResponse: large enough to keep per-message costs low,
/// well under the 4 MiB a default gRPC client accepts.
const READ_CHUNK: u64 = 1 << 20;

/// Serves Read, Write and QueryWriteStatus over a [`BlobStore`].
#[derive(Clone)]
pub struct ByteStreamService {
    store: Arc<dyn BlobStore>,
    uploads: Arc<Mutex<UploadTable>>,
}

/// Interrupted and in-progress uploads by resource name.
#[derive(Default)]
struct UploadTable {
    sessions: HashMap<String, Arc<tokio::sync::Mutex<Upload>>>,
    last_sweep: Option<Instant>,
}

/// One upload session.
struct Upload {
    digest: Digest,
    /// `None` once the blob is committed (or was already present).
    writer: Option<Box<dyn BlobWriter>>,
    complete: bool,
    last_used: Instant,
}

impl Upload {
    fn committed(&self) -> u64 {
        match &self.writer {
            Some(w) => w.written(),
            None if self.complete => self.digest.size(),
            None => 0,
        }
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

impl ByteStreamService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        ByteStreamService {
            store,
            uploads: Arc::default(),
        }
    }

    /// The session for `name`, created if new; stale sessions are dropped.
    fn session(&self, name: &str, digest: Digest) -> Arc<tokio::sync::Mutex<Upload>> {
        let mut uploads = self.uploads.lock().expect("upload table lock poisoned");
        if uploads
            .last_sweep
            .is_none_or(|t| t.elapsed() > UPLOAD_IDLE_TIMEOUT / 10)
        {
            uploads.sessions.retain(|_, u| {
                u.try_lock()
                    .map_or(true, |u| u.last_used.elapsed() < UPLOAD_IDLE_TIMEOUT)
            });
            uploads.last_sweep = Some(Instant::now());
        }
        uploads
            .sessions
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Upload {
                    digest,
                    writer: None,
                    complete: false,
                    last_used: Instant::now(),
                }))
            })
            .clone()
    }

    fn forget(&self, name: &str) {
        let mut uploads = self.uploads.lock().expect("upload table lock poisoned");
        uploads.sessions.remove(name);
    }

    /// Runs one Write stream against its session.
    async fn write(&self, mut stream: Streaming<WriteRequest>) -> Result<WriteResponse, Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("Write stream carried no request"))?;
        let name = first.resource_name.clone();
        let resource = ResourceName::parse_write(&name)?;
        let digest = resource.digest;
        let session = self.session(&name, digest);
        let mut upload = session.try_lock().map_err(|_| {
            Status::aborted(format!("another Write to {name} is still in progress"))
        })?;
        upload.last_used = Instant::now();

        if self.store.contains(&digest).await? {
            // The blob is already stored: answer at once with its full size,
            // as REAPI allows, without reading the rest of the stream.
            drop(upload);
            self.forget(&name);
            return Ok(WriteResponse {
                committed_size: digest.size() as i64,
            });
        }
        let committed = upload.committed();
        if first.write_offset == 0 && committed > 0 {
            // The client restarts from scratch rather than resuming.
            upload.writer = None;
        } else if first.write_offset as u64 != committed || first.write_offset < 0 {
            return Err(Status::invalid_argument(format!(
                "Write to {name} starts at offset {}, but {committed} bytes are committed",
                first.write_offset
            )));
        }
        if upload.writer.is_none() {
            upload.writer = Some(self.store.begin_write(digest).await?);
        }

        let mut request = first;
        loop {
            let result = self.apply(&name, &mut upload, request).await;
            upload.last_used = Instant::now();
            match result {
                Err(e) => {
                    // A malformed request poisons the session: start over.
                    drop(upload);
                    self.forget(&name);
                    return Err(e);
                }
                Ok(true) => {
                    // QueryWriteStatus now finds the blob in the store.
                    drop(upload);
                    self.forget(&name);
                    return Ok(WriteResponse {
                        committed_size: digest.size() as i64,
                    });
                }
                Ok(false) => {}
            }
            request = match stream.message().await {
                Ok(Some(r)) => r,
                // The client closed its side without finishing: report what
                // is committed and keep it for a resumed Write.
                Ok(None) => {
                    return Ok(WriteResponse {
                        committed_size: upload.committed() as i64,
                    });
                }
                // The client went away: keep what arrived for a resumed Write.
                Err(e) => return Err(e),
            };
        }
    }

    /// Applies one WriteRequest; true once the blob is committed.
    async fn apply(
        &self,
        name: &str,
        upload: &mut Upload,
        request: WriteRequest,
    ) -> Result<bool, Status> {
        if !request.resource_name.is_empty() && request.resource_name != name {
            return Err(Status::invalid_argument(format!(
                "Write stream for {name} switched to {}",
                request.resource_name
            )));
        }
        let writer = upload
            .writer
            .as_mut()
            .expect("an unfinished upload has a writer");
        let committed = writer.written();
        if request.write_offset < 0 || request.write_offset as u64 != committed {
            return Err(Status::invalid_argument(format!(
                "Write to {name} sent offset {}, expected {committed}: offsets may not skip or rewind",
                request.write_offset
            )));
        }
        if !request.data.is_empty() {
            writer.write(request.data).await?;
        }
        if !request.finish_write {
            return Ok(false);
        }
        let writer = upload.writer.take().expect("checked above");
        writer.commit().await?;
        upload.complete = true;
        Ok(true)
    }
}

#[tonic::async_trait]
impl bytestream::byte_stream_server::ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let digest = ResourceName::parse_read(&request.resource_name)?.digest;
        if request.read_offset < 0 || request.read_offset as u64 > digest.size() {
            return Err(Status::out_of_range(format!(
                "read_offset {} is outside blob {digest}",
                request.read_offset
            )));
        }
        if request.read_limit < 0 {
            return Err(Status::invalid_argument(format!(
                "read_limit {} is negative",
                request.read_limit
            )));
        }
        let start = request.read_offset as u64;
        let end = match request.read_limit {
            0 => digest.size(),
            limit => digest.size().min(start + limit as u64),
        };
        // Fail before the stream starts when the blob is missing, so the
        // client sees NOT_FOUND as the call's status.
        let first_len = (end - start).min(READ_CHUNK);
        let first = self
            .store
            .get_range(&digest, start, Some(first_len))
            .await?;
        let store = self.store.clone();
        let rest = futures::stream::unfold(start + first_len, move |offset| {
            let store = store.clone();
            async move {
                if offset >= end {
                    return None;
                }
                let len = (end - offset).min(READ_CHUNK);
                let chunk = store.get_range(&digest, offset, Some(len)).await;
                Some((
                    chunk
                        .map(|data| ReadResponse { data })
                        .map_err(Status::from),
                    offset + len,
                ))
            }
        });
        let stream =
            futures::stream::once(async move { Ok(ReadResponse { data: first }) }).chain(rest);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.write(request.into_inner()).await.map(Response::new)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let name = request.into_inner().resource_name;
        let digest = ResourceName::parse_write(&name)?.digest;
        let session = {
            let uploads = self.uploads.lock().expect("upload table lock poisoned");
            uploads.sessions.get(&name).cloned()
        };
        if self.store.contains(&digest).await? {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: digest.size() as i64,
                complete: true,
            }));
        }
        let Some(session) = session else {
            return Err(Status::not_found(format!("no upload named {name}")));
        };
        let upload = session.lock().await;
        Ok(Response::new(QueryWriteStatusResponse {
            committed_size: upload.committed() as i64,
            complete: upload.complete,
        }))
    }
}
