//! The worker's side of the runner protocol: a connection to the runner's
//! Unix socket. The worker never forks build commands itself.

use std::path::{Path, PathBuf};

use lazybarn_proto::runner::runner_client::RunnerClient;
use lazybarn_proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// A connection to one runner.
#[derive(Clone)]
pub struct RunnerConnection {
    socket: PathBuf,
    client: RunnerClient<Channel>,
}

impl RunnerConnection {
    /// A connection to the runner at `socket`; it is established on first
    /// use and re-established after the runner restarts.
    pub fn new(socket: &Path) -> Result<Self, Status> {
        let endpoint = Endpoint::from_shared(format!("unix:{}", socket.display()))
            .map_err(|e| Status::invalid_argument(format!("runner socket {socket:?}: {e}")))?;
        Ok(RunnerConnection {
            socket: socket.to_path_buf(),
            client: RunnerClient::new(endpoint.connect_lazy()),
        })
    }

    /// Runs one command; dropping the future makes the runner kill it.
    pub async fn run(&self, request: RunRequest) -> Result<RunResponse, Status> {
        let mut client = self.client.clone();
        client
            .run(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|e| {
                Status::new(
                    e.code(),
                    format!("runner at {}: {}", self.socket.display(), e.message()),
                )
            })
    }

    /// Whether the runner is up and can reach and write `path`.
    pub async fn check_readiness(&self, path: &Path) -> Result<(), Status> {
        let mut client = self.client.clone();
        client
            .check_readiness(CheckReadinessRequest {
                path: path.display().to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|e| {
                Status::new(
                    e.code(),
                    format!(
                        "runner at {} is not ready: {}",
                        self.socket.display(),
                        e.message()
                    ),
                )
            })
    }
}
