//! Lazybarn's storage: everything that holds bytes for the build farm.
//!
//! - [`Digest`] names a blob (SHA-256 and size) and validates what clients send.
//! - [`BlobStore`] is the CAS interface, with [`DiskStore`] (crash-safe files
//!   with LRU eviction), [`MemoryStore`] and [`RemoteStore`] (another REAPI
//!   CAS).
//! - [`ActionCache`] maps action digests to results, on disk, in memory or
//!   in another REAPI server ([`RemoteActionCache`]).
//! - [`service`] serves these over REAPI: Capabilities,
//!   ContentAddressableStorage, ByteStream and ActionCache, on one port
//!   ([`server::StorageServer`]).
//! - [`CasClient`] is how the worker and the vfs talk to any REAPI CAS.
//!
//! Errors are [`CasError`]s, each of which maps to the gRPC status code a
//! client expects.

pub mod action_cache;
pub mod client;
pub mod config;
pub mod digest;
pub mod error;
pub mod resource;
pub mod server;
pub mod service;
pub mod store;

pub use action_cache::{ActionCache, DiskActionCache, MemoryActionCache, RemoteActionCache};
pub use client::CasClient;
pub use digest::Digest;
pub use error::CasError;
pub use store::{BlobStore, BlobWriter, DiskStore, MemoryStore, RemoteStore};
