//! Output capture from a plain directory (the native build-directory mode):
//! after the command exits, each output the action declared is looked up,
//! files are hashed, directories become REAPI `Tree` messages, and the
//! blobs to upload are listed. Missing outputs are simply absent. Every
//! lookup goes through [`crate::confined`]: an output whose parents hold a
//! symlink is refused, and a directory of any depth is walked without
//! recursion.
//!
//! Blocking file-system code: call it from `spawn_blocking`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::digest::DigestHasher;
use lazybarn_proto::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use prost::Message;
use rustix::fs::{FileType, Stat};

use crate::confined::{ConfinedDir, Visitor, WalkError, walk};
use crate::paths::{self, BadPath};

/// What went wrong capturing an output.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The action named an unusable path.
    #[error(transparent)]
    BadPath(#[from] BadPath),
    /// An output exists but is of a kind the action did not declare.
    #[error("output {path:?} {reason}")]
    WrongKind {
        /// The output path as declared.
        path: String,
        /// What it is instead.
        reason: String,
    },
    /// The outputs hold more bytes than the worker accepts.
    #[error(
        "the action's outputs hold at least {at_least} bytes, more than this worker's \
         max_output_bytes of {limit}"
    )]
    TooLarge {
        /// The cap.
        limit: u64,
        /// What was counted when it was passed.
        at_least: u64,
    },
    /// The walk of an output directory failed.
    #[error("reading an output directory: {0}")]
    Walk(#[from] WalkError),
    /// Reading the output failed.
    #[error("reading output {path}: {source}")]
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where the bytes of a blob to upload are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobData {
    /// In memory (Tree messages).
    Bytes(Bytes),
    /// In a file of the action's directory.
    File(PathBuf),
}

/// The outputs of one action, ready to go into an ActionResult.
#[derive(Debug, Default)]
pub struct CapturedOutputs {
    /// Regular files.
    pub files: Vec<OutputFile>,
    /// Directories, each as a Tree blob.
    pub directories: Vec<OutputDirectory>,
    /// Symlinks, whatever they were declared as.
    pub symlinks: Vec<OutputSymlink>,
    /// Symlinks declared through the deprecated `output_files`.
    pub file_symlinks: Vec<OutputSymlink>,
    /// Symlinks declared through the deprecated `output_directories`.
    pub directory_symlinks: Vec<OutputSymlink>,
    /// Every blob the result refers to, once each.
    pub blobs: Vec<(Digest, BlobData)>,
}

impl CapturedOutputs {
    /// Moves the outputs into `result`, returning the blobs to upload.
    // The deprecated symlink lists are what Bazel 4 reads.
    #[allow(deprecated)]
    pub fn into_result(self, result: &mut ActionResult) -> Vec<(Digest, BlobData)> {
        result.output_files = self.files;
        result.output_directories = self.directories;
        result.output_symlinks = self.symlinks;
        result.output_file_symlinks = self.file_symlinks;
        result.output_directory_symlinks = self.directory_symlinks;
        self.blobs
    }
}

/// How an output was declared, which decides what kinds it may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// `output_paths` (REAPI 2.1+): any kind.
    Path,
    /// `output_files`: a file or a symlink.
    File,
    /// `output_directories`: a directory or a symlink.
    Directory,
}

impl Declared {
    /// Refuses a regular file where a directory was declared.
    pub fn check_file(self, path: &str) -> Result<(), CaptureError> {
        if self == Declared::Directory {
            return Err(wrong_kind(path, "was declared a directory but is a file"));
        }
        Ok(())
    }

    /// Refuses a directory where a file was declared.
    pub fn check_directory(self, path: &str) -> Result<(), CaptureError> {
        if self == Declared::File {
            return Err(wrong_kind(path, "was declared a file but is a directory"));
        }
        Ok(())
    }
}

