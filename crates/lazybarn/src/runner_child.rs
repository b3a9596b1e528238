//! The runner as a child process of `lazybarn up` and `lazybarn worker`.
//!
//! The runner must be a process of its own: it forks build commands and
//! changes their uid, and it keeps that away from the worker's FUSE mounts
//! and gRPC connections. So `lazybarn` runs itself again as
//! `lazybarn runner --socket ...`, waits until the runner answers
//! `CheckReadiness`, and stops it (SIGTERM, then SIGKILL) when it stops.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lazybarn_proto::runner::CheckReadinessRequest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use lazybarn_worker::WorkerConfig;

use crate::error::LazybarnError;

/// How long the runner may take to answer its first `CheckReadiness`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the runner may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between readiness checks while the runner starts.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// A running `lazybarn runner` child; killed if dropped without [`Self::stop`].
#[derive(Debug)]
pub struct RunnerChild {
    child: Child,
    socket: PathBuf,
}

impl RunnerChild {
    /// Starts `lazybarn runner` for the worker configured by `worker`: on its
    /// `runner_socket`, running commands as its `action_uid`:`action_gid`,
    /// or as the ids of its slots and no others when slots have ids of their
    /// own; and waits until it answers.
    ///
    /// Call this from the task that lives as long as the process (the main
    /// future): the child is told to get SIGTERM when the thread that started
    /// it exits, so that a `lazybarn` killed with SIGKILL leaves no runner
    /// behind.
    pub async fn start(worker: &WorkerConfig) -> Result<Self, LazybarnError> {
        let socket = worker.runner_socket.as_path();
        let (uid, gid) = (worker.action_uid, worker.action_gid);
        // Only this worker's slot ids: another worker on the host has its own.
        let slot_ids = if worker.isolate_slots {
            format!("{}:{}", worker.first_slot_id, worker.slots.max(1))
        } else {
            "0:0".to_string()
        };
        let exe = std::env::current_exe()
            .map_err(|e| LazybarnError::RunnerChild(format!("finding this executable: {e}")))?;
        let mut command = Command::new(&exe);
        command
            .arg("runner")
            .arg("--socket")
            .arg(socket)
            .args(["--user", &uid.to_string(), "--group", &gid.to_string()])
            .args(["--slot-ids", &slot_ids])
            .stdin(Stdio::null())
            // The runner logs on stderr, next to ours; our stdout is for
            // the lines scripts wait for.
            .stdout(Stdio::null())
            // Its own process group: Ctrl-C in a terminal signals the whole
            // foreground group, and the runner must outlive the worker's
            // drain, which ends by stopping it.
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; this closure runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            LazybarnError::RunnerChild(format!("starting {} runner: {e}", exe.display()))
        })?;
        let mut runner = RunnerChild {
            child,
            socket: socket.to_path_buf(),
        };
        runner.wait_until_ready().await?;
        Ok(runner)
    }

    /// The runner's process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The socket the runner listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Resolves when the runner exits, with its status.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Asks the runner to stop (it kills the commands it runs), and kills it
    /// if it has not exited within a few seconds.
    pub async fn stop(mut self) -> Result<(), LazybarnError> {
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(LazybarnError::RunnerChild(format!("waiting for it: {e}"))),
            Err(_) => {
                tracing::warn!("the runner did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = self.child.kill().await;
                Ok(())
            }
        }
    }

    async fn wait_until_ready(&mut self) -> Result<(), LazybarnError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| LazybarnError::RunnerChild(format!("waiting for it: {e}")))?
            {
                return Err(LazybarnError::RunnerChild(format!(
                    "exited with {status} before it was ready (its error is above)"
                )));
            }
            let why = match self.check_readiness().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(LazybarnError::RunnerChild(format!(
                    "not ready on {} after {READY_TIMEOUT:?}: {why}",
                    self.socket.display()
                )));
            }
            sleep(RETRY_INTERVAL).await;
        }
    }

    async fn check_readiness(&self) -> Result<(), String> {
        let mut client = lazybarn_runner::client::connect(&self.socket)
            .await
            .map_err(|e| e.to_string())?;
        client
            .check_readiness(CheckReadinessRequest::default())
            .await
            .map(|_| ())
            .map_err(|status| status.message().to_string())
    }
}
