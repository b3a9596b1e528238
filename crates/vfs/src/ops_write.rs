//! Requests that change the tree. Directories are writable everywhere;
//! input files are not, for any caller. New files are backed by files in the
//! mount's scratch directory; every name operation edits the node table only.
//! Each name the action adds counts against `max_created_entries` while it
//! lives (`NodeTable::count_created_name`, `NodeTable::name_removed`).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, TimeOrNow,
};

use crate::core::{LONG_TTL, SHORT_TTL, VfsCore, now};
use crate::error::VfsError;
use crate::handles::Handle;
use crate::node::{Children, Ino, Meta, Node, NodeKind, NodeTable, Pending};

/// Who asks, for the owner of what they create.
#[derive(Clone, Copy)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The changes a setattr request asks for.
pub(crate) struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

impl AttrChange {
    fn any(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.size.is_some()
            || self.atime.is_some()
            || self.mtime.is_some()
    }
}

impl VfsCore {
    fn entry_reply(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
        match result {
            Ok(attr) => reply.entry_with_ttls(&LONG_TTL, &SHORT_TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    /// Adds `node` as `name` in `parent`, which must not hold that name,
    /// if the action may add one more name.
    fn add_entry(&self, parent: Ino, name: &OsStr, node: Node) -> Result<Ino, Pending> {
        let mut table = self.table.lock();
        if table.children(parent)?.contains_key(name) {
            return Err(Errno::EEXIST.into());
        }
        if let Err(error) = table.count_created_name() {
            drop(table);
            return Err(self.refuse(&error));
        }
        let ino = table.insert(node);
        table.children_mut(parent)?.insert(name.to_os_string(), ino);
        touch(&mut table, parent);
        Ok(ino)
    }

    /// Records a request the mount refuses for the worker's report (once,
    /// however often the action retries) and gives the caller its errno.
    fn refuse(&self, error: &VfsError) -> Pending {
        self.record_failure(None, error);
        error.errno().into()
    }

    /// Creates a directory.
    pub fn mkdir(
        self: &Arc<Self>,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        caller: Caller,
        reply: ReplyEntry,
    ) {
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let node = Node::created(
                    NodeKind::Dir {
                        parent,
                        children: Children::Loaded(Default::default()),
                    },
                    new_meta(mode, caller),
                );
                let ino = core.add_entry(parent, &name, node)?;
                Ok(core.attr(&core.table.lock(), ino)?)
            },
            move |result| Self::entry_reply(reply, result),
        );
    }

    /// Creates a symlink.
    pub fn symlink(
        self: &Arc<Self>,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        caller: Caller,
        reply: ReplyEntry,
    ) {
        let name = name.to_os_string();
        let target = target.as_os_str().to_os_string();
        self.drive(
            move |core| {
                let node = Node::created(
                    NodeKind::Symlink {
                        target: target.clone(),
                    },
                    new_meta(0o777, caller),
                );
                let ino = core.add_entry(parent, &name, node)?;
                Ok(core.attr(&core.table.lock(), ino)?)
            },
            move |result| Self::entry_reply(reply, result),
        );
    }

    /// Creates a regular file, FIFO or socket.
    pub fn mknod(
        self: &Arc<Self>,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        caller: Caller,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(FileType::NamedPipe),
            libc::S_IFSOCK => Some(FileType::Socket),
            _ => return reply.error(Errno::EPERM),
        };
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let ino = match kind {
                    None => core.new_scratch_file(parent, &name, mode, caller)?,
                    Some(kind) => core.add_entry(
                        parent,
                        &name,
                        Node::created(NodeKind::Special { kind }, new_meta(mode, caller)),
                    )?,
                };
                Ok(core.attr(&core.table.lock(), ino)?)
            },
            move |result| Self::entry_reply(reply, result),
        );
    }

    fn new_scratch_file(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<Ino, Pending> {
        let node = Node::created(NodeKind::ScratchFile, new_meta(mode, caller));
        let ino = self.add_entry(parent, name, node)?;
        if let Err(e) = File::create_new(self.scratch_path(ino)) {
            // The lock was let go since add_entry: take back only what is
            // still ours (see take_back_name).
            self.table.lock().take_back_name(parent, name, ino);
            return Err(Errno::from(e).into());
        }
        Ok(ino)
    }

    /// Creates and opens a regular file.
    pub fn create(
        self: &Arc<Self>,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
        reply: ReplyCreate,
    ) {
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let ino = core.new_scratch_file(parent, &name, mode, caller)?;
                let file = open_backing(&core.scratch_path(ino), flags & !libc::O_TRUNC)
                    .map_err(Errno::from)?;
                Ok((ino, file))
            },
            {
                let core = self.clone();
                move |result| match result {
                    Ok((ino, file)) => core.reply_create(ino, file, reply),
                    Err(errno) => reply.error(errno),
                }
            },
        );
    }

    fn reply_create(&self, ino: Ino, file: File, reply: ReplyCreate) {
        let attr = match self.attr(&self.table.lock(), ino) {
            Ok(attr) => attr,
            Err(errno) => return reply.error(errno),
        };
        let fh = self.handles.insert(Handle::File {
            ino,
            file: Some(Arc::new(file)),
            _backing: None,
        });
        if let Ok(node) = self.table.lock().get_mut(ino) {
            node.open += 1;
        }
        reply.created(
            &SHORT_TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }

    /// Opens a scratch file with the caller's flags.
    pub fn open_scratch(&self, ino: Ino, flags: OpenFlags, reply: ReplyOpen) {
        match open_backing(&self.scratch_path(ino), flags.0) {
            Ok(file) => self.reply_open(ino, file, FopenFlags::empty(), reply),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    /// Writes to an open scratch file.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], reply: ReplyWrite) {
        let Some(file) = self.handles.file(fh) else {
            return reply.error(Errno::EBADF);
        };
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    /// Flushes an open file to disk.
    pub fn fsync(&self, fh: u64, datasync: bool, reply: ReplyEmpty) {
        // A passthrough open of an input has no descriptor, and nothing to sync.
        let Some(file) = self.handles.file(fh) else {
            return reply.ok();
        };
        let result = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        match result {
            Ok(()) => reply.ok(),
            // An input blob opened read-only cannot be synced, and needs not be.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => reply.ok(),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    /// Changes attributes. Input files refuse every change, for every caller.
    pub fn setattr(&self, ino: Ino, change: AttrChange, reply: ReplyAttr) {
        match self.try_setattr(ino, &change) {
            Ok(attr) => reply.attr(&SHORT_TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn try_setattr(&self, ino: Ino, change: &AttrChange) -> Result<FileAttr, Errno> {
        let is_scratch = {
            let table = self.table.lock();
            let node = table.get(ino)?;
            if node.is_input_file() && change.any() {
                return Err(Errno::EPERM);
            }
            if change.size.is_some() && matches!(node.kind, NodeKind::Dir { .. }) {
                return Err(Errno::EISDIR);
            }
            matches!(node.kind, NodeKind::ScratchFile)
        };
        if is_scratch {
            self.change_backing(ino, change)?;
        }
        let mut table = self.table.lock();
        let node = table.get_mut(ino)?;
        if let Some(mode) = change.mode {
            node.meta.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = change.uid {
            node.meta.uid = uid;
        }
        if let Some(gid) = change.gid {
            node.meta.gid = gid;
        }
        if let Some(mtime) = change.mtime {
            node.meta.mtime = resolve(mtime);
        }
        node.meta.ctime = now();
        self.attr(&table, ino)
    }

    fn change_backing(&self, ino: Ino, change: &AttrChange) -> Result<(), Errno> {
        let path = self.scratch_path(ino);
        let file = match change.fh.and_then(|fh| self.handles.file(fh)) {
            Some(file) => file,
            None => Arc::new(
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(Errno::from)?,
            ),
        };
        if let Some(size) = change.size {
            file.set_len(size).map_err(Errno::from)?;
        }
        let mut times = FileTimes::new();
        if let Some(atime) = change.atime {
            times = times.set_accessed(resolve(atime));
        }
        if let Some(mtime) = change.mtime {
            times = times.set_modified(resolve(mtime));
        }
        if change.atime.is_some() || change.mtime.is_some() {
            file.set_times(times).map_err(Errno::from)?;
        }
        Ok(())
    }

    /// Removes a non-directory entry.
    pub fn unlink(self: &Arc<Self>, parent: Ino, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let mut table = core.table.lock();
                let ino = table.child(parent, &name)?;
                if matches!(table.get(ino)?.kind, NodeKind::Dir { .. }) {
                    return Err(Errno::EISDIR.into());
                }
                table.children_mut(parent)?.remove(&name);
                touch(&mut table, parent);
                core.unlinked(&mut table, ino);
                Ok(())
            },
            move |result| empty_reply(reply, result),
        );
    }

    /// Removes an empty directory (loading it first to know it is empty).
    pub fn rmdir(self: &Arc<Self>, parent: Ino, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let mut table = core.table.lock();
                let ino = table.child(parent, &name)?;
                if !table.children(ino)?.is_empty() {
                    return Err(Errno::ENOTEMPTY.into());
                }
                table.children_mut(parent)?.remove(&name);
                touch(&mut table, parent);
                table.name_removed(ino);
                table.remove(ino);
                Ok(())
            },
            move |result| empty_reply(reply, result),
        );
    }

    /// Adds a hard link to a non-directory: one more name the action added,
    /// whatever the node.
    pub fn link(self: &Arc<Self>, ino: Ino, parent: Ino, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        self.drive(
            move |core| {
                let mut table = core.table.lock();
                if matches!(table.get(ino)?.kind, NodeKind::Dir { .. }) {
                    return Err(Errno::EPERM.into());
                }
                if table.children(parent)?.contains_key(&name) {
                    return Err(Errno::EEXIST.into());
                }
                if let Err(error) = table.count_created_name() {
                    drop(table);
                    return Err(core.refuse(&error));
                }
                table.children_mut(parent)?.insert(name.clone(), ino);
                touch(&mut table, parent);
                let node = table.get_mut(ino)?;
                node.nlink += 1;
                node.created_names += 1;
                node.meta.ctime = now();
                Ok(core.attr(&table, ino)?)
            },
            move |result| Self::entry_reply(reply, result),
        );
    }

    /// Renames an entry, replacing what the new name held where POSIX allows.
    pub fn rename(
        self: &Arc<Self>,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (name.to_os_string(), new_name.to_os_string());
        self.drive(
            move |core| {
                let mut table = core.table.lock();
                core.try_rename(&mut table, parent, &name, new_parent, &new_name, flags)
            },
            move |result| empty_reply(reply, result),
        );
    }

    fn try_rename(
        &self,
        table: &mut NodeTable,
        parent: Ino,
        name: &OsString,
        new_parent: Ino,
        new_name: &OsString,
        flags: RenameFlags,
    ) -> Result<(), Pending> {
        let ino = table.child(parent, name)?;
        let target = table.children(new_parent)?.get(new_name).copied();
        let is_dir =
            |t: &NodeTable, i: Ino| matches!(t.get(i).map(|n| &n.kind), Ok(NodeKind::Dir { .. }));
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let other = target.ok_or(Errno::ENOENT)?;
            table.children_mut(parent)?.insert(name.clone(), other);
            table
                .children_mut(new_parent)?
                .insert(new_name.clone(), ino);
            set_parent(table, ino, new_parent);
            set_parent(table, other, parent);
            touch(table, parent);
            touch(table, new_parent);
            return Ok(());
        }
        if let Some(target) = target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST.into());
            }
            if target == ino {
                return Ok(());
            }
            match (is_dir(table, ino), is_dir(table, target)) {
                (true, false) => return Err(Errno::ENOTDIR.into()),
                (false, true) => return Err(Errno::EISDIR.into()),
                (true, true) if !table.children(target)?.is_empty() => {
                    return Err(Errno::ENOTEMPTY.into());
                }
                _ => {}
            }
        }
        table.children_mut(parent)?.remove(name);
        table
            .children_mut(new_parent)?
            .insert(new_name.clone(), ino);
        set_parent(table, ino, new_parent);
        touch(table, parent);
        touch(table, new_parent);
        // The moved name keeps whatever it counted; the replaced one is gone.
        if let Some(target) = target {
            if is_dir(table, target) {
                table.name_removed(target);
                table.remove(target);
            } else {
                self.unlinked(table, target);
            }
        }
        if let Ok(node) = table.get_mut(ino) {
            node.meta.ctime = now();
        }
        Ok(())
    }

    /// One name of `ino` is gone.
    fn unlinked(&self, table: &mut NodeTable, ino: Ino) {
        table.name_removed(ino);
        if let Ok(node) = table.get_mut(ino) {
            node.nlink = node.nlink.saturating_sub(1);
            node.meta.ctime = now();
        }
        self.collect(table, ino);
    }

    /// Forgets `ino` once nothing names it and no handle holds it, removing
    /// a scratch file's backing file. Input blobs stay in the cache.
    pub(crate) fn collect(&self, table: &mut NodeTable, ino: Ino) {
        let Ok(node) = table.get(ino) else { return };
        if node.nlink > 0 || node.open > 0 || matches!(node.kind, NodeKind::Dir { .. }) {
            return;
        }
        if matches!(node.kind, NodeKind::ScratchFile) {
            let _ = fs::remove_file(self.scratch_path(ino));
        }
        table.remove(ino);
    }
}

fn new_meta(mode: u32, caller: Caller) -> Meta {
    let t = now();
    Meta {
        perm: (mode & 0o7777) as u16,
        uid: caller.uid,
        gid: caller.gid,
        mtime: t,
        ctime: t,
    }
}

fn touch(table: &mut NodeTable, dir: Ino) {
    if let Ok(node) = table.get_mut(dir) {
        let t = now();
        node.meta.mtime = t;
        node.meta.ctime = t;
    }
}

fn set_parent(table: &mut NodeTable, ino: Ino, new_parent: Ino) {
    if let Ok(Node {
        kind: NodeKind::Dir { parent, .. },
        ..
    }) = table.get_mut(ino)
    {
        *parent = new_parent;
    }
}

fn resolve(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => now(),
    }
}

fn empty_reply(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(errno),
    }
}

/// Opens a scratch file's backing file with the access mode and append flag
/// the caller asked for.
fn open_backing(path: &Path, flags: i32) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => options.write(true),
        libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    if flags & libc::O_APPEND != 0 {
        options.append(true);
    }
    options.custom_flags(flags & (libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC));
    options.open(path)
}
