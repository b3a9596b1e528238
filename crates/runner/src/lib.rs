//! The runner daemon: runs build commands for a worker, each as an
//! unprivileged user, with a timeout, and leaves nothing behind.
//!
//! A worker never forks build commands itself. It asks the runner over a
//! Unix socket, with the `lazybarn.runner.v1` protocol
//! ([`lazybarn_proto::runner`]). The pieces, in the order a request meets
//! them:
//!
//! - [`server::RunnerDaemon`] binds the socket ([`socket`]: only root, or a
//!   configured group, may connect) and serves [`service::RunnerService`].
//! - [`request::CommandSpec`] checks a `RunRequest` and prepares everything
//!   the child needs; [`program`] resolves `arguments[0]` as REAPI says.
//! - [`spawn_linux`] starts the command in a PID namespace of its own, as the
//!   configured uid and gid; [`child_linux`] is what runs in the new
//!   processes before `execve`. [`process_tree::ProcessTree`] waits for the
//!   command and kills its whole tree on timeout, on cancellation (drop) and
//!   when the command exits.
//! - [`execution`] ties these together for one request, and
//!   [`resource_usage`] reports what the command used.
//! - [`readiness`] answers `CheckReadiness`; [`client`] is how a worker
//!   connects; [`config::RunnerConfig`] is the daemon's configuration.
//!
//! Run as root, the runner runs commands as any configured user and may
//! chroot them. Run as another user, it runs commands as that same user
//! only, each tree in a user namespace of its own so that it still gets a
//! PID namespace (see [`spawn_linux`]).

#[cfg(not(target_os = "linux"))]
compile_error!("lazybarn-runner needs Linux: PID namespaces, pidfds and clone3");

pub mod child_linux;
pub mod client;
pub mod config;
pub mod error;
pub mod execution;
pub mod process_tree;
pub mod program;
pub mod readiness;
pub mod request;
pub mod resource_usage;
pub mod server;
pub mod service;
pub mod socket;
pub mod spawn_linux;

pub use config::{Credentials, RunnerConfig};
pub use error::{ReadinessError, RunError, ServeError};
pub use server::RunnerDaemon;
pub use service::RunnerService;
