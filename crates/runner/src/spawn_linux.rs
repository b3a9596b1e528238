//! Starting a command on Linux: its output files, its pipes, and the
//! dedicated thread that clones its process tree.
//!
//! Every command gets a process tree of its own:
//!
//! ```text
//! runner ──clone(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET)──▶ init
//!     init: pid 1 of a new PID namespace, stays root, blocks all signals;
//!           makes every mount a slave, mounts a fresh /proc, an empty
//!           /dev/shm and the temporary directory on /tmp, brings up
//!           loopback; reaps orphans
//!      └─clone──▶ command: pid 2, own session, chroot, chdir, limits,
//!                 drops to the request's uid/gid, no_new_privs, execve
//! ```
//!
//! **Why mount and network namespaces.** A command must not see other
//! commands. A proc mounted from inside the new PID namespace lists only
//! that namespace's processes, so another action's `/proc/PID/environ` or
//! `/proc/PID/cwd` has no name; it needs a mount namespace so as not to
//! cover the host's /proc. Making every mount a slave first keeps the
//! host's unmounts flowing in while nothing mounted here leaks out. The
//! network namespace holds only `lo`, which init brings up, so a command
//! reaches neither the outside nor services on the host's loopback (such as
//! the scheduler's port); `host_network` leaves it out (`CLONE_NEWNET` is
//! then not set). Shared memory is kept apart the same way: an empty tmpfs
//! on /dev/shm and an IPC namespace of its own (System V segments,
//! semaphores and POSIX message queues). With `chroot_into_input_root`, /proc and /tmp go on the
//! input root's own `proc` and `tmp` directories, if it has them, never
//! through a symlink; a root without `proc` gives the command no /proc.
//! When the action's directory lies under /tmp itself, that entry of /tmp
//! is bind-mounted into the temporary directory first, so its paths still
//! work under the new /tmp. The cost: about 0.1 ms per command for the
//! mount namespace and 0.5 ms more for the network one (see
//! `benches/sandbox.rs`). `mount_and_network_namespaces = false` drops
//! both, for hosts that refuse them.
//!
//! **What the command gets besides.** Its resource limits (soft and hard,
//! so it cannot raise them) and `RLIMIT_CORE` 0 are set while it is still
//! privileged; then it switches to the request's uid and gid, and sets
//! `no_new_privs` so that a setuid binary it runs stays at its uid.
//!
//! **Why a PID namespace.** When the init of a PID namespace dies, the kernel
//! SIGKILLs every other process in it and waits for them to be gone before
//! init can be reaped. A daemon that double-forks and calls `setsid` is still
//! in the namespace, and leaving it needs `CAP_SYS_ADMIN`, which the command
//! does not have. So killing init kills the whole tree, and once
//! [`ProcessTree::wait`](crate::process_tree::ProcessTree::wait) has reaped
//! init, nothing of the command is alive. This needs no cgroup, so it works
//! on cgroup v1, hybrid and v2 hosts alike. When the command itself exits,
//! init exits too, so background processes it left behind die with it.
//!
//! **Why our own init.** Pid 1 of a namespace ignores every signal it has no
//! handler for, even ones it sends itself; the command as pid 1 would survive
//! `kill $$` or `raise(SIGABRT)`. As pid 2 it behaves as it would anywhere.
//! Init passes the command's wait status to the runner through a pipe.
//!
//! **Why a dedicated thread clones.** Init asks to be SIGKILLed when its
//! parent dies (`PR_SET_PDEATHSIG`), so that commands do not outlive a
//! crashed runner. The kernel ties that to the parent *thread*, and tokio's
//! blocking threads come and go; the spawner thread lives as long as the
//! runner.
//!
//! **A runner that is not root** cannot switch uid or create a PID namespace
//! on its own, but any user may create a user namespace and, inside it, a
//! PID namespace. Such a runner clones with `CLONE_NEWUSER` as well, and
//! init maps only the runner's own uid and gid before starting the command,
//! so the command runs as that user, with no capability left after
//! `execve`, and the whole tree still dies with init. The mount and network
//! namespaces are created in the same clone and belong to that user
//! namespace, where init may mount and configure them. A host that hides
//! parts of its /proc (as container runtimes do) refuses a fresh proc in a
//! user namespace; the command then fails with the step named, since
//! falling back to the host's /proc would show it every other command of
//! the same user. Its limits cannot exceed the runner's own hard limits,
//! and it accepts no uid but its own.
//!
//! What runs in the children, and why that is safe in a multi-threaded
//! process, is in [`child_linux`](crate::child_linux).

