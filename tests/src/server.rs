//! Running a server binary for the length of a test.
//!
//! A Lazybarn server announces on stdout, with one line, that it accepts
//! connections and where. [`ServerProcess`] starts a binary, waits for that
//! line, keeps draining its stdout into a log file so the server never blocks
//! on a full pipe, and kills the process when dropped, so a failing test never
//! leaves a server behind.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::binaries::workspace_binary;

/// How long a server may take to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many bytes from the end of a server's log go into an error message.
const LOG_TAIL_BYTES: usize = 4000;

/// A child process that has said it is ready; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    announced: String,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Spawns `command` and waits until a line of its stdout contains
    /// `marker`. The text after the marker is kept as [`Self::announced`].
    /// Stdout and stderr go to `log_path`.
    pub fn start(mut command: Command, marker: &str, log_path: &Path) -> Result<Self> {
        File::create(log_path)
            .with_context(|| format!("Failed to create log file {}", log_path.display()))?;
        // Both streams append, so neither overwrites what the other wrote.
        let stdout_log = open_for_append(log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(open_for_append(log_path)?);
        let mut child = command
            .spawn()
            .with_context(|| format!("Failed to start {command:?}"))?;
        let stdout = child.stdout.take().expect("stdout was configured as piped");
        let ready = spawn_stdout_reader(stdout, marker.to_string(), stdout_log);
        let why = match ready.recv_timeout(READY_TIMEOUT) {
            Ok(announced) => {
                return Ok(Self {
                    child,
                    announced,
                    log_path: log_path.to_path_buf(),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => "timed out",
            Err(mpsc::RecvTimeoutError::Disconnected) => "stdout closed",
        };
        let _ = child.kill();
        let status = child.wait();
        bail!(
            "{command:?} did not print {marker:?} ({why}; exit status {status:?}); its log:\n{}",
            log_tail(log_path)
        )
    }

    /// The exit status if the process has exited, else None.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The rest of the readiness line, after the marker (usually an address).
    pub fn announced(&self) -> &str {
        &self.announced
    }

    /// The process id of the server.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit. A
    /// process still running then gets SIGKILL, and that is an error; it is
    /// reaped when `self` is dropped (a FUSE server may need its mounts
    /// aborted first, see `LazybarnUp`).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server had already exited with {status}");
        }
        let kill = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .context("Failed to run kill")?;
        if !kill.success() {
            bail!("kill -TERM {} failed with {kill}", self.id());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "the server did not exit within {timeout:?} of SIGTERM; killed it. Its log:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process with SIGKILL, as a crash or the kernel's OOM killer
    /// would, and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server had already exited with {status}");
        }
        self.child.kill().context("Failed to send SIGKILL")?;
        Ok(self.child.wait()?)
    }

    /// The text after `marker` on the first line of the log that holds it:
    /// what the server announced besides its readiness line.
    pub fn logged(&self, marker: &str) -> Result<String> {
        let log = fs::read_to_string(&self.log_path)
            .with_context(|| format!("Failed to read {}", self.log_path.display()))?;
        log.lines()
            .find_map(|line| line.split_once(marker))
            .map(|(_, rest)| rest.trim().to_string())
            .with_context(|| format!("the server's log has no line with {marker:?}"))
    }

    /// The file the server's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // The process may have exited already; either way it must be reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the child's stdout into the log line by line on a thread of its
/// own, and sends the text after `marker` once the readiness line appears.
/// The sender is dropped at end of file, so the receiver learns when the
/// child exits before it is ready.
fn spawn_stdout_reader(
    stdout: ChildStdout,
    marker: String,
    mut log: File,
) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut sender = Some(sender);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            if let Some((_, announced)) = line.split_once(&marker)
                && let Some(sender) = sender.take()
            {
                let _ = sender.send(announced.trim().to_string());
            }
        }
    });
    receiver
}

/// Opens the existing file at `path` for appending.
fn open_for_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("Failed to open log file {}", path.display()))
}

/// The last [`LOG_TAIL_BYTES`] of the file at `path`, lossily decoded.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// A `lazybarn-storage` process serving a fresh data directory on a free
/// loopback port.
#[derive(Debug)]
pub struct StorageServer {
    // Declared before `dir` so the process dies before its data is removed.
    process: ServerProcess,
    url: String,
    dir: TempDir,
}

impl StorageServer {
    /// The binary's name in the target directory.
    pub const BINARY: &str = "lazybarn-storage";

    /// What the binary prints, followed by its URL, once it accepts connections.
    pub const READY_MARKER: &str = "lazybarn-storage ready:";

    /// Starts `lazybarn-storage` with an empty data directory and no size limit
    /// beyond the binary's default.
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[])
    }

    /// Starts `lazybarn-storage` with an empty data directory and `extra_args`
    /// (for example `["--max-size", "1000000"]`).
    pub fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        let binary = workspace_binary(Self::BINARY)?;
        let dir = tempfile::Builder::new()
            .prefix("lazybarn-storage-")
            .tempdir()
            .context("Failed to create a directory for the storage")?;
        let data_dir = dir.path().join("data");
        fs::create_dir(&data_dir)
            .with_context(|| format!("Failed to create {}", data_dir.display()))?;
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra_args);
        let process = ServerProcess::start(command, Self::READY_MARKER, &dir.path().join("log"))?;
        let url = process.announced().to_string();
        if !url.starts_with("grpc://127.0.0.1:") {
            bail!(
                "{} announced {url:?}, not a grpc://127.0.0.1:PORT URL",
                binary.display()
            );
        }
        Ok(Self { process, url, dir })
    }

    /// The URL clients connect to, `grpc://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory the storage keeps its blobs in.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The running process.
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn waits_for_the_marker_and_kills_on_drop() -> Result<()> {
        let dir = TempDir::new()?;
        let log = dir.path().join("log");
        let script =
            "echo starting; echo 'test-server ready: grpc://127.0.0.1:1234'; exec sleep 600";
        let server = ServerProcess::start(shell(script), "test-server ready:", &log)?;
        assert_eq!(server.announced(), "grpc://127.0.0.1:1234");
        let proc_dir = PathBuf::from(format!("/proc/{}", server.id()));
        assert!(proc_dir.exists());
        drop(server);
        assert!(!proc_dir.exists(), "the server outlived its handle");
        assert!(fs::read_to_string(&log)?.contains("starting"));
        Ok(())
    }

    #[test]
    fn reports_exit_before_ready_with_the_log() -> Result<()> {
        let dir = TempDir::new()?;
        let log = dir.path().join("log");
        let error = ServerProcess::start(shell("echo 'no port today' >&2; exit 3"), "ready:", &log)
            .expect_err("the process never said it was ready");
        let message = format!("{error:#}");
        assert!(message.contains("stdout closed"), "{message}");
        assert!(message.contains("no port today"), "{message}");
        Ok(())
    }
}
