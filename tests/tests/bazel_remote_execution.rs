//! Bazel 4 builds and tests a C++ workspace with `--remote_executor`
//! against `lazybarn up`, once with virtual (FUSE) and once with native
//! build directories.
//!
//! For each mode: every action of `//app/... //base/...` runs remotely and
//! produces the same bytes as a local build; after `bazel clean` the same
//! build is all cache hits. Then the edges, from `//special`: an action
//! that fails, a test that times out, an action that reports its uid (not
//! root), one that writes a file it does not declare, and one that tries
//! to change its input (denied; the next action reads it intact). Last,
//! `lazybarn up` is stopped (no mount, no runner left) and started again on
//! the same data directory: the cache survived. Separately, `lazybarn
//! worker` joins a `lazybarn up --workers 0` and runs a build; `lazybarn up`
//! started by a user other than root runs commands as that user; and a worker
//! killed with SIGKILL in the middle of an action takes the action's
//! processes with it while the scheduler gives the action to another
//! worker, so the build succeeds.
//!
//! The tests run one at a time: each has a Bazel server and a cluster of
//! its own, and on a two-core machine they would only slow each other down.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use lazybarn_tests::cluster::start_scheduler;
use lazybarn_tests::outputs::{OutputFiles, differences, read_outputs};
use lazybarn_tests::system::{mounts_under, processes_mentioning};
use lazybarn_tests::{BazelOutput, BazelWorkspace, LazybarnUp, ServerProcess, workspace_binary};

/// The workspace under `tests/bazel/`.
const WORKSPACE: &str = "remote_workspace";

/// The targets of the regular build: two libraries, two binaries, two tests.
const TARGETS: [&str; 2] = ["//app/...", "//base/..."];

/// The packages whose outputs are compared with a local build.
const PACKAGES: [&str; 2] = ["app", "base"];

/// Six compiles, two archives, two shared libraries, four links and two
/// test runs: a cold build executes at least this many actions.
const MIN_ACTIONS: u64 = 12;

/// The timeout `//special:sleeps` gets; it sleeps for ten minutes.
const TEST_TIMEOUT_SECS: u64 = 5;

/// How long the timed-out test's processes may linger after Bazel reports it.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// What `//special:slow` writes, also in its command line.
const SLOW_ACTION_MARKER: &str = "lazybarn-test-slow-action";

/// How long Bazel may take to start `//special:slow` on a worker.
const ACTION_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The lease of the scheduler whose worker is killed: how long it waits for
/// a silent worker before the action goes to another.
const SHORT_LEASE: &str = "3s";

/// How long a restarted worker may take to clear the mounts it left.
const STALE_MOUNT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The first line `//special:tamper` writes for each attempt it makes.
const TAMPER_ATTEMPTS: [&str; 4] = ["append", "overwrite", "truncate", "chmod"];

/// Where `lazybarn up` keeps its data, relative to the test's directory.
#[derive(Clone, Copy, Debug)]
enum DataDir {
    /// Every uid can search the way down, so build directories stay there.
    Open,
    /// Mode 0700 above it, as under /root: build directories must move out.
    Private,
}

#[test]
fn virtual_build_directories() -> Result<()> {
    let _serial = one_at_a_time();
    remote_execution_in("virtual", DataDir::Private)
}

#[test]
fn native_build_directories() -> Result<()> {
    let _serial = one_at_a_time();
    remote_execution_in("native", DataDir::Open)
}