use std::ffi::{CString, c_char, c_int};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr;
use std::sync::Mutex;
use std::sync::mpsc;

use crate::child_linux::{
    ChildPlan, FIRST_FREE_FD, IdMaps, SandboxPlan, SpawnReply, clone_process_tree,
};
use crate::config::Limits;
use crate::error::RunError;
use crate::process_tree::{ProcessTree, kill_and_reap};
use crate::request::CommandSpec;

/// Starts `spec`'s command in a process tree of its own and returns the
/// handle that waits for it and kills it. The tree is killed when the handle
/// is dropped, so a caller that goes away leaves nothing behind.
///
/// Blocks on the filesystem (it opens the output files) and on the spawner
/// thread: call it off the async executor.
pub fn spawn(spec: &CommandSpec) -> Result<ProcessTree, RunError> {
    let stdin = open_null(false)?;
    let stdout = open_output(spec.stdout_path.as_deref())?;
    let stderr = if spec.stderr_path == spec.stdout_path && spec.stdout_path.is_some() {
        // One open file shared by both streams keeps their writes in order.
        stdout.try_clone().map_err(|source| RunError::OutputFile {
            path: spec.stderr_path.clone().unwrap_or_default(),
            source,
        })?
    } else {
        open_output(spec.stderr_path.as_deref())?
    };
    let (status_read, status_write) = pipe()?;
    let (errors_read, errors_write) = pipe()?;

    let child_fds = [
        above_child_fds(stdin.into())?,
        above_child_fds(stdout.into())?,
        above_child_fds(stderr.into())?,
        above_child_fds(status_write)?,
        above_child_fds(errors_write)?,
    ];
    let argv = null_terminated(&spec.arguments);
    let envp = null_terminated(&spec.environment);
    let uid_map = format!("{0} {0} 1", spec.credentials.uid);
    let gid_map = format!("{0} {0} 1", spec.credentials.gid);
    let plan = ChildPlan {
        stdin: child_fds[0].as_raw_fd(),
        stdout: child_fds[1].as_raw_fd(),
        stderr: child_fds[2].as_raw_fd(),
        status: child_fds[3].as_raw_fd(),
        errors: child_fds[4].as_raw_fd(),
        chroot: spec.chroot.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
        working_directory: spec.working_directory.as_ptr(),
        program: spec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        uid: spec.credentials.uid,
        gid: spec.credentials.gid,
        id_maps: spec.own_user_namespace.then(|| IdMaps {
            uid_map: uid_map.as_ptr(),
            uid_map_len: uid_map.len(),
            gid_map: gid_map.as_ptr(),
            gid_map_len: gid_map.len(),
        }),
        sandbox: spec.sandbox.as_ref().map(|sandbox| {
            let (temporary_source, temporary_target) = match &sandbox.temporary_directory {
                Some((source, target)) => (source.as_ptr(), target.as_ptr()),
                None => (ptr::null(), ptr::null()),
            };
            let (kept_source, kept_target) = match &sandbox.kept_under_tmp {
                Some((source, target)) => (source.as_ptr(), target.as_ptr()),
                None => (ptr::null(), ptr::null()),
            };
            SandboxPlan {
                proc_target: sandbox
                    .proc_target
                    .as_ref()
                    .map_or(ptr::null(), |c| c.as_ptr()),
                temporary_source,
                temporary_target,
                kept_source,
                kept_target,
                shm_target: sandbox
                    .shm_target
                    .as_ref()
                    .map_or(ptr::null(), |c| c.as_ptr()),
                shm_options: sandbox.shm_options.as_ptr(),
                mqueue_target: sandbox
                    .mqueue_target
                    .as_ref()
                    .map_or(ptr::null(), |c| c.as_ptr()),
                uid: spec.credentials.uid,
                gid: spec.credentials.gid,
                private_network: sandbox.private_network,
            }
        }),
        limits: resource_limits(spec.limits),
    };
    let action = if spec.own_user_namespace {
        "create the command's process in user and PID namespaces of its own (this runner is \
         not root; see /proc/sys/user/max_user_namespaces)"
    } else {
        "create the command's process"
    };
    let (pid, pidfd) =
        clone_on_spawner_thread(plan).map_err(|source| RunError::Process { action, source })?;
    // The children hold their own copies of the descriptors; the runner's
    // are closed when `child_fds` goes out of scope, so that only the
    // children can write to the pipes.
    drop(child_fds);
    Ok(ProcessTree::new(
        pid,
        pidfd,
        File::from(status_read),
        File::from(errors_read),
    ))
}

