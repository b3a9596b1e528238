//! The node table: every inode of one mount, in memory.
//!
//! An inode is an input directory (its Directory digest until its children
//! are loaded), an input file (digest and executable bit), a symlink, or a
//! file, directory or special node the action created. A directory's
//! children are a name -> inode map, so rename and unlink edit maps only:
//! "deleting" an input never touches the BlobCache. Input files with the same
//! digest, executable bit and properties share one inode, so the kernel keeps
//! one page cache for all their paths.
//!
//! The table is bounded twice: entries loaded from the input root count
//! against `max_input_entries` (in `input_tree`), and names the action adds
//! (create, mknod, mkdir, symlink, link) against `max_created_entries`
//! while they live. Both guard the worker's memory, which every name costs.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileType};
use lazybarn_cas::Digest;

use crate::error::VfsError;

/// An inode number.
pub(crate) type Ino = u64;
/// The root directory's inode number, fixed by FUSE.
pub(crate) const ROOT: Ino = 1;

/// What an inode is.
pub(crate) enum NodeKind {
    /// A directory, from the input root or created by the action.
    Dir { parent: Ino, children: Children },
    /// An input file: immutable, its bytes in the BlobCache.
    InputFile { digest: Digest },
    /// A file the action created, backed by a file in the scratch directory.
    ScratchFile,
    /// A symbolic link, from the input root or created by the action.
    Symlink { target: OsString },
    /// A FIFO or socket the action created; the kernel handles its I/O.
    Special { kind: FileType },
}

/// A directory's entries, loaded on first use for input directories.
pub(crate) enum Children {
    /// Not fetched yet: the Directory message's digest.
    Unloaded(Digest),
    /// Name -> inode.
    Loaded(BTreeMap<OsString, Ino>),
}

/// Ownership, mode and times of a node. Scratch files take their size and
/// times from the backing file instead.
#[derive(Clone, Copy)]
pub(crate) struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// One inode.
pub(crate) struct Node {
    pub kind: NodeKind,
    pub meta: Meta,
    /// Directory entries naming this node (files, symlinks, specials).
    pub nlink: u32,
    /// Open file handles on it; an unlinked scratch file's backing file is
    /// removed when the last one closes.
    pub open: u32,
    /// How many of its names the action added, which count against
    /// `max_created_entries`: all of them for a node the action created,
    /// those made by `link` for an input file or symlink.
    pub created_names: u32,
}

impl Node {
    /// A node the action creates, under its first name.
    pub fn created(kind: NodeKind, meta: Meta) -> Self {
        Node {
            kind,
            meta,
            nlink: 1,
            open: 0,
            created_names: 1,
        }
    }

    /// The FUSE file type.
    pub fn file_type(&self) -> FileType {
        match &self.kind {
            NodeKind::Dir { .. } => FileType::Directory,
            NodeKind::InputFile { .. } | NodeKind::ScratchFile => FileType::RegularFile,
            NodeKind::Symlink { .. } => FileType::Symlink,
            NodeKind::Special { kind } => *kind,
        }
    }

    /// Whether this is an input file, which nothing may change.
    pub fn is_input_file(&self) -> bool {
        matches!(self.kind, NodeKind::InputFile { .. })
    }
}

/// What makes two input files share an inode.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct InputFileKey {
    pub digest: Digest,
    pub perm: u16,
    pub mtime: SystemTime,
}

/// The most entries one mount holds, counted apart: those loaded from the
/// input root, and those the action creates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryCaps {
    /// `MountConfig::max_input_entries`.
    pub input: u64,
    /// `MountConfig::max_created_entries`.
    pub created: u64,
}

/// Every inode of one mount.
pub(crate) struct NodeTable {
    nodes: HashMap<Ino, Node>,
    next: Ino,
    input_files: HashMap<InputFileKey, Ino>,
    /// Entries loaded from input Directory messages so far, one per path
    /// (files that share an inode count once per name).
    pub input_entries: u64,
    /// The most `input_entries` may reach; a load past it fails.
    pub max_input_entries: u64,
    /// Names the action added that are still live: the sum of every node's
    /// `created_names`.
    created_entries: u64,
    /// The most `created_entries` may reach; adding a name past it fails.
    max_created_entries: u64,
}

