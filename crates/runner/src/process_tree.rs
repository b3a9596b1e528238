//! The runner's handle on one command's process tree: waiting for it without
//! blocking the executor, killing it, and killing it when the handle is
//! dropped.
//!
//! The tree's root is the init of a PID namespace (see
//! [`spawn_linux`](crate::spawn_linux)): SIGKILL to init kills every process
//! of the command, and once init is reaped none is left. The handle holds a
//! pidfd, so a signal can never reach an unrelated process that reused the
//! pid.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::child_linux::SetupStep;
use crate::error::RunError;

/// How the tree ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran; this is its wait status (as `waitpid` reports it).
    Command(i32),
    /// Init died before the command ended (killed by the runner on timeout
    /// or by someone else); this is init's wait status.
    Killed(i32),
    /// The child failed at `step` with `errno`, before the program ran.
    SetupFailed {
        /// The step that failed.
        step: SetupStep,
        /// The error number the system call returned.
        errno: i32,
    },
}

/// What waiting for the tree returns.
#[derive(Debug, Clone, Copy)]
pub struct TreeExit {
    /// How it ended.
    pub outcome: Outcome,
    /// Resources used by init and every process it reaped: the whole tree.
    pub rusage: libc::rusage,
}

/// A running command's process tree. Dropping it kills the tree.
#[derive(Debug)]
pub struct ProcessTree {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    status_pipe: File,
    error_pipe: File,
}

impl ProcessTree {
    /// Takes ownership of a freshly cloned init and the read ends of its
    /// status and error pipes.
    pub(crate) fn new(
        pid: libc::pid_t,
        pidfd: OwnedFd,
        status_pipe: File,
        error_pipe: File,
    ) -> ProcessTree {
        ProcessTree {
            pid,
            pidfd: Some(pidfd),
            status_pipe,
            error_pipe,
        }
    }

    /// Sends SIGKILL to init, which makes the kernel kill the whole tree.
    pub fn kill(&self) -> io::Result<()> {
        match &self.pidfd {
            Some(pidfd) => send_sigkill(pidfd),
            None => Ok(()),
        }
    }

    /// Waits until every process of the tree is gone, reaps init, and tells
    /// how the command ended. Cancel-safe: if the future is dropped, the
    /// tree is still owned (and killed on drop) by `self`.
    pub async fn wait(&mut self) -> Result<TreeExit, RunError> {
        let waiting = |source| RunError::Process {
            action: "wait for the command",
            source,
        };
        let Some(pidfd) = &self.pidfd else {
            return Err(waiting(io::Error::other(
                "the process tree was already reaped",
            )));
        };
        // A pidfd becomes readable when the process has exited.
        let pidfd = pidfd.try_clone().map_err(waiting)?;
        // SAFETY: the AsyncFd owns this OwnedFd, which stays open and the
        // same descriptor until the AsyncFd is dropped.
        let ready = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
            .map_err(|e| waiting(e.into()))?;
        loop {
            let mut guard = ready.readable().await.map_err(waiting)?;
            if let Some(exit) = self.try_reap().map_err(waiting)? {
                return Ok(exit);
            }
            guard.clear_ready();
        }
    }

    fn try_reap(&mut self) -> io::Result<Option<TreeExit>> {
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // Our own unreaped child, so the pid cannot have been reused.
        // SAFETY: valid pointers to locals.
        let pid = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut rusage) };
        if pid == 0 {
            return Ok(None);
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        self.pidfd = None;
        Ok(Some(TreeExit {
            outcome: self.outcome(status),
            rusage,
        }))
    }

    /// Reads what the children reported. Init is reaped, so whatever they
    /// wrote is in the pipes (other runs' inits may still hold the write
    /// ends, so the runner reads what is there rather than to EOF).
    fn outcome(&mut self, init_status: i32) -> Outcome {
        let mut error = [0u8; 8];
        if read_exact_now(&mut self.error_pipe, &mut error) {
            let (step, errno) = error.split_at(4);
            let step = u32::from_ne_bytes(step.try_into().expect("split at 4 of 8"));
            let errno = i32::from_ne_bytes(errno.try_into().expect("split at 4 of 8"));
            if let Some(step) = SetupStep::from_raw(step) {
                return Outcome::SetupFailed { step, errno };
            }
        }
        let mut status = [0u8; 4];
        if read_exact_now(&mut self.status_pipe, &mut status) {
            return Outcome::Command(i32::from_ne_bytes(status));
        }
        Outcome::Killed(init_status)
    }
}

fn read_exact_now(pipe: &mut File, buffer: &mut [u8]) -> bool {
    // A few bytes written at once into an empty pipe arrive whole.
    matches!(pipe.read(buffer), Ok(n) if n == buffer.len())
}

fn send_sigkill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a valid pidfd; no siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match ret {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // Already exited: nothing left to kill.
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        },
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            kill_and_reap(self.pid, pidfd);
        }
    }
}

/// Kills the tree rooted at init `pid` and reaps init on a background
/// thread: reaping waits until the kernel has killed every process of the
/// namespace, which must not hold up the caller (often a drop on an async
/// executor).
pub(crate) fn kill_and_reap(pid: libc::pid_t, pidfd: OwnedFd) {
    if let Err(error) = send_sigkill(&pidfd) {
        tracing::error!(pid, %error, "cannot kill a command's process tree");
    }
    let reap = move || {
        let _pidfd = pidfd;
        loop {
            // SAFETY: our own unreaped child; null status and rusage are allowed.
            let ret = unsafe { libc::wait4(pid, std::ptr::null_mut(), 0, std::ptr::null_mut()) };
            if ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("lazybarn-reaper".to_string())
        .spawn(reap);
    if let Err(error) = spawned {
        tracing::warn!(pid, %error, "cannot start a reaper thread; the zombie stays");
    }
}