/// The command's limits as (`RLIMIT_*`, value) pairs for the child.
fn resource_limits(limits: Limits) -> [(libc::__rlimit_resource_t, u64); 4] {
    [
        (libc::RLIMIT_NPROC, limits.max_processes),
        (libc::RLIMIT_NOFILE, limits.max_open_files),
        (libc::RLIMIT_FSIZE, limits.max_file_size_bytes),
        (libc::RLIMIT_CORE, 0),
    ]
}

fn open_null(write: bool) -> Result<File, RunError> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|source| RunError::Process {
            action: "open /dev/null",
            source,
        })
}

fn open_output(path: Option<&Path>) -> Result<File, RunError> {
    let Some(path) = path else {
        return open_null(true);
    };
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(|source| RunError::OutputFile {
            path: path.to_path_buf(),
            source,
        })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    let mut fds = [0 as c_int; 2];
    // Non-blocking: the runner reads after the writers are gone, and the
    // children write a few bytes into an empty pipe.
    // SAFETY: `fds` is a valid array of two ints.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if ret != 0 {
        return Err(RunError::Process {
            action: "create a pipe",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Moves `fd` to a number at or above [`FIRST_FREE_FD`] if it is below.
fn above_child_fds(fd: OwnedFd) -> Result<OwnedFd, RunError> {
    if fd.as_raw_fd() >= FIRST_FREE_FD {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; the result is a new descriptor.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FREE_FD) };
    if moved < 0 {
        return Err(RunError::Process {
            action: "duplicate a descriptor",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fcntl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

struct SpawnJob {
    plan: ChildPlan,
    reply: mpsc::SyncSender<SpawnReply>,
}

fn start_spawner() -> io::Result<mpsc::Sender<SpawnJob>> {
    let (sender, jobs) = mpsc::channel::<SpawnJob>();
    std::thread::Builder::new()
        .name("lazybarn-spawner".to_string())
        .spawn(move || {
            for job in jobs {
                // SAFETY: the plan's memory is kept alive by the sender,
                // which blocks until it receives the reply.
                let result = unsafe { clone_process_tree(&job.plan) };
                if let Err(mpsc::SendError(Ok((pid, pidfd)))) = job.reply.send(result) {
                    kill_and_reap(pid, pidfd);
                }
            }
        })?;
    Ok(sender)
}

fn clone_on_spawner_thread(plan: ChildPlan) -> SpawnReply {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);
    let gone = || io::Error::other("the spawner thread is gone");
    let (reply, result) = mpsc::sync_channel(1);
    {
        let mut spawner = SPAWNER.lock().map_err(|_| gone())?;
        let sender = match spawner.as_ref() {
            Some(sender) => sender,
            None => spawner.insert(start_spawner()?),
        };
        if sender.send(SpawnJob { plan, reply }).is_err() {
            *spawner = None;
            return Err(gone());
        }
    }
    result.recv().map_err(|_| gone())?
}
