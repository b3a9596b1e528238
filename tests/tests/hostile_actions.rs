//! Hostile clients and actions against `lazybarn up` (issue 12): each test
//! performs one attack from the issue through real Execute calls against a
//! real scheduler, worker and runner, in both build-directory modes where
//! the attack applies, and checks that it stays inside its own action.
//!
//! - an output under an input symlink must not make the worker, as root,
//!   create directories outside the action, or return a root-only file;
//! - an action must not reach the scheduler's port (and so poison another
//!   action's cache entry) unless it asks for the network and the worker
//!   allows it;
//! - two actions running at once must not touch each other's files or read
//!   each other's environment;
//! - a 100,000-deep output tree, 600 MiB of stdout and a tree of shared
//!   subtrees expanding to 336,000 paths must cost bounded work, and the
//!   node must stay up (and start again) afterwards;
//! - invalid input names are INVALID_ARGUMENT, naming the name and the
//!   Directory that holds it.
//!
//! Where the defence is a refusal, the test checks the status code and
//! that the message names what was wrong. The tests run one at a time:
//! each starts clusters of its own, and on a two-core machine they would
//! only slow each other down.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{Directory, ExecuteResponse};
use lazybarn_tests::LazybarnUp;
use lazybarn_tests::binaries::workspace_binary;
use lazybarn_tests::cluster::start_scheduler;
use lazybarn_tests::remote::{
    ActionSpec, InputDirectory, Remote, directory_node, ensure_refused, file_node, names_figure,
    status_of,
};
use lazybarn_tests::server::ServerProcess;
use lazybarn_tests::system::peak_rss_bytes;
use tonic::Code;

/// Both build-directory modes.
const MODES: [&str; 2] = ["virtual", "native"];

/// How long any one Execute may take to answer.
const WAIT: Duration = Duration::from_secs(180);

/// The attack binary that writes an Action Cache entry (src/bin).
const POISON_BINARY: &str = env!("CARGO_BIN_EXE_poison_action_cache");

/// Its exit code when it cannot reach the scheduler.
const POISON_CANNOT_CONNECT: i32 = 2;

/// The default cap on files, directories and symlinks per input tree.
const DEFAULT_MAX_INPUT_ENTRIES: u64 = 200_000;

/// Depth of the output tree that used to overflow capture's stack.
const DEEP_TREE_DEPTH: usize = 100_000;

/// The stdout an action writes to test the log cap: 600 MiB.
const BIG_LOG_BYTES: u64 = 600 << 20;

/// The most the whole `lazybarn up` process may hold resident while it
/// handles [`BIG_LOG_BYTES`] of log: half the log, well above its idle size.
const MAX_PEAK_RSS: u64 = 300 << 20;

/// How long a process whose connection broke may take to exit.
const DYING_TIME: Duration = Duration::from_secs(10);

/// A log cap below [`BIG_LOG_BYTES`]: 256 MiB.
const SMALL_LOG_CAP: u64 = 256 << 20;

/// A log cap above it: 1 GiB.
const LARGE_LOG_CAP: u64 = 1 << 30;

/// How long refusing an over-cap input tree may take.
const QUICK_REFUSAL: Duration = Duration::from_secs(30);

/// Links one file has at most on ext4, where the worker's cache lives here.
const EXT4_LINK_MAX: u64 = 65_000;

#[test]
fn an_output_under_an_input_symlink_creates_nothing_outside() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("symlink-parent")?;
        let outside = ScratchDir::new("outside")?;
        let (up, remote) = start(&dir, mode, &[])?;
        let target = outside.path().display().to_string();
        let root = remote.put_tree(&InputDirectory::new().symlink("o", &target))?;
        let spec = ActionSpec::shell("echo planted > o/newdir/x")
            .in_root(root)
            .outputs(&["o/newdir/x"]);
        let response = remote.execute(&spec, WAIT)?;
        let created = outside.path().join("newdir");
        if let Ok(metadata) = fs::symlink_metadata(&created) {
            bail!(
                "the worker created {} (mode {:o}, uid {}) through the input symlink \
                 o -> {target}; the action: {}",
                created.display(),
                metadata.permissions().mode() & 0o7777,
                std::os::unix::fs::MetadataExt::uid(&metadata),
                remote.describe(&response)
            );
        }
        ensure_refused(&remote, &response, Code::InvalidArgument, &["o/newdir/x"])
            .context("an output under an input symlink")?;
        up.stop()
    })
}

