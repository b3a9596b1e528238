//! The `lazybarn` command line: one binary that runs a whole Lazybarn
//! cluster on one machine (`lazybarn up`) or any one of its pieces.
//!
//! - [`cli`] declares the subcommands and their flags;
//! - [`cluster`] is `lazybarn up`: the embedded storage, the scheduler and
//!   its status page in this process, a worker in this process, and the
//!   runner as a child process ([`runner_child`]);
//! - [`credentials`] generates the worker token `up` gives its scheduler
//!   and its worker;
//! - [`worker_node`] is `lazybarn worker`: a worker with its own runner child
//!   that joins a running scheduler;
//! - [`pieces`] runs the scheduler, the storage or the runner alone;
//! - [`layout`] decides where data, build directories and sockets go, so
//!   that the unprivileged uid commands run as can reach its build
//!   directory;
//! - [`metrics_endpoint`] serves `/metrics` for a standalone worker;
//! - [`registration`] tells when the in-process worker has registered;
//! - [`shutdown`] turns SIGINT and SIGTERM into a future.

pub mod cli;
pub mod cluster;
pub mod credentials;
pub mod error;
pub mod layout;
pub mod metrics_endpoint;
pub mod pieces;
pub mod registration;
pub mod runner_child;
pub mod shutdown;
pub mod worker_node;

pub use error::LazybarnError;

use cli::{Cli, Command};

/// Runs the subcommand `cli` names until it finishes or is stopped.
pub async fn run(cli: Cli) -> Result<(), LazybarnError> {
    match cli.command {
        Command::Up(args) => cluster::up(args).await,
        Command::Worker(args) => worker_node::worker(args).await,
        Command::Scheduler(args) => pieces::scheduler(args).await,
        Command::Storage(args) => pieces::storage(args).await,
        Command::Runner(args) => pieces::runner(args).await,
    }
}
