//! Lazybarn's scheduler: the process Bazel talks to for remote execution.
//!
//! A client's `Execute` is answered from the Action Cache when it can be
//! ([`action`] checks the Action and Command first, and reports missing
//! blobs so the client re-uploads them). Otherwise it joins an identical
//! in-flight execution or queues a new one ([`state`]), in a queue per
//! instance name and platform ([`platform`], [`queue`]) ordered by priority,
//! fairness between builds, and arrival. Workers pull actions over the
//! worker protocol `lazybarn.worker.v1` ([`work`], [`worker_service`]),
//! hold them under leases ([`leases`]) and report results, which go to the
//! Action Cache and to every waiting client as operation updates
//! ([`operation`], [`stream`]).
//!
//! The services: [`execution_service`] (REAPI Execution),
//! [`operations_service`] (google.longrunning.Operations), and
//! [`worker_service`]; [`server`] puts them on ports next to the storage
//! services of `lazybarn-cas`, over its embedded store or a remote CAS,
//! with the worker protocol behind a `lazybarn_auth::Gate` (workers' bearer
//! tokens, when `[auth] tokens_file` is set). [`status`] serves the status page and
//! `/metrics` ([`metrics`]). [`config`] documents every setting.

pub mod action;
pub mod assignment;
pub mod config;
pub mod error;
pub mod execution_service;
pub mod leases;
pub mod metrics;
pub mod operation;
pub mod operations_service;
pub mod platform;
pub mod queue;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod status;
pub mod stream;
pub mod work;
pub mod worker_service;

pub use config::{SchedulerConfig, ServerConfig};
pub use error::SchedulerError;
pub use scheduler::Scheduler;
pub use status::StatusSnapshot;
