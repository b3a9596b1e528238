//! The sandbox half of init's setup: the mounts of the command's new mount
//! namespace (a fresh /proc, an empty /dev/shm, a fresh /dev/mqueue, the
//! temporary directory on /tmp) and the loopback interface of its new
//! network namespace. Runs in init between
//! the clone and starting the command, under the same rules as
//! [`child_linux`](crate::child_linux): raw system calls on memory the
//! parent prepared, no allocation, no locks. Why the sandbox looks as it
//! does is in [`spawn_linux`](crate::spawn_linux).

use std::ffi::{c_char, c_int, c_long};
use std::ptr;

use crate::child_linux::{SetupStep, check, errno};

/// What init sets up in the command's new mount and network namespaces.
#[derive(Clone, Copy)]
pub(crate) struct SandboxPlan {
    /// The directory to mount a fresh proc on, or null for none.
    pub proc_target: *const c_char,
    /// The directory to bind-mount on `temporary_target`, or null for none.
    pub temporary_source: *const c_char,
    /// Where the temporary directory goes.
    pub temporary_target: *const c_char,
    /// An entry of /tmp to keep visible, or null for none.
    pub kept_source: *const c_char,
    /// Where in the temporary directory that entry is bind-mounted first.
    pub kept_target: *const c_char,
    /// Where an empty tmpfs goes for POSIX shared memory (`/dev/shm`), or
    /// null for none.
    pub shm_target: *const c_char,
    /// That tmpfs's mount options: its size and inode caps.
    pub shm_options: *const c_char,
    /// Where a fresh mqueue filesystem goes (`/dev/mqueue`, when the host
    /// has one), or null for none.
    pub mqueue_target: *const c_char,
    /// The command's user and group, who own what init makes in its
    /// temporary directory.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Whether the tree gets a network namespace of its own (and init
    /// brings up its loopback interface).
    pub private_network: bool,
}

/// Sets up init's new mount (and network) namespace; reports and exits on
/// failure. Init is root in these namespaces, and the command, its child,
/// shares them.
///
/// The namespace starts as a copy of the runner's mounts. Making them all
/// slaves first means the host's later mounts and unmounts still reach it,
/// but nothing mounted here (the fresh /proc, /dev/shm, /dev/mqueue, the
/// temporary directory) reaches the host or another command. The copy includes the FUSE mounts
/// of other actions running at this moment; this command cannot use them
/// (the worker's directory permissions keep it out), and they cannot keep
/// an unmounted action alive: the worker aborts a FUSE connection before it
/// unmounts it, so a copy left here only answers ENOTCONN until the
/// namespace goes away with this command's last process.
pub(crate) unsafe fn set_up_sandbox(sandbox: SandboxPlan, errors: c_int) {
    unsafe {
        check(
            libc::syscall(
                libc::SYS_mount,
                ptr::null::<c_char>(),
                c"/".as_ptr(),
                ptr::null::<c_char>(),
                libc::MS_REC | libc::MS_SLAVE,
                ptr::null::<u8>(),
            ),
            errors,
            SetupStep::MountPropagation,
        );
        if !sandbox.proc_target.is_null() {
            // A proc mounted by a process of the new PID namespace shows
            // that namespace's processes only.
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            let proc = c"proc".as_ptr();
            check(
                mount_on(sandbox.proc_target, proc, proc, flags, ptr::null()),
                errors,
                SetupStep::MountProc,
            );
        }
        if !sandbox.shm_target.is_null() {
            // The host's /dev/shm is one world-writable directory for every
            // process; a command's shared memory stays its own.
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            check(
                mount_on(
                    sandbox.shm_target,
                    c"tmpfs".as_ptr(),
                    c"tmpfs".as_ptr(),
                    flags,
                    sandbox.shm_options,
                ),
                errors,
                SetupStep::MountShm,
            );
        }
        if !sandbox.mqueue_target.is_null() {
            // The host's /dev/mqueue shows the host's IPC namespace: a queue
            // opened there by path would join two commands after all. A
            // fresh one shows this command's new IPC namespace only.
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            let mqueue = c"mqueue".as_ptr();
            check(
                mount_on(sandbox.mqueue_target, mqueue, mqueue, flags, ptr::null()),
                errors,
                SetupStep::MountMqueue,
            );
        }
        if !sandbox.temporary_source.is_null() {
            check(
                mount_temporary_directory(sandbox),
                errors,
                SetupStep::MountTemporaryDirectory,
            );
        }
        // mount_on left init in a mount target; the command chdirs anyway.
        libc::syscall(libc::SYS_chdir, c"/".as_ptr());
        if sandbox.private_network {
            check(bring_up_loopback(), errors, SetupStep::Loopback);
        }
    }
}

