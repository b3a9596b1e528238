//! Output capture: after the command, the worker asks the mount about the
//! paths the action names as outputs. Capture walks the node table, not the
//! disk: an input file's digest is already known and never re-read; a file
//! the action wrote is hashed once. Directories become REAPI Tree messages.
//! Uploading is the worker's job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode, Tree};
use prost::Message;

use crate::blob_cache::hash_file;
use crate::core::VfsCore;
use crate::error::{Result, VfsError};
use crate::node::{Ino, NodeKind, NodeTable, Pending, ROOT};

/// Where a captured file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobLocation {
    /// An input file: the CAS has it already.
    Cas,
    /// A file the action wrote: upload it from this path (valid until unmount).
    Local(PathBuf),
}

/// A captured regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFile {
    /// Its contents' digest.
    pub digest: Digest,
    /// Whether its owner may execute it.
    pub is_executable: bool,
    /// Where its bytes are.
    pub location: BlobLocation,
}

/// One output path as the action left it.
#[derive(Clone, Debug, PartialEq)]
pub enum CapturedOutput {
    /// A regular file.
    File {
        /// The path as asked for.
        path: String,
        /// The file.
        file: CapturedFile,
    },
    /// A symbolic link (never followed).
    Symlink {
        /// The path as asked for.
        path: String,
        /// Its target.
        target: String,
    },
    /// A directory, as a Tree.
    Directory {
        /// The path as asked for.
        path: String,
        /// The directory and everything below it.
        tree: Tree,
        /// Every distinct file in the tree, for upload.
        files: Vec<CapturedFile>,
    },
}

/// A file or symlink copied out of the node table.
enum Leaf {
    File {
        ino: Ino,
        input: Option<Digest>,
        executable: bool,
    },
    Symlink(String),
}

/// One entry of a copied directory; a subdirectory is its index in the
/// list of directories copied with it (always after its parent's).
enum Entry {
    Leaf(Leaf),
    Dir(usize),
}

/// An output as copied out of the node table, so hashing runs without the
/// lock. A directory is a flat list, never a nested value: the action
/// chooses the depth, and neither building nor dropping this may recurse.
enum Snap {
    Leaf(Leaf),
    /// Every directory of the subtree, the output directory first; each
    /// maps names to entries.
    Dir(Vec<BTreeMap<String, Entry>>),
    Other,
}

impl VfsCore {
    /// Captures each path that exists; missing ones are simply absent.
    pub async fn capture(self: &Arc<Self>, paths: &[String]) -> Result<Vec<CapturedOutput>> {
        let mut outputs = Vec::new();
        let mut hashed = HashMap::new();
        for path in paths {
            let components = split(path)?;
            let Some(ino) = self.resolve(&components).await? else {
                continue;
            };
            self.load_subtree(ino).await?;
            let snap = snapshot(&self.table.lock(), ino);
            if let Some(output) = self.materialize(path, snap, &mut hashed).await? {
                outputs.push(output);
            }
        }
        Ok(outputs)
    }

    async fn resolve(self: &Arc<Self>, components: &[String]) -> Result<Option<Ino>> {
        loop {
            let step = {
                let table = self.table.lock();
                let mut ino = ROOT;
                let mut step = Ok(Some(ROOT));
                for name in components {
                    match table.child(ino, name.as_ref()) {
                        Ok(child) => ino = child,
                        Err(Pending::Load(dir)) => {
                            step = Err(dir);
                            break;
                        }
                        Err(Pending::Errno(_)) => {
                            step = Ok(None);
                            break;
                        }
                    }
                    step = Ok(Some(ino));
                }
                step
            };
            match step {
                Ok(found) => return Ok(found),
                Err(dir) => self.load_dir(dir).await.map_err(unshare)?,
            }
        }
    }

