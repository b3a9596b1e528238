//! `lazybarn up`: a whole cluster on this machine.
//!
//! In this process: the embedded storage, the scheduler and its status page
//! (`lazybarn_scheduler::server::run`), and a worker with N slots
//! (`lazybarn_worker::run`). In a child process: the runner, which must be
//! a process of its own to run commands as another uid. All of them record
//! metrics through one Prometheus recorder, so `/metrics` shows them
//! together.
//!
//! The worker protocol is served on the client port, so that a worker can
//! join with `lazybarn worker`, but only to holders of a worker token
//! generated at each start ([`crate::credentials`]): `worker-token` in the
//! data directory, which the in-process worker presents. A client of the
//! port cannot register as a worker or drain one.
//!
//! Startup: storage and scheduler bind their ports, the runner answers,
//! the worker registers; only then is `lazybarn ready: grpc://ADDR`
//! printed. Shutdown (SIGINT, SIGTERM, or any piece failing) goes the other
//! way: the worker stops and unmounts its action directories, then the
//! runner, then the scheduler. On a signal the worker first drains (see
//! `lazybarn_worker::drain`): running actions get its drain timeout to
//! finish and report, and a second signal gives them back at once.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lazybarn_scheduler::ServerConfig;
use lazybarn_scheduler::config::{AuthConfig, StorageConfig};
use lazybarn_scheduler::server::{self, Listeners, ServerError};
use lazybarn_worker::Stop;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::cli::UpArgs;
use crate::credentials::WorkerCredentials;
use crate::error::LazybarnError;
use crate::layout::{Layout, default_data_dir};
use crate::registration::workers_registered;
use crate::runner_child::RunnerChild;
use crate::shutdown::ShutdownSignal;
use crate::worker_node::{
    ActionUser, WorkerSettings, announce_layout, default_slots, parse_platform, run_worker,
    stopped, usable_build_mode, worker_config,
};

/// How long the worker may take to register once the runner is up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the data directory under `~/.cache`.
const DATA_DIR_NAME: &str = "lazybarn";

/// A spawned piece of the cluster and the switch that stops it.
struct Piece<E> {
    /// None once the task has been seen to end.
    task: Option<JoinHandle<Result<(), E>>>,
    stop: watch::Sender<Stop>,
}

impl<E> Piece<E>
where
    LazybarnError: From<E>,
{
    /// Resolves when the piece ends on its own, with its result; never if it
    /// has already been seen to end.
    async fn ended(&mut self) -> Result<(), LazybarnError> {
        let Some(task) = &mut self.task else {
            return std::future::pending().await;
        };
        let result = joined(task.await);
        self.task = None;
        result
    }

    /// Stops the piece at `level` and waits for it. With a signal, the
    /// signal arriving meanwhile raises the level to [`Stop::Now`].
    async fn stop(
        self,
        level: Stop,
        signal: Option<&mut ShutdownSignal>,
    ) -> Result<(), LazybarnError> {
        self.stop.send_replace(level);
        let Some(mut task) = self.task else {
            return Ok(());
        };
        if let Some(signal) = signal.filter(|_| level < Stop::Now) {
            tokio::select! {
                result = &mut task => return joined(result),
                () = signal.recv() => {
                    eprintln!("lazybarn: giving the worker's running actions back to the scheduler");
                    self.stop.send_replace(Stop::Now);
                }
            }
        }
        joined(task.await)
    }
}

