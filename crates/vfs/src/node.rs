//! The node table: every inode of one mount, in memory.
//!
//! An inode is an input directory (its Directory digest until its children
//! are loaded), an input file (digest and executable bit), a symlink, or a
//! file, directory or special node the action created. A directory's
//! children are a name -> inode map, so rename and unlink edit maps only:
//! "deleting" an input never touches the BlobCache. Input files with the same
//! digest, executable bit and properties share one inode, so the kernel keeps
//! one page cache for all their paths.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileType};
use lazybarn_cas::Digest;

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
}

impl Node {
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
}

impl NodeTable {
    /// A table holding only the root directory, whose children are `root`,
    /// that will load at most `max_input_entries` input entries.
    pub fn new(root: Digest, meta: Meta, max_input_entries: u64) -> Self {
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
            },
        );
        NodeTable {
            nodes,
            next: ROOT + 1,
            input_files: HashMap::new(),
            input_entries: 0,
            max_input_entries,
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