impl NodeTable {
    /// A table holding only the root directory, whose children are `root`,
    /// that will hold at most `caps` entries.
    pub fn new(root: Digest, meta: Meta, caps: EntryCaps) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: NodeKind::Dir {
                    parent: ROOT,
                    children: Children::Unloaded(root),
                },
                meta,
                nlink: 1,
                open: 0,
                created_names: 0,
            },
        );
        NodeTable {
            nodes,
            next: ROOT + 1,
            input_files: HashMap::new(),
            input_entries: 0,
            max_input_entries: caps.input,
            created_entries: 0,
            max_created_entries: caps.created,
        }
    }

    /// Counts a name the action is about to add, or refuses it if that would
    /// take the live names it added past `max_created_entries`. The caller
    /// adds the name to a node's `created_names` once it is in place.
    pub fn count_created_name(&mut self) -> Result<(), VfsError> {
        if self.created_entries >= self.max_created_entries {
            return Err(VfsError::CreatedTooMany {
                limit: self.max_created_entries,
            });
        }
        self.created_entries += 1;
        Ok(())
    }

    /// One name of `ino` is going away. If the action added it, it stops
    /// counting. An input file or symlink the action linked has names of
    /// both kinds, which the table does not tell apart (they are names of
    /// one inode and cost the same): the action's are taken away first, so
    /// the node never has more names than its input ones plus those counted.
    pub fn name_removed(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino)
            && node.created_names > 0
        {
            node.created_names -= 1;
            self.created_entries = self.created_entries.saturating_sub(1);
        }
    }

    /// Takes back the name `name` in `parent` that was just given to `ino`,
    /// when what it named could not be made (a scratch file's backing
    /// file). The table's lock was let go in between, so another request
    /// may have renamed `ino` away, put another node under `name`, or
    /// linked `ino` elsewhere: only a `name` that still names `ino` is
    /// removed, and `ino` is forgotten only once nothing names or holds it.
    /// A node renamed or linked away meanwhile stays, named, without its
    /// backing file (its opens fail), and its names count until removed.
    pub fn take_back_name(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        let Ok(children) = self.children_mut(parent) else {
            return;
        };
        if children.get(name) != Some(&ino) {
            return;
        }
        children.remove(name);
        self.name_removed(ino);
        let Ok(node) = self.get_mut(ino) else { return };
        node.nlink = node.nlink.saturating_sub(1);
        if node.nlink == 0 && node.open == 0 {
            self.remove(ino);
        }
    }

    /// The node, or ENOENT.
    pub fn get(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    /// The node, mutably, or ENOENT.
    pub fn get_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Adds a node and returns its new inode number.
    pub fn insert(&mut self, node: Node) -> Ino {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// The shared inode of an input file, created on first use.
    pub fn input_file(&mut self, key: InputFileKey, meta: Meta) -> Ino {
        if let Some(&ino) = self.input_files.get(&key) {
            return ino;
        }
        let ino = self.insert(Node {
            kind: NodeKind::InputFile { digest: key.digest },
            meta,
            nlink: 0,
            open: 0,
            created_names: 0,
        });
        self.input_files.insert(key, ino);
        ino
    }

    /// Forgets a node nothing names or holds any more.
    pub fn remove(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.remove(&ino)
            && let NodeKind::InputFile { digest } = node.kind
        {
            self.input_files
                .retain(|key, i| !(key.digest == digest && *i == ino));
        }
    }

    /// The loaded children of directory `ino`. `Err(Ok(digest))` asks the
    /// caller to load the directory first; `Err(Err(errno))` is a failure.
    pub fn children(&self, ino: Ino) -> Result<&BTreeMap<OsString, Ino>, Pending> {
        match &self.get(ino)?.kind {
            NodeKind::Dir {
                children: Children::Loaded(map),
                ..
            } => Ok(map),
            NodeKind::Dir {
                children: Children::Unloaded(_),
                ..
            } => Err(Pending::Load(ino)),
            _ => Err(Pending::Errno(Errno::ENOTDIR)),
        }
    }

    /// The loaded children of directory `ino`, mutably.
    pub fn children_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<OsString, Ino>, Pending> {
        match &mut self.get_mut(ino)?.kind {
            NodeKind::Dir {
                children: Children::Loaded(map),
                ..
            } => Ok(map),
            NodeKind::Dir {
                children: Children::Unloaded(_),
                ..
            } => Err(Pending::Load(ino)),
            _ => Err(Pending::Errno(Errno::ENOTDIR)),
        }
    }

    /// The child called `name` in directory `parent`.
    pub fn child(&self, parent: Ino, name: &OsStr) -> Result<Ino, Pending> {
        self.children(parent)?
            .get(name)
            .copied()
            .ok_or(Pending::Errno(Errno::ENOENT))
    }

    /// How many subdirectories a loaded directory has (2 + that is its nlink).
    pub fn subdirectories(&self, ino: Ino) -> u32 {
        let Ok(children) = self.children(ino) else {
            return 0;
        };
        children
            .values()
            .filter(|c| {
                self.nodes
                    .get(c)
                    .is_some_and(|n| matches!(n.kind, NodeKind::Dir { .. }))
            })
            .count() as u32
    }
}

/// Why an operation could not finish at once.
#[derive(Debug)]
pub(crate) enum Pending {
    /// Directory `Ino` must be loaded from the CAS first; then try again.
    Load(Ino),
    /// The operation fails with this errno.
    Errno(Errno),
}

impl From<Errno> for Pending {
    fn from(errno: Errno) -> Self {
        Pending::Errno(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(created: u64) -> NodeTable {
        let meta = Meta {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
        };
        NodeTable::new(Digest::EMPTY, meta, EntryCaps { input: 10, created })
    }

    #[test]
    fn created_names_count_while_they_live() {
        let mut t = table(2);
        t.count_created_name().expect("first");
        t.count_created_name().expect("second");
        let err = t.count_created_name().expect_err("third is over the cap");
        assert!(
            matches!(err, VfsError::CreatedTooMany { limit: 2 }),
            "{err}"
        );
        assert_eq!(t.created_entries, 2);

        // A name of a node the action did not create (an input) frees nothing.
        t.name_removed(ROOT);
        assert_eq!(t.created_entries, 2);
        // An input file with one input name and one the action linked: the
        // first name removed is taken as the action's, the second frees nothing.
        let ino = t.input_file(
            InputFileKey {
                digest: Digest::of(b"x"),
                perm: 0o644,
                mtime: SystemTime::UNIX_EPOCH,
            },
            t.get(ROOT).expect("root").meta,
        );
        t.get_mut(ino).expect("input").created_names = 1;
        t.name_removed(ino);
        assert_eq!(t.created_entries, 1);
        t.name_removed(ino);
        assert_eq!(t.created_entries, 1);
        t.count_created_name().expect("room again");
    }

    /// A table whose root is an empty, loaded directory.
    fn loaded_table() -> NodeTable {
        let mut t = table(10);
        t.get_mut(ROOT).expect("root").kind = NodeKind::Dir {
            parent: ROOT,
            children: Children::Loaded(BTreeMap::new()),
        };
        t
    }

    /// What `add_entry` does for a new scratch file in the root.
    fn add(t: &mut NodeTable, name: &str) -> Ino {
        t.count_created_name().expect("under the cap");
        let meta = t.get(ROOT).expect("root").meta;
        let ino = t.insert(Node::created(NodeKind::ScratchFile, meta));
        t.children_mut(ROOT).expect("root").insert(name.into(), ino);
        ino
    }

    fn named(t: &NodeTable, name: &str) -> Option<Ino> {
        t.child(ROOT, name.as_ref()).ok()
    }

    /// Moves `from` to `to` in the root as a rename does, forgetting the
    /// single-named node `to` held.
    fn rename(t: &mut NodeTable, from: &str, to: &str) {
        let children = t.children_mut(ROOT).expect("root");
        let ino = children.remove(OsStr::new(from)).expect("from");
        if let Some(replaced) = children.insert(to.into(), ino) {
            t.name_removed(replaced);
            t.remove(replaced);
        }
    }

    #[test]
    fn a_name_still_naming_the_node_is_taken_back_with_the_node() {
        let mut t = loaded_table();
        let ino = add(&mut t, "f");
        t.take_back_name(ROOT, "f".as_ref(), ino);
        assert_eq!(named(&t, "f"), None);
        assert!(t.get(ino).is_err());
        assert_eq!(t.created_entries, 0);
    }

    #[test]
    fn a_node_renamed_away_and_a_new_node_under_the_name_are_both_left() {
        let mut t = loaded_table();
        let ino = add(&mut t, "f");
        rename(&mut t, "f", "moved");
        let other = add(&mut t, "f");
        t.take_back_name(ROOT, "f".as_ref(), ino);
        assert_eq!(named(&t, "f"), Some(other));
        assert_eq!(named(&t, "moved"), Some(ino));
        assert!(t.get(ino).is_ok() && t.get(other).is_ok());
        assert_eq!(t.created_entries, 2);
    }

    #[test]
    fn a_node_renamed_over_the_name_is_left() {
        let mut t = loaded_table();
        let ino = add(&mut t, "f");
        let other = add(&mut t, "g");
        rename(&mut t, "g", "f");
        assert!(t.get(ino).is_err(), "replaced by the rename");
        t.take_back_name(ROOT, "f".as_ref(), ino);
        assert_eq!(named(&t, "f"), Some(other));
        assert!(t.get(other).is_ok());
        assert_eq!(t.created_entries, 1);
    }

    #[test]
    fn a_node_linked_elsewhere_keeps_its_other_name() {
        let mut t = loaded_table();
        let ino = add(&mut t, "f");
        t.count_created_name().expect("under the cap");
        t.children_mut(ROOT)
            .expect("root")
            .insert("alias".into(), ino);
        let node = t.get_mut(ino).expect("node");
        node.nlink += 1;
        node.created_names += 1;
        t.take_back_name(ROOT, "f".as_ref(), ino);
        assert_eq!(named(&t, "f"), None);
        assert_eq!(named(&t, "alias"), Some(ino));
        assert_eq!(t.get(ino).expect("still named").nlink, 1);
        assert_eq!(t.created_entries, 1);
    }
}