impl CapturedOutputs {
    /// Records a directory output as a Tree blob.
    pub fn add_directory(&mut self, path: &str, tree: &Tree, seen: &mut HashSet<Digest>) {
        let bytes = Bytes::from(tree.encode_to_vec());
        let digest = Digest::of(&bytes);
        self.directories.push(OutputDirectory {
            path: path.to_string(),
            tree_digest: Some(digest.to_proto()),
            is_topologically_sorted: false,
            root_directory_digest: None,
        });
        add_blob(&mut self.blobs, seen, digest, BlobData::Bytes(bytes));
    }

    /// Records a symlink output, also in the deprecated list its declaration
    /// belongs to.
    pub fn add_symlink(&mut self, symlink: OutputSymlink, declared: Declared) {
        match declared {
            Declared::File => self.file_symlinks.push(symlink.clone()),
            Declared::Directory => self.directory_symlinks.push(symlink.clone()),
            Declared::Path => {}
        }
        self.symlinks.push(symlink);
    }
}

impl From<CaptureError> for tonic::Status {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::BadPath(_) | CaptureError::WrongKind { .. } => {
                tonic::Status::invalid_argument(e.to_string())
            }
            CaptureError::TooLarge { .. }
            | CaptureError::Walk(WalkError::TooManyEntries { .. }) => {
                tonic::Status::resource_exhausted(e.to_string())
            }
            CaptureError::Io { .. } | CaptureError::Walk(_) => {
                tonic::Status::internal(e.to_string())
            }
        }
    }
}

/// The outputs a Command declares, with how each was declared. Where
/// `output_paths` is set, the deprecated fields are ignored, as REAPI says.
// Bazel 4 names outputs only through the deprecated fields.
#[allow(deprecated)]
pub fn declared_outputs(command: &Command) -> Vec<(&str, Declared)> {
    if !command.output_paths.is_empty() {
        return command
            .output_paths
            .iter()
            .map(|p| (p.as_str(), Declared::Path))
            .collect();
    }
    let files = command
        .output_files
        .iter()
        .map(|p| (p.as_str(), Declared::File));
    let directories = command
        .output_directories
        .iter()
        .map(|p| (p.as_str(), Declared::Directory));
    files.chain(directories).collect()
}

/// The parent directories of every declared output, relative to the input
/// root, each with the first output that needs it: the worker creates them
/// before the command runs.
pub fn output_parents(command: &Command) -> Result<Vec<(PathBuf, String)>, BadPath> {
    let mut parents: Vec<(PathBuf, String)> = Vec::new();
    for (path, declared) in declared_outputs(command) {
        let full = paths::output_path(&command.working_directory, path)?;
        // REAPI: the directories named in output_directories themselves
        // are created too.
        if declared == Declared::Directory {
            parents.push((full.clone(), path.to_string()));
        }
        if let Some(parent) = full.parent() {
            parents.push((parent.to_path_buf(), path.to_string()));
        }
    }
    parents.sort();
    parents.dedup_by(|a, b| a.0 == b.0);
    Ok(parents)
}

/// The caps on what capture reads.
#[derive(Clone, Copy, Debug)]
pub struct OutputLimits {
    /// Most bytes of files among the outputs (`max_output_bytes`).
    pub max_bytes: u64,
    /// Most entries in all output directories (`max_created_entries`).
    pub max_entries: u64,
}

impl OutputLimits {
    /// No cap at all.
    pub const NONE: OutputLimits = OutputLimits {
        max_bytes: u64::MAX,
        max_entries: u64::MAX,
    };
}