#[test]
fn an_output_through_an_input_symlink_returns_no_root_only_file() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("symlink-secret")?;
        let private = ScratchDir::new("root-only")?;
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700))?;
        let secret = format!("root-only secret {}\n", std::process::id());
        fs::write(private.path().join("secret"), &secret)?;
        fs::set_permissions(
            private.path().join("secret"),
            fs::Permissions::from_mode(0o600),
        )?;
        let (up, remote) = start(&dir, mode, &[])?;
        let target = private.path().display().to_string();
        let root = remote.put_tree(&InputDirectory::new().symlink("o", &target))?;
        let spec = ActionSpec::shell("true")
            .in_root(root)
            .outputs(&["o/secret"]);
        let response = remote.execute(&spec, WAIT)?;
        if let Some(result) = &response.result {
            for file in &result.output_files {
                let contents = remote.output_file(result, &file.path)?.unwrap_or_default();
                ensure!(
                    !String::from_utf8_lossy(&contents).contains(secret.trim()),
                    "the root-only file {target}/secret came back as output {}: {}",
                    file.path,
                    remote.describe(&response)
                );
            }
        }
        let secret_digest = Digest::of(secret.as_bytes());
        ensure!(
            !remote.contains(secret_digest)?,
            "the root-only file {target}/secret was uploaded to the CAS as {secret_digest}; \
             the action: {}",
            remote.describe(&response)
        );
        ensure_refused(&remote, &response, Code::InvalidArgument, &["o/secret"])
            .context("an output through an input symlink")?;
        up.stop()
    })
}

#[test]
fn an_action_cannot_reach_the_scheduler_to_poison_the_action_cache() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("network")?;
        let (up, remote) = start(&dir, mode, &[])?;
        let attack = PoisonAttack::prepare(&remote, up.url())?;
        let attacker = remote.execute(&attack.spec(), WAIT)?;
        let victim = remote.execute_action(attack.victim, false, WAIT)?;
        let result = victim
            .result
            .as_ref()
            .with_context(|| format!("the victim has no result: {victim:?}"))?;
        let output = remote.output_file(result, VICTIM_OUTPUT)?;
        ensure!(
            output.as_deref() == Some(format!("{VICTIM_LINE}\n").as_bytes()),
            "the victim's Execute returned {VICTIM_OUTPUT} = {output:?} (cached {}), \
             planted by another action through the scheduler's port; the attacker: {}",
            victim.cached_result,
            remote.describe(&attacker)
        );
        attack
            .ensure_could_not_connect(&remote, &attacker)
            .context("an action without the network")?;
        up.stop()
    })
}

#[test]
fn an_action_reaches_the_network_only_when_it_asks_and_the_worker_allows() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = ScratchDir::new("host-network")?;
    let (up, remote) = start(&dir, "native", &["--allow-host-network"])?;
    let attack = PoisonAttack::prepare(&remote, up.url())?;
    let unasked = remote.execute(&attack.spec(), WAIT)?;
    attack
        .ensure_could_not_connect(&remote, &unasked)
        .context("an action that did not ask for the network, on a worker that allows it")?;
    let asked = remote.execute(&attack.spec().platform("network", "host"), WAIT)?;
    let (code, _) = status_of(&asked);
    let exit_code = asked.result.as_ref().map(|r| r.exit_code);
    ensure!(
        code == Code::Ok && exit_code == Some(0),
        "an action with network=host on a worker that allows it could not reach the \
         scheduler: {}",
        remote.describe(&asked)
    );
    let entry = remote
        .action_result(attack.victim)?
        .context("the attack reported success but the victim has no cache entry")?;
    let planted = remote.output_file(&entry, VICTIM_OUTPUT)?;
    ensure!(
        planted.as_deref() == Some(POISONED_CONTENTS.as_bytes()),
        "the attack with host network reported success, yet the victim's entry holds {planted:?}"
    );
    up.stop()
}

/// How long a scheduler in a test waits for a worker of an action's
/// platform before it fails the action.
const SHORT_NO_WORKER_TIMEOUT: &str = "3s";

#[test]
fn asking_for_the_host_network_where_no_worker_allows_it_fails_naming_the_property() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = ScratchDir::new("network-refused")?;
    let scheduler = start_scheduler(
        dir.path(),
        &format!("no_worker_timeout = \"{SHORT_NO_WORKER_TIMEOUT}\""),
    )?;
    let binary = workspace_binary(LazybarnUp::BINARY)?;
    let url = scheduler.announced().to_string();
    let worker_dir = dir.path().join("worker");
    fs::create_dir_all(&worker_dir)?;
    let mut command = Command::new(&binary);
    command
        .args(["worker", "--scheduler", &url, "--workers", "1"])
        .args(["--build-dir", "native", "--data-dir"])
        .arg(&worker_dir);
    let _worker = ServerProcess::start(
        command,
        "lazybarn worker started:",
        &dir.path().join("worker.log"),
    )?;
    let remote = Remote::connect(&url)?;
    ensure_node_works(&remote).context("a worker that does not allow the network")?;

    let asking = ActionSpec::shell("echo reached").platform("network", "host");
    let response = remote.execute(&asking, WAIT)?;
    ensure_refused(
        &remote,
        &response,
        Code::FailedPrecondition,
        &["network=host"],
    )
}

