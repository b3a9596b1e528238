//! What runs in an action's processes between the clone and `execve`: the
//! init of its PID namespace and the command's own setup. The layout and
//! the reasons for it are in [`spawn_linux`](crate::spawn_linux).
//!
//! **Why this is safe although the runner is a multi-threaded tokio process.**
//! A child created without `CLONE_VM` gets a copy of the parent's memory but
//! only the calling thread. Any lock another thread held at that moment
//! (malloc arenas, stdio, the tracing subscriber, tokio's internals) stays
//! held forever in the child. So the children here take no locks at all:
//! they read only memory the parent prepared before the clone (a
//! `ChildPlan` of C strings, pointer arrays and file descriptors), never
//! allocate, format or log, and make raw system calls through
//! `libc::syscall`, which is a thin wrapper that only sets `errno` in the
//! thread's own (copied) TLS. That is stricter than async-signal-safety.
//! Raw system calls matter in two places: the clone itself (glibc's `fork`
//! would run `atfork` handlers that take locks), and `setresuid` and friends,
//! which glibc broadcasts to every thread it believes exists through signals
//! and would then wait forever for threads that do not exist in the child.
//!

use std::ffi::{CStr, c_char, c_int, c_long};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

pub(crate) use crate::sandbox_linux::SandboxPlan;
use crate::sandbox_linux::set_up_sandbox;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the runner uses the 64-bit system call numbers of setresuid and setresgid");

/// Where init puts the write end of the status pipe.
const STATUS_FD: c_int = 3;
/// Where init puts the write end of the error pipe.
const ERROR_FD: c_int = 4;
/// The lowest descriptor number the parent hands to the child, so that
/// moving descriptors to 0..=4 never overwrites one still to be moved.
pub(crate) const FIRST_FREE_FD: c_int = 5;
/// The exit code of a child that failed before `execve`.
const SETUP_FAILED: c_int = 127;

/// A step of the child's setup whose failure is reported to the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SetupStep {
    /// Init moving descriptors into place.
    Descriptors = 1,
    /// Init creating the command's process.
    Fork = 2,
    /// `chroot` into the input root.
    Chroot = 3,
    /// `chdir` into the working directory.
    Chdir = 4,
    /// Dropping supplementary groups.
    Setgroups = 5,
    /// Changing the group id.
    Setgid = 6,
    /// Changing the user id.
    Setuid = 7,
    /// Starting a new session.
    Setsid = 8,
    /// `execve` of the program.
    Exec = 9,
    /// Init writing the uid and gid maps of its user namespace.
    IdMaps = 10,
    /// Init making every mount of its new mount namespace a slave.
    MountPropagation = 11,
    /// Init mounting a fresh proc for the new PID namespace.
    MountProc = 12,
    /// Init bind-mounting the temporary directory on /tmp.
    MountTemporaryDirectory = 13,
    /// Init bringing up loopback in the new network namespace.
    Loopback = 14,
    /// Setting the command's resource limits.
    Limits = 15,
    /// Setting `no_new_privs`.
    NoNewPrivs = 16,
    /// Init mounting an empty tmpfs on /dev/shm.
    MountShm = 17,
    /// Init mounting a fresh mqueue on /dev/mqueue.
    MountMqueue = 18,
}

impl SetupStep {
    /// Decodes a step sent through the error pipe.
    pub fn from_raw(raw: u32) -> Option<SetupStep> {
        use SetupStep::*;
        [
            Descriptors,
            Fork,
            Chroot,
            Chdir,
            Setgroups,
            Setgid,
            Setuid,
            Setsid,
            Exec,
            IdMaps,
            MountPropagation,
            MountProc,
            MountTemporaryDirectory,
            Loopback,
            Limits,
            NoNewPrivs,
            MountShm,
            MountMqueue,
        ]
        .into_iter()
        .find(|step| *step as u32 == raw)
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            SetupStep::Descriptors => "dup3",
            SetupStep::Fork => "clone",
            SetupStep::Chroot => "chroot",
            SetupStep::Chdir => "chdir",
            SetupStep::Setgroups => "setgroups",
            SetupStep::Setgid => "setresgid",
            SetupStep::Setuid => "setresuid",
            SetupStep::Setsid => "setsid",
            SetupStep::Exec => "execve",
            SetupStep::IdMaps => "writing /proc/self/uid_map and gid_map",
            SetupStep::MountPropagation => {
                "making the command's mounts slaves of the host's (mount --make-rslave /)"
            }
            SetupStep::MountProc => {
                "mounting a fresh /proc for the command's PID namespace (hosts that hide parts \
                 of /proc, as many containers do, refuse it to a runner that is not root; set \
                 mount_and_network_namespaces = false there)"
            }
            SetupStep::MountTemporaryDirectory => "bind-mounting temporary_directory on /tmp",
            SetupStep::Loopback => "bringing up loopback in the command's network namespace",
            SetupStep::Limits => "setting the resource limits (prlimit64)",
            SetupStep::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            SetupStep::MountShm => "mounting an empty tmpfs on /dev/shm",
            SetupStep::MountMqueue => "mounting a fresh mqueue on /dev/mqueue",
        }
    }
}

