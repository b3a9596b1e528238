//! The native build directory: every input downloaded into the blob cache
//! and hardlinked into a plain directory before the command starts.
//!
//! Directories are fetched a level at a time with BatchReadBlobs; files are
//! brought into the cache with bounded concurrency, then linked in one
//! blocking task. Cached blobs are read-only (0444) files owned by root, so
//! a hardlink cannot be written through by the action's uid; executables
//! need mode 0555, which a shared inode cannot have for only some of its
//! names, so they are copied. Directories are 0777: the action may create,
//! rename and delete entries anywhere, as in the virtual mode.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::Directory;
use lazybarn_vfs::{BlobCache, BlobSource};
use prost::Message;
use tonic::Status;

use crate::action::missing_blob_status;

/// What preparing a native directory did.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeStats {
    /// Input files linked or copied into place.
    pub files: u64,
    /// Distinct blobs that had to be fetched from the CAS.
    pub files_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
}

/// One entry to create, relative to the input root.
enum Entry {
    Dir(PathBuf),
    File {
        path: PathBuf,
        digest: Digest,
        executable: bool,
    },
    Symlink {
        path: PathBuf,
        target: String,
    },
}

/// Lays out the input root `root` under `dir` (which exists and is empty).
pub async fn populate(
    dir: &Path,
    root: Digest,
    cas: &CasClient,
    cache: &Arc<BlobCache>,
    source: &Arc<dyn BlobSource>,
    concurrency: usize,
) -> Result<NativeStats, Status> {
    let entries = list_entries(root, cas).await?;
    let mut wanted: Vec<Digest> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut stats = NativeStats::default();
    let pins = futures::stream::iter(wanted.iter().copied())
        .map(|digest| async move { (digest, cache.pin(digest, source).await) })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut pinned = Vec::new();
    let mut failure = None;
    for (digest, result) in pins {
        match result {
            Ok(obtained) => {
                pinned.push(digest);
                if matches!(obtained, lazybarn_vfs::Obtained::Fetched(_)) {
                    stats.files_fetched += 1;
                    stats.bytes_fetched += digest.size();
                }
            }
            Err(e) if failure.is_none() => {
                failure = Some(match e.missing_blob() {
                    Some(missing) => missing_blob_status(missing),
                    None => Status::unavailable(format!("fetching input {digest}: {e}")),
                });
            }
            Err(_) => {}
        }
    }
    let result = match failure {
        Some(status) => Err(status),
        None => {
            let cache = cache.clone();
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || materialize(&dir, &entries, &cache))
                .await
                .map_err(|e| Status::internal(format!("laying out inputs: {e}")))?
        }
    };
    // Links keep their inodes alive, so the cache may evict from now on.
    for digest in &pinned {
        cache.unpin(digest);
    }
    stats.files = result?;
    Ok(stats)
}

/// Fetches every Directory of the tree, a level at a time, and lists what
/// to create.
async fn list_entries(root: Digest, cas: &CasClient) -> Result<Vec<Entry>, Status> {
    let mut entries = Vec::new();
    let mut level: Vec<(PathBuf, Digest)> = vec![(PathBuf::new(), root)];
    let mut cache: HashMap<Digest, Directory> = HashMap::new();
    while !level.is_empty() {
        let unknown: Vec<Digest> = level
            .iter()
            .map(|(_, d)| *d)
            .filter(|d| !cache.contains_key(d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let fetched = cas.download_batch(&unknown).await.map_err(|e| {
            if e.code() == tonic::Code::NotFound {
                Status::failed_precondition(format!("input directory missing: {}", e.message()))
            } else {
                e
            }
        })?;
        for (digest, bytes) in fetched {
            let directory = Directory::decode(bytes).map_err(|e| {
                Status::invalid_argument(format!("input directory {digest} does not decode: {e}"))
            })?;
            cache.insert(digest, directory);
        }
        let mut next = Vec::new();
        for (path, digest) in level {
            let directory = &cache[&digest];
            entries.push(Entry::Dir(path.clone()));
            for f in &directory.files {
                entries.push(Entry::File {
                    path: path.join(checked_name(&f.name, digest)?),
                    digest: Digest::from_proto(f.digest.as_ref())?,
                    executable: f.is_executable,
                });
            }
            for s in &directory.symlinks {
                entries.push(Entry::Symlink {
                    path: path.join(checked_name(&s.name, digest)?),
                    target: s.target.clone(),
                });
            }
            for d in &directory.directories {
                let child = Digest::from_proto(d.digest.as_ref())?;
                next.push((path.join(checked_name(&d.name, digest)?), child));
            }
        }
        level = next;
    }
    Ok(entries)
}

/// An entry name must be one path component.
fn checked_name(name: &str, directory: Digest) -> Result<&str, Status> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "invalid input root: directory {directory} has an entry named {name:?}"
        )));
    }
    Ok(name)
}

/// Creates every entry; returns the number of files.
fn materialize(dir: &Path, entries: &[Entry], cache: &BlobCache) -> Result<u64, Status> {
    let io = |what: &Path, e: std::io::Error| {
        Status::internal(format!("laying out input {}: {e}", what.display()))
    };
    let mut files = 0;
    for entry in entries {
        match entry {
            Entry::Dir(path) => {
                let full = dir.join(path);
                if !path.as_os_str().is_empty() {
                    fs::DirBuilder::new()
                        .mode(0o777)
                        .create(&full)
                        .map_err(|e| io(path, e))?;
                }
                // The umask narrowed the mode; the action's uid needs all of it.
                fs::set_permissions(&full, fs::Permissions::from_mode(0o777))
                    .map_err(|e| io(path, e))?;
            }
            Entry::File {
                path,
                digest,
                executable,
            } => {
                let full = dir.join(path);
                let cached = cache.path(digest);
                if *executable {
                    fs::copy(&cached, &full).map_err(|e| io(path, e))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o555))
                        .map_err(|e| io(path, e))?;
                } else {
                    fs::hard_link(&cached, &full).map_err(|e| io(path, e))?;
                }
                files += 1;
            }
            Entry::Symlink { path, target } => {
                std::os::unix::fs::symlink(target, dir.join(path)).map_err(|e| io(path, e))?;
            }
        }
    }
    Ok(files)
}
