//! Wiring the runner daemon together: configuration to policy, socket and
//! gRPC server.

use std::future::Future;
use std::path::Path;

use lazybarn_proto::runner::runner_server::RunnerServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::RunnerConfig;
use crate::error::ServeError;
use crate::request::CommandPolicy;
use crate::service::RunnerService;
use crate::socket::{SocketFile, bind};
use tokio::net::UnixListener;

/// A runner bound to its socket, ready to serve.
#[derive(Debug)]
pub struct RunnerDaemon {
    listener: UnixListener,
    socket: SocketFile,
    service: RunnerService,
}

impl RunnerDaemon {
    /// Checks the configuration and privileges and binds the socket (after
    /// removing a stale one). Once this returns, clients can connect. Must be
    /// called within a tokio runtime.
    pub fn bind(config: &RunnerConfig) -> Result<RunnerDaemon, ServeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ServeError::NotRoot);
        }
        let policy = CommandPolicy {
            credentials: config.credentials()?,
            chroot_into_input_root: config.chroot_into_input_root,
        };
        let (listener, socket) = bind(&config.socket_path, config.socket_gid()?)?;
        tracing::info!(
            socket = ?config.socket_path,
            uid = policy.credentials.uid,
            gid = policy.credentials.gid,
            chroot = policy.chroot_into_input_root,
            "runner listening"
        );
        Ok(RunnerDaemon {
            listener,
            socket,
            service: RunnerService::new(policy),
        })
    }

    /// The path clients connect to.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Serves until `shutdown` completes, then stops accepting connections
    /// and removes the socket file. Runs still in flight go on as tasks of
    /// the runtime; shutting the runtime down drops them, which kills their
    /// commands.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let RunnerDaemon {
            listener,
            socket,
            service,
        } = self;
        let server = tonic::transport::Server::builder()
            .add_service(RunnerServer::new(service))
            .serve_with_incoming(UnixListenerStream::new(listener));
        let result = tokio::select! {
            result = server => result.map_err(ServeError::from),
            () = shutdown => Ok(()),
        };
        socket.remove_file();
        result
    }
}
