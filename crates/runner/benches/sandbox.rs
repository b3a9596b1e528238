//! What the action sandbox costs per command: runs `/bin/true` through
//! [`run_command`] in four ways, interleaved, and prints the median wall
//! time of each and its difference from the first:
//!
//! 1. namespaces off (`mount_and_network_namespaces = false`): the PID
//!    namespace, limits, `no_new_privs` and the uid switch only, which is
//!    the baseline;
//! 2. mount and IPC namespaces with a fresh /proc and an empty /dev/shm,
//!    on the host's network;
//! 3. the same with a network namespace of its own (loopback brought up);
//! 4. the full sandbox, as the worker asks for every action by default:
//!    (3) plus a `temporary_directory` bind-mounted on /tmp and, as root,
//!    a per-slot uid.
//!
//! The last line, `sandbox setup per command: ...`, is (4) minus (1): the
//! namespace and mount setup an action pays, whose target is at
//! most 5 ms. `scripts/bench --parts sandbox` reads it.
//!
//! `cargo bench -p lazybarn-runner --bench sandbox`; run it as root to
//! measure the runner as a farm runs it (as another user it measures the
//! user-namespace path). `LAZYBARN_BENCH_SMOKE=1` runs a few iterations and
//! checks that figures came out, for CI. `LAZYBARN_BENCH_ITERATIONS` sets
//! the number of commands per variant (default 300).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lazybarn_proto::runner::{EnvironmentVariable, RunRequest};
use lazybarn_runner::RunnerConfig;
use lazybarn_runner::execution::run_command;
use lazybarn_runner::request::CommandPolicy;
use lazybarn_runner::server::command_policy;

/// One way of running the command.
struct Variant {
    name: &'static str,
    policy: CommandPolicy,
    request: RunRequest,
    times: Vec<Duration>,
}

/// The uid and gid the full sandbox runs as: the first of the runner's
/// default `slot_ids`, as the worker's first slot asks. `None` when not
/// root, where the runner accepts only its own.
fn first_slot_id() -> Option<u32> {
    nix::unistd::geteuid()
        .is_root()
        .then(|| RunnerConfig::new("/nonexistent/unused.sock").slot_ids.first)
}

fn policy(namespaces: bool) -> Result<CommandPolicy> {
    let mut config = RunnerConfig::new("/nonexistent/unused.sock");
    if !nix::unistd::geteuid().is_root() {
        // Such a runner may only run commands as itself.
        config.user = nix::unistd::geteuid().to_string();
        config.group = Some(nix::unistd::getegid().to_string());
    }
    config.mount_and_network_namespaces = namespaces;
    command_policy(&config).context("the runner's policy")
}

fn request(host_network: bool) -> RunRequest {
    RunRequest {
        arguments: vec!["/bin/true".to_string()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".to_string(),
            value: "/usr/bin:/bin".to_string(),
        }],
        working_directory: "/".to_string(),
        host_network,
        ..Default::default()
    }
}

/// A request as the worker sends one for every action: its own /tmp, a
/// network of its own, and the slot's uid.
fn worker_request(temporary_directory: &Path) -> RunRequest {
    let slot = first_slot_id();
    RunRequest {
        temporary_directory: temporary_directory.display().to_string(),
        uid: slot,
        gid: slot,
        ..request(false)
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn measure(variants: &mut [Variant], iterations: usize) -> Result<()> {
    // Interleaved, so that drift in the machine's load hits every variant.
    for _ in 0..iterations {
        for variant in variants.iter_mut() {
            let start = Instant::now();
            let response = run_command(variant.request.clone(), variant.policy)
                .await
                .with_context(|| format!("running /bin/true ({})", variant.name))?;
            variant.times.push(start.elapsed());
            ensure!(response.exit_code == 0, "/bin/true failed: {response:?}");
        }
    }
    Ok(())
}

/// The most namespace and mount setup an action may cost.
const TARGET: Duration = Duration::from_millis(5);

fn report(variants: &mut [Variant]) -> Vec<String> {
    let medians: Vec<(&str, Duration)> = variants
        .iter_mut()
        .map(|variant| (variant.name, median(&mut variant.times)))
        .collect();
    let baseline = medians[0].1;
    let mut lines = vec![format!(
        "per command, median of {} runs of /bin/true:",
        variants[0].times.len()
    )];
    for (name, time) in &medians {
        lines.push(format!(
            "  {name:<58} {:7.3} ms  (+{:.3} ms over the baseline)",
            millis(*time),
            millis(time.saturating_sub(baseline))
        ));
    }
    let full = medians[medians.len() - 1].1;
    let setup = full.saturating_sub(baseline);
    lines.push(format!(
        "sandbox setup per command: {:.3} ms ({:.3} ms with the sandbox, {:.3} ms without; \
         target <= {} ms): {}",
        millis(setup),
        millis(full),
        millis(baseline),
        TARGET.as_millis(),
        if setup <= TARGET { "met" } else { "MISSED" }
    ));
    lines
}

fn main() -> Result<()> {
    let smoke = std::env::var_os("LAZYBARN_BENCH_SMOKE").is_some_and(|v| v == "1");
    let iterations = match std::env::var("LAZYBARN_BENCH_ITERATIONS") {
        Ok(text) => text.parse().context("LAZYBARN_BENCH_ITERATIONS")?,
        Err(_) if smoke => 5,
        Err(_) => 300,
    };
    ensure!(iterations > 0, "no iterations");
    // The worker's lies in the action's directory; where it lies does not
    // change what the bind mount costs.
    let temporary_directory = tempfile::tempdir().context("a temporary directory")?;
    let mut variants = vec![
        Variant {
            name: "namespaces off (PID ns, limits; the baseline)",
            policy: policy(false)?,
            request: request(true),
            times: Vec::new(),
        },
        Variant {
            name: "mount + IPC ns, /proc, /dev/shm; host network",
            policy: policy(true)?,
            request: request(true),
            times: Vec::new(),
        },
        Variant {
            name: "mount + IPC + network ns, /proc, /dev/shm",
            policy: policy(true)?,
            request: request(false),
            times: Vec::new(),
        },
        Variant {
            name: "full sandbox (the above, /tmp, slot uid)",
            policy: policy(true)?,
            request: worker_request(temporary_directory.path()),
            times: Vec::new(),
        },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // Warm up the spawner thread and the page cache.
    runtime.block_on(measure(&mut variants, 3))?;
    for variant in &mut variants {
        variant.times.clear();
    }
    runtime.block_on(measure(&mut variants, iterations))?;
    let lines = report(&mut variants);
    for line in &lines {
        println!("{line}");
    }
    ensure!(
        lines.len() == variants.len() + 2 && lines.iter().skip(1).all(|l| l.contains(" ms")),
        "the bench printed no figures"
    );
    Ok(())
}