/// Captures the declared outputs of `command` from the action directory
/// `root` (the input root on disk), never following a symlink on the way
/// and never holding more than one directory open, within `limits`.
pub fn capture(
    root: &Path,
    command: &Command,
    limits: OutputLimits,
) -> Result<CapturedOutputs, CaptureError> {
    let top = ConfinedDir::open(root).map_err(|source| CaptureError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut out = CapturedOutputs::default();
    let mut seen = HashSet::new();
    let mut budget = OutputBudget::new(limits);
    for (path, declared) in declared_outputs(command) {
        let relative = paths::output_path(&command.working_directory, path)?;
        let Some(found) = find_output(&top, &relative, path)? else {
            continue;
        };
        let (dir, name, stat) = found;
        let full = root.join(&relative);
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                let symlink = OutputSymlink {
                    path: path.to_string(),
                    target: read_link(&dir, &name, &full)?,
                    node_properties: None,
                };
                out.add_symlink(symlink, declared);
            }
            FileType::RegularFile => {
                declared.check_file(path)?;
                budget.spend(stat.st_size as u64)?;
                let digest = hash_entry(&dir, &name, &full)?;
                out.files.push(OutputFile {
                    path: path.to_string(),
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(&stat),
                    ..Default::default()
                });
                add_blob(&mut out.blobs, &mut seen, digest, BlobData::File(full));
            }
            FileType::Directory => {
                declared.check_directory(path)?;
                let below = dir
                    .open_dir(Path::new(&name))
                    .map_err(|source| CaptureError::Io {
                        path: full.clone(),
                        source,
                    })?;
                let left = budget.entries_left();
                let mut builder = TreeBuilder::new(full, &mut out.blobs, &mut seen, &mut budget);
                walk(below, &mut builder, left)?;
                let tree = builder.finish();
                out.add_directory(path, &tree, &mut seen);
            }
            _ => {
                return Err(wrong_kind(
                    path,
                    "is neither a file, a directory nor a symlink",
                ));
            }
        }
    }
    Ok(out)
}

/// The directory holding the output at `relative`, its name there and its
/// status; `None` when it does not exist. A symlink or file among its
/// parents is an error naming the output, not a path to follow.
fn find_output(
    top: &ConfinedDir,
    relative: &Path,
    declared: &str,
) -> Result<Option<(ConfinedDir, std::ffi::OsString, Stat)>, CaptureError> {
    let name = relative
        .file_name()
        .expect("output paths are checked non-empty")
        .to_os_string();
    let parent = relative.parent().unwrap_or(Path::new(""));
    let dir = match top.open_dir(parent) {
        Ok(dir) => dir,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV)
            ) =>
        {
            return Err(CaptureError::BadPath(BadPath {
                what: "output path",
                path: declared.to_string(),
                reason: "has a symlink or a file among its parents; the worker never follows one",
            }));
        }
        Err(source) => {
            return Err(CaptureError::Io {
                path: parent.to_path_buf(),
                source,
            });
        }
    };
    let stat = dir.stat(&name).map_err(|source| CaptureError::Io {
        path: relative.to_path_buf(),
        source,
    })?;
    Ok(stat.map(|stat| (dir, name, stat)))
}

/// How many bytes of files, and how many entries, the outputs may still
/// hold.
struct OutputBudget {
    limit: u64,
    spent: u64,
    max_entries: u64,
    entries: u64,
}

impl OutputBudget {
    fn new(limits: OutputLimits) -> Self {
        OutputBudget {
            limit: limits.max_bytes,
            spent: 0,
            max_entries: limits.max_entries,
            entries: 0,
        }
    }

    /// Entries the output directories may still list.
    fn entries_left(&self) -> u64 {
        self.max_entries.saturating_sub(self.entries)
    }

    fn count_entry(&mut self) {
        self.entries = self.entries.saturating_add(1);
    }

    fn spend(&mut self, bytes: u64) -> Result<(), CaptureError> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > self.limit {
            return Err(CaptureError::TooLarge {
                limit: self.limit,
                at_least: self.spent,
            });
        }
        Ok(())
    }
}