    /// Loads every input directory below `ino`.
    async fn load_subtree(self: &Arc<Self>, ino: Ino) -> Result<()> {
        let mut pending = vec![ino];
        while let Some(dir) = pending.pop() {
            let children = match self.table.lock().children(dir) {
                Ok(children) => Ok(children.values().copied().collect::<Vec<_>>()),
                Err(Pending::Load(_)) => Err(true),
                Err(Pending::Errno(_)) => Err(false),
            };
            match children {
                Ok(children) => pending.extend(children),
                Err(true) => {
                    self.load_dir(dir).await.map_err(unshare)?;
                    pending.push(dir);
                }
                Err(false) => {}
            }
        }
        Ok(())
    }

    async fn file_digest(&self, ino: Ino, hashed: &mut HashMap<Ino, Digest>) -> Result<Digest> {
        if let Some(digest) = hashed.get(&ino) {
            return Ok(*digest);
        }
        let path = self.scratch_path(ino);
        let digest = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| {
                VfsError::io("hashing an output", std::io::Error::other(e.to_string()))
            })??;
        hashed.insert(ino, digest);
        Ok(digest)
    }

    async fn captured_file(
        &self,
        ino: Ino,
        input: Option<Digest>,
        executable: bool,
        hashed: &mut HashMap<Ino, Digest>,
    ) -> Result<CapturedFile> {
        Ok(match input {
            Some(digest) => CapturedFile {
                digest,
                is_executable: executable,
                location: BlobLocation::Cas,
            },
            None => CapturedFile {
                digest: self.file_digest(ino, hashed).await?,
                is_executable: executable,
                location: BlobLocation::Local(self.scratch_path(ino)),
            },
        })
    }

    async fn materialize(
        &self,
        path: &str,
        snap: Snap,
        hashed: &mut HashMap<Ino, Digest>,
    ) -> Result<Option<CapturedOutput>> {
        let path = path.to_string();
        Ok(match snap {
            Snap::Leaf(Leaf::File {
                ino,
                input,
                executable,
            }) => Some(CapturedOutput::File {
                path,
                file: self.captured_file(ino, input, executable, hashed).await?,
            }),
            Snap::Leaf(Leaf::Symlink(target)) => Some(CapturedOutput::Symlink { path, target }),
            Snap::Dir(dirs) => {
                let (tree, files) = self.tree(dirs, hashed).await?;
                Some(CapturedOutput::Directory { path, tree, files })
            }
            Snap::Other => None,
        })
    }

    /// Builds the Tree of a copied directory bottom-up: directories are
    /// visited last to first, so each one's subdirectories already have
    /// their digests. Returns the Tree and every distinct file in it.
    async fn tree(
        &self,
        dirs: Vec<BTreeMap<String, Entry>>,
        hashed: &mut HashMap<Ino, Digest>,
    ) -> Result<(Tree, Vec<CapturedFile>)> {
        let mut digests: Vec<Option<Digest>> = vec![None; dirs.len()];
        let mut children = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut root = None;
        for (index, entries) in dirs.into_iter().enumerate().rev() {
            let mut directory = Directory::default();
            for (name, entry) in entries {
                match entry {
                    Entry::Leaf(Leaf::File {
                        ino,
                        input,
                        executable,
                    }) => {
                        let file = self.captured_file(ino, input, executable, hashed).await?;
                        directory.files.push(FileNode {
                            name,
                            digest: Some(file.digest.to_proto()),
                            is_executable: executable,
                            node_properties: None,
                        });
                        files.entry(file.digest).or_insert(file);
                    }
                    Entry::Leaf(Leaf::Symlink(target)) => directory.symlinks.push(SymlinkNode {
                        name,
                        target,
                        node_properties: None,
                    }),
                    Entry::Dir(child) => {
                        let digest = digests
                            .get(child)
                            .copied()
                            .flatten()
                            .expect("a subdirectory comes after its parent in the copy");
                        directory.directories.push(DirectoryNode {
                            name,
                            digest: Some(digest.to_proto()),
                        });
                    }
                }
            }
            let digest = Digest::of(&directory.encode_to_vec());
            digests[index] = Some(digest);
            if index == 0 {
                root = Some(directory);
            } else {
                children.entry(digest).or_insert(directory);
            }
        }
        let tree = Tree {
            root,
            children: children.into_values().collect(),
        };
        Ok((tree, files.into_values().collect()))
    }
}