#[test]
fn concurrent_actions_cannot_touch_each_others_files_or_environment() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("concurrent")?;
        let (up, remote) = start(&dir, mode, &["--workers", "2"])?;
        let secret = format!("secret-token-{}-{mode}", std::process::id());
        let victim = ActionSpec::shell(&format!(
            "echo {VICTIM_A_CONTENTS} > {VICTIM_A_OUTPUT} && sleep {VICTIM_A_SLEEP_SECS}"
        ))
        .env("SECRET_TOKEN", &secret)
        .outputs(&[VICTIM_A_OUTPUT]);
        let intruder = ActionSpec::shell(INTRUDER_SCRIPT);
        let (a, b) = thread::scope(|scope| {
            let a = scope.spawn(|| remote.execute(&victim, WAIT));
            let b = scope.spawn(|| remote.execute(&intruder, WAIT));
            (join(a), join(b))
        });
        let (a, b) = (a?, b?);
        ensure_overlapped(&a, &b).context("the test's own premise")?;
        let seen = remote.stdout(&b)?;
        ensure!(
            !seen.contains(&secret),
            "action B read action A's SECRET_TOKEN; B's report:\n{seen}"
        );
        let a_result = a
            .result
            .as_ref()
            .with_context(|| format!("action A has no result: {a:?}"))?;
        let output = remote.output_file(a_result, VICTIM_A_OUTPUT)?;
        ensure!(
            output.as_deref() == Some(format!("{VICTIM_A_CONTENTS}\n").as_bytes()),
            "action A uploaded {VICTIM_A_OUTPUT} = {output:?}, tampered with by action B; \
             B's report:\n{seen}"
        );
        ensure!(
            !seen.contains("WROTE") && !seen.contains(&format!("READ {VICTIM_A_CONTENTS}")),
            "action B read or wrote action A's output; B's report:\n{seen}"
        );
        up.stop()
    })
}

#[test]
fn a_100000_deep_output_tree_does_not_take_the_node_down() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("deep")?;
        let (mut up, remote) = start(&dir, mode, &[])?;
        let build_dir = up.build_dir().context("no build directory")?.to_path_buf();
        let script = format!(
            "exec python3 -c \"import os\nos.makedirs('out', exist_ok=True)\nos.chdir('out')\n\
             for _ in range({DEEP_TREE_DEPTH}):\n    os.mkdir('d')\n    os.chdir('d')\n\""
        );
        let spec = ActionSpec::shell(&script).outputs(&["out"]);
        let outcome = remote.execute(&spec, WAIT);
        if let Some(status) = exit_status_after(&mut up, outcome.is_err())? {
            bail!(
                "lazybarn up died ({status}) after an action made a \
                 {DEEP_TREE_DEPTH}-deep output tree (Execute: {outcome:?}); its log:\n{}",
                up.process().log_tail()
            );
        }
        let response = outcome.context("the deep tree's Execute")?;
        ensure_captured_or_refused(&remote, &response, "out")
            .with_context(|| format!("a {DEEP_TREE_DEPTH}-deep output tree"))?;
        ensure_node_works(&remote).context("after the deep tree")?;
        ensure_no_deep_tree(&build_dir).context("after the deep tree's action ended")?;
        up.stop()?;
        if mode == "native" {
            restart_over_a_deep_leftover(&dir, &build_dir)?;
        }
        Ok(())
    })
}