#[test]
fn a_worker_joins_a_running_scheduler() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-join-")
        .tempdir()
        .context("Failed to create a directory for the cluster")?;
    let up = LazybarnUp::start(
        &dir.path().join("scheduler"),
        "native",
        &["--workers", "0"],
        &dir.path().join("up.log"),
    )?;
    let mut worker = Command::new(workspace_binary(LazybarnUp::BINARY)?);
    worker
        .args(["worker", "--scheduler", up.url(), "--workers", "1"])
        // `up` serves the worker protocol only to holders of its token.
        .arg("--scheduler-token-file")
        .arg(dir.path().join("scheduler").join("worker-token"))
        .args([
            "--build-dir",
            "native",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("worker"));
    let mut worker = ServerProcess::start(
        worker,
        "lazybarn worker started:",
        &dir.path().join("worker.log"),
    )?;
    let bazel = BazelWorkspace::copy_of(WORKSPACE)?;
    let build = run(&bazel, "build", &remote_flags(up.url()), &["//app:banner"])?;
    let summary = build
        .ensure_success()
        .map_err(|error| anyhow!("{error:?}\nworker log:\n{}", worker.log_tail()))?
        .summary()?;
    ensure!(
        summary.remotely_executed() == summary.non_internal() && summary.remotely_executed() >= 3,
        "the joined worker should run every action: {summary:?}"
    );
    // A standalone worker exports its own metrics, and says it is ready.
    let completed = actions_completed(&worker)?;
    ensure!(
        completed >= 3,
        "the worker's /metrics counts {completed} actions completed"
    );
    let readiness = lazybarn_tests::cluster::http_get(&worker_http(&worker)?, "/readyz")?;
    ensure!(readiness == "ready\n", "/readyz answered {readiness:?}");
    let status = worker.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "lazybarn worker exited with {status}");
    up.stop()?;
    bazel.shutdown()
}

#[test]
fn a_killed_worker_loses_no_action() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-crash-")
        .tempdir()
        .context("Failed to create a directory for the cluster")?;
    // Build directories stay inside, where the action uid can reach them.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let scheduler = start_scheduler_with_short_lease(dir.path())?;
    let url = scheduler.announced().to_string();
    let mut doomed = start_worker(&url, &dir.path().join("doomed"))?;
    // A worker killed with SIGKILL leaves its FUSE mount behind; detach it
    // even if the test fails before the restart below cleans it up.
    let _detach = DetachMountsUnder(worker_build_dir(&doomed)?);
    let bazel = BazelWorkspace::copy_of(WORKSPACE)?;
    let flags = remote_flags(&url);

    let survivor = thread::scope(|scope| -> Result<ServerProcess> {
        let build = scope.spawn(|| run(&bazel, "build", &flags, &["//special:slow"]));
        let victims = processes_appearing(SLOW_ACTION_MARKER, ACTION_START_TIMEOUT)?;
        let survivor = start_worker(&url, &dir.path().join("survivor"))?;
        let status = doomed.kill()?;
        ensure!(!status.success(), "the killed worker exited with {status}");
        processes_gone(&victims, KILL_GRACE).context("the killed worker's action outlived it")?;
        let build = build.join().expect("the thread running Bazel panicked")?;
        let summary = build
            .ensure_success()
            .map_err(|error| {
                anyhow!(
                    "{error:?}\nsurviving worker's log:\n{}",
                    survivor.log_tail()
                )
            })?
            .summary()?;
        ensure!(
            summary.remotely_executed() == 1 && summary.non_internal() == 1,
            "//special:slow should be one remote action: {summary:?}"
        );
        Ok(survivor)
    })?;
    let written = fs::read_to_string(bazel.bazel_bin()?.join("special/slow.txt"))?;
    ensure!(
        written.trim() == SLOW_ACTION_MARKER,
        "//special:slow wrote {written:?}"
    );
    let completed = actions_completed(&survivor)?;
    ensure!(
        completed == 1,
        "the surviving worker should have completed the action once, not {completed} times"
    );

    // A FUSE server killed outright leaves its mount behind. Started again
    // on its data directory, the worker clears it.
    let build_dir = worker_build_dir(&doomed)?;
    let stale = mounts_under(&build_dir)?;
    ensure!(
        !stale.is_empty(),
        "the killed worker left no mount under {}",
        build_dir.display()
    );
    let restarted = start_worker(&url, &dir.path().join("doomed"))?;
    let deadline = Instant::now() + STALE_MOUNT_CLEANUP_TIMEOUT;
    while !mounts_under(&build_dir)?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the restarted worker left stale mounts: {:?}\n{}",
            mounts_under(&build_dir)?,
            restarted.log_tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
    for mut worker in [restarted, survivor] {
        let status = worker.terminate(Duration::from_secs(30))?;
        ensure!(status.success(), "lazybarn worker exited with {status}");
    }
    bazel.shutdown()
}

