//! The errors of the command line: each says which piece failed and why.

use std::io;
use std::path::PathBuf;

/// Why a `lazybarn` subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum LazybarnError {
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "creating".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// Flags or a configuration file are wrong.
    #[error("{0}")]
    Config(String),
    /// The scheduler (or its embedded storage) failed.
    #[error("scheduler: {0}")]
    Scheduler(#[from] lazybarn_scheduler::server::ServerError),
    /// The in-process worker failed.
    #[error("worker: {0}")]
    Worker(#[from] lazybarn_worker::WorkerError),
    /// The runner daemon (`lazybarn runner`) failed.
    #[error("runner: {0}")]
    Runner(#[from] lazybarn_runner::ServeError),
    /// The runner child process of `up` or `worker` failed.
    #[error("runner process: {0}")]
    RunnerChild(String),
    /// The storage (`lazybarn storage`) could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] lazybarn_cas::CasError),
    /// A gRPC server failed.
    #[error("serving gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The process-wide Prometheus recorder could not be installed.
    #[error("installing the Prometheus recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// Something did not come up in time, or stopped while starting.
    #[error("{0}")]
    Startup(String),
}

impl LazybarnError {
    /// A closure for `map_err` that wraps an I/O error with what was done to `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| LazybarnError::Io {
            action,
            path,
            source,
        }
    }
}
