//! What the action sandbox costs per command: runs `/bin/true` through
//! [`run_command`] with the mount and network namespaces off (the baseline:
//! PID namespace, limits and `no_new_privs` only), with them on, and with
//! them on but the host's network, and prints the median wall time of each
//! and the differences. The target is at most 5 ms of namespace and
//! mount setup per action.
//!
//! `cargo bench -p lazybarn-runner --bench sandbox`; run it as root to
//! measure the runner as a farm runs it (as another user it measures the
//! user-namespace path). `LAZYBARN_BENCH_SMOKE=1` runs a few iterations and
//! checks that figures came out, for CI. `LAZYBARN_BENCH_ITERATIONS` sets
//! the number of commands per variant (default 300).

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
    host_network: bool,
    times: Vec<Duration>,
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
            let response = run_command(request(variant.host_network), variant.policy)
                .await
                .with_context(|| format!("running /bin/true ({})", variant.name))?;
            variant.times.push(start.elapsed());
            ensure!(response.exit_code == 0, "/bin/true failed: {response:?}");
        }
    }
    Ok(())
}

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
            "  {name:<40} {:7.3} ms  (+{:.3} ms over the baseline)",
            millis(*time),
            millis(time.saturating_sub(baseline))
        ));
    }
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
    let mut variants = vec![
        Variant {
            name: "baseline (namespaces off)",
            policy: policy(false)?,
            host_network: true,
            times: Vec::new(),
        },
        Variant {
            name: "sandbox, host network (mount ns only)",
            policy: policy(true)?,
            host_network: true,
            times: Vec::new(),
        },
        Variant {
            name: "sandbox (mount and network ns)",
            policy: policy(true)?,
            host_network: false,
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
        lines.len() == variants.len() + 1 && lines.iter().skip(1).all(|l| l.contains(" ms")),
        "the bench printed no figures"
    );
    Ok(())
}