#[test]
fn lazybarn_up_started_by_another_user_runs_commands_as_that_user() -> Result<()> {
    const NOBODY: u32 = 65534;
    let _serial = one_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-nobody-")
        .tempdir()
        .context("Failed to create a directory for lazybarn up")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let data_dir = dir.path().join("data");
    fs::create_dir(&data_dir)?;
    std::os::unix::fs::chown(&data_dir, Some(NOBODY), Some(NOBODY))?;
    let up = LazybarnUp::start_as(
        &data_dir,
        "native",
        &[],
        &dir.path().join("up.log"),
        Some(NOBODY),
    )?;
    let said = up.process().logged("not running as root");
    ensure!(
        said.is_ok(),
        "lazybarn up did not say that commands run as its own user:\n{}",
        up.process().log_tail()
    );
    let bazel = BazelWorkspace::copy_of(WORKSPACE)?;
    let flags = remote_flags(up.url());
    let bin = bazel.bazel_bin()?;
    let checks = || -> Result<()> {
        let uid = action_uid(&bazel, &flags, &bin)?;
        ensure!(
            uid == NOBODY,
            "the action ran as uid {uid}, not lazybarn up's"
        );
        a_rewritten_input_stays_the_actions_own(&bazel, &flags, &bin)
    };
    checks().map_err(|error| with_log(error, &up))?;
    up.stop()?;
    bazel.shutdown()
}

/// Holds the other tests of this file off while one runs.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed poisoned the lock; the next one may still run.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The whole scenario for one build-directory mode.
fn remote_execution_in(mode: &str, data_dir_kind: DataDir) -> Result<()> {
    let expected = local_outputs()?;
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-up-")
        .tempdir()
        .context("Failed to create a directory for lazybarn up")?;
    let mode_bits = match data_dir_kind {
        DataDir::Open => 0o755,
        DataDir::Private => 0o700,
    };
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode_bits))?;
    let data_dir = dir.path().join("data");
    let bazel = BazelWorkspace::copy_of(WORKSPACE)?;

    let up = LazybarnUp::start(&data_dir, mode, &[], &dir.path().join("up-1.log"))?;
    let build_dir = up
        .build_dir()
        .context("lazybarn up named no build directory")?;
    ensure!(
        build_dir.starts_with(dir.path()) == matches!(data_dir_kind, DataDir::Open),
        "with a {data_dir_kind:?} data directory, the build directory is {}",
        build_dir.display()
    );
    let flags = remote_flags(up.url());
    let checks = || -> Result<()> {
        build_remotely_then_from_cache(&bazel, &flags, &expected)?;
        metrics_cover_every_component(&up)?;
        edge_cases(&bazel, &flags)
    };
    checks().map_err(|error| with_log(error, &up))?;
    up.stop()?;

    let up = LazybarnUp::start(&data_dir, mode, &[], &dir.path().join("up-2.log"))?;
    let flags = remote_flags(up.url());
    all_from_cache(
        &bazel,
        &flags,
        "after lazybarn up restarted on the same data directory",
    )
    .map_err(|error| with_log(error, &up))?;
    up.stop()?;
    bazel.shutdown()
}

/// Options that send every action to the cluster at `url`, and fail rather
/// than run one locally.
fn remote_flags(url: &str) -> Vec<String> {
    vec![
        format!("--remote_executor={url}"),
        "--remote_default_exec_properties=OSFamily=linux".to_string(),
        "--remote_timeout=60".to_string(),
        "--spawn_strategy=remote".to_string(),
        "--test_output=errors".to_string(),
    ]
}

/// The outputs of `//app/... //base/...` built locally, once for all tests.
fn local_outputs() -> Result<OutputFiles> {
    static LOCAL: OnceLock<Result<OutputFiles, String>> = OnceLock::new();
    LOCAL
        .get_or_init(|| build_locally().map_err(|error| format!("{error:?}")))
        .clone()
        .map_err(|error| anyhow!("the local reference build failed: {error}"))
}

fn build_locally() -> Result<OutputFiles> {
    let bazel = BazelWorkspace::copy_of(WORKSPACE)?;
    let build = bazel.run("build", &TARGETS)?;
    let summary = build.ensure_success()?.summary()?;
    eprintln!("local build: {summary:?}");
    let outputs = read_outputs(&bazel.bazel_bin()?, &PACKAGES)?;
    bazel.shutdown()?;
    Ok(outputs)
}

