//! Output capture from a plain directory (the native build-directory mode):
//! after the command exits, each output the action declared is looked up,
//! files are hashed, directories become REAPI `Tree` messages, and the
//! blobs to upload are listed. Missing outputs are simply absent.
//!
//! Blocking file-system code: call it from `spawn_blocking`.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::digest::DigestHasher;
use lazybarn_proto::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use prost::Message;

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
            CaptureError::Io { .. } => tonic::Status::internal(e.to_string()),
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
/// root: the worker creates them before the command runs.
pub fn output_parents(command: &Command) -> Result<Vec<PathBuf>, BadPath> {
    let mut parents = Vec::new();
    for (path, declared) in declared_outputs(command) {
        let full = paths::output_path(&command.working_directory, path)?;
        // REAPI: the directories named in output_directories themselves
        // are created too.
        if declared == Declared::Directory {
            parents.push(full.clone());
        }
        if let Some(parent) = full.parent() {
            parents.push(parent.to_path_buf());
        }
    }
    parents.sort();
    parents.dedup();
    Ok(parents)
}

/// Captures the declared outputs of `command` from the action directory
/// `root` (the input root on disk).
pub fn capture(root: &Path, command: &Command) -> Result<CapturedOutputs, CaptureError> {
    let mut out = CapturedOutputs::default();
    let mut seen = HashSet::new();
    for (path, declared) in declared_outputs(command) {
        let full = root.join(paths::output_path(&command.working_directory, path)?);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CaptureError::Io { path: full, source }),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let symlink = OutputSymlink {
                path: path.to_string(),
                target: read_link(&full)?,
                node_properties: None,
            };
            out.add_symlink(symlink, declared);
        } else if kind.is_file() {
            declared.check_file(path)?;
            let digest = hash_file(&full)?;
            out.files.push(OutputFile {
                path: path.to_string(),
                digest: Some(digest.to_proto()),
                is_executable: is_executable(&meta),
                ..Default::default()
            });
            add_blob(&mut out.blobs, &mut seen, digest, BlobData::File(full));
        } else if kind.is_dir() {
            declared.check_directory(path)?;
            let mut children = TreeBuilder::default();
            let root_dir = children.directory(&full, &mut out.blobs, &mut seen)?;
            let tree = Tree {
                root: Some(root_dir),
                children: children.children,
            };
            out.add_directory(path, &tree, &mut seen);
        } else {
            return Err(wrong_kind(
                path,
                "is neither a file, a directory nor a symlink",
            ));
        }
    }
    Ok(out)
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

/// Collects the descendants of an output directory, each once.
#[derive(Default)]
struct TreeBuilder {
    children: Vec<Directory>,
    seen: HashSet<Digest>,
}

impl TreeBuilder {
    /// The Directory message for `dir`, its descendants added to `children`.
    fn directory(
        &mut self,
        dir: &Path,
        blobs: &mut Vec<(Digest, BlobData)>,
        seen_blobs: &mut HashSet<Digest>,
    ) -> Result<Directory, CaptureError> {
        let io = |source| CaptureError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<(String, PathBuf, fs::Metadata)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|source| CaptureError::Io {
                path: path.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            entries.push((name, path, meta));
        }
        // REAPI requires the children of a Directory sorted by name.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut directory = Directory::default();
        for (name, path, meta) in entries {
            let kind = meta.file_type();
            if kind.is_symlink() {
                directory.symlinks.push(SymlinkNode {
                    name,
                    target: read_link(&path)?,
                    node_properties: None,
                });
            } else if kind.is_file() {
                let digest = hash_file(&path)?;
                directory.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(&meta),
                    node_properties: None,
                });
                add_blob(blobs, seen_blobs, digest, BlobData::File(path));
            } else if kind.is_dir() {
                let child = self.directory(&path, blobs, seen_blobs)?;
                let digest = Digest::of(&child.encode_to_vec());
                if self.seen.insert(digest) {
                    self.children.push(child);
                }
                directory.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                });
            } else {
                return Err(CaptureError::WrongKind {
                    path: path.display().to_string(),
                    reason: "is neither a file, a directory nor a symlink".to_string(),
                });
            }
        }
        Ok(directory)
    }
}

fn is_executable(meta: &fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

fn read_link(path: &Path) -> Result<String, CaptureError> {
    let target = fs::read_link(path).map_err(|source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(target.to_string_lossy().into_owned())
}

/// Hashes a file in 1 MiB reads.
pub fn hash_file(path: &Path) -> Result<Digest, CaptureError> {
    let io = |source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = DigestHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
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
        let captured = capture(root.path(), &cmd).expect("capture");
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
        let captured = capture(root.path(), &cmd).expect("capture");
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
        let err = capture(root.path(), &command(&[], &["f"], &[], "")).expect_err("file as dir");
        assert!(err.to_string().contains("\"f\""), "{err}");
        assert!(capture(root.path(), &command(&["d"], &[], &[], "")).is_err());
        let err = capture(root.path(), &command(&["../etc/passwd"], &[], &[], "")).expect_err("..");
        assert!(err.to_string().contains(".."), "{err}");
    }

    #[test]
    fn output_parents_cover_every_declared_output() {
        let cmd = command(&["a/b/c.o"], &["gen/dir"], &[], "wd");
        let parents = output_parents(&cmd).expect("parents");
        assert_eq!(
            parents,
            vec![
                PathBuf::from("wd/a/b"),
                PathBuf::from("wd/gen"),
                PathBuf::from("wd/gen/dir")
            ]
        );
        let modern = command(&["ignored/x"], &[], &["p/q"], "");
        assert_eq!(
            output_parents(&modern).expect("parents"),
            vec![PathBuf::from("p")]
        );
    }
}