/// Everything the child processes read: prepared by the parent before the
/// clone, read-only afterwards. Raw pointers, because the children must not
/// run any code that could allocate.
pub(crate) struct ChildPlan {
    /// Becomes the command's standard input (descriptor 0).
    pub stdin: RawFd,
    /// Becomes the command's standard output (descriptor 1).
    pub stdout: RawFd,
    /// Becomes the command's standard error (descriptor 2).
    pub stderr: RawFd,
    /// Write end of the pipe on which init reports the command's status.
    pub status: RawFd,
    /// Write end of the pipe on which a failed setup step is reported.
    pub errors: RawFd,
    /// Directory to chroot into, or null.
    pub chroot: *const c_char,
    /// Directory to start in, as seen after the chroot.
    pub working_directory: *const c_char,
    /// File to execute.
    pub program: *const c_char,
    /// Null-terminated argument vector.
    pub argv: *const *const c_char,
    /// Null-terminated environment.
    pub envp: *const *const c_char,
    /// User id to run as.
    pub uid: u32,
    /// Group id to run as.
    pub gid: u32,
    /// With a user namespace of its own: what init writes to its uid_map
    /// and gid_map. `None`: the tree stays in the runner's user namespace.
    pub id_maps: Option<IdMaps>,
    /// The mount and network namespaces; `None`: the tree shares the
    /// runner's.
    pub sandbox: Option<SandboxPlan>,
    /// The command's resource limits, as (`RLIMIT_*`, soft and hard value).
    pub limits: [(libc::__rlimit_resource_t, u64); 4],
}

/// The one-line uid and gid maps of a command's own user namespace, each
/// mapping an id to itself, prepared by the parent.
#[derive(Clone, Copy)]
pub(crate) struct IdMaps {
    /// The text for /proc/self/uid_map.
    pub uid_map: *const u8,
    /// Its length in bytes.
    pub uid_map_len: usize,
    /// The text for /proc/self/gid_map.
    pub gid_map: *const u8,
    /// Its length in bytes.
    pub gid_map_len: usize,
}

// SAFETY: the plan is only read, by the spawner thread and the cloned
// children, while the thread that built it blocks waiting for the clone and
// keeps the pointed-to memory alive.
unsafe impl Send for ChildPlan {}

/// The `struct clone_args` of clone3(2); declared here because the libc
/// crate does not define it for every target.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
/// What the spawner thread returns: init's pid and a pidfd on it.
pub(crate) type SpawnReply = io::Result<(libc::pid_t, OwnedFd)>;

/// Creates init in a new PID namespace; returns its pid and a pidfd.
///
/// # Safety
/// The plan's pointers must be valid. The child never returns from here.
pub(crate) unsafe fn clone_process_tree(plan: &ChildPlan) -> SpawnReply {
    let mut pidfd: c_int = -1;
    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_PIDFD) as u64;
    if plan.id_maps.is_some() {
        // A new user namespace first, which then owns the new PID namespace:
        // no privilege is needed for either.
        flags |= libc::CLONE_NEWUSER as u64;
    }
    if let Some(sandbox) = plan.sandbox {
        // A mount namespace for its own /proc, /tmp and /dev/shm, and an IPC
        // namespace so that System V IPC and POSIX message queues of
        // concurrent commands never meet.
        flags |= (libc::CLONE_NEWNS | libc::CLONE_NEWIPC) as u64;
        if sandbox.private_network {
            flags |= libc::CLONE_NEWNET as u64;
        }
    }
    // SAFETY: see the module documentation; the child only runs `init_main`.
    let pid = unsafe { raw_clone(flags, &mut pidfd) };
    match pid {
        0 => unsafe { init_main(plan) },
        pid if pid < 0 => Err(io::Error::last_os_error()),
        // SAFETY: CLONE_PIDFD stored a new descriptor that we now own.
        pid => Ok((pid as libc::pid_t, unsafe { OwnedFd::from_raw_fd(pidfd) })),
    }
}