#[test]
fn a_huge_log_is_capped_and_streamed_not_held_in_memory() -> Result<()> {
    let _serial = one_at_a_time();
    let spew_stdout = format!("head -c {BIG_LOG_BYTES} /dev/zero");
    let spew_stderr = format!("{spew_stdout} >&2");

    // The defaults: captured, or refused at the default cap; either way the
    // process never holds the log in memory.
    let dir = ScratchDir::new("log-default")?;
    let (up, remote) = start(&dir, "virtual", &[])?;
    let response = remote.execute(&ActionSpec::shell(&spew_stdout), WAIT)?;
    let (code, _) = status_of(&response);
    if code != Code::ResourceExhausted {
        ensure_log_stored(&remote, &response)?;
    }
    ensure_peak_rss_bounded(&up, "a 600 MiB stdout with the default caps")?;
    up.stop()?;
    drop(dir);

    let dir = ScratchDir::new("log-small-cap")?;
    let cap = SMALL_LOG_CAP.to_string();
    let (up, remote) = start(&dir, "virtual", &["--max-log-bytes", &cap])?;
    for (stream, script) in [("stdout", &spew_stdout), ("stderr", &spew_stderr)] {
        let response = remote.execute(&ActionSpec::shell(script), WAIT)?;
        ensure_refused(
            &remote,
            &response,
            Code::ResourceExhausted,
            &["max_log_bytes"],
        )
        .with_context(|| format!("600 MiB of {stream} over --max-log-bytes {cap}"))?;
        let (_, message) = status_of(&response);
        ensure!(
            names_figure(message, SMALL_LOG_CAP) || names_figure(message, BIG_LOG_BYTES),
            "the refusal of 600 MiB of {stream} names neither the cap {SMALL_LOG_CAP} nor the \
             size {BIG_LOG_BYTES}: {message:?}"
        );
    }
    ensure_peak_rss_bounded(&up, "600 MiB of stdout and of stderr over the log cap")?;
    up.stop()?;
    drop(dir);

    let dir = ScratchDir::new("log-large-cap")?;
    let cap = LARGE_LOG_CAP.to_string();
    let (up, remote) = start(&dir, "virtual", &["--max-log-bytes", &cap])?;
    let response = remote.execute(&ActionSpec::shell(&spew_stdout), WAIT)?;
    ensure_log_stored(&remote, &response)
        .with_context(|| format!("600 MiB of stdout under --max-log-bytes {cap}"))?;
    ensure_peak_rss_bounded(&up, "600 MiB of stdout under the log cap")?;
    up.stop()
}

/// A cap on what an action may create, low enough for a quick test.
const SMALL_CREATED_CAP: u64 = 1_000;

#[test]
fn an_action_creating_more_entries_than_the_cap_is_refused() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("created")?;
        let cap = SMALL_CREATED_CAP.to_string();
        let (up, remote) = start(&dir, mode, &["--max-created-entries", &cap])?;
        // Each of these files is a node in the worker's memory (virtual) or
        // an entry capture would list (native): 2,000 of them, over the cap.
        let make = "mkdir -p out && cd out && for i in $(seq 2000); do : > f$i; done; true";
        let spec = ActionSpec::shell(make).outputs(&["out"]);
        let response = remote.execute(&spec, WAIT)?;
        ensure_refused(
            &remote,
            &response,
            Code::ResourceExhausted,
            &["max_created_entries"],
        )?;
        let (_, message) = status_of(&response);
        ensure!(
            names_figure(message, SMALL_CREATED_CAP),
            "the refusal does not name the cap {SMALL_CREATED_CAP}: {message:?}"
        );
        // Under the cap, the same kind of action is captured whole.
        let fits = "mkdir -p out && cd out && for i in $(seq 500); do : > f$i; done";
        let response = remote.execute(&ActionSpec::shell(fits).outputs(&["out"]), WAIT)?;
        let (code, message) = status_of(&response);
        ensure!(
            code == Code::Ok,
            "500 files under the cap: {code:?} {message}"
        );
        ensure_node_works(&remote)?;
        up.stop()
    })
}

#[test]
fn shared_subtrees_over_the_input_entry_cap_are_refused_quickly() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("shared-subtrees")?;
        let (up, remote) = start(&dir, mode, &[])?;
        let tree = SharedSubtrees::upload(&remote)?;
        ensure!(
            tree.entries > DEFAULT_MAX_INPUT_ENTRIES && tree.message_bytes < 16 << 10,
            "the test's tree: {} entries from {} bytes of Directory messages",
            tree.entries,
            tree.message_bytes
        );
        let spec = ActionSpec::shell("find . | wc -l").in_root(tree.root);
        let started = Instant::now();
        let response = remote
            .execute(&spec, QUICK_REFUSAL * 2)
            .with_context(|| format!("{} entries in the input root", tree.entries))?;
        let took = started.elapsed();
        ensure_refused(
            &remote,
            &response,
            Code::ResourceExhausted,
            &["max_input_entries"],
        )
        .with_context(|| format!("{} entries in the input root", tree.entries))?;
        let (_, message) = status_of(&response);
        ensure!(
            [
                DEFAULT_MAX_INPUT_ENTRIES,
                DEFAULT_MAX_INPUT_ENTRIES + 1,
                tree.entries
            ]
            .iter()
            .any(|figure| names_figure(message, *figure)),
            "the refusal names no figure (the cap {DEFAULT_MAX_INPUT_ENTRIES} or the \
             {} entries): {message:?}",
            tree.entries
        );
        ensure!(took < QUICK_REFUSAL, "refusing the tree took {took:?}");
        up.stop()
    })
}

