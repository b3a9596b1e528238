//! `lazybarn worker`: a worker and its runner child joining a running
//! scheduler, and the pieces of a worker node that `lazybarn up` shares:
//! which uid commands run as, which build mode can work here, the worker's
//! configuration, and running the worker next to its runner.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use lazybarn_worker::Health;
use lazybarn_worker::Stop;
use lazybarn_worker::config::{BuildMode, WorkerConfig};
use tokio::sync::watch;

use crate::cli::{DEFAULT_MAX_CACHE_BYTES, SandboxArgs, WorkerArgs};
use crate::error::LazybarnError;
use crate::layout::{Layout, default_data_dir};
use crate::runner_child::RunnerChild;
use crate::shutdown::ShutdownSignal;

/// The platform a worker offers when none is given.
pub const DEFAULT_PLATFORM: &str = "OSFamily=linux";

/// The uid and gid commands run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionUser {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

impl ActionUser {
    /// `nobody` when this process runs as root, so actions can read their
    /// inputs but never change them; otherwise this process's own user,
    /// since only root can switch uid (said on stderr).
    pub fn choose() -> ActionUser {
        if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
            return ActionUser {
                uid: nobody.as_ref().map_or(65534, |user| user.uid.as_raw()),
                gid: nobody.as_ref().map_or(65534, |user| user.gid.as_raw()),
            };
        }
        let user = ActionUser {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        eprintln!(
            "lazybarn: not running as root, so commands cannot switch to nobody and run as \
             this user (uid {}, gid {}) instead",
            user.uid, user.gid
        );
        user
    }
}

/// `requested`, unless it is virtual and FUSE cannot work here: then native,
/// with the reason on stderr.
pub fn usable_build_mode(requested: BuildMode) -> BuildMode {
    if requested != BuildMode::Virtual {
        return requested;
    }
    match lazybarn_worker::fuse_unavailable() {
        None => BuildMode::Virtual,
        Some(why) => {
            eprintln!(
                "lazybarn: virtual build directories need FUSE, which cannot work here: {why}; \
                 falling back to native build directories (every input downloaded first)"
            );
            BuildMode::Native
        }
    }
}

/// The name of a build mode as flags and TOML spell it.
pub fn mode_name(mode: BuildMode) -> &'static str {
    match mode {
        BuildMode::Virtual => "virtual",
        BuildMode::Native => "native",
    }
}

/// One slot per core.
pub fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Parses `NAME=VALUE` entries into platform properties; several values of
/// one name are all offered. No entries: [`DEFAULT_PLATFORM`].
pub fn parse_platform(entries: &[String]) -> Result<BTreeMap<String, Vec<String>>, LazybarnError> {
    let defaults = [DEFAULT_PLATFORM.to_string()];
    let entries = if entries.is_empty() {
        &defaults[..]
    } else {
        entries
    };
    let mut platform: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in entries {
        let (name, value) = entry
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| {
                LazybarnError::Config(format!("platform property {entry:?} is not NAME=VALUE"))
            })?;
        platform
            .entry(name.to_string())
            .or_default()
            .push(value.to_string());
    }
    Ok(platform)
}

/// What a worker node is given besides its layout.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// The scheduler's address, `grpc://HOST:PORT`.
    pub scheduler: String,
    /// The file holding the worker's token for the scheduler, if any.
    pub scheduler_token_file: Option<PathBuf>,
    /// The CAS, if not the scheduler's.
    pub cas: Option<String>,
    /// Actions run at once.
    pub slots: usize,
    /// Virtual or native.
    pub mode: BuildMode,
    /// Most bytes of the blob cache.
    pub max_cache_bytes: u64,
    /// Platform properties offered.
    pub platform: BTreeMap<String, Vec<String>>,
    /// Who commands run as.
    pub user: ActionUser,
    /// How long running actions may take to finish once told to stop.
    pub drain_timeout: std::time::Duration,
    /// The sandbox and caps given on the command line.
    pub sandbox: SandboxArgs,
}