/// Bind-mounts the temporary directory on /tmp. If the action's own
/// directory lies under /tmp, that entry of /tmp is bind-mounted into the
/// temporary directory first (on a directory made for it there), and comes
/// along with the recursive bind, so the command finds its inputs at the
/// same paths while the rest of the host's /tmp is out of sight.
unsafe fn mount_temporary_directory(sandbox: SandboxPlan) -> c_long {
    let recursive_bind = libc::MS_BIND | libc::MS_REC;
    unsafe {
        if !sandbox.kept_source.is_null() {
            // Made as the command's user: the temporary directory is its
            // alone (0700), so root without CAP_DAC_OVERRIDE could not write
            // there, and nothing of root's is left in it.
            libc::syscall(libc::SYS_setfsgid, sandbox.gid);
            libc::syscall(libc::SYS_setfsuid, sandbox.uid);
            let made = libc::syscall(
                libc::SYS_mkdirat,
                libc::AT_FDCWD,
                sandbox.kept_target,
                0o700,
            );
            let made_errno = errno();
            libc::syscall(libc::SYS_setfsuid, 0);
            libc::syscall(libc::SYS_setfsgid, 0);
            if made < 0 && made_errno != libc::EEXIST {
                return made;
            }
            let kept = mount_on(
                sandbox.kept_target,
                sandbox.kept_source,
                ptr::null(),
                recursive_bind,
                ptr::null(),
            );
            if kept < 0 {
                return kept;
            }
        }
        mount_on(
            sandbox.temporary_target,
            sandbox.temporary_source,
            ptr::null(),
            recursive_bind,
            ptr::null(),
        )
    }
}

/// Mounts `source` on the directory `target` without following a symlink
/// in its last component (with chroot, that directory is in the input root,
/// which the client built). Leaves init's working directory there.
unsafe fn mount_on(
    target: *const c_char,
    source: *const c_char,
    fstype: *const c_char,
    flags: libc::c_ulong,
    data: *const c_char,
) -> c_long {
    unsafe {
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            target,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return fd;
        }
        let mut result = libc::syscall(libc::SYS_fchdir, fd);
        if result == 0 {
            result = libc::syscall(libc::SYS_mount, source, c".".as_ptr(), fstype, flags, data);
        }
        // Keep the mount's errno: close succeeds on this descriptor.
        libc::syscall(libc::SYS_close, fd);
        result
    }
}

/// `struct ifreq` with the `ifr_flags` member of its union, as
/// `SIOCGIFFLAGS` and `SIOCSIFFLAGS` use it.
#[repr(C)]
struct InterfaceFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest_of_union: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<InterfaceFlags>() == 40);

/// Sets `IFF_UP` on `lo`, the only interface of a new network namespace,
/// which starts down: without it even 127.0.0.1 is unreachable.
unsafe fn bring_up_loopback() -> c_long {
    let mut name = [0u8; libc::IFNAMSIZ];
    name[0] = b'l';
    name[1] = b'o';
    let mut request = InterfaceFlags {
        name,
        flags: 0,
        _rest_of_union: [0; 22],
    };
    unsafe {
        let fd = libc::syscall(
            libc::SYS_socket,
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return fd;
        }
        let request_ptr: *mut InterfaceFlags = &mut request;
        let mut result = libc::syscall(libc::SYS_ioctl, fd, libc::SIOCGIFFLAGS, request_ptr);
        if result >= 0 {
            (*request_ptr).flags |= libc::IFF_UP as libc::c_short;
            result = libc::syscall(libc::SYS_ioctl, fd, libc::SIOCSIFFLAGS, request_ptr);
        }
        libc::syscall(libc::SYS_close, fd);
        result
    }
}