/// Runs `lazybarn up` until SIGINT or SIGTERM.
pub async fn up(args: UpArgs) -> Result<(), LazybarnError> {
    let mut signal = ShutdownSignal::install()?;
    let plan = UpPlan::new(&args)?;
    let metrics = lazybarn_scheduler::metrics::install_prometheus()?;
    let (mut cluster, grpc) = start_scheduler(&args, &plan, &metrics).await?;
    if let Some(settings) = &plan.worker {
        let layout = plan.layout.as_ref().expect("a worker comes with a layout");
        let settings = WorkerSettings {
            scheduler: format!("grpc://{}", reachable(grpc)),
            scheduler_token_file: Some(plan.credentials.token_file.clone()),
            ..settings.clone()
        };
        announce_layout(layout, settings.mode);
        match start_worker(&settings, layout).await {
            Ok(worker) => cluster.worker = Some(worker),
            Err(error) => return cluster.abort(error).await,
        }
        let registered = tokio::select! {
            registered = cluster.registered(&metrics) => registered,
            () = signal.recv() => return cluster.stop(Some(&mut signal)).await,
        };
        if let Err(error) = registered {
            return cluster.abort(error).await;
        }
    }
    println!("lazybarn ready: grpc://{grpc}");

    let failure = tokio::select! {
        () = signal.recv() => None,
        error = cluster.failed() => Some(error),
    };
    match failure {
        Some(error) => {
            eprintln!("lazybarn: stopping");
            cluster.abort(error).await
        }
        None if cluster.worker.is_some() => {
            eprintln!(
                "lazybarn: stopping; the worker drains first (signal again to give its running \
                 actions back at once)"
            );
            cluster.stop(Some(&mut signal)).await
        }
        None => {
            eprintln!("lazybarn: stopping");
            cluster.stop(None).await
        }
    }
}

/// What `up` decided before starting anything.
struct UpPlan {
    data_dir: PathBuf,
    /// This run's worker token, for the scheduler and the worker.
    credentials: WorkerCredentials,
    /// The worker's settings (its scheduler address is filled in once the
    /// port is bound); None with `--workers 0`.
    worker: Option<WorkerSettings>,
    layout: Option<Layout>,
}

impl UpPlan {
    /// Resolves the data directory, the worker's settings and its layout.
    fn new(args: &UpArgs) -> Result<UpPlan, LazybarnError> {
        let data_dir = match &args.data_dir {
            Some(dir) => dir.clone(),
            None => default_data_dir(DATA_DIR_NAME)?,
        };
        let slots = args.workers.unwrap_or_else(default_slots);
        if slots == 0 {
            fs::create_dir_all(&data_dir).map_err(LazybarnError::io("creating", &data_dir))?;
            return Ok(UpPlan {
                credentials: WorkerCredentials::generate(&data_dir)?,
                data_dir,
                worker: None,
                layout: None,
            });
        }
        let user = ActionUser::choose();
        let settings = WorkerSettings {
            scheduler: String::new(),
            scheduler_token_file: None,
            cas: None,
            slots,
            mode: usable_build_mode(args.build_dir),
            max_cache_bytes: args.max_cache_size,
            platform: parse_platform(&args.platform)?,
            user,
            drain_timeout: args.drain_timeout,
            sandbox: args.sandbox.clone(),
        };
        // Creates the data directory too, before the storage opens its part.
        let layout = Layout::plan(&data_dir, user.uid)?;
        Ok(UpPlan {
            credentials: WorkerCredentials::generate(&data_dir)?,
            data_dir,
            worker: Some(settings),
            layout: Some(layout),
        })
    }
}

/// The running pieces of `up`.
struct Cluster {
    scheduler: Piece<ServerError>,
    worker: Option<Piece<LazybarnError>>,
    layout: Option<Layout>,
}

/// Binds the ports and starts storage, scheduler and status page.
async fn start_scheduler(
    args: &UpArgs,
    plan: &UpPlan,
    metrics: &PrometheusHandle,
) -> Result<(Cluster, SocketAddr), LazybarnError> {
    let config = ServerConfig {
        listen: args.listen,
        worker_listen: None,
        http_listen: args.http,
        storage: StorageConfig {
            data_dir: Some(plan.data_dir.join("storage")),
            max_size_bytes: args.max_cache_size,
            ..StorageConfig::default()
        },
        scheduler: Default::default(),
        auth: AuthConfig {
            tokens_file: Some(plan.credentials.tokens_file.clone()),
            worker_group: plan.credentials.group.to_string(),
        },
    };
    let listeners = Listeners::bind(&config).await?;
    let grpc = bound(&listeners.grpc)?;
    println!("lazybarn status: http://{}", bound(&listeners.http)?);
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let task = tokio::spawn(server::run(
        config,
        listeners,
        Some(metrics.clone()),
        stopped(stop_rx),
    ));
    let cluster = Cluster {
        scheduler: Piece {
            task: Some(task),
            stop,
        },
        worker: None,
        layout: plan.layout.clone(),
    };
    Ok((cluster, grpc))
}

