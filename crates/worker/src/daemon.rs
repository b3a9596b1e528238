//! The worker process's life: register with the scheduler, keep one
//! PollWork open per idle slot, run what comes, heartbeat the executions in
//! progress, hand back each ExecuteResponse, and stop cleanly.
//!
//! Every call to the scheduler carries the worker's bearer token when
//! `scheduler_token_file` is set (`lazybarn_auth::BearerToken`).
//!
//! Failures of the scheduler connection are retried with backoff; NOT_FOUND
//! (the scheduler restarted or the lease ran out) means register again. A
//! slot takes no work while the runner fails CheckReadiness.
//!
//! Stopping is a drain ([`crate::drain`]): the owner of the worker raises
//! its [`Stop`] level (see [`run_until`]) to [`Stop::Drain`] on SIGTERM, and
//! to [`Stop::Now`] to cut the drain short.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lazybarn_auth::BearerToken;
use lazybarn_cas::CasClient;
use lazybarn_proto::reapi::{Platform, platform::Property};
use lazybarn_proto::worker::scheduler_client::SchedulerClient;
use lazybarn_proto::worker::{
    CompleteExecutionRequest, ExecutionProgress, PollWorkRequest, RegisterRequest,
    ReportProgressRequest, WorkAssignment,
};
use lazybarn_vfs::{BlobCache, MountConfig};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::action::{self, ActionEnvironment, Progress};
use crate::config::WorkerConfig;
use crate::health::Health;
use crate::runner::RunnerConnection;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A directory could not be prepared.
    #[error("preparing {path}: {source}")]
    Directory {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The blob cache or a stale mount could not be handled.
    #[error(transparent)]
    Vfs(#[from] lazybarn_vfs::VfsError),
    /// A configured address is malformed.
    #[error("{0}")]
    Config(String),
}

/// Actions finished, by outcome (`ok`, `failed`, `error`, `cancelled`).
pub const ACTIONS: &str = "lazybarn_worker_actions_total";
/// Actions running now.
pub const RUNNING_ACTIONS: &str = "lazybarn_worker_running_actions";
/// Wall time of an action on the worker, from assignment to result.
pub const ACTION_SECONDS: &str = "lazybarn_worker_action_seconds";

fn outcome_label(
    outcome: &Result<lazybarn_proto::reapi::ExecuteResponse, tokio::task::JoinError>,
) -> &'static str {
    match outcome {
        Err(_) => "cancelled",
        Ok(r) if r.status.as_ref().is_some_and(|s| s.code != 0) => "error",
        Ok(r) if r.result.as_ref().is_some_and(|r| r.exit_code != 0) => "failed",
        Ok(_) => "ok",
    }
}

/// Pause after a failed call to the scheduler before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Registration as the scheduler answered it.
#[derive(Clone, Copy)]
struct Lease {
    heartbeat: Duration,
    poll_timeout: Duration,
}

/// How far the owner of a running worker wants it stopped. The levels only
/// go up; [`run_until`] watches them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Keep taking work.
    #[default]
    Run,
    /// Take no new work, let running actions finish within the configured
    /// drain timeout, give back the rest, and return.
    Drain,
    /// Give back every running action at once, and return.
    Now,
}

/// The worker's connection to the scheduler, carrying its token if it has
/// one.
pub(crate) type SchedulerConnection = SchedulerClient<InterceptedService<Channel, BearerToken>>;

/// An action in progress: what the heartbeat reports, and how to stop it.
pub(crate) type RunningAction = (watch::Receiver<Progress>, AbortHandle);

/// State shared by the slots and the heartbeat.
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    pub(crate) worker_id: String,
    /// Chosen anew by every run of the worker, so the scheduler can tell a
    /// reconnection (same session) from a restart (new session).
    session_id: String,
    pub(crate) scheduler: SchedulerConnection,
    env: ActionEnvironment,
    pub(crate) running: Mutex<HashMap<String, RunningAction>>,
    lease: Mutex<Lease>,
    register_lock: tokio::sync::Mutex<()>,
    /// True once the worker drains: slots start no new poll and NOT_FOUND
    /// no longer means "register again".
    pub(crate) draining: watch::Sender<bool>,
    /// True once open PollWork calls may be cancelled: the scheduler has been
    /// told of the drain, so none of them can carry an action any more.
    pub(crate) polls_closed: watch::Sender<bool>,
    /// What a readiness probe reports.
    pub(crate) health: Arc<Health>,
}

