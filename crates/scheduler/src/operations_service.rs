//! The `google.longrunning.Operations` service over the scheduler's
//! operations: get, list, cancel, delete and wait.

use std::time::Duration;

use futures::StreamExt;
use lazybarn_proto::longrunning::operations_server::Operations;
use lazybarn_proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use tonic::{Request, Response, Status};

use crate::scheduler::Scheduler;

/// How long WaitOperation waits when the request sets no timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Serves the Operations service.
#[derive(Clone)]
pub struct OperationsService {
    scheduler: Scheduler,
}

impl OperationsService {
    /// The service over `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        OperationsService { scheduler }
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        _request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        Ok(Response::new(ListOperationsResponse {
            operations: self.scheduler.list_operations(),
            next_page_token: String::new(),
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let operation = self.scheduler.get_operation(&request.get_ref().name)?;
        Ok(Response::new(operation))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.scheduler.delete_operation(&request.get_ref().name)?;
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.scheduler.cancel_operation(&request.get_ref().name)?;
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let timeout = request
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .unwrap_or(DEFAULT_WAIT);
        let mut stream = self.scheduler.wait_execution(&request.name)?;
        let mut latest = None;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(operation) => {
                        let operation = operation?;
                        let done = operation.done;
                        latest = Some(operation);
                        if done {
                            break;
                        }
                    }
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        match latest {
            Some(operation) => Ok(Response::new(operation)),
            None => Ok(Response::new(self.scheduler.get_operation(&request.name)?)),
        }
    }
}
