//! Output capture: after the command, the worker asks the mount about the
//! paths the action names as outputs. Capture walks the node table, not the
//! disk: an input file's digest is already known and never re-read; a file
//! the action wrote is hashed once. Directories become REAPI Tree messages.
//! Uploading is the worker's job.
//!
//! A name that is not UTF-8 fails the capture, naming it: REAPI names are
//! strings, and a lossy conversion could make two names one and drop an
//! output. The table is a tree (a directory has one parent, and rename
//! refuses to move one below itself), so a directory met twice in a walk
//! means the table is broken: that is an internal error, never a loop or a
//! silently different Tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
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
            self.load_subtree(path, ino).await?;
            let snap = snapshot(&self.table.lock(), path, ino)?;
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

    /// Loads every input directory below `ino`, the output `path`.
    async fn load_subtree(self: &Arc<Self>, path: &str, ino: Ino) -> Result<()> {
        let mut pending = vec![ino];
        let mut expanded = HashSet::new();
        while let Some(dir) = pending.pop() {
            let children = match self.table.lock().children(dir) {
                Ok(children) => Ok(children.values().copied().collect::<Vec<_>>()),
                Err(Pending::Load(_)) => Err(true),
                Err(Pending::Errno(_)) => Err(false),
            };
            match children {
                Ok(children) => {
                    if !expanded.insert(dir) {
                        return Err(met_twice(path, dir));
                    }
                    pending.extend(children);
                }
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

/// Copies node `ino`, the output `path`, out of the table; a directory with
/// everything below it.
fn snapshot(table: &NodeTable, path: &str, ino: Ino) -> Result<Snap> {
    Ok(match table.get(ino).map(|node| &node.kind) {
        Ok(NodeKind::Dir { .. }) if table.children(ino).is_ok() => {
            Snap::Dir(snapshot_dirs(table, path, ino)?)
        }
        _ => leaf(table, ino).map_or(Snap::Other, Snap::Leaf),
    })
}

/// Every directory below `top` (included), breadth first, without
/// recursion: directory `i` of the result is `found[i]`, and a directory is
/// found while its parent is copied, so it always comes later. Directories
/// not loaded and specials are left out; a name that is not UTF-8 or a
/// directory met twice is an error.
fn snapshot_dirs(table: &NodeTable, path: &str, top: Ino) -> Result<Vec<BTreeMap<String, Entry>>> {
    let mut found = vec![top];
    // Each found directory's parent (its index in `found`) and name, to
    // name a bad entry's path without keeping every directory's path.
    let mut places: Vec<Option<(usize, &OsStr)>> = vec![None];
    let mut seen = HashSet::from([top]);
    let mut dirs = Vec::new();
    while let Some(&dir) = found.get(dirs.len()) {
        let here = dirs.len();
        let mut entries = BTreeMap::new();
        for (name, &child) in table.children(dir).into_iter().flatten() {
            let is_dir = matches!(
                table.get(child).map(|node| &node.kind),
                Ok(NodeKind::Dir { .. })
            );
            let entry = if is_dir {
                if table.children(child).is_err() {
                    continue;
                }
                if !seen.insert(child) {
                    return Err(met_twice(path, child));
                }
                found.push(child);
                places.push(Some((here, name.as_os_str())));
                Entry::Dir(found.len() - 1)
            } else {
                match leaf(table, child) {
                    Some(leaf) => Entry::Leaf(leaf),
                    None => continue,
                }
            };
            let Some(utf8) = name.to_str() else {
                return Err(VfsError::OutputNameNotUtf8 {
                    path: path_of(path, &places, here).join(name),
                });
            };
            entries.insert(utf8.to_string(), entry);
        }
        dirs.push(entries);
    }
    Ok(dirs)
}

/// The path of found directory `index`: the output's, then each name on
/// the way down.
fn path_of(output: &str, places: &[Option<(usize, &OsStr)>], mut index: usize) -> PathBuf {
    let mut names = Vec::new();
    while let Some(Some((parent, name))) = places.get(index) {
        names.push(*name);
        index = *parent;
    }
    let mut path = PathBuf::from(output);
    path.extend(names.into_iter().rev());
    path
}

/// A directory met twice while walking the output `path`.
fn met_twice(path: &str, ino: Ino) -> VfsError {
    VfsError::io(
        format!("capturing output {path:?}"),
        std::io::Error::other(format!(
            "directory inode {ino} is met twice below it: the mount's node table is not a tree"
        )),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_cache::BlobCache;
    use crate::error::FailureKind;
    use crate::input_tree::root_meta;
    use crate::node::{Children, EntryCaps, Node};
    use crate::source::BlobSource;
    use crate::testing::MapSource;

    use crate::testing::OWNER;

    /// A core whose root is loaded and holds one created directory `d`
    /// under `names`, with `d` itself under `inner` in `d`: a table that is
    /// not a tree, which no request can make.
    fn broken_core(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        names: &[&str],
        inner: Option<&str>,
    ) -> Arc<VfsCore> {
        let cache = BlobCache::open(&dir.join("cache"), 1 << 20).expect("cache");
        let source: Arc<dyn BlobSource> = Arc::new(MapSource::default());
        let caps = EntryCaps {
            input: 10,
            created: 10,
        };
        let core = VfsCore::new(
            Digest::EMPTY,
            caps,
            cache,
            source,
            dir.join("scratch"),
            OWNER,
            rt.handle().clone(),
        );
        {
            let mut table = core.table.lock();
            let loaded = |parent| NodeKind::Dir {
                parent,
                children: Children::Loaded(BTreeMap::new()),
            };
            table.get_mut(ROOT).expect("root").kind = loaded(ROOT);
            let d = table.insert(Node::created(loaded(ROOT), root_meta(OWNER)));
            let root = table.children_mut(ROOT).expect("root");
            for name in names {
                root.insert((*name).into(), d);
            }
            if let Some(inner) = inner {
                table.children_mut(d).expect("d").insert(inner.into(), d);
            }
        }
        Arc::new(core)
    }

    fn assert_met_twice(error: VfsError) {
        assert_eq!(error.kind(), FailureKind::Internal, "{error}");
        let message = error.to_string();
        assert!(
            message.contains("\"out\"") && message.contains("met twice"),
            "{message}"
        );
    }

    #[test]
    fn a_directory_met_twice_is_an_internal_error_in_load_and_snapshot() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        // Under two names, and inside itself (load_subtree used to loop).
        for (names, inner) in [(&["a", "b"][..], None), (&["a"][..], Some("self"))] {
            let core = broken_core(&rt, dir.path(), names, inner);
            let loaded = rt.block_on(core.load_subtree("out", ROOT));
            assert_met_twice(loaded.expect_err("a directory met twice while loading"));
            let snap = snapshot(&core.table.lock(), "out", ROOT);
            assert_met_twice(snap.err().expect("a directory met twice while copying"));
        }
    }
}