/// clone3(2) like fork(2): no shared memory, the child continues on a copy
/// of the stack; `SIGCHLD` when it exits.
///
/// # Safety
/// In the child, only async-signal-safe code may run afterwards.
unsafe fn raw_clone(flags: u64, pidfd: *mut c_int) -> c_long {
    let mut args = CloneArgs {
        flags,
        pidfd: pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let args_ptr: *mut CloneArgs = &mut args;
    let size = std::mem::size_of::<CloneArgs>();
    // SAFETY: a valid clone_args of the given size; no CLONE_VM, no stack.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args_ptr, size) };
    if pid == -1 && unsafe { errno() } == libc::ENOSYS {
        // Kernels before 5.3, and seccomp profiles that hide clone3 so that
        // glibc falls back. clone(2)'s third argument is where CLONE_PIDFD
        // stores the pidfd on every architecture; the last two (whose order
        // differs between architectures) are unused.
        let flags = flags | libc::SIGCHLD as u64;
        return unsafe { libc::syscall(libc::SYS_clone, flags, 0, pidfd, 0, 0) };
    }
    pid
}

pub(crate) unsafe fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Writes the failed step and errno to `fd` and exits with [`SETUP_FAILED`].
unsafe fn report_and_exit(fd: c_int, step: SetupStep, error: c_int) -> ! {
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    message[4..].copy_from_slice(&error.to_ne_bytes());
    unsafe {
        libc::syscall(libc::SYS_write, fd, message.as_ptr(), message.len());
        libc::syscall(libc::SYS_exit_group, SETUP_FAILED);
    }
    unreachable_exit()
}

fn unreachable_exit() -> ! {
    // exit_group does not return; loop rather than panic if it somehow did.
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Runs `call` (a raw system call's return value); on failure, reports.
pub(crate) unsafe fn check(result: c_long, fd: c_int, step: SetupStep) {
    if result < 0 {
        unsafe { report_and_exit(fd, step, errno()) }
    }
}

/// Pid 1 of the namespace: sets up descriptors, starts the command, reaps
/// everything, and reports the command's status.
unsafe fn init_main(plan: &ChildPlan) -> ! {
    let all_signals: u64 = !0;
    unsafe {
        // Init needs no signals; SIGKILL from the runner cannot be blocked.
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all_signals as *const u64,
            ptr::null::<u64>(),
            8,
        );
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL,
            0,
            0,
            0,
        );
        if let Some(maps) = plan.id_maps {
            check(write_id_maps(maps), plan.errors, SetupStep::IdMaps);
        }
        if let Some(sandbox) = plan.sandbox {
            set_up_sandbox(sandbox, plan.errors);
        }
        // Out of the runner's session and process group, so that a signal
        // to the runner's terminal does not reach the command.
        libc::syscall(libc::SYS_setsid);
        check(
            libc::syscall(libc::SYS_dup3, plan.errors, ERROR_FD, libc::O_CLOEXEC),
            plan.errors,
            SetupStep::Descriptors,
        );
        let moves = [
            (plan.stdin, 0, 0),
            (plan.stdout, 1, 0),
            (plan.stderr, 2, 0),
            (plan.status, STATUS_FD, libc::O_CLOEXEC),
        ];
        for (from, to, flags) in moves {
            check(
                libc::syscall(libc::SYS_dup3, from, to, flags),
                ERROR_FD,
                SetupStep::Descriptors,
            );
        }
        // Everything else the runner had open (other actions' pipes, gRPC
        // sockets) is none of this tree's business. Failure (kernels before
        // 5.9) is harmless: the runner opens everything close-on-exec.
        libc::syscall(libc::SYS_close_range, FIRST_FREE_FD, c_int::MAX, 0);

        let command = raw_clone(0, ptr::null_mut());
        if command < 0 {
            report_and_exit(ERROR_FD, SetupStep::Fork, errno());
        }
        if command == 0 {
            command_main(plan);
        }
        libc::syscall(libc::SYS_close, ERROR_FD);
        reap_until(command as libc::pid_t)
    }
}

/// Maps the runner's uid and gid into init's new user namespace, so that
/// the command runs there as the same user it is outside. An unprivileged
/// process may write only such a one-line map of its own ids, and the gid
/// map only after giving up `setgroups` in the namespace.
unsafe fn write_id_maps(maps: IdMaps) -> c_long {
    const DENY: &[u8] = b"deny";
    let writes: [(&CStr, *const u8, usize); 3] = [
        (c"/proc/self/setgroups", DENY.as_ptr(), DENY.len()),
        (c"/proc/self/uid_map", maps.uid_map, maps.uid_map_len),
        (c"/proc/self/gid_map", maps.gid_map, maps.gid_map_len),
    ];
    for (path, text, len) in writes {
        let result = unsafe { write_file(path, text, len) };
        if result < 0 {
            return result;
        }
    }
    0
}

/// Writes `len` bytes at `text` to the existing file at `path` in one call.
unsafe fn write_file(path: &CStr, text: *const u8, len: usize) -> c_long {
    unsafe {
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return fd;
        }
        let written = libc::syscall(libc::SYS_write, fd, text, len);
        // Keep the write's errno: close succeeds on this file.
        libc::syscall(libc::SYS_close, fd);
        written.min(0)
    }
}