fn wrong_kind(path: &str, reason: &str) -> CaptureError {
    CaptureError::WrongKind {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

pub(crate) fn add_blob(
    blobs: &mut Vec<(Digest, BlobData)>,
    seen: &mut HashSet<Digest>,
    digest: Digest,
    data: BlobData,
) {
    if seen.insert(digest) {
        blobs.push((digest, data));
    }
}

/// Builds an output directory's Tree as [`walk`] goes: a Directory message
/// per directory on the current path, finished when the walk leaves it.
struct TreeBuilder<'a> {
    /// The output directory's path on disk, then the path of the directory
    /// the walk is in.
    path: PathBuf,
    /// The Directory messages being built, the output directory first.
    open: Vec<Directory>,
    children: Vec<Directory>,
    seen_children: HashSet<Digest>,
    blobs: &'a mut Vec<(Digest, BlobData)>,
    seen_blobs: &'a mut HashSet<Digest>,
    budget: &'a mut OutputBudget,
}

impl<'a> TreeBuilder<'a> {
    fn new(
        path: PathBuf,
        blobs: &'a mut Vec<(Digest, BlobData)>,
        seen_blobs: &'a mut HashSet<Digest>,
        budget: &'a mut OutputBudget,
    ) -> Self {
        TreeBuilder {
            path,
            open: vec![Directory::default()],
            children: Vec::new(),
            seen_children: HashSet::new(),
            blobs,
            seen_blobs,
            budget,
        }
    }

    fn finish(mut self) -> Tree {
        Tree {
            root: self.open.pop(),
            children: self.children,
        }
    }

    fn current(&mut self) -> &mut Directory {
        self.open
            .last_mut()
            .expect("the output directory stays open")
    }
}

impl Visitor for TreeBuilder<'_> {
    type Error = CaptureError;

    // The walk reports names in order, so each list of the Directory comes
    // out sorted, as REAPI requires.
    fn entry(&mut self, dir: &ConfinedDir, name: &OsStr, stat: &Stat) -> Result<(), CaptureError> {
        self.budget.count_entry();
        let path = self.path.join(name);
        let text = name.to_string_lossy().into_owned();
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                let target = read_link(dir, name, &path)?;
                self.current().symlinks.push(SymlinkNode {
                    name: text,
                    target,
                    node_properties: None,
                });
            }
            FileType::RegularFile => {
                self.budget.spend(stat.st_size as u64)?;
                let digest = hash_entry(dir, name, &path)?;
                self.current().files.push(FileNode {
                    name: text,
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(stat),
                    node_properties: None,
                });
                add_blob(self.blobs, self.seen_blobs, digest, BlobData::File(path));
            }
            _ => {
                return Err(CaptureError::WrongKind {
                    path: path.display().to_string(),
                    reason: "is neither a file, a directory nor a symlink".to_string(),
                });
            }
        }
        Ok(())
    }

    fn enter(&mut self, _: &ConfinedDir, name: &OsStr) -> Result<(), CaptureError> {
        self.budget.count_entry();
        self.path.push(name);
        self.open.push(Directory::default());
        Ok(())
    }

    fn leave(&mut self, _: &ConfinedDir, name: &OsStr) -> Result<(), CaptureError> {
        self.path.pop();
        let child = self.open.pop().expect("entered before");
        let digest = Digest::of(&child.encode_to_vec());
        if self.seen_children.insert(digest) {
            self.children.push(child);
        }
        self.current().directories.push(DirectoryNode {
            name: name.to_string_lossy().into_owned(),
            digest: Some(digest.to_proto()),
        });
        Ok(())
    }
}

fn is_executable(stat: &Stat) -> bool {
    stat.st_mode & 0o111 != 0
}

fn read_link(dir: &ConfinedDir, name: &OsStr, path: &Path) -> Result<String, CaptureError> {
    let target = dir.read_link(name).map_err(|source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(target.to_string_lossy().into_owned())
}

/// Hashes the regular file `name` of `dir`, opened without following a
/// symlink.
fn hash_entry(dir: &ConfinedDir, name: &OsStr, path: &Path) -> Result<Digest, CaptureError> {
    let io = |source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    };
    hash_reader(dir.open_file(name).map_err(io)?).map_err(io)
}

