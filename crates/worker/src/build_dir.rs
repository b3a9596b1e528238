//! An action's directory on the worker, in either mode:
//!
//! ```text
//! {build_directory}/{execution id}/
//!     root/      the input root: a FUSE mount (virtual) or plain files (native)
//!     scratch/   files the action writes, in virtual mode
//!     stdout, stderr
//! ```
//!
//! [`ActionDirectory::destroy`] unmounts and removes all of it.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::{Command, OutputFile, OutputSymlink};
use lazybarn_vfs::{BlobCache, BlobLocation, BlobSource, CapturedOutput, Mount, MountConfig};
use tonic::Status;

use crate::action::missing_blob_status;
use crate::config::BuildMode;
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
}

/// One action's directory.
pub struct ActionDirectory {
    base: PathBuf,
    root: PathBuf,
    mount: Option<Mount>,
    native_stats: FetchStats,
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
        let io = |e: std::io::Error| {
            Status::internal(format!("creating action directory {}: {e}", base.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(io)?;
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).map_err(io)?;
        let mut directory = ActionDirectory {
            base,
            root,
            mount: None,
            native_stats: FetchStats::default(),
        };
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
        let mount = Mount::new(
            &self.root,
            &self.base.join("scratch"),
            root,
            context.cache.clone(),
            context.source.clone(),
            context.mount,
        )
        .await
        .map_err(|e| match e.missing_blob() {
            Some(digest) => missing_blob_status(digest),
            None => Status::internal(format!("mounting the input root {root}: {e}")),
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
            context.fetch_concurrency,
            native::InputFiles::for_action_uid(context.mount.input_uid),
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

    /// A CAS read that failed while the command ran (virtual mode), which
    /// explains a command that failed on EIO.
    pub fn first_fetch_failure(&self) -> Option<Status> {
        let failure = self.mount.as_ref()?.failures().into_iter().next()?;
        if failure.missing {
            return Some(missing_blob_status(failure.digest));
        }
        Some(Status::unavailable(format!(
            "reading input {} from the CAS failed while the action ran: {}",
            failure.digest, failure.message
        )))
    }

    /// Creates the parent directories of every declared output.
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
        tokio::task::spawn_blocking(move || {
            for dir in std::iter::once(working).chain(parents) {
                create_writable(&root, &dir).map_err(|e| {
                    Status::failed_precondition(format!(
                        "creating output directory {}: {e}",
                        dir.display()
                    ))
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
                tokio::task::spawn_blocking(move || outputs::capture(&root, &command))
                    .await
                    .map_err(|e| Status::internal(format!("capturing outputs: {e}")))?
                    .map_err(|e| Status::internal(e.to_string()))
            }
            Some(mount) => capture_from_mount(mount, command).await,
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
        let removed = tokio::task::spawn_blocking(move || fs::remove_dir_all(&base)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(dir = %self.base.display(), error = %e, "removing an action directory");
        }
    }
}

/// Creates `relative` and its missing parents under `root`, each writable
/// by the action's uid (the worker runs as root; the umask would narrow
/// the mode, so it is set explicitly).
fn create_writable(root: &Path, relative: &Path) -> std::io::Result<()> {
    let mut path = root.to_path_buf();
    for component in relative.components() {
        path.push(component);
        match fs::DirBuilder::new().mode(0o777).create(&path) {
            Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(0o777))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
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
        .map_err(|e| Status::internal(format!("capturing outputs: {e}")))?;
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
