//! Lazybarn's protocol definitions, generated at build time from the `.proto`
//! files in this crate's `proto/` folder.
//!
//! - [`reapi`]: the Remote Execution API v2 (`build.bazel.remote.execution.v2`),
//!   exactly as published, which Bazel and other clients speak.
//! - [`bytestream`], [`longrunning`], [`rpc`], [`semver`]: the Google and
//!   Bazel packages REAPI depends on.
//! - [`runner`]: the runner protocol (`lazybarn.runner.v1`), with which a
//!   worker asks a runner to execute one command.
//! - [`worker`]: the worker protocol (`lazybarn.worker.v1`), with which a
//!   worker registers with the scheduler, takes actions and reports results.
//!
//! Every `bytes` field is a [`bytes::Bytes`], so blob payloads move between
//! the network and the stores without copies.

#![allow(clippy::all, missing_docs)]

mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub use generated::build::bazel::remote::execution::v2 as reapi;
pub use generated::build::bazel::semver;
pub use generated::google::bytestream;
pub use generated::google::longrunning;
pub use generated::google::rpc;
pub use generated::lazybarn::runner::v1 as runner;
pub use generated::lazybarn::worker::v1 as worker;
