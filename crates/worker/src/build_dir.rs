//! An action's directory on the worker, in either mode:
//!
//! ```text
//! {build_directory}/{execution id}/     root-owned; 0750 with the slot's own group
//!     root/      the input root: a FUSE mount (virtual) or plain files (native)
//!     scratch/   files the action writes, in virtual mode (root only)
//!     tmp/       the action's /tmp, its user's alone
//!     stdout, stderr
//! ```
//!
//! When each slot has a user and group of its own, only root and that group
//! may enter the action's directory, so an action running at the same time
//! in another slot cannot reach this one's mount or files; the action itself
//! may not rename or replace anything at this level. Every path below the
//! input root is handled through [`crate::confined`]: the worker never
//! follows a symlink the client or the action placed there.
//!
//! [`ActionDirectory::destroy`] unmounts and removes all of it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::{Command, OutputFile, OutputSymlink};
use lazybarn_vfs::{
    BlobCache, BlobLocation, BlobSource, CapturedOutput, FailureKind, Mount, MountConfig,
};
use tonic::Status;

use crate::action::missing_blob_status;
use crate::config::BuildMode;
use crate::confined::{self, ConfinedDir, CreateError};
use crate::isolation::{Identity, Limits};
use crate::native;
use crate::outputs::{self, BlobData, CapturedOutputs};
use crate::paths;

/// Files and bytes an action brought from the CAS to prepare its inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Blobs fetched.
    pub files_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
}

/// What the directory needs from the worker.
pub struct DirectoryContext<'a> {
    /// Where action directories go.
    pub build_directory: &'a Path,
    /// The mode.
    pub mode: BuildMode,
    /// The shared blob cache.
    pub cache: &'a Arc<BlobCache>,
    /// The CAS, as a blob source for the cache and the vfs.
    pub source: &'a Arc<dyn BlobSource>,
    /// The CAS, for batched directory reads in native mode.
    pub cas: &'a CasClient,
    /// Mount settings (virtual mode).
    pub mount: &'a MountConfig,
    /// Concurrent input fetches (native mode).
    pub fetch_concurrency: usize,
    /// Who the action runs as.
    pub identity: Identity,
    /// The caps.
    pub limits: Limits,
}

/// One action's directory.
pub struct ActionDirectory {
    base: PathBuf,
    root: PathBuf,
    mount: Option<Mount>,
    native_stats: FetchStats,
    limits: Limits,
}

/// A log file of the action, ready for upload.
pub struct Log {
    /// Its digest.
    pub digest: Digest,
    /// Where its bytes are.
    pub data: BlobData,
}

