//! Lazybarn's FUSE filesystem: an action's input root appears at once, and
//! a file's bytes are fetched from the CAS the first time it is opened.
//!
//! How the pieces fit:
//! - [`Mount`] mounts one input root (by its root Directory digest) and is
//!   the worker's handle on it: counters, failures, output capture, unmount.
//!   [`clean_stale_mounts`] removes mounts a crashed worker left.
//! - [`BlobCache`] is the worker's on-disk cache of file blobs, shared by
//!   every mount: bounded, LRU, pinned while in use, verified on arrival.
//!   It carries the worker's [`DirectoryCache`] of Directory messages, so a
//!   tree one action looked into is not fetched again for the next.
//! - [`BlobSource`] is where blobs come from; [`CasBlobSource`] reads any
//!   REAPI CAS through `lazybarn_cas::CasClient`.
//! - Inside a mount, the node table (`node`) holds every inode; input
//!   directories are filled from their Directory message on first use
//!   (`input_tree`, which checks names and counts entries against the cap);
//!   `fs` checks the caller with `access`, then serves requests over `core`, split into
//!   reads (`ops_read`) and changes (`ops_write`); open files live in
//!   `handles`; outputs are captured by walking the table (`capture`).
//!
//! Input files are immutable for every caller, root included; everything
//! else (directories, new files) is writable, backed by a per-mount scratch
//! directory. No FUSE request thread ever waits on the network: requests
//! that need a fetch are answered from a tokio task.
//!
//! What a client or an action controls is bounded:
//! - Who: with [`MountConfig::allowed_uid`], `fs` asks `access` (the one
//!   policy) before each request and answers any uid but that one and the
//!   worker's own with EACCES; the root directory is that uid's, 0700.
//! - How much: a mount loads at most [`MountConfig::max_input_entries`]
//!   input entries; past it, `Mount::new` fails, or a request gets ENOSPC.
//!   The action may add at most [`MountConfig::max_created_entries`] names
//!   (files, directories, symlinks, hard links) that live at once, since
//!   each costs the worker memory in the node table; past it, the request
//!   gets ENOSPC. Either cap, hit while the action runs, is recorded once
//!   in `Mount::failures`.
//! - How deep: nothing recurses over a tree (input loading is one Directory
//!   at a time, capture copies and builds a directory's Tree from a flat
//!   list, the node table is flat), so no depth overflows the stack.
//!
//! Every failure has a [`FailureKind`], which gives the gRPC code the
//! worker answers with: [`VfsError::code`] for an error `Mount::new` or
//! `Mount::capture` returns, [`FetchFailure::code`] for a load that failed
//! while the action ran (`Mount::failures`): a missing blob is
//! FAILED_PRECONDITION, a failing CAS (or one serving a file or Directory
//! whose bytes do not match its digest) UNAVAILABLE, an invalid input root
//! or an output name that is not UTF-8 INVALID_ARGUMENT, an input root or
//! created entries over their cap RESOURCE_EXHAUSTED.

mod access;
mod blob_cache;
mod capture;
mod core;
mod directory_cache;
mod error;
mod fs;
mod handles;
mod input_tree;
pub mod metrics;
mod mount;
mod node;
mod ops_read;
mod ops_write;
mod source;
mod sys_linux;
#[cfg(test)]
mod testing;

pub use blob_cache::{BlobCache, Obtained};
pub use capture::{BlobLocation, CapturedFile, CapturedOutput};
pub use core::FetchFailure;
pub use directory_cache::{
    DEFAULT_DIRECTORY_CACHE_BYTES, DirectoryCache, MAX_DIRECTORY_BYTES, check_directory_size,
};
pub use error::{FailureKind, Result, VfsError};
pub use input_tree::INPUT_MTIME;
pub use metrics::{MountCounters, MountStats};
pub use mount::{
    DEFAULT_MAX_CREATED_ENTRIES, DEFAULT_MAX_INPUT_ENTRIES, FS_NAME, Mount, MountConfig,
    clean_stale_mounts,
};
pub use source::{BlobSource, CasBlobSource};