/// `bazel test` of the regular targets: all remote, the same bytes as the
/// local build, working binaries; after `bazel clean`, all cache hits.
fn build_remotely_then_from_cache(
    bazel: &BazelWorkspace,
    flags: &[String],
    expected: &OutputFiles,
) -> Result<()> {
    let test = run(bazel, "test", flags, &TARGETS)?;
    let summary = test.ensure_success()?.summary()?;
    eprintln!("remote build: {summary:?}");
    ensure!(
        summary.remotely_executed() == summary.non_internal()
            && summary.remotely_executed() >= MIN_ACTIONS,
        "every action should run remotely, at least {MIN_ACTIONS}: {summary:?}"
    );
    ensure!(
        test.stdout.contains("2 tests pass"),
        "bazel test did not pass both tests; stdout:\n{}",
        test.stdout
    );

    let bin = bazel.bazel_bin()?;
    let found = differences(expected, &read_outputs(&bin, &PACKAGES)?);
    ensure!(
        found.is_empty(),
        "remote outputs differ from the local build's:\n{}",
        found.join("\n")
    );
    expect_output(
        Command::new(bin.join("app/banner")).arg("barn"),
        "=== BARN ===",
    )?;
    expect_output(
        Command::new(bin.join("app/sum")).args(["1", "2", "3"]),
        "1 + 2 + 3 = 6!",
    )?;

    all_from_cache(bazel, flags, "after bazel clean")
}

/// After `bazel clean`, the regular targets are all remote cache hits.
fn all_from_cache(bazel: &BazelWorkspace, flags: &[String], when: &str) -> Result<()> {
    bazel.run("clean", &[])?.ensure_success()?;
    let test = run(bazel, "test", flags, &TARGETS)?;
    test.ensure_all_remote_cache_hits(MIN_ACTIONS, when)
}

/// `/metrics` shows the scheduler's and the worker's metrics together.
fn metrics_cover_every_component(up: &LazybarnUp) -> Result<()> {
    let metrics = up.metrics()?;
    for name in [
        "lazybarn_scheduler_executions_total",
        "lazybarn_worker_actions_total",
    ] {
        ensure!(
            metrics.contains(name),
            "{}/metrics lacks {name}:\n{metrics}",
            up.status_url()
        );
    }
    Ok(())
}

/// The `//special` targets, each on its own.
fn edge_cases(bazel: &BazelWorkspace, flags: &[String]) -> Result<()> {
    let bin = bazel.bazel_bin()?;
    runs_as_an_unprivileged_user(bazel, flags, &bin)?;
    undeclared_outputs_are_dropped(bazel, flags, &bin)?;
    inputs_cannot_be_changed(bazel, flags, &bin)?;
    a_failing_action_fails_the_build(bazel, flags)?;
    a_test_past_its_timeout_is_killed(bazel, flags)
}

fn runs_as_an_unprivileged_user(
    bazel: &BazelWorkspace,
    flags: &[String],
    bin: &Path,
) -> Result<()> {
    let uid = action_uid(bazel, flags, bin)?;
    ensure!(uid != 0, "the action ran as root");
    // lazybarn up as root gives each worker slot a user of its own.
    let first = lazybarn_worker::config::DEFAULT_FIRST_SLOT_ID;
    let slots = std::thread::available_parallelism().map_or(1, usize::from) as u32;
    ensure!(
        (first..first + slots).contains(&uid),
        "the action ran as uid {uid}, not one of the slot users {first}..{}",
        first + slots
    );
    Ok(())
}

/// The uid `//special:whoami` runs as, remotely.
fn action_uid(bazel: &BazelWorkspace, flags: &[String], bin: &Path) -> Result<u32> {
    build_one_remotely(bazel, flags, "//special:whoami")?;
    let uid = fs::read_to_string(bin.join("special/whoami.txt"))?;
    uid.trim()
        .parse()
        .with_context(|| format!("`id -u` wrote {uid:?}"))
}