impl ActionDirectory {
    /// Creates the directory and lays out (or mounts) the input root.
    pub async fn prepare(
        context: &DirectoryContext<'_>,
        name: &str,
        input_root: Digest,
    ) -> Result<Self, Status> {
        let base = context.build_directory.join(name);
        let root = base.join("root");
        let identity = context.identity;
        let created = {
            let base = base.clone();
            tokio::task::spawn_blocking(move || create_layout(&base, identity))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|made| made)
        };
        let mut directory = ActionDirectory {
            base,
            root,
            mount: None,
            native_stats: FetchStats::default(),
            limits: context.limits,
        };
        if let Err(e) = created {
            let status = Status::internal(format!(
                "creating action directory {}: {e}",
                directory.base.display()
            ));
            directory.destroy().await;
            return Err(status);
        }
        let prepared = match context.mode {
            BuildMode::Virtual => directory.mount(context, input_root).await,
            BuildMode::Native => directory.populate(context, input_root).await,
        };
        if let Err(status) = prepared {
            directory.destroy().await;
            return Err(status);
        }
        Ok(directory)
    }

    async fn mount(&mut self, context: &DirectoryContext<'_>, root: Digest) -> Result<(), Status> {
        let config = MountConfig {
            input_uid: context.identity.uid,
            input_gid: context.identity.gid,
            allowed_uid: context.identity.own.then_some(context.identity.uid),
            max_input_entries: context.limits.max_input_entries,
            max_created_entries: context.limits.max_created_entries,
            ..context.mount.clone()
        };
        let mount = Mount::new(
            &self.root,
            &self.base.join("scratch"),
            root,
            context.cache.clone(),
            context.source.clone(),
            &config,
        )
        .await
        .map_err(|e| match e.missing_blob() {
            Some(digest) => missing_blob_status(digest),
            None => Status::new(e.code(), format!("mounting the input root {root}: {e}")),
        })?;
        self.mount = Some(mount);
        Ok(())
    }

    async fn populate(
        &mut self,
        context: &DirectoryContext<'_>,
        root: Digest,
    ) -> Result<(), Status> {
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o777))
            .map_err(|e| Status::internal(format!("preparing {}: {e}", self.root.display())))?;
        let stats = native::populate(
            &self.root,
            root,
            context.cas,
            context.cache,
            context.source,
            native::LayoutOptions {
                concurrency: context.fetch_concurrency,
                files: native::InputFiles::for_action_uid(context.identity.uid),
                max_entries: context.limits.max_input_entries,
            },
        )
        .await?;
        self.native_stats = FetchStats {
            files_fetched: stats.files_fetched,
            bytes_fetched: stats.bytes_fetched,
        };
        Ok(())
    }

    /// The input root as the command sees it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the command's standard output goes.
    pub fn stdout_path(&self) -> PathBuf {
        self.base.join("stdout")
    }

    /// Where the command's standard error goes.
    pub fn stderr_path(&self) -> PathBuf {
        self.base.join("stderr")
    }

    /// The directory the command sees as /tmp.
    pub fn tmp_path(&self) -> PathBuf {
        self.base.join("tmp")
    }

    /// The command's standard output and error, hashed from disk and never
    /// read whole, each within `max_log_bytes`. A missing file is empty.
    pub async fn logs(&self) -> Result<(Log, Log), Status> {
        let base = self.base.clone();
        let limit = self.limits.max_log_bytes;
        tokio::task::spawn_blocking(move || {
            let dir = ConfinedDir::open(&base)
                .map_err(|e| Status::internal(format!("opening {}: {e}", base.display())))?;
            Ok((
                log(&dir, &base, "stdout", limit)?,
                log(&dir, &base, "stderr", limit)?,
            ))
        })
        .await
        .map_err(|e| Status::internal(format!("reading the action's logs: {e}")))?
    }

    /// Blobs and bytes fetched for this action's inputs so far.
    pub fn fetch_stats(&self) -> FetchStats {
        match &self.mount {
            Some(mount) => {
                let stats = mount.stats();
                FetchStats {
                    files_fetched: stats.files_fetched,
                    bytes_fetched: stats.bytes_fetched,
                }
            }
            None => self.native_stats,
        }
    }

    /// What went wrong fetching or loading inputs while the command ran
    /// (virtual mode), and whether it decides the outcome whatever the
    /// command's exit code: an invalid input tree or one over the cap means
    /// the command saw only part of its inputs, while a failed CAS read only
    /// explains a command that failed on EIO.
    pub fn first_fetch_failure(&self) -> Option<(Status, bool)> {
        let failure = self.mount.as_ref()?.failures().into_iter().next()?;
        let status = match (failure.kind, failure.digest) {
            (FailureKind::Missing, Some(digest)) => missing_blob_status(digest),
            (FailureKind::Unavailable, Some(digest)) => Status::unavailable(format!(
                "reading input {digest} from the CAS failed while the action ran: {}",
                failure.message
            )),
            _ => Status::new(failure.code(), failure.message.clone()),
        };
        let decisive = matches!(
            failure.kind,
            FailureKind::InvalidInput | FailureKind::TooLarge
        );
        Some((status, decisive))
    }

    /// Creates the parent directories of every declared output, and the
    /// working directory, never through a symlink: an output whose parents
    /// hold an input symlink or file is INVALID_ARGUMENT naming it.
    ///
    /// In virtual mode these are requests to our own FUSE mount, which
    /// answers them with tokio tasks: the blocking calls go to the blocking
    /// pool, never a runtime thread, or the mount could wait on itself.
    pub async fn create_output_parents(&self, command: &Command) -> Result<(), Status> {
        let parents = outputs::output_parents(command)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let working = paths::check_relative("working directory", &command.working_directory)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let root = self.root.clone();
        let wanted = std::iter::once((
            working,
            format!("working directory {:?}", command.working_directory),
        ))
        .chain(
            parents
                .into_iter()
                .map(|(dir, output)| (dir, format!("output path {output:?}"))),
        )
        .collect::<Vec<_>>();
        tokio::task::spawn_blocking(move || {
            let top = ConfinedDir::open(&root)
                .map_err(|e| Status::internal(format!("opening {}: {e}", root.display())))?;
            for (dir, what) in wanted {
                confined::create_dirs(&top, &dir, 0o777).map_err(|e| match e {
                    CreateError::Symlink(_) | CreateError::NotADirectory(_) => {
                        Status::invalid_argument(format!("{what} cannot be created: {e}"))
                    }
                    CreateError::Io { .. } => Status::failed_precondition(format!(
                        "creating the directory {} for {what}: {e}",
                        dir.display()
                    )),
                })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(format!("creating output directories: {e}")))?
    }

    /// Captures the outputs `command` declares.
    pub async fn capture(&self, command: &Command) -> Result<CapturedOutputs, Status> {
        match &self.mount {
            None => {
                let root = self.root.clone();
                let command = command.clone();
                let limits = outputs::OutputLimits {
                    max_bytes: self.limits.max_output_bytes,
                    max_entries: self.limits.max_created_entries,
                };
                let captured =
                    tokio::task::spawn_blocking(move || outputs::capture(&root, &command, limits))
                        .await
                        .map_err(|e| Status::internal(format!("capturing outputs: {e}")))??;
                Ok(captured)
            }
            Some(mount) => {
                let captured = capture_from_mount(mount, command).await?;
                check_output_bytes(&captured, self.limits.max_output_bytes)?;
                Ok(captured)
            }
        }
    }

    /// Unmounts and removes everything of the action. Errors are logged:
    /// the result is already decided, and a stale mount is cleaned at the
    /// next start.
    pub async fn destroy(mut self) {
        if let Some(mount) = self.mount.take()
            && let Err(e) = mount.unmount().await
        {
            tracing::warn!(dir = %self.base.display(), error = %e, "unmounting an action directory");
        }
        let base = self.base.clone();
        let removed = tokio::task::spawn_blocking(move || confined::remove_tree(&base)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(dir = %self.base.display(), error = %e, "removing an action directory");
        }
    }
}

/// Creates the action's directory and its fixed entries. With a user of
/// its own, the directory is root's and open to the action's group only;
/// otherwise to everyone, as the runner's one user must reach it.
fn create_layout(base: &Path, identity: Identity) -> std::io::Result<()> {
    let mode = if identity.own { 0o750 } else { 0o755 };
    fs::DirBuilder::new().mode(mode).create(base)?;
    fs::set_permissions(base, fs::Permissions::from_mode(mode))?;
    if identity.own {
        std::os::unix::fs::chown(base, Some(0), Some(identity.gid))?;
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(base.join("root"))?;
    let tmp = base.join("tmp");
    fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    // A worker that is not root runs actions as itself: nothing to give.
    if identity.uid != rustix::process::geteuid().as_raw() {
        std::os::unix::fs::chown(&tmp, Some(identity.uid), Some(identity.gid))?;
    }
    Ok(())
}

/// One log file of `dir`, hashed through a descriptor; over `limit` it is
/// RESOURCE_EXHAUSTED naming the cap.
fn log(dir: &ConfinedDir, base: &Path, name: &str, limit: u64) -> Result<Log, Status> {
    let path = base.join(name);
    let io = |e: std::io::Error| Status::internal(format!("reading {}: {e}", path.display()));
    let file = match dir.open_file(OsStr::new(name)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Log {
                digest: Digest::of(b""),
                data: BlobData::Bytes(bytes::Bytes::new()),
            });
        }
        Err(e) => return Err(io(e)),
    };
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(Status::resource_exhausted(format!(
            "the action wrote {size} bytes to its {name}, more than this worker's max_log_bytes \
             of {limit}"
        )));
    }
    let digest = outputs::hash_reader(file).map_err(io)?;
    Ok(Log {
        digest,
        data: BlobData::File(path),
    })
}

