//! The subcommands and their flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lazybarn_worker::config::BuildMode;

/// Default most bytes of blobs the storage and each worker's blob cache keep: 10 GiB.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 10 << 30;

/// Lazybarn: remote execution for Bazel, with inputs fetched lazily.
#[derive(Debug, Parser)]
#[command(name = "lazybarn", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Storage, scheduler, status page, a worker and its runner on this
    /// machine: a complete cluster Bazel can use at once.
    Up(UpArgs),
    /// A worker and its runner, joining a running scheduler.
    Worker(WorkerArgs),
    /// The scheduler with its storage (embedded, or a remote CAS named by
    /// `[storage] remote`) and status page.
    Scheduler(SchedulerArgs),
    /// The storage alone (CAS, ByteStream, Action Cache): a remote cache.
    Storage(StorageArgs),
    /// The runner daemon alone; as root it runs commands as any user, as
    /// another user only as that user.
    Runner(RunnerArgs),
}

/// Flags of `lazybarn up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// gRPC address for Bazel (`--remote_executor=grpc://ADDR`); port 0 picks
    /// a free port, which the ready line names.
    #[arg(long, default_value = "127.0.0.1:8980")]
    pub listen: SocketAddr,
    /// HTTP address of the status page and `/metrics`; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8981")]
    pub http: SocketAddr,
    /// Where the storage, the worker's blob cache and the runner's socket
    /// live [default: ~/.cache/lazybarn].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Actions run at once [default: one per core]; 0 runs the scheduler
    /// and storage only.
    #[arg(long)]
    pub workers: Option<usize>,
    /// How action directories are built: `virtual` (a lazy FUSE mount) or
    /// `native` (inputs downloaded and hardlinked).
    #[arg(long, default_value = "virtual")]
    pub build_dir: BuildMode,
    /// Most bytes the storage keeps, and again the worker's blob cache
    /// (least recently used blobs are evicted).
    #[arg(long, default_value_t = DEFAULT_MAX_CACHE_BYTES)]
    pub max_cache_size: u64,
    /// Platform properties the worker offers, as NAME=VALUE (repeatable)
    /// [default: OSFamily=linux].
    #[arg(long = "platform", value_name = "NAME=VALUE")]
    pub platform: Vec<String>,
    /// How long the worker's running actions may take to finish once
    /// SIGINT or SIGTERM arrives (a second signal stops them at once).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// What actions may do and cost.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The worker's sandbox and caps, shared by `up` and `worker` (which also
/// reads them from its configuration file; flags win).
#[derive(Clone, Debug, Default, Args)]
pub struct SandboxArgs {
    /// Let actions that ask with the platform property `network=host` use
    /// the host's network; all others have only loopback, in a network
    /// namespace of their own.
    #[arg(long)]
    pub allow_host_network: bool,
    /// The uid and gid of the first slot's actions; slot i runs as this
    /// plus i. Workers sharing a host need ranges that do not overlap
    /// [default: 60000].
    #[arg(long, value_name = "ID")]
    pub first_slot_id: Option<u32>,
    /// Most files, directories and symlinks in an action's input tree,
    /// counted per path [default: 200000].
    #[arg(long, value_name = "N")]
    pub max_input_entries: Option<u64>,
    /// Most bytes of written output files per action [default: 16 GiB].
    #[arg(long, value_name = "BYTES")]
    pub max_output_bytes: Option<u64>,
    /// Most files, directories and symlinks an action may create
    /// [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_created_entries: Option<u64>,
    /// Most bytes of standard output, and again of standard error, per
    /// action [default: 256 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_log_bytes: Option<u64>,
}

impl SandboxArgs {
    /// Sets the values given in `config`.
    pub fn apply(&self, config: &mut lazybarn_worker::WorkerConfig) {
        config.allow_host_network |= self.allow_host_network;
        if let Some(id) = self.first_slot_id {
            config.first_slot_id = id;
        }
        if let Some(n) = self.max_input_entries {
            config.max_input_entries = n;
        }
        if let Some(n) = self.max_output_bytes {
            config.max_output_bytes = n;
        }
        if let Some(n) = self.max_created_entries {
            config.max_created_entries = n;
        }
        if let Some(n) = self.max_log_bytes {
            config.max_log_bytes = n;
        }
    }
}

