//! Connecting to a runner over its Unix socket, for the worker and tests.

use std::path::Path;

use lazybarn_proto::runner::runner_client::RunnerClient;
use tonic::transport::{Channel, Endpoint};

/// Connects to the runner listening on `socket_path`.
pub async fn connect(socket_path: &Path) -> Result<RunnerClient<Channel>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("unix:{}", socket_path.display()))?;
    Ok(RunnerClient::new(endpoint.connect().await?))
}
