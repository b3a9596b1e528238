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
//! - [`request::command_credentials`] decides the uid and gid: the
//!   configured ones, or one of the `slot_ids` a worker gives each slot.
//! - [`spawn_linux`] starts the command in its sandbox, as that uid and gid;
//!   [`child_linux`] is what runs in the new processes before `execve`,
//!   and `sandbox_linux` the part of it that mounts and brings up
//!   loopback. [`process_tree::ProcessTree`] waits for the command and
//!   kills its whole tree on timeout, on cancellation (drop) and when the
//!   command exits.
//! - [`execution`] ties these together for one request, and
//!   [`resource_usage`] reports what the command used.
//! - [`readiness`] answers `CheckReadiness`; [`client`] is how a worker
//!   connects; [`config::RunnerConfig`] is the daemon's configuration.
//!
//! Every command runs in a sandbox, set up between the clone and `execve`:
//!
//! - a PID namespace of its own, whose death takes every process with it;
//! - a mount namespace of its own, with a fresh /proc that shows only the
//!   command's processes (no other command's `/proc/PID/environ` is within
//!   reach), an empty /dev/shm of a capped size and a fresh /dev/mqueue
//!   (neither with chroot), and, if the request names one, its
//!   `temporary_directory` on /tmp;
//! - an IPC namespace of its own (System V IPC, POSIX message queues);
//! - a network namespace of its own with nothing but loopback, unless the
//!   request sets `host_network`;
//! - `no_new_privs`, so that no setuid binary or file capability raises it;
//! - resource limits from [`config::Limits`], and no core dumps.
//!
//! The mount, IPC and network namespaces can be turned off for hosts that refuse
//! them (`mount_and_network_namespaces`). `benches/sandbox.rs` measures what
//! the sandbox costs per command.
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
mod sandbox_linux;
pub mod server;
pub mod service;
pub mod socket;
pub mod spawn_linux;

pub use config::{Credentials, RunnerConfig};
pub use error::{ReadinessError, RunError, ServeError};
pub use server::RunnerDaemon;
pub use service::RunnerService;