/// Refuses captured outputs whose written files (the ones to upload) hold
/// more than `limit` bytes.
fn check_output_bytes(captured: &CapturedOutputs, limit: u64) -> Result<(), Status> {
    let total = captured
        .blobs
        .iter()
        .filter(|(_, data)| matches!(data, BlobData::File(_)))
        .fold(0u64, |sum, (digest, _)| sum.saturating_add(digest.size()));
    if total > limit {
        return Err(Status::resource_exhausted(format!(
            "the action's outputs hold at least {total} bytes, more than this worker's \
             max_output_bytes of {limit}"
        )));
    }
    Ok(())
}

/// Outputs from the mount's node table: input files keep their known
/// digests, written files are hashed by the vfs.
async fn capture_from_mount(mount: &Mount, command: &Command) -> Result<CapturedOutputs, Status> {
    let declared = outputs::declared_outputs(command);
    let mut full_paths = Vec::new();
    for (path, _) in &declared {
        let full = paths::output_path(&command.working_directory, path)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        full_paths.push(full.to_string_lossy().into_owned());
    }
    let captured = mount
        .capture(&full_paths)
        .await
        .map_err(|e| match e.missing_blob() {
            Some(digest) => missing_blob_status(digest),
            None => Status::new(e.code(), format!("capturing outputs: {e}")),
        })?;
    let mut by_path: std::collections::HashMap<String, CapturedOutput> = captured
        .into_iter()
        .map(|c| (captured_path(&c).to_string(), c))
        .collect();
    let mut out = CapturedOutputs::default();
    let mut seen = std::collections::HashSet::new();
    for ((path, declared), full) in declared.into_iter().zip(full_paths) {
        let Some(captured) = by_path.remove(&full) else {
            continue;
        };
        match captured {
            CapturedOutput::File { file, .. } => {
                declared.check_file(path)?;
                out.files.push(OutputFile {
                    path: path.to_string(),
                    digest: Some(file.digest.to_proto()),
                    is_executable: file.is_executable,
                    ..Default::default()
                });
                add_file(&mut out, &mut seen, &file);
            }
            CapturedOutput::Symlink { target, .. } => {
                out.add_symlink(
                    OutputSymlink {
                        path: path.to_string(),
                        target,
                        node_properties: None,
                    },
                    declared,
                );
            }
            CapturedOutput::Directory { tree, files, .. } => {
                declared.check_directory(path)?;
                for file in &files {
                    add_file(&mut out, &mut seen, file);
                }
                out.add_directory(path, &tree, &mut seen);
            }
        }
    }
    Ok(out)
}

fn captured_path(output: &CapturedOutput) -> &str {
    match output {
        CapturedOutput::File { path, .. }
        | CapturedOutput::Symlink { path, .. }
        | CapturedOutput::Directory { path, .. } => path,
    }
}

/// Lists a written file for upload; input files are in the CAS already.
fn add_file(
    out: &mut CapturedOutputs,
    seen: &mut std::collections::HashSet<Digest>,
    file: &lazybarn_vfs::CapturedFile,
) {
    if let BlobLocation::Local(path) = &file.location {
        outputs::add_blob(
            &mut out.blobs,
            seen,
            file.digest,
            BlobData::File(path.clone()),
        );
    }
}