fn undeclared_outputs_are_dropped(
    bazel: &BazelWorkspace,
    flags: &[String],
    bin: &Path,
) -> Result<()> {
    build_one_remotely(bazel, flags, "//special:stray")?;
    let declared = fs::read_to_string(bin.join("special/declared.txt"))?;
    ensure!(declared == "declared\n", "declared.txt holds {declared:?}");
    ensure!(
        !bin.join("special/undeclared.txt").exists(),
        "a file the action did not declare came back as an output"
    );
    Ok(())
}

fn inputs_cannot_be_changed(bazel: &BazelWorkspace, flags: &[String], bin: &Path) -> Result<()> {
    // :after_tamper depends on :tamper, so it runs after it and reads the
    // same input.
    let build = run(bazel, "build", flags, &["//special:after_tamper"])?;
    let summary = build.ensure_success()?.summary()?;
    ensure!(
        summary.remotely_executed() == 2,
        "both actions should run remotely: {summary:?}"
    );
    let report = fs::read_to_string(bin.join("special/tamper.txt"))?;
    for attempt in TAMPER_ATTEMPTS {
        ensure!(
            report.contains(&format!("{attempt}: denied")),
            "the action could {attempt} its input; it reported:\n{report}"
        );
    }
    ensure!(
        report.contains("content: original"),
        "the input changed under the action; it reported:\n{report}"
    );
    let after = fs::read_to_string(bin.join("special/after_tamper.txt"))?;
    ensure!(
        after == "original\n",
        "the next action read {after:?} from the input"
    );
    Ok(())
}

/// An action running as the worker's own user owns its input files and can
/// make one writable and rewrite it, but only its own copy: the next action
/// reads the input intact, so the worker's blob cache was not touched.
fn a_rewritten_input_stays_the_actions_own(
    bazel: &BazelWorkspace,
    flags: &[String],
    bin: &Path,
) -> Result<()> {
    let build = run(bazel, "build", flags, &["//special:after_rewrite"])?;
    let summary = build.ensure_success()?.summary()?;
    ensure!(
        summary.remotely_executed() == 2,
        "both actions should run remotely: {summary:?}"
    );
    let rewritten = fs::read_to_string(bin.join("special/rewrite.txt"))?;
    ensure!(
        rewritten == "rewritten\n",
        "the action could not rewrite its own copy of the input: it read {rewritten:?}"
    );
    let after = fs::read_to_string(bin.join("special/after_rewrite.txt"))?;
    ensure!(
        after == "original\n",
        "the next action read {after:?} from the input"
    );
    Ok(())
}

fn a_failing_action_fails_the_build(bazel: &BazelWorkspace, flags: &[String]) -> Result<()> {
    let build = run(bazel, "build", flags, &["//special:fails"])?;
    ensure!(!build.status.success(), "//special:fails built");
    for expected in [
        "Executing genrule //special:fails failed",
        "lazybarn-test: failing on purpose",
    ] {
        ensure!(
            build.stderr.contains(expected),
            "Bazel's stderr lacks {expected:?}:\n{}",
            build.stderr_tail()
        );
    }
    Ok(())
}