/// Hashes everything `reader` gives, in 1 MiB reads.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<Digest> {
    let mut hasher = DigestHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[allow(deprecated)]
    fn command(files: &[&str], dirs: &[&str], paths: &[&str], wd: &str) -> Command {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Command {
            output_files: owned(files),
            output_directories: owned(dirs),
            output_paths: owned(paths),
            working_directory: wd.to_string(),
            ..Default::default()
        }
    }

    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, data: &[u8], mode: u32) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, data).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn captures_files_symlinks_and_missing_outputs_bazel4_style() {
        let root = tempfile::tempdir().expect("tempdir");
        let wd = root.path().join("pkg");
        write(&wd.join("out/a.o"), b"object", 0o644);
        write(&wd.join("out/tool"), b"#!/bin/sh\n", 0o755);
        symlink("a.o", wd.join("out/link")).expect("symlink");
        let cmd = command(
            &["out/a.o", "out/tool", "out/link", "out/missing"],
            &[],
            &[],
            "pkg",
        );
        let captured = capture(root.path(), &cmd, OutputLimits::NONE).expect("capture");
        let files: Vec<_> = captured
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.is_executable))
            .collect();
        assert_eq!(files, vec![("out/a.o", false), ("out/tool", true)]);
        assert_eq!(
            captured.files[0].digest,
            Some(Digest::of(b"object").to_proto())
        );
        assert_eq!(captured.file_symlinks.len(), 1);
        assert_eq!(captured.symlinks[0].target, "a.o");
        assert_eq!(captured.blobs.len(), 2);
    }

    #[test]
    fn directories_become_trees_with_sorted_deduplicated_children() {
        let root = tempfile::tempdir().expect("tempdir");
        let out = root.path().join("out");
        write(&out.join("b/x"), b"same", 0o644);
        write(&out.join("a/x"), b"same", 0o644);
        write(&out.join("z"), b"top", 0o755);
        symlink("z", out.join("y")).expect("symlink");
        let cmd = command(&[], &[], &["out"], "");
        let captured = capture(root.path(), &cmd, OutputLimits::NONE).expect("capture");
        assert_eq!(captured.directories.len(), 1);
        let tree_digest = captured.directories[0].tree_digest.clone().expect("tree");
        let (_, tree_bytes) = captured
            .blobs
            .iter()
            .find(|(d, _)| d.to_proto() == tree_digest)
            .expect("tree blob listed");
        let BlobData::Bytes(bytes) = tree_bytes else {
            panic!("tree is in memory")
        };
        let tree = Tree::decode(bytes.clone()).expect("tree decodes");
        let root_dir = tree.root.expect("root");
        let names: Vec<_> = root_dir
            .directories
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(root_dir.files[0].name, "z");
        assert!(root_dir.files[0].is_executable);
        assert_eq!(root_dir.symlinks[0].target, "z");
        assert_eq!(tree.children.len(), 1, "a and b are the same directory");
        // "same" and "top" once each, plus the tree.
        assert_eq!(captured.blobs.len(), 3);
    }

    #[test]
    fn declared_kind_mismatches_and_bad_paths_are_errors() {
        let root = tempfile::tempdir().expect("tempdir");
        write(&root.path().join("f"), b"x", 0o644);
        fs::create_dir(root.path().join("d")).expect("mkdir");
        let err = capture(
            root.path(),
            &command(&[], &["f"], &[], ""),
            OutputLimits::NONE,
        )
        .expect_err("file as dir");
        assert!(err.to_string().contains("\"f\""), "{err}");
        assert!(
            capture(
                root.path(),
                &command(&["d"], &[], &[], ""),
                OutputLimits::NONE
            )
            .is_err()
        );
        let err = capture(
            root.path(),
            &command(&["../etc/passwd"], &[], &[], ""),
            OutputLimits::NONE,
        )
        .expect_err("..");
        assert!(err.to_string().contains(".."), "{err}");
    }

    #[test]
    fn outputs_behind_a_symlink_are_refused_not_followed() {
        let secret = tempfile::tempdir().expect("tempdir");
        write(&secret.path().join("secret"), b"root only", 0o600);
        let root = tempfile::tempdir().expect("tempdir");
        symlink(secret.path(), root.path().join("o")).expect("symlink");
        write(&root.path().join("f"), b"file", 0o644);
        for output in ["o/secret", "f/x"] {
            let err = capture(
                root.path(),
                &command(&[output], &[], &[], ""),
                OutputLimits::NONE,
            )
            .expect_err("through a symlink or file");
            assert!(matches!(err, CaptureError::BadPath(_)), "{err}");
            assert!(err.to_string().contains(output), "{err}");
        }
        // A symlink that is itself the output is reported, not followed.
        let captured = capture(
            root.path(),
            &command(&["o"], &[], &[], ""),
            OutputLimits::NONE,
        )
        .expect("symlink output");
        assert_eq!(captured.file_symlinks.len(), 1);
        assert!(captured.blobs.is_empty());
    }

    #[test]
    fn a_very_deep_output_directory_is_captured_on_a_small_stack() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut dir = rustix::fs::openat(
            rustix::fs::CWD,
            root.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("open");
        rustix::fs::mkdirat(&dir, "out", rustix::fs::Mode::from_raw_mode(0o755)).expect("mkdir");
        let depth = 20_000;
        for name in std::iter::once("out").chain(std::iter::repeat_n("d", depth)) {
            if name == "d" {
                rustix::fs::mkdirat(&dir, "d", rustix::fs::Mode::from_raw_mode(0o755))
                    .expect("mkdir");
            }
            dir = rustix::fs::openat(
                &dir,
                name,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .expect("open");
        }
        let cmd = command(&[], &["out"], &[], "");
        let root_path = root.path().to_path_buf();
        let captured = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || capture(&root_path, &cmd, OutputLimits::NONE))
            .expect("thread")
            .join()
            .expect("no stack overflow")
            .expect("captured");
        let (_, BlobData::Bytes(bytes)) = &captured.blobs[0] else {
            panic!("the tree is in memory");
        };
        let tree = Tree::decode(bytes.clone()).expect("tree");
        assert_eq!(tree.children.len(), depth, "one Directory per level");
        crate::confined::remove_tree(root.path()).expect("removed");
    }

    #[test]
    fn outputs_over_max_output_bytes_or_entries_are_refused_naming_the_cap() {
        let root = tempfile::tempdir().expect("tempdir");
        write(&root.path().join("out/a"), &[1u8; 600], 0o644);
        write(&root.path().join("out/b"), &[2u8; 600], 0o644);
        let cmd = command(&[], &[], &["out"], "");
        let limits = |max_bytes, max_entries| OutputLimits {
            max_bytes,
            max_entries,
        };
        let err = capture(root.path(), &cmd, limits(1000, 10)).expect_err("1200 bytes over 1000");
        assert!(matches!(err, CaptureError::TooLarge { .. }), "{err}");
        assert!(
            err.to_string().contains("max_output_bytes of 1000"),
            "{err}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::ResourceExhausted
        );
        capture(root.path(), &cmd, limits(1200, 2)).expect("exactly at the caps");
        let err = capture(root.path(), &cmd, limits(1200, 1)).expect_err("2 entries over 1");
        assert!(err.to_string().contains("more than 1 files"), "{err}");
        assert!(err.to_string().contains("max_created_entries"), "{err}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn output_parents_cover_every_declared_output() {
        let cmd = command(&["a/b/c.o"], &["gen/dir"], &[], "wd");
        let parents = output_parents(&cmd).expect("parents");
        assert_eq!(
            parents,
            vec![
                (PathBuf::from("wd/a/b"), "a/b/c.o".to_string()),
                (PathBuf::from("wd/gen"), "gen/dir".to_string()),
                (PathBuf::from("wd/gen/dir"), "gen/dir".to_string())
            ]
        );
        let modern = command(&["ignored/x"], &[], &["p/q"], "");
        assert_eq!(
            output_parents(&modern).expect("parents"),
            vec![(PathBuf::from("p"), "p/q".to_string())]
        );
    }
}
