//! Requests that read the tree: lookup, getattr, readlink, directory
//! listings, and opening and reading files. Opening an input file brings its
//! blob into the BlobCache (in a task, never on the request thread) and
//! answers with a passthrough backing file or KEEP_CACHE.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
};
use lazybarn_cas::Digest;

use crate::blob_cache::Obtained;
use crate::core::{LONG_TTL, VfsCore, negative_attr};
use crate::handles::{DirEntry, Handle};
use crate::node::{Ino, NodeKind, Pending};

impl VfsCore {
    /// Looks `name` up in `parent`, loading `parent` first if needed.
    pub fn lookup(self: &Arc<Self>, parent: Ino, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let table = core.table.lock();
                match table.child(parent, &name) {
                    Ok(ino) => Ok(Some((core.attr(&table, ino)?, core.attr_ttl(&table, ino)))),
                    Err(Pending::Errno(Errno::ENOENT)) => Ok(None),
                    Err(other) => Err(other),
                }
            },
            move |result| match result {
                Ok(Some((attr, ttl))) => {
                    reply.entry_with_ttls(&LONG_TTL, &ttl, &attr, Generation(0))
                }
                Ok(None) => reply.entry(&LONG_TTL, &negative_attr(), Generation(0)),
                Err(errno) => reply.error(errno),
            },
        );
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino, reply: ReplyAttr) {
        let table = self.table.lock();
        match self.attr(&table, ino) {
            Ok(attr) => reply.attr(&self.attr_ttl(&table, ino), &attr),
            Err(errno) => reply.error(errno),
        }
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: Ino, reply: ReplyData) {
        let table = self.table.lock();
        match table.get(ino).map(|n| &n.kind) {
            Ok(NodeKind::Symlink { target }) => {
                reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(errno) => reply.error(errno),
        }
    }

    /// Opens a directory: loads it and takes a snapshot of its entries.
    pub fn opendir(self: &Arc<Self>, ino: Ino, reply: ReplyOpen) {
        self.drive(move |core| core.listing(ino), {
            let core = self.clone();
            move |result| match result {
                Ok(entries) => {
                    let fh = core.handles.insert(Handle::Dir {
                        entries: Arc::new(entries),
                    });
                    // Every change to a directory goes through the kernel,
                    // which then drops its cached listing itself.
                    let flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
                    reply.opened(FileHandle(fh), flags);
                }
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn listing(&self, ino: Ino) -> Result<Vec<DirEntry>, Pending> {
        let table = self.table.lock();
        let children = table.children(ino)?;
        let parent = match &table.get(ino)?.kind {
            NodeKind::Dir { parent, .. } => *parent,
            _ => return Err(Errno::ENOTDIR.into()),
        };
        let mut entries = Vec::with_capacity(children.len() + 2);
        entries.push(DirEntry {
            name: OsString::from("."),
            ino,
            kind: FileType::Directory,
        });
        entries.push(DirEntry {
            name: OsString::from(".."),
            ino: parent,
            kind: FileType::Directory,
        });
        for (name, &child) in children {
            entries.push(DirEntry {
                name: name.clone(),
                ino: child,
                kind: table.get(child)?.file_type(),
            });
        }
        Ok(entries)
    }

    /// The listing to read from `fh`; offset 0 (a rewind) takes a new one.
    fn entries_for(&self, ino: Ino, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let entries = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        if offset != 0 {
            return Ok(entries);
        }
        match self.listing(ino) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.handles.set_dir(fh, fresh.clone());
                Ok(fresh)
            }
            // Loaded at opendir, so a fresh listing cannot need the network.
            Err(_) => Ok(entries),
        }
    }

    /// Reads directory entries from offset `offset`.
    pub fn readdir(&self, ino: Ino, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.entries_for(ino, fh, offset) {
            Ok(entries) => entries,
            Err(errno) => return reply.error(errno),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry.ino), i as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    /// Reads directory entries with their attributes, saving a lookup each.
    pub fn readdirplus(&self, ino: Ino, fh: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
        let entries = match self.entries_for(ino, fh, offset) {
            Ok(entries) => entries,
            Err(errno) => return reply.error(errno),
        };
        let table = self.table.lock();
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            let Ok(attr) = self.attr(&table, entry.ino) else {
                continue;
            };
            let ttl = self.attr_ttl(&table, entry.ino);
            if reply.add(
                INodeNo(entry.ino),
                i as u64 + 1,
                &entry.name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        drop(table);
        reply.ok();
    }

    /// Opens a file. Input files open read-only for every caller, root
    /// included; their blob is fetched into the cache first if needed.
    pub fn open(self: &Arc<Self>, ino: Ino, flags: OpenFlags, reply: ReplyOpen) {
        let digest = {
            let table = self.table.lock();
            match table.get(ino).map(|n| &n.kind) {
                Ok(NodeKind::InputFile { digest }) => *digest,
                Ok(NodeKind::ScratchFile) => {
                    drop(table);
                    return self.open_scratch(ino, flags, reply);
                }
                Ok(NodeKind::Dir { .. }) => return reply.error(Errno::EISDIR),
                Ok(_) => return reply.error(Errno::EACCES),
                Err(errno) => return reply.error(errno),
            }
        };
        if writes(flags) {
            return reply.error(Errno::EACCES);
        }
        if self.pinned.lock().contains(&digest) || self.pin_cached(digest) {
            self.counters.hit();
            return self.open_cached(ino, digest, reply);
        }
        let core = self.clone();
        self.runtime.spawn(async move {
            match core.cache.pin(digest, &core.source).await {
                Ok(obtained) => {
                    match obtained {
                        Obtained::Fetched(took) => core.counters.fetched(digest.size(), took),
                        Obtained::Hit | Obtained::Joined => core.counters.hit(),
                    }
                    if !core.pinned.lock().insert(digest) {
                        // Another open of this mount pinned it meanwhile.
                        core.cache.unpin(&digest);
                    }
                    core.open_cached(ino, digest, reply);
                }
                Err(e) => {
                    core.record_failure(Some(digest), &e);
                    reply.error(Errno::EIO);
                }
            }
        });
    }

    fn pin_cached(&self, digest: Digest) -> bool {
        if !self.cache.try_pin(&digest) {
            return false;
        }
        if !self.pinned.lock().insert(digest) {
            self.cache.unpin(&digest);
        }
        true
    }

    /// Answers an open of an input file whose blob is pinned in the cache.
    fn open_cached(&self, ino: Ino, digest: Digest, reply: ReplyOpen) {
        if self.passthrough()
            && let Some(backing) = self.handles.kept_backing(ino)
        {
            return self.reply_passthrough(ino, None, backing, reply);
        }
        let file = match File::open(self.cache.path(&digest)) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!("vfs: opening cached blob {digest}: {e}");
                return reply.error(Errno::EIO);
            }
        };
        // Nothing to flush on close of a read-only input: skip the request.
        let flags = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        self.reply_open(ino, file, flags, reply);
    }

    /// Answers an open with a handle on `file`, through passthrough when the
    /// kernel offers it; the plain read path, with `flags`, is the fallback.
    /// (The kernel refuses a passthrough open that also asks for KEEP_CACHE.)
    pub fn reply_open(&self, ino: Ino, file: File, flags: FopenFlags, reply: ReplyOpen) {
        let file = Arc::new(file);
        if self.passthrough() {
            let keep = flags.contains(FopenFlags::FOPEN_NOFLUSH);
            match self
                .handles
                .backing(ino, keep, || reply.open_backing(&*file))
            {
                Ok(backing) => return self.reply_passthrough(ino, Some(file), backing, reply),
                Err(e) => {
                    tracing::warn!(
                        "vfs: FUSE passthrough refused ({e}); reading through the daemon"
                    );
                    self.passthrough
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let fh = self.handles.insert(Handle::File {
            ino,
            file: Some(file),
            _backing: None,
        });
        self.opened(ino);
        reply.opened(FileHandle(fh), flags);
    }

    fn reply_passthrough(
        &self,
        ino: Ino,
        file: Option<Arc<File>>,
        backing: Arc<fuser::BackingId>,
        reply: ReplyOpen,
    ) {
        let fh = self.handles.insert(Handle::File {
            ino,
            file,
            _backing: Some(backing.clone()),
        });
        self.opened(ino);
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
    }

    fn opened(&self, ino: Ino) {
        if let Ok(node) = self.table.lock().get_mut(ino) {
            node.open += 1;
        }
    }

    /// Reads from an open file (when passthrough is off).
    pub fn read(&self, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        let Some(file) = self.handles.file(fh) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(Errno::from(e)),
            }
        }
        reply.data(&buf[..filled]);
    }

    /// Closes a file handle; an unlinked scratch file goes with its last one.
    pub fn release(&self, fh: u64, reply: ReplyEmpty) {
        if let Some(ino) = self.handles.remove(fh) {
            let mut table = self.table.lock();
            if let Ok(node) = table.get_mut(ino) {
                node.open = node.open.saturating_sub(1);
            }
            self.collect(&mut table, ino);
        }
        reply.ok();
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64, reply: ReplyEmpty) {
        self.handles.remove(fh);
        reply.ok();
    }

    /// Space where the action's writes land: the scratch directory's disk.
    pub fn statfs(&self, reply: ReplyStatfs) {
        match crate::sys_linux::statvfs(&self.scratch) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}

/// Whether open flags ask to change the file.
pub(crate) fn writes(flags: OpenFlags) -> bool {
    flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0
}