/// Flags of `lazybarn worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The scheduler's worker-protocol address, e.g. grpc://10.0.0.1:8980
    /// (required unless the configuration file names it).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// The CAS [default: the scheduler's storage]. Where the scheduler's
    /// `[storage] remote` names another CAS, give that CAS here, so blobs
    /// do not pass through the scheduler.
    #[arg(long)]
    pub cas: Option<String>,
    /// A file holding the worker's token in clear (mode 0600), sent as
    /// `authorization: Bearer <token>` to the scheduler, whose tokens file
    /// lists its digest. For a `lazybarn up`, give its data directory's
    /// `worker-token` [default: the configuration file's
    /// `scheduler_token_file`, else none].
    #[arg(long, value_name = "FILE")]
    pub scheduler_token_file: Option<PathBuf>,
    /// Actions run at once [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// `virtual` or `native` build directories [default: virtual].
    #[arg(long)]
    pub build_dir: Option<BuildMode>,
    /// Where the blob cache and the runner's socket live
    /// [default: ~/.cache/lazybarn-worker]. Several workers on one host need
    /// one each.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most bytes the blob cache keeps.
    #[arg(long)]
    pub max_cache_size: Option<u64>,
    /// Platform properties offered, as NAME=VALUE (repeatable)
    /// [default: OSFamily=linux].
    #[arg(long = "platform", value_name = "NAME=VALUE")]
    pub platform: Vec<String>,
    /// A worker configuration file (TOML, see `lazybarn_worker::config`);
    /// flags given as well override its values, and --data-dir is ignored.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Use the runner already listening on the configured socket instead of
    /// starting one.
    #[arg(long)]
    pub external_runner: bool,
    /// HTTP address to serve the worker's and the vfs's Prometheus metrics
    /// on, at `/metrics`; port 0 picks a free port [default: none].
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// How long running actions may take to finish once SIGTERM or SIGINT
    /// arrives, e.g. `20s` or `5m`; what is still running then goes back to
    /// the scheduler, as does everything on a second signal. Keep it at
    /// least 10 s below the grace period of whatever sends the signal
    /// (Kubernetes terminationGracePeriodSeconds) [default: the
    /// configuration file's `drain_timeout`, else 20s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// What actions may do and cost.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Flags of `lazybarn scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// The TOML configuration file (see `lazybarn_scheduler::config`);
    /// without it, defaults are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Flags of `lazybarn storage`; flags override the configuration file.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// TOML configuration file (see `lazybarn_cas::config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on; port 0 picks a free port [default: 127.0.0.1:8980].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory for blobs and Action Cache entries (required unless the
    /// configuration file names it).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most bytes of blobs kept; least recently used blobs are evicted above
    /// it [default: 10 GiB].
    #[arg(long)]
    pub max_size: Option<u64>,
    /// Largest sum of blob sizes in one batch call (advertised in
    /// Capabilities) [default: 4 MiB].
    #[arg(long)]
    pub max_batch_size: Option<usize>,
}

/// Flags of `lazybarn runner`; flags override the configuration file.
#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// TOML configuration file (see `lazybarn_runner::config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Unix socket to listen on.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Group whose members may connect besides root.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// User (name or number) that commands run as [default: nobody].
    #[arg(long)]
    pub user: Option<String>,
    /// Group (name or number) that commands run as [default: the user's primary group].
    #[arg(long)]
    pub group: Option<String>,
    /// Chroot every command into its request's input root.
    #[arg(long)]
    pub chroot_into_input_root: bool,
    /// The ids a worker may ask commands to run as, one per slot, as
    /// FIRST:COUNT; `0:0` allows none besides --user [default: 60000:1024].
    #[arg(long, value_name = "FIRST:COUNT", value_parser = parse_id_range)]
    pub slot_ids: Option<lazybarn_runner::config::IdRange>,
}

/// Parses `FIRST:COUNT`.
fn parse_id_range(text: &str) -> Result<lazybarn_runner::config::IdRange, String> {
    let (first, count) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not FIRST:COUNT"))?;
    let number = |part: &str| {
        part.parse::<u32>()
            .map_err(|e| format!("{part:?} in {text:?}: {e}"))
    };
    Ok(lazybarn_runner::config::IdRange {
        first: number(first)?,
        count: number(count)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn up_defaults_match_the_documentation() {
        let cli = Cli::parse_from(["lazybarn", "up"]);
        let Command::Up(up) = cli.command else {
            panic!("not up: {cli:?}")
        };
        assert_eq!(up.listen.to_string(), "127.0.0.1:8980");
        assert_eq!(up.http.to_string(), "127.0.0.1:8981");
        assert_eq!(up.build_dir, BuildMode::Virtual);
        assert_eq!(up.workers, None);
        assert_eq!(
            up.drain_timeout,
            lazybarn_worker::config::DEFAULT_DRAIN_TIMEOUT
        );
    }

    #[test]
    fn drain_timeouts_are_durations() {
        let cli = Cli::parse_from(["lazybarn", "worker", "--drain-timeout", "2m"]);
        let Command::Worker(worker) = cli.command else {
            panic!("not worker: {cli:?}")
        };
        assert_eq!(worker.drain_timeout, Some(Duration::from_secs(120)));
        assert!(Cli::try_parse_from(["lazybarn", "up", "--drain-timeout", "soon"]).is_err());
    }

    #[test]
    fn a_worker_takes_a_scheduler_token_file() {
        let cli = Cli::parse_from(["lazybarn", "worker", "--scheduler-token-file", "/run/t"]);
        let Command::Worker(worker) = cli.command else {
            panic!("not worker: {cli:?}")
        };
        assert_eq!(worker.scheduler_token_file, Some(PathBuf::from("/run/t")));
    }

    #[test]
    fn slot_id_ranges_parse() {
        let cli = Cli::parse_from([
            "lazybarn",
            "runner",
            "--socket",
            "/s",
            "--slot-ids",
            "70000:4",
        ]);
        let Command::Runner(runner) = cli.command else {
            panic!("not runner: {cli:?}")
        };
        let range = runner.slot_ids.expect("given");
        assert_eq!((range.first, range.count), (70000, 4));
        for bad in ["70000", "a:4", "1:-1"] {
            assert!(
                Cli::try_parse_from(["lazybarn", "runner", "--slot-ids", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn build_dir_modes_parse() {
        let cli = Cli::parse_from(["lazybarn", "up", "--build-dir", "native", "--workers", "0"]);
        let Command::Up(up) = cli.command else {
            panic!("not up: {cli:?}")
        };
        assert_eq!((up.build_dir, up.workers), (BuildMode::Native, Some(0)));
        assert!(Cli::try_parse_from(["lazybarn", "up", "--build-dir", "fuse"]).is_err());
    }
}
