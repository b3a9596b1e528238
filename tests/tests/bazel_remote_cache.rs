//! Bazel 4 uses `lazybarn-storage` as its remote cache.
//!
//! A first build of the C++ workspace executes its actions locally and
//! uploads their results; after `bazel clean`, the same build must be served
//! entirely from the cache, and the binary it downloads must work.

use anyhow::{Result, anyhow, ensure};
use lazybarn_tests::{BazelWorkspace, StorageServer};

/// Each of the workspace's three `.cc` files needs a compile, so a cold build
/// executes at least this many actions.
const MIN_EXECUTED_ACTIONS: u64 = 3;

/// Bounds how long Bazel waits on the cache, so a hung server fails the test
/// instead of stalling it.
const REMOTE_TIMEOUT: &str = "--remote_timeout=60";

#[test]
fn second_build_after_clean_is_all_remote_cache_hits() -> Result<()> {
    let storage = StorageServer::start()?;
    let bazel = BazelWorkspace::cpp()?;
    build_clean_rebuild_run_and_test(&storage, &bazel).map_err(|error| {
        anyhow!(
            "{error:?}\nend of the storage log:\n{}",
            storage.process().log_tail()
        )
    })?;
    bazel.shutdown()
}

/// The whole flow against one storage and one workspace.
fn build_clean_rebuild_run_and_test(storage: &StorageServer, bazel: &BazelWorkspace) -> Result<()> {
    let remote_cache = format!("--remote_cache={}", storage.url());
    let build = [remote_cache.as_str(), REMOTE_TIMEOUT, "//..."];

    let cold = bazel.run("build", &build)?;
    let cold_summary = cold.ensure_success()?.summary()?;
    eprintln!("first build: {cold_summary:?}");
    ensure!(
        cold_summary.executed() >= MIN_EXECUTED_ACTIONS,
        "the first build executed {} actions, expected at least {MIN_EXECUTED_ACTIONS}: {cold_summary:?}",
        cold_summary.executed()
    );

    bazel.run("clean", &[])?.ensure_success()?;

    let warm = bazel.run("build", &build)?;
    let warm_summary = warm.ensure_success()?.summary()?;
    eprintln!("build after clean: {warm_summary:?}");
    ensure!(
        warm_summary.executed() == 0
            && warm_summary.remote_cache_hits() == warm_summary.non_internal(),
        "after clean, every non-internal action should be a remote cache hit: {warm_summary:?}\n\
         end of Bazel's stderr:\n{}",
        warm.stderr_tail()
    );
    ensure!(
        warm_summary.remote_cache_hits() >= MIN_EXECUTED_ACTIONS,
        "the cached build had only {} remote cache hits: {warm_summary:?}",
        warm_summary.remote_cache_hits()
    );

    // The binary was downloaded from the cache, not built: it must still run.
    let hello = bazel.run(
        "run",
        &[
            remote_cache.as_str(),
            REMOTE_TIMEOUT,
            "//app:hello",
            "--",
            "barn",
        ],
    )?;
    ensure!(
        hello.ensure_success()?.stdout.trim() == "Hello, barn!",
        "//app:hello printed {:?}",
        hello.stdout
    );

    let test = bazel.run(
        "test",
        &[remote_cache.as_str(), REMOTE_TIMEOUT, "//lib:greeting_test"],
    )?;
    ensure!(
        test.ensure_success()?.stdout.contains("1 test passes"),
        "bazel test did not report the test as passed; stdout:\n{}",
        test.stdout
    );
    Ok(())
}