/// Runs the worker until `shutdown` resolves, then drains it for the
/// configured drain timeout. [`run_until`] can also cut the drain short.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let (stop, stop_level) = watch::channel(Stop::Run);
    let worker = run_until(config, stop_level);
    tokio::pin!(worker);
    tokio::select! {
        result = &mut worker => return result,
        () = shutdown => {}
    }
    stop.send_replace(Stop::Drain);
    worker.await
}

/// Runs the worker until `stop` reaches [`Stop::Drain`], then drains it
/// (see [`crate::drain`]) and returns once every action has finished or been
/// given back and every action directory is unmounted and removed. A dropped
/// sender counts as [`Stop::Now`].
pub async fn run_until(
    config: WorkerConfig,
    stop: watch::Receiver<Stop>,
) -> Result<(), WorkerError> {
    run_until_with_health(config, stop, Arc::default()).await
}

/// [`run_until`], keeping `health` up to date for a readiness probe.
pub async fn run_until_with_health(
    config: WorkerConfig,
    mut stop: watch::Receiver<Stop>,
    health: Arc<Health>,
) -> Result<(), WorkerError> {
    let shared = Arc::new(start(config, health).await?);
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..shared.config.slots.max(1) {
        let shared = shared.clone();
        slots.spawn(async move { shared.slot(slot).await });
    }
    let heartbeat = tokio::spawn(shared.clone().heartbeat());
    reached(&mut stop, Stop::Drain).await;
    shared.drain(slots, stop).await;
    heartbeat.abort();
    let _ = heartbeat.await;
    clean_build_directory(&shared.config.build_directory).await;
    tracing::info!(worker = %shared.worker_id, "worker stopped");
    Ok(())
}

/// Resolves once `stop` is at `level` or above, or its sender is gone.
pub(crate) async fn reached(stop: &mut watch::Receiver<Stop>, level: Stop) {
    let _ = stop.wait_for(|current| *current >= level).await;
}