/// The worker's configuration for `settings` in `layout`. Run as root, each
/// slot runs its actions as a user of its own; otherwise every action runs
/// as this process's user.
pub fn worker_config(settings: &WorkerSettings, layout: &Layout) -> WorkerConfig {
    let mut config = WorkerConfig {
        scheduler_token_file: settings.scheduler_token_file.clone(),
        cas: settings.cas.clone(),
        slots: settings.slots,
        platform: settings.platform.clone(),
        max_cache_bytes: settings.max_cache_bytes,
        build_mode: settings.mode,
        action_uid: settings.user.uid,
        action_gid: settings.user.gid,
        drain_timeout: settings.drain_timeout,
        isolate_slots: nix::unistd::geteuid().is_root(),
        ..WorkerConfig::new(
            settings.scheduler.clone(),
            layout.build_dir.clone(),
            layout.cache_dir.clone(),
            layout.runner_socket.clone(),
        )
    };
    settings.sandbox.apply(&mut config);
    config
}

/// Prints where a worker's action directories go, and why there if they
/// left the data directory.
pub fn announce_layout(layout: &Layout, mode: BuildMode) {
    if let Some(why) = &layout.relocated_because {
        // Commands run as an unprivileged uid, which must reach the action
        // directories; see `layout`.
        eprintln!(
            "lazybarn: {why}, so build directories go to {}",
            layout.build_dir.display()
        );
    }
    println!(
        "lazybarn build directory: {} ({})",
        layout.build_dir.display(),
        mode_name(mode)
    );
}

/// Runs the worker until `stop` reaches [`Stop::Drain`] and it has drained,
/// passing on a later [`Stop::Now`], then stops `runner`. If the runner exits
/// first, the worker gives back what it runs at once (nothing can finish
/// without the runner), and that is the error.
pub async fn run_worker(
    config: WorkerConfig,
    runner: Option<RunnerChild>,
    stop: watch::Receiver<Stop>,
    health: Arc<Health>,
) -> Result<(), LazybarnError> {
    let Some(mut runner) = runner else {
        return Ok(lazybarn_worker::run_until_with_health(config, stop, health).await?);
    };
    let (to_worker, worker_stop) = watch::channel(*stop.borrow());
    let worker = lazybarn_worker::run_until_with_health(config, worker_stop, health);
    tokio::pin!(worker);
    let mut runner_died = None;
    let mut orders = Some(stop);
    let result = loop {
        tokio::select! {
            result = &mut worker => break result,
            status = runner.exited(), if runner_died.is_none() => {
                runner_died = Some(status);
                to_worker.send_replace(Stop::Now);
            }
            level = next_order(&mut orders) => {
                to_worker.send_if_modified(|current| raise(current, level));
            }
        }
    };
    match runner_died {
        Some(status) => {
            result?;
            Err(LazybarnError::RunnerChild(match status {
                Ok(status) => format!("exited with {status} while the worker ran"),
                Err(e) => format!("lost: {e}"),
            }))
        }
        None => {
            let stopped = runner.stop().await;
            result?;
            stopped
        }
    }
}

/// The next stop level `orders` sends. A sender that is gone means
/// [`Stop::Now`], once; then this never resolves again.
async fn next_order(orders: &mut Option<watch::Receiver<Stop>>) -> Stop {
    let Some(receiver) = orders else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_ok() {
        return *receiver.borrow_and_update();
    }
    *orders = None;
    Stop::Now
}

/// Raises `current` to `level`; a stop level never goes back down. Returns
/// whether it changed.
fn raise(current: &mut Stop, level: Stop) -> bool {
    if level > *current {
        *current = level;
        return true;
    }
    false
}

/// Resolves once `stop` asks for a stop of any kind (or its sender is
/// gone).
pub async fn stopped(mut stop: watch::Receiver<Stop>) {
    let _ = stop.wait_for(|stop| *stop >= Stop::Drain).await;
}