impl Cluster {
    /// Resolves once the worker has registered, or with why it cannot.
    async fn registered(&mut self, metrics: &PrometheusHandle) -> Result<(), LazybarnError> {
        tokio::select! {
            registered = timeout(REGISTER_TIMEOUT, workers_registered(metrics, 1)) => {
                registered.map_err(|_| LazybarnError::Startup(format!(
                    "the worker did not register with the scheduler within {REGISTER_TIMEOUT:?}"
                )))
            }
            error = self.failed() => Err(error),
        }
    }

    /// Resolves when a piece ends on its own, with why.
    async fn failed(&mut self) -> LazybarnError {
        tokio::select! {
            result = self.scheduler.ended() => unexpected("the scheduler", result),
            result = worker_ended(&mut self.worker) => unexpected("the worker", result),
        }
    }

    /// Stops everything after `error`, which is what is returned. The
    /// worker does not wait for its actions: with a piece gone, they could
    /// not be reported anyway.
    async fn abort(self, error: LazybarnError) -> Result<(), LazybarnError> {
        if let Err(also) = self.stop_at(Stop::Now, None).await {
            tracing::warn!("while stopping: {also}");
        }
        Err(error)
    }

    /// Drains the worker (a signal meanwhile cuts that short), then stops
    /// the runner and the scheduler.
    async fn stop(self, signal: Option<&mut ShutdownSignal>) -> Result<(), LazybarnError> {
        self.stop_at(Stop::Drain, signal).await
    }

    /// Stops the worker at `level` (and its runner), then the scheduler;
    /// removes a build directory outside the data directory if the worker
    /// left it empty.
    async fn stop_at(
        self,
        level: Stop,
        signal: Option<&mut ShutdownSignal>,
    ) -> Result<(), LazybarnError> {
        let worker_result = match self.worker {
            Some(worker) => worker.stop(level, signal).await,
            None => Ok(()),
        };
        let scheduler_result = self.scheduler.stop(Stop::Now, None).await;
        if let Some(layout) = self.layout.filter(|l| l.relocated_because.is_some()) {
            let _ = fs::remove_dir(&layout.build_dir);
        }
        worker_result.and(scheduler_result)
    }
}

/// Starts the runner child, then the worker next to it.
async fn start_worker(
    settings: &WorkerSettings,
    layout: &Layout,
) -> Result<Piece<LazybarnError>, LazybarnError> {
    let config = worker_config(settings, layout);
    // Started from the main task on purpose: see `RunnerChild::start`.
    let runner = RunnerChild::start(&config).await?;
    let (stop, stop_rx) = watch::channel(Stop::Run);
    Ok(Piece {
        task: Some(tokio::spawn(run_worker(
            config,
            Some(runner),
            stop_rx,
            Arc::default(),
        ))),
        stop,
    })
}

/// When the worker ends on its own; never without a worker.
async fn worker_ended(worker: &mut Option<Piece<LazybarnError>>) -> Result<(), LazybarnError> {
    match worker {
        Some(piece) => piece.ended().await,
        None => std::future::pending().await,
    }
}

/// The error for a piece that ended while it should have been running.
fn unexpected(what: &str, result: Result<(), LazybarnError>) -> LazybarnError {
    match result {
        Ok(()) => LazybarnError::Startup(format!("{what} stopped unexpectedly")),
        Err(error) => error,
    }
}

fn joined<E>(result: Result<Result<(), E>, tokio::task::JoinError>) -> Result<(), LazybarnError>
where
    LazybarnError: From<E>,
{
    match result {
        Ok(result) => result.map_err(LazybarnError::from),
        Err(error) => Err(LazybarnError::Startup(format!("a task failed: {error}"))),
    }
}

fn bound(listener: &tokio::net::TcpListener) -> Result<SocketAddr, LazybarnError> {
    listener
        .local_addr()
        .map_err(|e| LazybarnError::Startup(format!("reading the bound address: {e}")))
}

/// The address a local worker connects to: a wildcard address means
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_reached_over_loopback() {
        let any: SocketAddr = "0.0.0.0:8980".parse().expect("address");
        assert_eq!(reachable(any).to_string(), "127.0.0.1:8980");
        let any6: SocketAddr = "[::]:8980".parse().expect("address");
        assert_eq!(reachable(any6).to_string(), "[::1]:8980");
        let lan: SocketAddr = "10.1.2.3:8980".parse().expect("address");
        assert_eq!(reachable(lan), lan);
    }
}
