//! End-to-end test support for Lazybarn.
//!
//! The tests in `tests/tests/` drive real clients (Bazel) against real
//! Lazybarn processes. This library holds what they share:
//!
//! - [`binaries`] finds the workspace's binaries that cargo built next to
//!   the test executable;
//! - [`server`] starts such a binary, waits for its readiness line and kills
//!   it when dropped;
//! - [`bazel`] sets up a small offline C++ workspace and runs Bazel in it with
//!   an output root of its own;
//! - [`summary`] reads the process counts Bazel prints after a build.

pub mod bazel;
pub mod binaries;
pub mod server;
pub mod summary;

pub use bazel::{BazelOutput, BazelWorkspace};
pub use binaries::workspace_binary;
pub use server::{ServerProcess, StorageServer};
pub use summary::ProcessSummary;