#[test]
fn more_links_to_one_blob_than_the_filesystem_allows_are_laid_out() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = ScratchDir::new("many-links")?;
    let (up, remote) = start(&dir, "native", &["--max-input-entries", "1000000"])?;
    let (root, files) = one_blob_many_times(&remote)?;
    ensure!(
        files > EXT4_LINK_MAX,
        "the test's tree has only {files} files"
    );
    let spec = ActionSpec::shell("find . -type f | wc -l").in_root(root);
    let response = remote.execute(&spec, WAIT)?;
    let (code, _) = status_of(&response);
    let exit_code = response.result.as_ref().map(|r| r.exit_code);
    ensure!(
        code == Code::Ok && exit_code == Some(0),
        "{files} inputs with one blob: {}",
        remote.describe(&response)
    );
    let seen = remote.stdout(&response)?;
    ensure!(
        seen.trim() == files.to_string(),
        "the action saw {:?} files of {files}",
        seen.trim()
    );
    up.stop()
}

#[test]
fn invalid_input_names_are_invalid_arguments_naming_the_name_and_directory() -> Result<()> {
    let _serial = one_at_a_time();
    let passwd_before = fs::read("/etc/passwd")?;
    in_each_mode(|mode| {
        let dir = ScratchDir::new("names")?;
        let (up, remote) = start(&dir, mode, &[])?;
        let mut failures = Vec::new();
        for case in BadName::ALL {
            let (root, holder) = case.upload(&remote)?;
            let spec = ActionSpec::shell("ls -la . sub; cat sub/* 2>&1").in_root(root);
            let response = remote.execute(&spec, WAIT)?;
            let named = [case.name(), &holder.hash_hex()];
            if let Err(e) = ensure_refused(&remote, &response, Code::InvalidArgument, &named) {
                failures.push(format!("{}: {e:#}", case.describe()));
            }
        }
        up.stop()?;
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    })?;
    ensure!(
        fs::read("/etc/passwd")? == passwd_before,
        "/etc/passwd changed"
    );
    Ok(())
}

#[test]
fn a_directory_claiming_a_huge_size_is_refused_unread() -> Result<()> {
    let _serial = one_at_a_time();
    in_each_mode(|mode| {
        let dir = ScratchDir::new("huge-directory")?;
        let (up, remote) = start(&dir, mode, &[])?;
        // The worker would read a Directory whole before decoding it: one
        // that says it is a terabyte is refused by that word alone.
        let huge = Digest::parse(&format!("{}/{}", "cd".repeat(32), 1u64 << 40))?;
        let root = remote.put_message(&Directory {
            directories: vec![directory_node("sub", huge)],
            ..Default::default()
        })?;
        let spec = ActionSpec::shell("ls sub").in_root(root);
        let response = remote.execute(&spec, WAIT)?;
        ensure_refused(
            &remote,
            &response,
            Code::InvalidArgument,
            &[&huge.hash_hex(), "a worker reads"],
        )?;
        up.stop()
    })
}

// ---- the clusters ----

/// Runs `test` in every build-directory mode, and fails with what failed
/// in each (so one mode's failure does not hide the other's).
fn in_each_mode(test: impl Fn(&str) -> Result<()>) -> Result<()> {
    let failures: Vec<String> = MODES
        .iter()
        .filter_map(|mode| test(mode).err().map(|e| format!("{mode} mode: {e:#}")))
        .collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed poisoned the lock; the next one may still run.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory under /tmp, searchable by every uid (so `lazybarn up`
/// keeps its build directories there), removed with `rm -rf` when dropped:
/// it may hold trees too deep for a recursive removal.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(purpose: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lazybarn-hostile-{purpose}-"))
            .tempdir_in("/tmp")
            .context("Failed to create a scratch directory")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        Ok(Self { path: dir.keep() })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.path)
            .status();
    }
}

/// Starts `lazybarn up` in `mode` with `extra_args` on `dir`/data.
fn start(dir: &ScratchDir, mode: &str, extra_args: &[&str]) -> Result<(LazybarnUp, Remote)> {
    let log = dir.path().join(format!("up-{}.log", log_serial()));
    let up = LazybarnUp::start(&dir.path().join("data"), mode, extra_args, &log)
        .with_context(|| format!("lazybarn up --build-dir {mode} {}", extra_args.join(" ")))?;
    let remote = Remote::connect(up.url())?;
    Ok((up, remote))
}

/// A fresh number per log file, so a restart keeps the first log.
fn log_serial() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| bail!("an Execute thread panicked"))
}