/// `lazybarn worker`: runs until SIGINT or SIGTERM, then drains: no new
/// work, running actions get the drain timeout to finish, the rest goes back
/// to the scheduler. A second signal gives everything back at once.
pub async fn worker(args: WorkerArgs) -> Result<(), LazybarnError> {
    let mut signal = ShutdownSignal::install()?;
    let config = configure(&args)?;
    announce_layout_of(&config);
    let runner = if args.external_runner {
        None
    } else {
        Some(RunnerChild::start(&config).await?)
    };
    // /metrics stays up while the worker drains, for probes and scrapes.
    let (done, done_rx) = watch::channel(Stop::Run);
    let health = Arc::new(Health::default());
    let metrics = match args.http {
        Some(addr) => format!(
            ", metrics {}",
            serve_metrics(addr, done_rx, health.clone()).await?
        ),
        None => String::new(),
    };
    println!(
        "lazybarn worker started: scheduler {}, slots {}{metrics}",
        config.scheduler, config.slots
    );
    let drain_timeout = config.drain_timeout;
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let worker = run_worker(config, runner, stop_rx, health);
    tokio::pin!(worker);
    let result = until_drained(&mut worker, &stop, &mut signal, drain_timeout).await;
    done.send_replace(Stop::Drain);
    result
}

/// Drives `worker` through the first signal (drain) and a second one (give
/// everything back now) to its end.
pub async fn until_drained(
    worker: &mut (impl Future<Output = Result<(), LazybarnError>> + Unpin),
    stop: &watch::Sender<Stop>,
    signal: &mut ShutdownSignal,
    drain_timeout: std::time::Duration,
) -> Result<(), LazybarnError> {
    for (level, message) in [
        (
            Stop::Drain,
            format!(
                "lazybarn: draining the worker: no new work, running actions have {drain_timeout:?} \
             to finish (signal again to give them back at once)"
            ),
        ),
        (
            Stop::Now,
            "lazybarn: giving running actions back to the scheduler".to_string(),
        ),
    ] {
        tokio::select! {
            result = &mut *worker => return result,
            () = signal.recv() => {}
        }
        eprintln!("{message}");
        stop.send_replace(level);
    }
    worker.await
}

/// Installs the Prometheus recorder and serves `/metrics` on `addr` until
/// `stop`; returns the URL.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    stop: watch::Receiver<Stop>,
    health: Arc<Health>,
) -> Result<String, LazybarnError> {
    let handle = lazybarn_scheduler::metrics::install_prometheus()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| LazybarnError::Startup(format!("listening on {addr}: {e}")))?;
    let url = format!(
        "http://{}/metrics",
        listener
            .local_addr()
            .map_err(|e| LazybarnError::Startup(format!("listening on {addr}: {e}")))?
    );
    tokio::spawn(async move {
        if let Err(e) =
            crate::metrics_endpoint::serve(listener, handle, health, stopped(stop)).await
        {
            tracing::warn!(error = %e, "serving /metrics");
        }
    });
    Ok(url)
}

/// The worker's configuration from the file (if any) and the flags over it.
fn configure(args: &WorkerArgs) -> Result<WorkerConfig, LazybarnError> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(LazybarnError::io("reading", path))?;
            WorkerConfig::from_toml(&text)
                .map_err(|e| LazybarnError::Config(format!("in {}: {e}", path.display())))?
        }
        None => return configure_from_flags(args),
    };
    if let Some(scheduler) = &args.scheduler {
        config.scheduler = scheduler.clone();
    }
    if args.cas.is_some() {
        config.cas = args.cas.clone();
    }
    if args.scheduler_token_file.is_some() {
        config.scheduler_token_file = args.scheduler_token_file.clone();
    }
    if let Some(slots) = args.workers {
        config.slots = slots;
    }
    if let Some(mode) = args.build_dir {
        config.build_mode = mode;
    }
    if let Some(bytes) = args.max_cache_size {
        config.max_cache_bytes = bytes;
    }
    if !args.platform.is_empty() {
        config.platform = parse_platform(&args.platform)?;
    }
    if let Some(timeout) = args.drain_timeout {
        config.drain_timeout = timeout;
    }
    args.sandbox.apply(&mut config);
    config.build_mode = usable_build_mode(config.build_mode);
    for dir in [&config.build_directory, &config.cache_directory] {
        std::fs::create_dir_all(dir).map_err(LazybarnError::io("creating", dir))?;
    }
    Ok(config)
}

