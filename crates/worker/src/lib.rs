//! The worker: takes actions from the scheduler, prepares each one's
//! directory, has the runner execute it, and uploads what it produced.
//!
//! [`run`] and [`run_until`] are the whole worker process ([`daemon`]),
//! which stops by draining ([`drain`]): no new work, running actions finish
//! or are given back to the scheduler, every mount goes. Each stage of an
//! action is a module of its own:
//! - [`build_dir`]: the action's directory, mounted with the vfs (virtual
//!   mode) or laid out by [`native`] (native mode), and its output capture;
//! - [`runner`]: the connection to the runner, which executes the command;
//! - [`outputs`]: output capture from a plain directory, and the rules for
//!   declared outputs shared by both modes;
//! - [`upload`]: sends the blobs the CAS lacks, batched;
//! - [`action`]: the stages in order, timed, into an ExecuteResponse;
//! - [`paths`]: checks the relative paths an action names before any of
//!   them touches the disk;
//! - [`confined`]: every file operation inside an action's directory, by
//!   directory descriptor and never through a symlink, and walks and
//!   removals of trees of any depth without recursion;
//! - [`isolation`]: who each slot's actions run as, the network an action
//!   may ask for, and the caps on what it may cost the worker;
//! - [`config`]: the worker's configuration.
//!
//! Metrics go through the `metrics` facade: the worker's own
//! (`lazybarn_worker_*`, see [`daemon`]) and the vfs's (`lazybarn_vfs_*`);
//! the binary that embeds the worker installs the exporter.

pub mod action;
pub mod build_dir;
pub mod config;
pub mod confined;
pub mod daemon;
pub mod drain;
pub mod health;
pub mod isolation;
pub mod native;
pub mod outputs;
pub mod paths;
pub mod runner;
pub mod upload;

pub use config::{BuildMode, WorkerConfig};
pub use daemon::{Stop, WorkerError, fuse_unavailable, run, run_until, run_until_with_health};
pub use health::Health;