/// Checks that a plain action still runs.
fn ensure_node_works(remote: &Remote) -> Result<()> {
    let response = remote.execute(&ActionSpec::shell("echo still working"), WAIT)?;
    let stdout = remote.stdout(&response)?;
    ensure!(
        status_of(&response).0 == Code::Ok && stdout == "still working\n",
        "a plain action failed: {}",
        remote.describe(&response)
    );
    Ok(())
}

// ---- the network attack ----

/// The victim's declared output and what it really writes there.
const VICTIM_OUTPUT: &str = "result.txt";
const VICTIM_LINE: &str = "the real result of the victim";

/// What the attacker plants instead.
const POISONED_CONTENTS: &str = "planted by another action";

/// A cacheable victim action (not yet run) and the attack on its digest.
struct PoisonAttack {
    victim: Digest,
    root: Digest,
    url: String,
}

impl PoisonAttack {
    /// Uploads the victim's action and an input root holding the attack binary.
    fn prepare(remote: &Remote, url: &str) -> Result<Self> {
        let victim = ActionSpec::shell(&format!("echo '{VICTIM_LINE}' > {VICTIM_OUTPUT}"))
            .outputs(&[VICTIM_OUTPUT])
            .cacheable();
        let victim = remote.put_action(&victim)?;
        let binary = fs::read(POISON_BINARY)
            .with_context(|| format!("Failed to read the attack binary {POISON_BINARY}"))?;
        let root = remote.put_tree(&InputDirectory::new().executable("poison", binary))?;
        Ok(Self {
            victim,
            root,
            url: url.to_string(),
        })
    }

    /// The attacking action: it runs the binary against the scheduler's URL.
    fn spec(&self) -> ActionSpec {
        ActionSpec::shell(&format!(
            "./poison {} {} {VICTIM_OUTPUT} '{POISONED_CONTENTS}'",
            self.url, self.victim
        ))
        .in_root(self.root)
    }

    /// Checks that the attacking action ran and could not connect.
    fn ensure_could_not_connect(&self, remote: &Remote, response: &ExecuteResponse) -> Result<()> {
        let exit_code = response.result.as_ref().map(|r| r.exit_code);
        let stderr = remote.stderr(response)?;
        ensure!(
            status_of(response).0 == Code::Ok
                && exit_code == Some(POISON_CANNOT_CONNECT)
                && stderr.contains("cannot connect"),
            "the attacking action was expected to run and fail to connect to {}: {}",
            self.url,
            remote.describe(response)
        );
        Ok(())
    }
}

// ---- the concurrent actions ----

/// Action A's output, its contents and how long it holds it.
const VICTIM_A_OUTPUT: &str = "victim-output.txt";
const VICTIM_A_CONTENTS: &str = "original-output-of-a";
const VICTIM_A_SLEEP_SECS: u64 = 15;

/// Action B: walks up from its working directory looking for A's output
/// (for up to 10 s, while A starts), reads it and overwrites it, then reads
/// every process's environment looking for SECRET_TOKEN; says what it found.
const INTRUDER_SCRIPT: &str = r#"
found=""
i=0
while [ $i -lt 40 ]; do
  found=$(find "$PWD/.." "$PWD/../.." "$PWD/../../.." -maxdepth 4 -name victim-output.txt 2>/dev/null | sort -u)
  [ -n "$found" ] && break
  sleep 0.25
  i=$((i+1))
done
for f in $found; do
  echo "FOUND $f"
  echo "READ $(cat "$f" 2>/dev/null)"
  if echo tampered-by-b > "$f" 2>/dev/null; then echo "WROTE $f"; fi
done
for e in /proc/[0-9]*/environ; do
  tr '\0' '\n' < "$e" 2>/dev/null | grep '^SECRET_TOKEN=' | sed "s|^|ENV $e |"
done
echo "SEARCHED $(ls -d /proc/[0-9]* | wc -l) processes"
"#;

/// Checks that both actions ran, and ran at the same time.
fn ensure_overlapped(a: &ExecuteResponse, b: &ExecuteResponse) -> Result<()> {
    let span = |response: &ExecuteResponse, name: &str| -> Result<(i64, i64)> {
        let metadata = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
            .with_context(|| format!("action {name} has no execution metadata: {response:?}"))?;
        let seconds = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| t.seconds * 1_000 + i64::from(t.nanos) / 1_000_000)
        };
        match (
            seconds(&metadata.execution_start_timestamp),
            seconds(&metadata.execution_completed_timestamp),
        ) {
            (Some(start), Some(end)) => Ok((start, end)),
            _ => bail!("action {name} has no execution timestamps"),
        }
    };
    let (a_start, a_end) = span(a, "A")?;
    let (b_start, b_end) = span(b, "B")?;
    ensure!(
        a_start < b_end && b_start < a_end,
        "actions A ({a_start}..{a_end} ms) and B ({b_start}..{b_end} ms) did not run at once"
    );
    Ok(())
}