/// Copies node `ino` out of the table; a directory with everything below it.
fn snapshot(table: &NodeTable, ino: Ino) -> Snap {
    match table.get(ino).map(|node| &node.kind) {
        Ok(NodeKind::Dir { .. }) if table.children(ino).is_ok() => {
            Snap::Dir(snapshot_dirs(table, ino))
        }
        _ => leaf(table, ino).map_or(Snap::Other, Snap::Leaf),
    }
}

/// Every directory below `top` (included), breadth first, without
/// recursion: directory `i` of the result is `found[i]`, and a directory is
/// found while its parent is copied, so it always comes later. Directories
/// not loaded, specials and nodes already seen are left out.
fn snapshot_dirs(table: &NodeTable, top: Ino) -> Vec<BTreeMap<String, Entry>> {
    let mut found = vec![top];
    let mut seen = HashSet::from([top]);
    let mut dirs = Vec::new();
    while let Some(&dir) = found.get(dirs.len()) {
        let named: BTreeMap<String, Ino> = match table.children(dir) {
            Ok(children) => children
                .iter()
                .map(|(name, &child)| (name.to_string_lossy().into_owned(), child))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        let mut entries = BTreeMap::new();
        for (name, child) in named {
            let is_dir = matches!(
                table.get(child).map(|node| &node.kind),
                Ok(NodeKind::Dir { .. })
            );
            let entry = if is_dir {
                if table.children(child).is_err() || !seen.insert(child) {
                    continue;
                }
                found.push(child);
                Entry::Dir(found.len() - 1)
            } else {
                match leaf(table, child) {
                    Some(leaf) => Entry::Leaf(leaf),
                    None => continue,
                }
            };
            entries.insert(name, entry);
        }
        dirs.push(entries);
    }
    dirs
}

/// A file or symlink node as capture sees it; None for anything else.
fn leaf(table: &NodeTable, ino: Ino) -> Option<Leaf> {
    let node = table.get(ino).ok()?;
    let executable = node.meta.perm & 0o100 != 0;
    match &node.kind {
        NodeKind::InputFile { digest } => Some(Leaf::File {
            ino,
            input: Some(*digest),
            executable,
        }),
        NodeKind::ScratchFile => Some(Leaf::File {
            ino,
            input: None,
            executable,
        }),
        NodeKind::Symlink { target } => Some(Leaf::Symlink(target.to_string_lossy().into_owned())),
        _ => None,
    }
}
/// The components of a relative output path; "." and empty ones are skipped.
fn split(path: &str) -> Result<Vec<String>> {
    if path.starts_with('/') {
        return Err(VfsError::InvalidOutputPath(path.to_string()));
    }
    let mut components = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(VfsError::InvalidOutputPath(path.to_string())),
            name => components.push(name.to_string()),
        }
    }
    Ok(components)
}

/// An error shared by every waiter of one load, as a value of its own.
pub(crate) fn unshare(error: Arc<VfsError>) -> VfsError {
    Arc::try_unwrap(error).unwrap_or_else(|shared| match &*shared {
        VfsError::Fetch {
            what,
            digest,
            message,
            code,
        } => VfsError::Fetch {
            what,
            digest: *digest,
            message: message.clone(),
            code: *code,
        },
        VfsError::Corrupt { digest, actual } => VfsError::Corrupt {
            digest: *digest,
            actual: *actual,
        },
        VfsError::InvalidInputRoot(why) => VfsError::InvalidInputRoot(why.clone()),
        VfsError::InputTooLarge {
            digest,
            entries,
            limit,
        } => VfsError::InputTooLarge {
            digest: *digest,
            entries: *entries,
            limit: *limit,
        },
        other => VfsError::io(
            "loading the input tree",
            std::io::Error::other(other.to_string()),
        ),
    })
}
