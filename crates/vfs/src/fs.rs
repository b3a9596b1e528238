//! The fuser `Filesystem` implementation: negotiates the kernel connection,
//! refuses callers the mount's [`AccessPolicy`] does not serve, and hands
//! each other request to [`VfsCore`]. Requests that may need the network
//! return at once; the core answers them from a tokio task.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::access::AccessPolicy;
use crate::core::VfsCore;
use crate::ops_write::{AttrChange, Caller};

/// Largest write and read request asked of the kernel.
const MAX_IO: u32 = 1 << 20;
/// Readahead asked of the kernel (it may grant less).
const MAX_READAHEAD: u32 = 1 << 20;
/// Background requests (readahead, async reads) in flight at once.
const MAX_BACKGROUND: u16 = 64;

/// The filesystem served for one mount.
pub(crate) struct LazyFs {
    core: Arc<VfsCore>,
    want_passthrough: bool,
    access: AccessPolicy,
}

impl LazyFs {
    /// A filesystem over `core` answering whom `access` permits;
    /// passthrough is used when `want_passthrough` and the kernel offers it.
    pub fn new(core: Arc<VfsCore>, want_passthrough: bool, access: AccessPolicy) -> Self {
        LazyFs {
            core,
            want_passthrough,
            access,
        }
    }
}

/// Answers EACCES, and returns, when the mount's [`AccessPolicy`] does not
/// serve the request's uid. Every request that names a node starts with
/// this. Requests on an open handle (read, write, readdir, fsync, release)
/// do not: the handle's open was checked, and the kernel sends some of them
/// itself, without the caller's uid (write-back of a shared mapping,
/// release after the last close).
macro_rules! refuse_strangers {
    ($fs:expr, $req:expr, $reply:expr) => {
        if !$fs.access.permits($req.uid()) {
            return $reply.error(Errno::EACCES);
        }
    };
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_MAX_PAGES;
        // Each flag on its own: an old kernel lacking one still gets the rest.
        for flag in wanted.iter() {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config
            .set_max_readahead(MAX_READAHEAD)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(MAX_BACKGROUND);
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            // Backing files may sit on one stacked filesystem (overlayfs).
            && config.set_max_stack_depth(2).is_ok()
        {
            self.core.passthrough.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        refuse_strangers!(self, req, reply);
        self.core.lookup(parent.0, name, reply);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        refuse_strangers!(self, req, reply);
        self.core.getattr(ino.0, reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        refuse_strangers!(self, req, reply);
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|fh| fh.0),
        };
        self.core.setattr(ino.0, change, reply);
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        refuse_strangers!(self, req, reply);
        self.core.readlink(ino.0, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        refuse_strangers!(self, req, reply);
        self.core
            .mknod(parent.0, name, mode & !umask, caller(req), reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        refuse_strangers!(self, req, reply);
        self.core
            .mkdir(parent.0, name, mode & !umask, caller(req), reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        refuse_strangers!(self, req, reply);
        self.core.unlink(parent.0, name, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        refuse_strangers!(self, req, reply);
        self.core.rmdir(parent.0, name, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        refuse_strangers!(self, req, reply);
        self.core
            .symlink(parent.0, link_name, target, caller(req), reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        refuse_strangers!(self, req, reply);
        self.core
            .rename(parent.0, name, newparent.0, newname, flags, reply);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        refuse_strangers!(self, req, reply);
        self.core.link(ino.0, newparent.0, newname, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        refuse_strangers!(self, req, reply);
        self.core.open(ino.0, flags, reply);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.core.read(fh.0, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.core.write(fh.0, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush: writes reach the scratch file before they are
        // answered. ENOSYS makes the kernel stop sending FLUSH on this
        // mount, which saves a round trip on every close (a compile closes
        // hundreds of headers; passthrough opens cannot ask for NOFLUSH).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0, reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.core.fsync(fh.0, datasync, reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        refuse_strangers!(self, req, reply);
        self.core.opendir(ino.0, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.core.readdir(ino.0, fh.0, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.core.readdirplus(ino.0, fh.0, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0, reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        refuse_strangers!(self, req, reply);
        self.core.statfs(reply);
    }

    // Extended attributes are not supported. ENOSYS (not ENOTSUP) makes the
    // kernel stop asking: it then answers EOPNOTSUPP itself.
    fn setxattr(
        &self,
        req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        refuse_strangers!(self, req, reply);
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(&self, req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        refuse_strangers!(self, req, reply);
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        refuse_strangers!(self, req, reply);
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        refuse_strangers!(self, req, reply);
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        refuse_strangers!(self, req, reply);
        self.core
            .create(parent.0, name, mode & !umask, flags, caller(req), reply);
    }
}