fn configure_from_flags(args: &WorkerArgs) -> Result<WorkerConfig, LazybarnError> {
    let scheduler = args.scheduler.clone().ok_or_else(|| {
        LazybarnError::Config("lazybarn worker needs --scheduler grpc://HOST:PORT".to_string())
    })?;
    let data_dir: PathBuf = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir("lazybarn-worker")?,
    };
    let user = ActionUser::choose();
    let layout = Layout::plan(&data_dir, user.uid)?;
    let settings = WorkerSettings {
        scheduler,
        scheduler_token_file: args.scheduler_token_file.clone(),
        cas: args.cas.clone(),
        slots: args.workers.unwrap_or_else(default_slots),
        mode: usable_build_mode(args.build_dir.unwrap_or_default()),
        max_cache_bytes: args.max_cache_size.unwrap_or(DEFAULT_MAX_CACHE_BYTES),
        platform: parse_platform(&args.platform)?,
        user,
        drain_timeout: args
            .drain_timeout
            .unwrap_or(lazybarn_worker::config::DEFAULT_DRAIN_TIMEOUT),
        sandbox: args.sandbox.clone(),
    };
    if let Some(why) = &layout.relocated_because {
        eprintln!(
            "lazybarn: {why}, so build directories go to {}",
            layout.build_dir.display()
        );
    }
    Ok(worker_config(&settings, &layout))
}

fn announce_layout_of(config: &WorkerConfig) {
    println!(
        "lazybarn build directory: {} ({})",
        config.build_directory.display(),
        mode_name(config.build_mode)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_first_signal_drains_the_worker_and_a_second_gives_everything_back() {
        let mut signal = ShutdownSignal::install().expect("signal handlers");
        let (stop, mut seen) = watch::channel(Stop::Run);
        let mut levels = seen.clone();
        let worker = async move {
            let _ = seen.wait_for(|level| *level == Stop::Now).await;
            Ok(())
        };
        tokio::pin!(worker);
        let terminate =
            || nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).expect("raise SIGTERM");
        let signals = tokio::spawn(async move {
            terminate();
            let _ = levels.wait_for(|level| *level == Stop::Drain).await;
            terminate();
        });
        let drained = until_drained(
            &mut worker,
            &stop,
            &mut signal,
            std::time::Duration::from_secs(1),
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), drained)
            .await
            .expect("two signals end the worker")
            .expect("the worker's result");
        assert_eq!(*stop.borrow(), Stop::Now);
        signals.await.expect("signals task");
    }

    #[test]
    fn stop_levels_only_go_up() {
        let mut level = Stop::Drain;
        assert!(!raise(&mut level, Stop::Run));
        assert_eq!(level, Stop::Drain);
        assert!(raise(&mut level, Stop::Now));
        assert_eq!(level, Stop::Now);
    }

    #[test]
    fn platform_entries_group_by_name() {
        let platform = parse_platform(&[
            "OSFamily=linux".to_string(),
            "ISA=x86-64".to_string(),
            "ISA=x86-64-v2".to_string(),
        ])
        .expect("valid");
        assert_eq!(platform["OSFamily"], ["linux"]);
        assert_eq!(platform["ISA"], ["x86-64", "x86-64-v2"]);
        assert_eq!(parse_platform(&[]).expect("default")["OSFamily"], ["linux"]);
        assert!(parse_platform(&["linux".to_string()]).is_err());
        assert!(parse_platform(&["=linux".to_string()]).is_err());
    }

    #[test]
    fn a_worker_config_file_with_an_unknown_key_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "scheduler = \"grpc://127.0.0.1:1\"\nslotz = 2\n").expect("write");
        let args = WorkerArgs {
            scheduler: None,
            scheduler_token_file: None,
            cas: None,
            workers: None,
            build_dir: None,
            data_dir: None,
            max_cache_size: None,
            platform: Vec::new(),
            config: Some(file),
            external_runner: false,
            http: None,
            drain_timeout: None,
            sandbox: SandboxArgs::default(),
        };
        let error = configure(&args).expect_err("unknown key");
        assert!(error.to_string().contains("slotz"), "{error}");
    }
}
