//! A scheduler whose CAS and Action Cache are another REAPI server's.
//!
//! `lazybarn-storage` plays the other CAS (as bb-storage or bazel-remote
//! would). `lazybarn scheduler` is configured with `[storage] remote`
//! pointing at it, and one `lazybarn worker` takes `--cas` pointing at it
//! too. Bazel 4 builds `//app:banner` with `--remote_executor` at the
//! scheduler: every action runs remotely. After `bazel clean`, the same
//! build through the scheduler is all remote cache hits, which the scheduler
//! can only answer from the remote's Action Cache. Last, with the scheduler
//! and worker stopped, Bazel uses the storage alone as `--remote_cache` and
//! again gets every action from it: the results and their outputs live
//! there, not in the scheduler.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow, ensure};
use lazybarn_tests::{BazelWorkspace, LazybarnUp, ServerProcess, StorageServer, workspace_binary};

/// The workspace under `tests/bazel/`.
const WORKSPACE: &str = "remote_workspace";

/// Two compiles, an archive and a link at least.
const MIN_ACTIONS: u64 = 3;

/// The platform every action asks for; part of each action's digest, so the
/// cache-only build must send it too to find the same entries.
const EXEC_PROPERTIES: &str = "--remote_default_exec_properties=OSFamily=linux";

/// Bounds how long Bazel waits on a remote call, so a hang fails the test.
const REMOTE_TIMEOUT: &str = "--remote_timeout=60";

#[test]
fn scheduler_and_worker_use_another_cas() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-remote-cas-")
        .tempdir()
        .context("Failed to create a directory for the cluster")?;
    let storage = StorageServer::start()?;
    let scheduler = start_scheduler(dir.path(), storage.url())?;
    let worker = start_worker(dir.path(), scheduler.announced(), storage.url())?;
    let bazel = BazelWorkspace::copy_of(WORKSPACE)?;
    let logs = |error: anyhow::Error| {
        anyhow!(
            "{error:?}\nscheduler log:\n{}\nworker log:\n{}\nstorage log:\n{}",
            scheduler.log_tail(),
            worker.log_tail(),
            storage.process().log_tail()
        )
    };
    build_through_scheduler(&bazel, scheduler.announced()).map_err(logs)?;
    drop(worker);
    drop(scheduler);
    build_from_storage_alone(&bazel, storage.url())
        .map_err(|error| anyhow!("{error:?}\nstorage log:\n{}", storage.process().log_tail()))?;
    bazel.shutdown()
}

/// `lazybarn scheduler` with `[storage] remote` naming `cas`.
fn start_scheduler(dir: &Path, cas: &str) -> Result<ServerProcess> {
    let config = dir.join("scheduler.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\n\
             [storage]\n\
             remote = \"{cas}\"\n"
        ),
    )
    .with_context(|| format!("Failed to write {}", config.display()))?;
    let mut command = Command::new(workspace_binary(LazybarnUp::BINARY)?);
    command.arg("scheduler").arg("--config").arg(&config);
    ServerProcess::start(
        command,
        "lazybarn scheduler ready:",
        &dir.join("scheduler.log"),
    )
}

/// One `lazybarn worker` with native build directories, reading and
/// writing blobs in `cas` directly.
fn start_worker(dir: &Path, scheduler: &str, cas: &str) -> Result<ServerProcess> {
    let mut command = Command::new(workspace_binary(LazybarnUp::BINARY)?);
    command
        .args(["worker", "--scheduler", scheduler, "--cas", cas])
        .args(["--build-dir", "native", "--workers", "1"])
        .args(["--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("worker"));
    ServerProcess::start(command, "lazybarn worker started:", &dir.join("worker.log"))
}

/// A cold build executes every action remotely; after `bazel clean` the
/// scheduler answers every action from the remote Action Cache.
fn build_through_scheduler(bazel: &BazelWorkspace, scheduler: &str) -> Result<()> {
    let executor = format!("--remote_executor={scheduler}");
    let flags = [
        executor.as_str(),
        EXEC_PROPERTIES,
        REMOTE_TIMEOUT,
        "--spawn_strategy=remote",
        "//app:banner",
    ];
    let cold = bazel.run("build", &flags)?;
    let summary = cold.ensure_success()?.summary()?;
    eprintln!("build through the scheduler: {summary:?}");
    ensure!(
        summary.remotely_executed() == summary.non_internal()
            && summary.remotely_executed() >= MIN_ACTIONS,
        "every action should run on the worker: {summary:?}"
    );

    bazel.run("clean", &[])?.ensure_success()?;
    let warm = bazel.run("build", &flags)?;
    warm.ensure_all_remote_cache_hits(MIN_ACTIONS, "after clean, through the scheduler")
}

/// With only the storage left, every action of the same build is found in
/// it, and the binary it hands back runs.
fn build_from_storage_alone(bazel: &BazelWorkspace, cas: &str) -> Result<()> {
    let cache = format!("--remote_cache={cas}");
    let flags = [cache.as_str(), EXEC_PROPERTIES, REMOTE_TIMEOUT];
    bazel.run("clean", &[])?.ensure_success()?;
    let build: Vec<&str> = flags.iter().copied().chain(["//app:banner"]).collect();
    let warm = bazel.run("build", &build)?;
    warm.ensure_all_remote_cache_hits(MIN_ACTIONS, "after clean, from the storage alone")?;
    let banner = bazel.bazel_bin()?.join("app/banner");
    let output = Command::new(&banner)
        .arg("barn")
        .output()
        .with_context(|| format!("Failed to run {}", banner.display()))?;
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && printed.trim() == "=== BARN ===",
        "{} exited with {} and printed {printed:?}",
        banner.display(),
        output.status,
    );
    Ok(())
}
