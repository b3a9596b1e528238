//! Helpers shared by the runner's behaviour tests: an in-process runner on a
//! private socket, directories the command's user can traverse, requests,
//! and a /proc scan that finds every process of a command by a marker in
//! its environment (which every descendant inherits).

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lazybarn_proto::runner::runner_client::RunnerClient;
use lazybarn_proto::runner::{EnvironmentVariable, RunRequest};
use lazybarn_runner::client::connect;
use lazybarn_runner::{RunnerConfig, RunnerDaemon};
use tempfile::TempDir;
use tonic::transport::Channel;

/// The environment variable that tags a test's processes.
pub const MARKER_VARIABLE: &str = "LAZYBARN_TEST_MARKER";

/// A runner serving on a socket of its own, for one test.
pub struct TestRunner {
    /// A connected client.
    pub client: RunnerClient<Channel>,
    /// The socket path.
    pub socket: PathBuf,
    _dir: TempDir,
}

/// A directory under /tmp with mode 0755, so that `nobody` can traverse it
/// (tempfile creates 0700 directories).
pub fn work_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-runner-test-")
        .tempdir_in("/tmp")
        .expect("create a directory under /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755");
    dir
}

/// A directory `nobody` can write to.
pub fn writable_work_dir() -> TempDir {
    let dir = work_dir();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown to nobody");
    dir
}

/// Starts a runner with the default configuration.
pub async fn start_runner() -> TestRunner {
    start_runner_with(|_| {}).await
}

/// Starts a runner whose configuration `adjust` may change.
pub async fn start_runner_with(adjust: impl FnOnce(&mut RunnerConfig)) -> TestRunner {
    let dir = work_dir();
    let socket = dir.path().join("runner.sock");
    let mut config = RunnerConfig::new(&socket);
    adjust(&mut config);
    let daemon = RunnerDaemon::bind(&config).expect("runner binds its socket");
    tokio::spawn(daemon.serve(std::future::pending()));
    let client = connect(&socket).await.expect("connect to the runner");
    TestRunner {
        client,
        socket,
        _dir: dir,
    }
}

/// An environment variable.
pub fn env(name: &str, value: &str) -> EnvironmentVariable {
    EnvironmentVariable {
        name: name.to_string(),
        value: value.to_string(),
    }
}

/// A request running `arguments` in `dir` with `PATH=/usr/bin:/bin`,
/// standard output to `dir/stdout` and standard error to `dir/stderr`.
pub fn request(dir: &Path, arguments: &[&str]) -> RunRequest {
    RunRequest {
        arguments: arguments.iter().map(|a| a.to_string()).collect(),
        environment_variables: vec![env("PATH", "/usr/bin:/bin")],
        working_directory: dir.display().to_string(),
        stdout_path: dir.join("stdout").display().to_string(),
        stderr_path: dir.join("stderr").display().to_string(),
        ..Default::default()
    }
}

/// A marker unique to this test process and call.
pub fn unique_marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Tags `request`'s processes with `marker`.
pub fn with_marker(mut request: RunRequest, marker: &str) -> RunRequest {
    request
        .environment_variables
        .push(env(MARKER_VARIABLE, marker));
    request
}

/// Pids of live processes whose environment holds `marker`.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_VARIABLE}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .collect()
}

/// Waits up to `limit` until at least `count` processes carry `marker`.
pub async fn wait_for_processes(marker: &str, count: usize, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let pids = processes_with_marker(marker);
        if pids.len() >= count || Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `limit` until no process carries `marker`; returns those left.
pub async fn wait_for_no_processes(marker: &str, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let pids = processes_with_marker(marker);
        if pids.is_empty() || Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A protobuf duration of `seconds`.
pub fn seconds(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

/// Reads a file the runner wrote.
pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).expect("read an output file")
}

/// Reads a file the runner wrote, as text.
pub fn read_text(path: impl AsRef<Path>) -> String {
    String::from_utf8(read(path)).expect("output is UTF-8")
}

/// Waits up to ten seconds for the file at `path` to contain `text` (what a
/// running command prints once it has set something up); panics with
/// `what` if it never does.
pub async fn wait_for_text(path: impl AsRef<Path>, text: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path.as_ref())
        .unwrap_or_default()
        .contains(text)
    {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the `lazybarn-runner` binary with `args` and waits until it answers.
pub async fn start_binary(
    socket: &Path,
    args: &[&std::ffi::OsStr],
) -> (tokio::process::Child, RunnerClient<Channel>) {
    start_binary_as(socket, args, None).await
}

/// [`start_binary`] as user and group `uid`, or as root.
pub async fn start_binary_as(
    socket: &Path,
    args: &[&std::ffi::OsStr],
    uid: Option<u32>,
) -> (tokio::process::Child, RunnerClient<Channel>) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lazybarn-runner"));
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let daemon = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start lazybarn-runner");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut client) = lazybarn_runner::client::connect(socket).await {
            let ready = client
                .check_readiness(lazybarn_proto::runner::CheckReadinessRequest::default())
                .await;
            if ready.is_ok() {
                return (daemon, client);
            }
        }
        assert!(Instant::now() < deadline, "runner did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
