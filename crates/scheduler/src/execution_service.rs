//! The REAPI Execution service: Execute and WaitExecution, each a stream of
//! the operation's states.

use lazybarn_proto::reapi::execution_server::Execution;
use lazybarn_proto::reapi::{ExecuteRequest, RequestMetadata, WaitExecutionRequest};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::scheduler::Scheduler;
use crate::stream::OperationStream;

/// The gRPC header in which REAPI clients send their RequestMetadata.
const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// Serves Execute and WaitExecution.
#[derive(Clone)]
pub struct ExecutionService {
    scheduler: Scheduler,
}

impl ExecutionService {
    /// The service over `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        ExecutionService { scheduler }
    }
}

/// The client's RequestMetadata; empty when absent or unreadable, since it
/// only informs fairness and logs.
pub fn request_metadata(headers: &MetadataMap) -> RequestMetadata {
    headers
        .get_bin(REQUEST_METADATA_HEADER)
        .and_then(|value| value.to_bytes().ok())
        .and_then(|bytes| RequestMetadata::decode(bytes).ok())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let metadata = request_metadata(request.metadata());
        let request = request.into_inner();
        let stream = self.scheduler.execute(request, metadata).await?;
        Ok(Response::new(stream))
    }

    type WaitExecutionStream = OperationStream;

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let stream = self.scheduler.wait_execution(&request.get_ref().name)?;
        Ok(Response::new(stream))
    }
}
