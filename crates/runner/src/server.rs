//! Wiring the runner daemon together: configuration to policy, socket and
//! gRPC server.

use std::future::Future;
use std::path::Path;

use lazybarn_proto::runner::runner_server::RunnerServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::{Credentials, RunnerConfig};
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
        let policy = command_policy(config)?;
        let (listener, socket) = bind(&config.socket_path, config.socket_gid()?)?;
        tracing::info!(
            socket = ?config.socket_path,
            uid = policy.credentials.uid,
            gid = policy.credentials.gid,
            chroot = policy.chroot_into_input_root,
            own_user_namespace = policy.own_user_namespace,
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

/// The policy `config` asks for, if this process can carry it out. Root can
/// run commands as any user; any other user only as itself, each command in
/// a user namespace of its own, and without chroot.
fn command_policy(config: &RunnerConfig) -> Result<CommandPolicy, ServeError> {
    let credentials = config.credentials()?;
    if nix::unistd::geteuid().is_root() {
        return Ok(CommandPolicy {
            credentials,
            chroot_into_input_root: config.chroot_into_input_root,
            own_user_namespace: false,
        });
    }
    let own = Credentials {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    if credentials != own || config.chroot_into_input_root {
        return Err(ServeError::NotRoot {
            own,
            requested: credentials,
            chroot: config.chroot_into_input_root,
        });
    }
    if !user_namespaces_allowed() {
        return Err(ServeError::NoUserNamespaces);
    }
    Ok(CommandPolicy {
        credentials,
        chroot_into_input_root: false,
        own_user_namespace: true,
    })
}

/// Whether this kernel lets an unprivileged user create user namespaces, as
/// far as its settings tell (a seccomp filter may still refuse).
fn user_namespaces_allowed() -> bool {
    let setting = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    // Debian's own switch, on kernels that have it; then the general limit.
    setting("/proc/sys/kernel/unprivileged_userns_clone") != Some(0)
        && setting("/proc/sys/user/max_user_namespaces") != Some(0)
}