/// Reaps every process that ends up as init's child until `command` exits,
/// then reports its status and exits, which kills the rest of the tree.
unsafe fn reap_until(command: libc::pid_t) -> ! {
    loop {
        let mut status: c_int = 0;
        let pid = unsafe {
            libc::syscall(
                libc::SYS_wait4,
                -1,
                &mut status as *mut c_int,
                libc::__WALL,
                ptr::null_mut::<libc::rusage>(),
            )
        };
        if pid == command as c_long {
            let bytes = status.to_ne_bytes();
            unsafe {
                libc::syscall(libc::SYS_write, STATUS_FD, bytes.as_ptr(), bytes.len());
                libc::syscall(libc::SYS_exit_group, 0);
            }
            unreachable_exit();
        }
        if pid < 0 && unsafe { errno() } != libc::EINTR {
            unsafe { libc::syscall(libc::SYS_exit_group, SETUP_FAILED) };
            unreachable_exit();
        }
    }
}

/// Pid 2: becomes the command.
unsafe fn command_main(plan: &ChildPlan) -> ! {
    unsafe {
        if !plan.chroot.is_null() {
            check(
                libc::syscall(libc::SYS_chroot, plan.chroot),
                ERROR_FD,
                SetupStep::Chroot,
            );
        }
        // chdir while still root: the working directory works even when
        // one of its parents is not searchable by the command's user (such
        // as a build directory under /root), as the runner already checked
        // it exists.
        check(
            libc::syscall(libc::SYS_chdir, plan.working_directory),
            ERROR_FD,
            SetupStep::Chdir,
        );
        // While still privileged, so that hard limits above the runner's own
        // hard ones can be set where it may (the runner lowered them to what
        // it may).
        for (resource, value) in plan.limits {
            let limit = libc::rlimit64 {
                rlim_cur: value,
                rlim_max: value,
            };
            check(
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    resource,
                    &limit as *const libc::rlimit64,
                    ptr::null_mut::<libc::rlimit64>(),
                ),
                ERROR_FD,
                SetupStep::Limits,
            );
        }
        // In a user namespace of its own, init gave up setgroups, and the
        // runner's user had no supplementary groups to give the command.
        if plan.id_maps.is_none() {
            check(
                libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()),
                ERROR_FD,
                SetupStep::Setgroups,
            );
        }
        check(
            libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid),
            ERROR_FD,
            SetupStep::Setgid,
        );
        check(
            libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid),
            ERROR_FD,
            SetupStep::Setuid,
        );
        // From here on no execve can gain privileges: setuid and setgid
        // bits and file capabilities are ignored.
        check(
            libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            ERROR_FD,
            SetupStep::NoNewPrivs,
        );
        check(libc::syscall(libc::SYS_setsid), ERROR_FD, SetupStep::Setsid);
        // Default dispositions (the Rust runtime ignores SIGPIPE, and
        // ignored signals survive execve) and nothing blocked.
        let default_action = [0u64; 4];
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    default_action.as_ptr(),
                    ptr::null_mut::<u64>(),
                    8,
                );
            }
        }
        let no_signals: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &no_signals as *const u64,
            ptr::null_mut::<u64>(),
            8,
        );
        libc::syscall(libc::SYS_execve, plan.program, plan.argv, plan.envp);
        report_and_exit(ERROR_FD, SetupStep::Exec, errno())
    }
}