fn a_test_past_its_timeout_is_killed(bazel: &BazelWorkspace, flags: &[String]) -> Result<()> {
    let timeout = format!("--test_timeout={TEST_TIMEOUT_SECS}");
    let started = Instant::now();
    let test = run(bazel, "test", flags, &[&timeout, "//special:sleeps"])?;
    ensure!(!test.status.success(), "//special:sleeps passed");
    ensure!(
        test.stdout.contains("TIMEOUT"),
        "Bazel did not report a timeout; stdout:\n{}\nend of stderr:\n{}",
        test.stdout,
        test.stderr_tail()
    );
    ensure!(
        started.elapsed() < Duration::from_secs(120),
        "the timed-out test took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + KILL_GRACE;
    loop {
        let left = processes_mentioning("special/sleeps");
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the timed-out test's processes are still running: {left:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `lazybarn scheduler` on free loopback ports, with a lease of
/// [`SHORT_LEASE`] so that a dead worker's action moves on quickly.
fn start_scheduler_with_short_lease(dir: &Path) -> Result<ServerProcess> {
    start_scheduler(dir, &format!("lease_duration = \"{SHORT_LEASE}\""))
}

/// `lazybarn worker` with one slot and virtual build directories under
/// `data_dir`, joined to the scheduler at `url`, serving its metrics.
fn start_worker(url: &str, data_dir: &Path) -> Result<ServerProcess> {
    fs::create_dir_all(data_dir)?;
    let mut command = Command::new(workspace_binary(LazybarnUp::BINARY)?);
    command
        .args(["worker", "--scheduler", url, "--workers", "1"])
        .args(["--build-dir", "virtual", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir);
    let log = data_dir.with_extension("log");
    ServerProcess::start(command, "lazybarn worker started:", &log)
}

/// Where a `lazybarn worker` makes its action directories, from its log.
fn worker_build_dir(worker: &ServerProcess) -> Result<PathBuf> {
    let line = worker.logged(LazybarnUp::BUILD_DIR_MARKER)?;
    let (dir, _mode) = line
        .rsplit_once(" (")
        .with_context(|| format!("no mode in {line:?}"))?;
    Ok(PathBuf::from(dir))
}

/// How many actions a `lazybarn worker` started with `--http` reports
/// completed successfully on its /metrics.
fn actions_completed(worker: &ServerProcess) -> Result<u64> {
    let metrics = lazybarn_tests::cluster::http_get(&worker_http(worker)?, "/metrics")?;
    let counter = "lazybarn_worker_actions_total{outcome=\"ok\"}";
    let value = metrics
        .lines()
        .find_map(|line| line.strip_prefix(counter))
        .with_context(|| format!("the worker's /metrics lacks {counter}:\n{metrics}"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("{counter} has the value {value:?}"))
}

/// The HTTP base URL a `lazybarn worker --http` announced.
fn worker_http(worker: &ServerProcess) -> Result<String> {
    let announced = worker.announced();
    announced
        .split_once(", metrics ")
        .and_then(|(_, url)| url.trim().strip_suffix("/metrics"))
        .map(str::to_string)
        .with_context(|| format!("no metrics URL in {announced:?}"))
}

/// Waits until some process's command line contains `marker`; their pids.
fn processes_appearing(marker: &str, timeout: Duration) -> Result<Vec<u32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = processes_mentioning(marker);
        if !found.is_empty() {
            return Ok(found.into_iter().map(|(pid, _)| pid).collect());
        }
        if Instant::now() > deadline {
            bail!("no process mentioning {marker:?} started within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until none of `pids` is running.
fn processes_gone(pids: &[u32], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {left:?} still run after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Lazily unmounts whatever is mounted under its directory when dropped.
struct DetachMountsUnder(PathBuf);

impl Drop for DetachMountsUnder {
    fn drop(&mut self) {
        for mount in mounts_under(&self.0).unwrap_or_default() {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

/// Builds `target`, which must be one action, run remotely.
fn build_one_remotely(bazel: &BazelWorkspace, flags: &[String], target: &str) -> Result<()> {
    let build = run(bazel, "build", flags, &[target])?;
    let summary = build.ensure_success()?.summary()?;
    ensure!(
        summary.remotely_executed() == 1 && summary.non_internal() == 1,
        "{target} should be one remote action: {summary:?}"
    );
    Ok(())
}

/// `bazel <command> <flags> <args>`.
fn run(
    bazel: &BazelWorkspace,
    command: &str,
    flags: &[String],
    args: &[&str],
) -> Result<BazelOutput> {
    let all: Vec<&str> = flags
        .iter()
        .map(String::as_str)
        .chain(args.iter().copied())
        .collect();
    bazel.run(command, &all)
}

/// Runs `command` and requires it to print `expected` (one line).
fn expect_output(command: &mut Command, expected: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("Failed to run {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.trim() == expected,
        "{command:?} exited with {} and printed {stdout:?}, expected {expected:?}",
        output.status
    );
    Ok(())
}

/// `error` with the end of `up`'s log.
fn with_log(error: anyhow::Error, up: &LazybarnUp) -> anyhow::Error {
    anyhow!(
        "{error:?}\nend of the lazybarn up log:\n{}",
        up.process().log_tail()
    )
}