/// Opens the cache, cleans what a crashed predecessor left, and connects.
async fn start(config: WorkerConfig, health: Arc<Health>) -> Result<Shared, WorkerError> {
    for dir in [&config.build_directory, &config.cache_directory] {
        std::fs::create_dir_all(dir).map_err(|source| WorkerError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
    }
    clean_build_directory(&config.build_directory).await;
    let cache = BlobCache::open(&config.cache_directory, config.max_cache_bytes)?;
    let cas_channel = channel(config.cas_address())?;
    let cas = CasClient::from_channel(
        cas_channel,
        "",
        lazybarn_cas::service::DEFAULT_MAX_BATCH_BYTES,
    );
    let runner = RunnerConnection::new(&config.runner_socket)
        .map_err(|e| WorkerError::Config(e.message().to_string()))?;
    let worker_id = config.worker_id();
    let env = ActionEnvironment {
        worker_id: worker_id.clone(),
        build_directory: config.build_directory.clone(),
        mode: config.build_mode,
        cache,
        cas,
        cas_address: config.cas_address().to_string(),
        runner,
        mount: MountConfig {
            passthrough: config.passthrough,
            input_uid: config.action_uid,
            input_gid: config.action_gid,
            ..MountConfig::default()
        },
        fetch_concurrency: config.fetch_concurrency,
        isolation: config.isolation(),
    };
    let token = match &config.scheduler_token_file {
        Some(path) => BearerToken::from_file(path)
            .map_err(|e| WorkerError::Config(format!("scheduler_token_file: {e}")))?,
        None => BearerToken::none(),
    };
    let scheduler = SchedulerClient::with_interceptor(channel(&config.scheduler)?, token)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Ok(Shared {
        config,
        worker_id,
        session_id: uuid::Uuid::new_v4().simple().to_string(),
        scheduler,
        env,
        running: Mutex::default(),
        lease: Mutex::new(Lease {
            heartbeat: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(30),
        }),
        register_lock: tokio::sync::Mutex::new(()),
        draining: watch::Sender::new(false),
        polls_closed: watch::Sender::new(false),
        health,
    })
}

fn channel(address: &str) -> Result<Channel, WorkerError> {
    let url = address.replacen("grpc://", "http://", 1);
    Ok(Endpoint::from_shared(url)
        .map_err(|e| WorkerError::Config(format!("bad address {address:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// Removes leftovers of earlier actions: stale mounts first, then files.
async fn clean_build_directory(dir: &std::path::Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = lazybarn_vfs::clean_stale_mounts(&dir) {
            tracing::warn!(error = %e, "cleaning stale mounts");
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = crate::confined::remove_tree(&entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "removing a leftover action directory");
            }
        }
    })
    .await;
}

impl Shared {
    /// Registers (again); concurrent callers share one registration.
    async fn register(&self) {
        let _guard = self.register_lock.lock().await;
        let request = RegisterRequest {
            worker_id: self.worker_id.clone(),
            platform: Some(platform(&self.config)),
            slots: self.config.slots.max(1) as u32,
            session_id: self.session_id.clone(),
        };
        loop {
            match self.scheduler.clone().register(request.clone()).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let duration = |d: Option<prost_types::Duration>, default| {
                        d.and_then(|d| Duration::try_from(d).ok())
                            .filter(|d| !d.is_zero())
                            .unwrap_or(default)
                    };
                    let mut lease = self.lease.lock().expect("lease lock poisoned");
                    lease.heartbeat = duration(response.heartbeat_interval, Duration::from_secs(5));
                    lease.poll_timeout = duration(response.poll_timeout, Duration::from_secs(30));
                    tracing::info!(worker = %self.worker_id, "registered with the scheduler");
                    self.health.set_registered(true);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering with the scheduler; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }

    /// Whether the worker is draining.
    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// One slot: wait for a ready runner, poll, run, complete, repeat, until
    /// the worker drains. Waiting for work ends when polls are closed; an
    /// action already taken runs to its end (or until it is given back).
    async fn slot(self: Arc<Self>, slot: usize) {
        let mut closed = self.polls_closed.subscribe();
        if slot == 0 {
            tokio::select! {
                () = self.register() => {}
                _ = closed.wait_for(|closed| *closed) => return,
            }
        }
        while !self.is_draining() {
            let assignment = tokio::select! {
                assignment = self.next_assignment(slot) => assignment,
                _ = closed.wait_for(|closed| *closed) => return,
            };
            if let Some(assignment) = assignment {
                self.run_assignment(slot, assignment).await;
            }
        }
    }

    /// Waits for a ready runner, then polls once.
    async fn next_assignment(&self, slot: usize) -> Option<WorkAssignment> {
        if let Err(e) = self
            .env
            .runner
            .check_readiness(&self.config.build_directory)
            .await
        {
            self.health.set_runner_ready(false);
            tracing::warn!(slot, error = %e, "not taking work");
            tokio::time::sleep(RETRY_DELAY).await;
            return None;
        }
        self.health.set_runner_ready(true);
        self.poll().await
    }

    async fn poll(&self) -> Option<WorkAssignment> {
        let poll_timeout = self.lease.lock().expect("lease lock poisoned").poll_timeout;
        let mut request = tonic::Request::new(PollWorkRequest {
            worker_id: self.worker_id.clone(),
        });
        request.set_timeout(poll_timeout + Duration::from_secs(10));
        match self.scheduler.clone().poll_work(request).await {
            Ok(response) => {
                self.health.set_registered(true);
                response.into_inner().assignment
            }
            Err(e) => {
                self.on_error("PollWork", &e).await;
                None
            }
        }
    }

    async fn on_error(&self, call: &str, status: &Status) {
        self.health.set_registered(false);
        if self.is_draining() {
            // A stopping worker does not register again: it has nothing to
            // come back for, and would show as taking work.
            tracing::info!(call, error = %status, "scheduler call failed while draining");
        } else if status.code() == Code::NotFound {
            self.register().await;
            return;
        } else {
            tracing::warn!(call, error = %status, "scheduler call failed; retrying");
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }

    async fn run_assignment(self: &Arc<Self>, slot: usize, assignment: WorkAssignment) {
        let id = assignment.execution_id.clone();
        tracing::info!(execution = %id, attempt = assignment.attempt, "running an action");
        let (progress, watcher) = watch::channel(Progress::default());
        let shared = self.clone();
        let task = tokio::spawn(async move {
            action::execute(&shared.env, slot, &assignment, &progress).await
        });
        self.running
            .lock()
            .expect("running table lock poisoned")
            .insert(id.clone(), (watcher, task.abort_handle()));
        metrics::gauge!(RUNNING_ACTIONS).increment(1.0);
        let started = std::time::Instant::now();
        let outcome = task.await;
        metrics::gauge!(RUNNING_ACTIONS).decrement(1.0);
        metrics::histogram!(ACTION_SECONDS).record(started.elapsed().as_secs_f64());
        self.running
            .lock()
            .expect("running table lock poisoned")
            .remove(&id);
        metrics::counter!(ACTIONS, "outcome" => outcome_label(&outcome)).increment(1);
        match outcome {
            Ok(response) => self.complete(&id, response).await,
            Err(_) => {
                tracing::info!(execution = %id, "action stopped before it finished (cancelled by the scheduler, or given back)");
                let dir = self.config.build_directory.join(&id);
                clean_build_directory(&dir).await;
                let _ =
                    tokio::task::spawn_blocking(move || crate::confined::remove_tree(&dir)).await;
            }
        }
    }

    async fn complete(&self, id: &str, response: lazybarn_proto::reapi::ExecuteResponse) {
        let request = CompleteExecutionRequest {
            worker_id: self.worker_id.clone(),
            execution_id: id.to_string(),
            response: Some(response),
        };
        for _ in 0..30 {
            match self
                .scheduler
                .clone()
                .complete_execution(request.clone())
                .await
            {
                Ok(reply) => {
                    if !reply.into_inner().accepted {
                        tracing::info!(execution = %id, "the scheduler no longer wanted this result");
                    }
                    return;
                }
                Err(e) => self.on_error("CompleteExecution", &e).await,
            }
        }
        tracing::error!(execution = %id, "giving up on reporting a result; the scheduler will retry the action");
    }

    /// Reports every running execution at the heartbeat interval and stops
    /// the ones the scheduler no longer wants.
    async fn heartbeat(self: Arc<Self>) {
        loop {
            let interval = self.lease.lock().expect("lease lock poisoned").heartbeat;
            tokio::time::sleep(interval).await;
            let executions: Vec<ExecutionProgress> = self
                .running
                .lock()
                .expect("running table lock poisoned")
                .iter()
                .map(|(id, (progress, _))| {
                    let progress = progress.borrow();
                    ExecutionProgress {
                        execution_id: id.clone(),
                        stage: progress.stage,
                        partial_execution_metadata: Some(progress.metadata.clone()),
                    }
                })
                .collect();
            let request = ReportProgressRequest {
                worker_id: self.worker_id.clone(),
                executions,
            };
            match self.scheduler.clone().report_progress(request).await {
                Ok(response) => {
                    self.health.set_registered(true);
                    let running = self.running.lock().expect("running table lock poisoned");
                    for id in response.into_inner().cancelled_execution_ids {
                        if let Some((_, handle)) = running.get(&id) {
                            handle.abort();
                        }
                    }
                }
                Err(e) => self.on_error("ReportProgress", &e).await,
            }
        }
    }
}

/// The configured platform plus the `network` values this worker offers
/// (unless the configuration names that property itself), as REAPI wants
/// it: sorted by name, then value.
fn platform(config: &WorkerConfig) -> Platform {
    let mut offered = config.platform.clone();
    offered
        .entry(crate::isolation::NETWORK_PROPERTY.to_string())
        .or_insert_with(|| config.isolation().network_values());
    let mut properties: Vec<Property> = offered
        .iter()
        .flat_map(|(name, values)| {
            values.iter().map(move |value| Property {
                name: name.clone(),
                value: value.clone(),
            })
        })
        .collect();
    properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    Platform { properties }
}

/// Why FUSE mounts cannot work here, or None when they can.
pub fn fuse_unavailable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if !root && !fusermount {
        return Some("not running as root and fusermount3 is not installed".to_string());
    }
    None
}