// ---- the deep tree ----

/// Checks that the deep output tree came back whole, or was refused with
/// a status that says why.
fn ensure_captured_or_refused(
    remote: &Remote,
    response: &ExecuteResponse,
    output: &str,
) -> Result<()> {
    let (code, message) = status_of(response);
    match code {
        Code::Ok => {
            let captured = response
                .result
                .as_ref()
                .is_some_and(|r| r.output_directories.iter().any(|d| d.path == output));
            ensure!(
                captured,
                "the action succeeded without its output directory {output}: {}",
                remote.describe(response)
            );
        }
        Code::Unknown | Code::Internal | Code::Unavailable => {
            bail!(
                "refused with no clear reason: {}",
                remote.describe(response)
            )
        }
        _ => ensure!(!message.is_empty(), "refused with {code:?} and no message"),
    }
    Ok(())
}

/// How `lazybarn up` exited, if it did; after a failed call it gets a few
/// seconds to finish dying (a stack overflow's abort is not instant).
fn exit_status_after(
    up: &mut LazybarnUp,
    call_failed: bool,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now()
        + if call_failed {
            DYING_TIME
        } else {
            Duration::ZERO
        };
    loop {
        if let Some(status) = up.exit_status()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that no directory under `build_dir` is more than 50 levels deep.
fn ensure_no_deep_tree(build_dir: &Path) -> Result<()> {
    let output = Command::new("find")
        .arg(build_dir)
        .args(["-mindepth", "50", "-print", "-quit"])
        .output()
        .context("Failed to run find")?;
    let found = String::from_utf8_lossy(&output.stdout);
    ensure!(
        found.trim().is_empty(),
        "a deep tree was left in the build directory: {}",
        &found.trim()[..found.trim().len().min(200)]
    );
    Ok(())
}

/// Stops nothing (the node is stopped), plants a deep tree where an action
/// directory would be left by a crash, starts `lazybarn up` again on the
/// same data directory and checks that it starts, works and cleaned it up.
fn restart_over_a_deep_leftover(dir: &ScratchDir, build_dir: &Path) -> Result<()> {
    let leftover = build_dir.join("left-by-a-crash");
    let planted = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import os\nos.makedirs('{}/root/out')\nos.chdir('{}/root/out')\n\
             for _ in range({DEEP_TREE_DEPTH}):\n    os.mkdir('d')\n    os.chdir('d')\n",
            leftover.display(),
            leftover.display()
        ))
        .status()
        .context("Failed to run python3")?;
    ensure!(planted.success(), "planting a deep tree failed: {planted}");
    let (up, remote) = start(dir, "native", &[])
        .context("native: restarting over a 100000-deep leftover action directory")?;
    ensure!(
        !leftover.exists(),
        "native: the restarted node left {} in place",
        leftover.display()
    );
    ensure_node_works(&remote).context("native: after the restart")?;
    up.stop()
}

// ---- the huge log ----

/// Checks that the action succeeded with its 600 MiB stdout in the CAS.
fn ensure_log_stored(remote: &Remote, response: &ExecuteResponse) -> Result<()> {
    let result = response
        .result
        .as_ref()
        .filter(|_| status_of(response).0 == Code::Ok)
        .with_context(|| format!("600 MiB of stdout: {}", remote.describe(response)))?;
    let digest = Digest::from_proto(result.stdout_digest.as_ref())
        .with_context(|| format!("a bad stdout digest in {result:?}"))?;
    ensure!(
        digest.size() == BIG_LOG_BYTES,
        "the stdout digest {digest} is not of {BIG_LOG_BYTES} bytes"
    );
    ensure!(
        remote.contains(digest)?,
        "the stdout {digest} is not in the CAS"
    );
    Ok(())
}

/// Checks the peak resident size of the `lazybarn up` process.
fn ensure_peak_rss_bounded(up: &LazybarnUp, what: &str) -> Result<()> {
    let peak = peak_rss_bytes(up.process().id())?;
    ensure!(
        peak < MAX_PEAK_RSS,
        "{what}: lazybarn up's peak resident size was {} MiB (limit {} MiB)",
        peak >> 20,
        MAX_PEAK_RSS >> 20
    );
    Ok(())
}

// ---- the shared subtrees ----

/// An input root of few, small Directory messages that share subtrees.
struct SharedSubtrees {
    root: Digest,
    /// Files and directories below the root.
    entries: u64,
    /// Bytes of all the distinct Directory messages.
    message_bytes: usize,
}

