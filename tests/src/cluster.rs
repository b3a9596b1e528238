//! Running `lazybarn up`, a whole cluster in one command, for the length of
//! a test, and stopping it the way a user would (SIGTERM).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::binaries::workspace_binary;
use crate::server::ServerProcess;
use crate::system::{
    abort_fuse_connection, fuse_connections_under, mounts_under, processes_mentioning,
};

/// How long `lazybarn up` may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the runner child may outlive `lazybarn up`'s exit.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `LazybarnUp` dropped without [`LazybarnUp::stop`] (a failing
/// test) gets to stop on SIGTERM before it is killed.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `lazybarn up` on free loopback ports. [`Self::stop`] stops it
/// cleanly and checks what it left behind; dropping it instead (a failing
/// test) stops it as well as it can and detaches any mount it left.
#[derive(Debug)]
pub struct LazybarnUp {
    process: ServerProcess,
    stopped: bool,
    url: String,
    status_url: String,
    build_dir: Option<PathBuf>,
    runner_socket: PathBuf,
}

impl LazybarnUp {
    /// The binary's name in the target directory.
    pub const BINARY: &str = "lazybarn";

    /// What `lazybarn up` prints, followed by its URL, once it accepts work.
    pub const READY_MARKER: &str = "lazybarn ready:";

    /// What it prints, followed by the status page's URL, before that.
    pub const STATUS_MARKER: &str = "lazybarn status:";

    /// What it prints, followed by the worker's build directory and mode.
    pub const BUILD_DIR_MARKER: &str = "lazybarn build directory:";

    /// Starts `lazybarn up --build-dir <mode>` on `data_dir` (created if
    /// missing), with `extra_args`, logging to `log`.
    pub fn start(data_dir: &Path, mode: &str, extra_args: &[&str], log: &Path) -> Result<Self> {
        Self::start_as(data_dir, mode, extra_args, log, None)
    }

    /// [`Self::start`] as user and group `uid` (which must be able to write
    /// `data_dir`), or as this process's user if `None`.
    pub fn start_as(
        data_dir: &Path,
        mode: &str,
        extra_args: &[&str],
        log: &Path,
        uid: Option<u32>,
    ) -> Result<Self> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("Failed to create {}", data_dir.display()))?;
        let mut command = Command::new(workspace_binary(Self::BINARY)?);
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command
            .args(["up", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--build-dir", mode, "--data-dir"])
            .arg(data_dir)
            .args(extra_args);
        let process = ServerProcess::start(command, Self::READY_MARKER, log)?;
        let url = process.announced().to_string();
        ensure!(
            url.starts_with("grpc://127.0.0.1:") && !url.ends_with(":0"),
            "lazybarn up announced {url:?}, not a grpc://127.0.0.1:PORT URL"
        );
        let status_url = process.logged(Self::STATUS_MARKER)?;
        // `--workers 0` has no worker, and so no build directory.
        let build_dir = match process.logged(Self::BUILD_DIR_MARKER) {
            Ok(line) => Some(Self::check_build_dir(&line, mode, &process)?),
            Err(_) => None,
        };
        let data_dir = fs::canonicalize(data_dir)?;
        Ok(Self {
            process,
            stopped: false,
            url,
            status_url,
            build_dir,
            runner_socket: data_dir.join("runner.sock"),
        })
    }

    /// The URL Bazel connects to, `grpc://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The status page, `http://127.0.0.1:PORT`.
    pub fn status_url(&self) -> &str {
        &self.status_url
    }

    /// Where the worker makes its action directories (None without a worker).
    pub fn build_dir(&self) -> Option<&Path> {
        self.build_dir.as_deref()
    }

    /// The build directory from the line `lazybarn build directory: PATH
    /// (MODE)`, which must name the mode asked for.
    fn check_build_dir(line: &str, mode: &str, process: &ServerProcess) -> Result<PathBuf> {
        let (build_dir, used_mode) = line
            .rsplit_once(" (")
            .with_context(|| format!("no mode in {line:?}"))?;
        ensure!(
            used_mode.trim_end_matches(')') == mode,
            "lazybarn up was asked for {mode} build directories but uses {used_mode}; its log:\n{}",
            process.log_tail()
        );
        Ok(PathBuf::from(build_dir))
    }

    /// Mounts left under the build directory.
    fn leftover_mounts(&self) -> Vec<String> {
        match &self.build_dir {
            Some(dir) => mounts_under(dir).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The running process.
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// The exit status if `lazybarn up` has exited (crashed), else None.
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.process.exit_status()
    }

    /// Stops `lazybarn up` with SIGTERM and checks that it exited cleanly,
    /// left no mount under its build directory and no runner behind.
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.terminate(STOP_TIMEOUT)?;
        self.stopped = true;
        ensure!(
            status.success(),
            "lazybarn up exited with {status} after SIGTERM; its log:\n{}",
            self.process.log_tail()
        );
        let mounts = self.leftover_mounts();
        ensure!(
            mounts.is_empty(),
            "lazybarn up left mounts behind: {mounts:?}"
        );
        let socket = self.runner_socket.display().to_string();
        let deadline = Instant::now() + CHILD_EXIT_TIMEOUT;
        loop {
            let runners = processes_mentioning(&socket);
            if runners.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the runner outlived lazybarn up: {runners:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of `GET <status page>/metrics`.
    pub fn metrics(&self) -> Result<String> {
        http_get(&self.status_url, "/metrics")
    }
}

impl Drop for LazybarnUp {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let _ = self.process.terminate(DROP_STOP_TIMEOUT);
        // A process whose threads wait on its own FUSE mounts cannot exit,
        // even after SIGKILL, until those connections are aborted. And a
        // dead FUSE server's mounts stay behind: detach them.
        if let Some(dir) = &self.build_dir {
            for id in fuse_connections_under(dir).unwrap_or_default() {
                let _ = abort_fuse_connection(id);
            }
        }
        for mount in self.leftover_mounts() {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

/// A plain HTTP/1.0 GET of `path` on `base` (`http://HOST:PORT`); the body.
pub fn http_get(base: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("{base:?} is not an http:// URL"))?;
    let mut stream = std::net::TcpStream::connect(authority)
        .with_context(|| format!("Failed to connect to {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {base}{path}: {response:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {base}{path}: {head}"
    );
    Ok(body.to_string())
}

/// Starts `lazybarn scheduler` on free loopback ports with `scheduler`
/// as the body of its `[scheduler]` table (TOML lines), its configuration
/// and log in `dir`.
pub fn start_scheduler(dir: &Path, scheduler: &str) -> Result<ServerProcess> {
    let config = dir.join("scheduler.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\n[scheduler]\n{scheduler}\n"
        ),
    )?;
    let mut command = Command::new(workspace_binary(LazybarnUp::BINARY)?);
    command.arg("scheduler").arg("--config").arg(&config);
    ServerProcess::start(
        command,
        "lazybarn scheduler ready:",
        &dir.join("scheduler.log"),
    )
}
