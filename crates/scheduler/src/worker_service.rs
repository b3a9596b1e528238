//! The worker protocol service (`lazybarn.worker.v1.Scheduler`): a thin
//! gRPC face over the worker side of [`Scheduler`].

use lazybarn_proto::worker::scheduler_server::Scheduler as WorkerProtocol;
use lazybarn_proto::worker::{
    CompleteExecutionRequest, CompleteExecutionResponse, DrainRequest, DrainResponse,
    PollWorkRequest, PollWorkResponse, RegisterRequest, RegisterResponse, ReportProgressRequest,
    ReportProgressResponse, RequeueExecutionRequest, RequeueExecutionResponse,
};
use tonic::{Request, Response, Status};

use crate::scheduler::Scheduler;

/// Serves the worker protocol.
#[derive(Clone)]
pub struct WorkerService {
    scheduler: Scheduler,
}

impl WorkerService {
    /// The service over `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        WorkerService { scheduler }
    }
}

#[tonic::async_trait]
impl WorkerProtocol for WorkerService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        Ok(Response::new(self.scheduler.register(request.get_ref())?))
    }

    async fn poll_work(
        &self,
        request: Request<PollWorkRequest>,
    ) -> Result<Response<PollWorkResponse>, Status> {
        let assignment = self.scheduler.poll_work(request.get_ref()).await?;
        Ok(Response::new(PollWorkResponse { assignment }))
    }

    async fn report_progress(
        &self,
        request: Request<ReportProgressRequest>,
    ) -> Result<Response<ReportProgressResponse>, Status> {
        let cancelled_execution_ids = self.scheduler.report_progress(request.get_ref())?;
        Ok(Response::new(ReportProgressResponse {
            cancelled_execution_ids,
        }))
    }

    async fn complete_execution(
        &self,
        request: Request<CompleteExecutionRequest>,
    ) -> Result<Response<CompleteExecutionResponse>, Status> {
        let accepted = self
            .scheduler
            .complete_execution(request.into_inner())
            .await?;
        Ok(Response::new(CompleteExecutionResponse { accepted }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let held_execution_ids = self.scheduler.drain(request.get_ref())?;
        Ok(Response::new(DrainResponse { held_execution_ids }))
    }

    async fn requeue_execution(
        &self,
        request: Request<RequeueExecutionRequest>,
    ) -> Result<Response<RequeueExecutionResponse>, Status> {
        self.scheduler.requeue_execution(request.get_ref())?;
        Ok(Response::new(RequeueExecutionResponse {}))
    }
}
