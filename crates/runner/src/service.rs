//! The `lazybarn.runner.v1.Runner` gRPC service.

use lazybarn_proto::runner::runner_server::Runner;
use lazybarn_proto::runner::{
    CheckReadinessRequest, CheckReadinessResponse, RunRequest, RunResponse,
};
use tonic::{Request, Response, Status};

use crate::execution::run_command;
use crate::readiness::check_readiness;
use crate::request::CommandPolicy;

/// Serves `Run` and `CheckReadiness`. Every `Run` is independent: its own
/// process tree, files and timeout.
#[derive(Debug, Clone)]
pub struct RunnerService {
    policy: CommandPolicy,
}

impl RunnerService {
    /// A service that runs every command under `policy`.
    pub fn new(policy: CommandPolicy) -> RunnerService {
        RunnerService { policy }
    }
}

#[tonic::async_trait]
impl Runner for RunnerService {
    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        let request = request.into_inner();
        let program = request.arguments.first().cloned().unwrap_or_default();
        // Dropping this future (the client cancelled or disconnected) drops
        // the command's process tree, which kills it.
        match run_command(request, self.policy).await {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                tracing::info!(program, %error, "run refused");
                let code = error.code();
                Err(Status::new(
                    code,
                    format!("Failed to run {program:?}: {error}"),
                ))
            }
        }
    }

    async fn check_readiness(
        &self,
        request: Request<CheckReadinessRequest>,
    ) -> Result<Response<CheckReadinessResponse>, Status> {
        let path = request.into_inner().path;
        tokio::task::spawn_blocking(move || check_readiness(&path))
            .await
            .map_err(|e| Status::internal(format!("readiness check failed: {e}")))??;
        Ok(Response::new(CheckReadinessResponse {}))
    }
}
