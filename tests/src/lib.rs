//! End-to-end test support for Lazybarn.
//!
//! The tests in `tests/tests/` drive real clients (Bazel) against real
//! Lazybarn processes. This library holds what they share:
//!
//! - [`binaries`] finds the workspace's binaries that cargo built next to
//!   the test executable;
//! - [`server`] starts such a binary, waits for its readiness line and kills
//!   it when dropped; [`cluster`] does so for `lazybarn up` and stops it the
//!   way a user would, checking that it leaves no mount or process behind
//!   ([`system`]);
//! - [`bazel`] sets up a small offline C++ workspace and runs Bazel in it with
//!   an output root of its own;
//! - [`summary`] reads the process counts Bazel prints after a build;
//! - [`outputs`] compares the files two builds produced;
//! - [`remote`] plays a REAPI client by hand (upload a tree, Execute, read
//!   the result), for actions no Bazel rule would send.

pub mod bazel;
pub mod binaries;
pub mod cluster;
pub mod outputs;
pub mod remote;
pub mod server;
pub mod summary;
pub mod system;

pub use bazel::{BazelOutput, BazelWorkspace};
pub use binaries::workspace_binary;
pub use cluster::LazybarnUp;
pub use server::{ServerProcess, StorageServer};
pub use summary::ProcessSummary;
