//! The worker: takes actions from the scheduler, prepares each one's
//! directory, has the runner execute it, and uploads what it produced.
//!
//! Each stage of an action is a module of its own:
//! - [`paths`]: checks the relative paths an action names (outputs, working
//!   directory) before any of them touches the disk;
//! - [`outputs`]: captures the declared outputs of a plain (native) action
//!   directory as REAPI messages plus the blobs to upload;
//! - [`upload`]: sends the blobs the CAS lacks, batched.
//!
//! Taking work, preparing inputs (virtual or native), calling the runner and
//! reporting are being built (issue 6).

pub mod outputs;
pub mod paths;
pub mod upload;
