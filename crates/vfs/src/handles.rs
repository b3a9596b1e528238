//! Open file and directory handles of one mount, and the passthrough
//! backing ids shared by all opens of one inode (the kernel requires every
//! passthrough open of an inode to use the same backing file).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use fuser::{BackingId, FileType};
use parking_lot::Mutex;

use crate::node::Ino;

/// One entry of a directory listing.
pub(crate) struct DirEntry {
    pub name: OsString,
    pub ino: Ino,
    pub kind: FileType,
}

/// What a file handle refers to.
pub(crate) enum Handle {
    /// An open file: an input blob in the cache or a scratch file. A
    /// passthrough open of an input needs no descriptor of its own.
    File {
        ino: Ino,
        file: Option<Arc<File>>,
        /// Held while the handle is open so the kernel's backing file lives.
        _backing: Option<Arc<BackingId>>,
    },
    /// An open directory: its listing as of opendir, so entries removed
    /// while it is read (`rm -rf`) never shift the offsets.
    Dir { entries: Arc<Vec<DirEntry>> },
}

/// The handles of one mount.
#[derive(Default)]
pub(crate) struct HandleTable {
    next: AtomicU64,
    handles: Mutex<HashMap<u64, Handle>>,
    backing: Mutex<HashMap<Ino, Weak<BackingId>>>,
    /// Backing ids of input files, kept until unmount: an input never
    /// changes, so the next open skips the ioctl.
    kept: Mutex<HashMap<Ino, Arc<BackingId>>>,
}

impl HandleTable {
    /// Stores a handle and returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.handles.lock().insert(fh, handle);
        fh
    }

    /// The open file behind `fh`.
    pub fn file(&self, fh: u64) -> Option<Arc<File>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File { file, .. }) => file.clone(),
            _ => None,
        }
    }

    /// The directory listing behind `fh`.
    pub fn dir(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir { entries }) => Some(entries.clone()),
            _ => None,
        }
    }

    /// Replaces the listing behind `fh` (a rewound directory is read anew).
    pub fn set_dir(&self, fh: u64, entries: Arc<Vec<DirEntry>>) {
        if let Some(Handle::Dir { entries: old }) = self.handles.lock().get_mut(&fh) {
            *old = entries;
        }
    }

    /// Removes `fh`; returns the inode of a file handle.
    pub fn remove(&self, fh: u64) -> Option<Ino> {
        match self.handles.lock().remove(&fh) {
            Some(Handle::File { ino, .. }) => Some(ino),
            _ => None,
        }
    }

    /// The backing id kept for input file `ino`, if an earlier open made one.
    pub fn kept_backing(&self, ino: Ino) -> Option<Arc<BackingId>> {
        self.kept.lock().get(&ino).cloned()
    }

    /// The backing id of `ino`, made with `make` when no open holds one;
    /// `keep` holds it until unmount.
    pub fn backing(
        &self,
        ino: Ino,
        keep: bool,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        if keep && let Some(id) = self.kept.lock().get(&ino) {
            return Ok(id.clone());
        }
        let mut backing = self.backing.lock();
        if let Some(id) = backing.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(make()?);
        backing.insert(ino, Arc::downgrade(&id));
        if keep {
            self.kept.lock().insert(ino, id.clone());
        }
        Ok(id)
    }

    /// Drops every handle (at unmount), closing files and backing ids.
    pub fn clear(&self) {
        self.handles.lock().clear();
        self.backing.lock().clear();
        self.kept.lock().clear();
    }
}