impl SharedSubtrees {
    /// Six files of one blob in a directory; then six levels of directories
    /// that each hold the level below six times: 6^7 files and 6 + ... + 6^6
    /// directories, 335,922 entries from seven messages.
    fn upload(remote: &Remote) -> Result<Self> {
        const FANOUT: u64 = 6;
        const LEVELS: u32 = 6;
        let blob = remote.put(&b"shared\n"[..])?;
        let mut directory = Directory {
            files: (0..FANOUT)
                .map(|i| file_node(&format!("f{i}"), blob, false))
                .collect(),
            ..Default::default()
        };
        let mut message_bytes = prost::Message::encoded_len(&directory);
        let mut digest = remote.put_message(&directory)?;
        let mut entries = FANOUT;
        for _ in 0..LEVELS {
            directory = Directory {
                directories: (0..FANOUT)
                    .map(|i| directory_node(&format!("d{i}"), digest))
                    .collect(),
                ..Default::default()
            };
            message_bytes += prost::Message::encoded_len(&directory);
            digest = remote.put_message(&directory)?;
            entries = FANOUT * (entries + 1);
        }
        Ok(Self {
            root: digest,
            entries,
            message_bytes,
        })
    }
}

/// An input root of 70,000 files with the same contents (10 x 10
/// directories of 700); the root and the count of files.
fn one_blob_many_times(remote: &Remote) -> Result<(Digest, u64)> {
    let blob = remote.put(&b"one blob, many names\n"[..])?;
    let leaf = Directory {
        files: (0..700)
            .map(|i| file_node(&format!("f{i:03}"), blob, false))
            .collect(),
        ..Default::default()
    };
    let mut digest = remote.put_message(&leaf)?;
    for _ in 0..2 {
        let directory = Directory {
            directories: (0..10)
                .map(|i| directory_node(&format!("d{i}"), digest))
                .collect(),
            ..Default::default()
        };
        digest = remote.put_message(&directory)?;
    }
    Ok((digest, 70_000))
}

// ---- the invalid names ----

/// An input name no Directory may hold, and where the test puts it.
#[derive(Clone, Copy, Debug)]
enum BadName {
    /// A subdirectory named `..` in the input root.
    DotDotAtRoot,
    /// A file named `a/../../etc/passwd` in the input root.
    PathAtRoot,
    /// A subdirectory named `..` in `sub`, which the action lists.
    DotDotInSub,
    /// A file named `a/../../etc/passwd` in `sub`.
    PathInSub,
}

impl BadName {
    const ALL: [BadName; 4] = [
        BadName::DotDotAtRoot,
        BadName::PathAtRoot,
        BadName::DotDotInSub,
        BadName::PathInSub,
    ];

    fn name(self) -> &'static str {
        match self {
            BadName::DotDotAtRoot | BadName::DotDotInSub => "..",
            BadName::PathAtRoot | BadName::PathInSub => "a/../../etc/passwd",
        }
    }

    fn describe(self) -> String {
        let place = match self {
            BadName::DotDotAtRoot | BadName::PathAtRoot => "the input root",
            BadName::DotDotInSub | BadName::PathInSub => "subdirectory sub",
        };
        format!("an input named {:?} in {place}", self.name())
    }

    /// Uploads the input root; its digest, and that of the Directory that
    /// holds the bad name.
    fn upload(self, remote: &Remote) -> Result<(Digest, Digest)> {
        let planted = remote.put(&b"planted by a hostile input root\n"[..])?;
        let inner = remote.put_message(&Directory {
            files: vec![file_node("escaped.txt", planted, false)],
            ..Default::default()
        })?;
        let bad = match self {
            BadName::DotDotAtRoot | BadName::DotDotInSub => Directory {
                files: vec![file_node("ok.txt", planted, false)],
                directories: vec![directory_node("..", inner)],
                ..Default::default()
            },
            BadName::PathAtRoot | BadName::PathInSub => Directory {
                files: vec![
                    file_node("a/../../etc/passwd", planted, false),
                    file_node("ok.txt", planted, false),
                ],
                ..Default::default()
            },
        };
        let bad_digest = remote.put_message(&bad)?;
        match self {
            BadName::DotDotAtRoot | BadName::PathAtRoot => Ok((bad_digest, bad_digest)),
            BadName::DotDotInSub | BadName::PathInSub => {
                let root = remote.put_message(&Directory {
                    files: vec![file_node("top.txt", planted, false)],
                    directories: vec![directory_node("sub", bad_digest)],
                    ..Default::default()
                })?;
                Ok((root, bad_digest))
            }
        }
    }
}
