//! The scheduler's state, kept under one lock: in-flight executions and
//! their deduplication, queues, workers, waiting polls and finished
//! operations. Every change of an execution's state is published to its
//! clients here, through a `watch` channel per operation.
//!
//! Nothing in this module awaits; callers hold the lock only for these
//! short, synchronous transitions. Client-facing transitions are here;
//! worker-facing ones are in `assignment.rs` and timeouts in `leases.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use lazybarn_cas::Digest;
use lazybarn_proto::longrunning::Operation;
use lazybarn_proto::reapi::{
    ExecuteResponse, ExecutedActionMetadata, RequestMetadata, execution_stage::Value as Stage,
};
use lazybarn_proto::worker::{self, WorkAssignment};
use metrics::Gauge;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::Code;

use crate::action::LoadedAction;
use crate::config::SchedulerConfig;
use crate::metrics as names;
use crate::operation;
use crate::platform::{PlatformKey, WorkerPlatform};
use crate::queue::{Position, QueueKey, Queues};

/// The sending side of an operation's updates.
pub type Updates = watch::Sender<Arc<Operation>>;

/// Identical in-flight actions share one execution under this key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActionKey {
    /// The REAPI instance name.
    pub instance_name: Arc<str>,
    /// The Action's digest.
    pub digest: Digest,
}

/// What a worker needs to run an action; the same for every attempt.
pub struct WorkTemplate {
    /// The REAPI instance name.
    pub instance_name: Arc<str>,
    /// The Action, its Command, platform and timeout.
    pub loaded: LoadedAction,
    /// When the first client's Execute queued it.
    pub queued_timestamp: SystemTime,
    /// The first client's request metadata.
    pub request_metadata: RequestMetadata,
}

/// An execution a worker holds.
pub struct Assignment {
    /// The worker's id.
    pub worker: Arc<str>,
    /// Names this attempt.
    pub execution_id: Arc<str>,
    /// When the worker took it.
    pub started: Instant,
    /// When the worker last mentioned it: the execution's lease.
    pub renewed: Instant,
    /// What the worker last said it was doing.
    pub stage: worker::ExecutionStage,
}

/// Where an execution is.
pub enum Phase {
    /// Waiting in its queue.
    Queued,
    /// Held by a worker.
    Executing(Assignment),
}

/// One in-flight action and the clients waiting for it.
pub struct Execution {
    /// The operation name every client of it shares.
    pub name: Arc<str>,
    /// Its deduplication key; `None` for `do_not_cache` actions.
    pub dedup: Option<ActionKey>,
    /// What the worker gets.
    pub work: Arc<WorkTemplate>,
    /// Its queue.
    pub queue: QueueKey,
    /// Its place in the queue, kept across retries.
    pub position: Position,
    /// How many times a worker took it.
    pub attempts: u32,
    /// How many of those attempts a stopping worker gave back unfinished;
    /// they do not count against the retry limit.
    pub given_back: u32,
    /// Queued or executing.
    pub phase: Phase,
    /// Connected clients (Execute and WaitExecution streams).
    pub clients: usize,
    /// Since when no client has been connected, if none is.
    pub orphaned_since: Option<Instant>,
    /// When it was queued.
    pub queued_at: Instant,
    /// The worker that last lost it, for the failure message.
    pub lost_worker: Option<Arc<str>>,
    /// Its clients' updates.
    pub updates: Updates,
}

/// A registered worker.
pub struct Worker {
    /// Its id.
    pub id: Arc<str>,
    /// The session id of the process that registered it; another one under
    /// the same id is a restarted process.
    pub session: Arc<str>,
    /// Since when it has been draining: it takes no new work and is about to
    /// leave. None while it takes work.
    pub draining_since: Option<Instant>,
    /// What it offers.
    pub platform: WorkerPlatform,
    /// How many actions it runs at once.
    pub slots: u32,
    /// The execution ids it holds.
    pub executions: HashSet<Arc<str>>,
    /// Its lease: when it last called.
    pub last_seen: Instant,
    /// PollWork calls open now; while any is, the lease holds.
    pub active_polls: usize,
    /// When it registered.
    pub registered: SystemTime,
}

impl Worker {
    /// Whether it may be given an action of `platform`: it offers the
    /// platform and is not draining.
    pub fn takes(&self, platform: &PlatformKey) -> bool {
        self.draining_since.is_none() && self.platform.satisfies(platform)
    }
}

/// A PollWork call waiting for an action.
pub struct Waiter {
    /// Identifies the call.
    pub id: u64,
    /// The polling worker.
    pub worker: Arc<str>,
    /// Where its action goes.
    pub sender: oneshot::Sender<WorkAssignment>,
}

/// A finished operation, kept for late WaitExecution and GetOperation calls.
pub struct Finished {
    /// Holds the final state.
    pub updates: Updates,
    /// When it is forgotten.
    pub expires: Instant,
}

/// Everything the scheduler knows, under one lock.
pub struct State {
    /// The configuration.
    pub config: Arc<SchedulerConfig>,
    /// In-flight executions by operation name.
    pub executions: HashMap<Arc<str>, Execution>,
    /// In-flight executions by action, for deduplication.
    pub dedup: HashMap<ActionKey, Arc<str>>,
    /// Operation names by execution id.
    pub assignments: HashMap<Arc<str>, Arc<str>>,
    /// Finished operations by name.
    pub finished: HashMap<Arc<str>, Finished>,
    /// Finished operations in the order they expire.
    pub finished_order: VecDeque<Arc<str>>,
    /// Queued executions.
    pub queues: Queues,
    /// Registered workers by id.
    pub workers: HashMap<Arc<str>, Worker>,
    /// Open PollWork calls, oldest first.
    pub waiters: VecDeque<Waiter>,
    /// Executing actions per tool invocation, for fairness.
    pub executing_by_build: HashMap<Arc<str>, usize>,
    next_seq: u64,
    pub(crate) next_id: u64,
    pub(crate) boot: String,
    pub(crate) executing_gauge: Gauge,
    pub(crate) workers_gauge: Gauge,
    pub(crate) active_workers_gauge: Gauge,
    pub(crate) draining_workers_gauge: Gauge,
}

/// What an Execute call joins or creates.
pub struct NewExecution {
    /// Deduplication key, unless `do_not_cache`.
    pub dedup: Option<ActionKey>,
    /// What the worker gets.
    pub work: WorkTemplate,
    /// ExecutionPolicy.priority.
    pub priority: i32,
    /// RequestMetadata.tool_invocation_id.
    pub invocation: Arc<str>,
}

impl State {
    /// An empty state.
    pub fn new(config: Arc<SchedulerConfig>) -> Self {
        let boot = uuid::Uuid::new_v4().simple().to_string();
        State {
            config,
            executions: HashMap::new(),
            dedup: HashMap::new(),
            assignments: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            queues: Queues::default(),
            workers: HashMap::new(),
            waiters: VecDeque::new(),
            executing_by_build: HashMap::new(),
            next_seq: 0,
            next_id: 0,
            boot: boot[..8].to_string(),
            executing_gauge: metrics::gauge!(names::EXECUTING_OPERATIONS),
            workers_gauge: metrics::gauge!(names::WORKERS),
            active_workers_gauge: metrics::gauge!(names::WORKERS_BY_STATE, "state" => "active"),
            draining_workers_gauge: metrics::gauge!(names::WORKERS_BY_STATE, "state" => "draining"),
        }
    }

    /// Sets the worker gauges from the registered workers.
    pub(crate) fn count_workers(&self) {
        let draining = self
            .workers
            .values()
            .filter(|w| w.draining_since.is_some())
            .count();
        let total = self.workers.len();
        self.workers_gauge.set(total as f64);
        self.active_workers_gauge.set((total - draining) as f64);
        self.draining_workers_gauge.set(draining as f64);
    }

    /// Joins the in-flight execution of `key`, if there is one.
    pub fn join(&mut self, key: &ActionKey) -> Option<(Arc<str>, watch::Receiver<Arc<Operation>>)> {
        let name = self.dedup.get(key)?;
        let execution = self.executions.get_mut(name)?;
        execution.clients += 1;
        execution.orphaned_since = None;
        metrics::counter!(names::DEDUPLICATED_TOTAL).increment(1);
        Some((execution.name.clone(), execution.updates.subscribe()))
    }

    /// Queues a new execution with one client, or hands it straight to a
    /// waiting worker.
    pub fn enqueue(
        &mut self,
        new: NewExecution,
        now: Instant,
    ) -> (Arc<str>, watch::Receiver<Arc<Operation>>) {
        let name: Arc<str> = operation::new_name().into();
        let ignored = &self.config.ignored_platform_properties;
        let platform = PlatformKey::new(&new.work.loaded.platform, ignored);
        let queue = QueueKey {
            instance_name: new.work.instance_name.clone(),
            platform: Arc::new(platform),
        };
        self.next_seq += 1;
        let position = Position {
            priority: new.priority,
            invocation: new.invocation,
            seq: self.next_seq,
        };
        let digest = new.work.loaded.digest;
        let (updates, receiver) = watch::channel(Arc::new(operation::build(
            &name,
            &digest,
            Stage::Queued,
            None,
            None,
        )));
        let execution = Execution {
            name: name.clone(),
            dedup: new.dedup.clone(),
            work: Arc::new(new.work),
            queue,
            position,
            attempts: 0,
            given_back: 0,
            phase: Phase::Queued,
            clients: 1,
            orphaned_since: None,
            queued_at: now,
            lost_worker: None,
            updates,
        };
        if let Some(key) = new.dedup {
            self.dedup.insert(key, name.clone());
        }
        self.executions.insert(name.clone(), execution);
        metrics::counter!(names::EXECUTIONS_TOTAL).increment(1);
        self.dispatch(&name, now);
        (name, receiver)
    }

    /// Subscribes to a known operation. In-flight ones count the caller as a
    /// client (the bool says so); finished ones just replay their end.
    pub fn attach(&mut self, name: &str) -> Option<(watch::Receiver<Arc<Operation>>, bool)> {
        if let Some(execution) = self.executions.get_mut(name) {
            execution.clients += 1;
            execution.orphaned_since = None;
            return Some((execution.updates.subscribe(), true));
        }
        let finished = self.finished.get(name)?;
        Some((finished.updates.subscribe(), false))
    }

    /// A client of `name` went away.
    pub fn detach(&mut self, name: &str, now: Instant) {
        if let Some(execution) = self.executions.get_mut(name) {
            execution.clients = execution.clients.saturating_sub(1);
            if execution.clients == 0 {
                execution.orphaned_since = Some(now);
            }
        }
    }

    /// The latest state of a known operation. A poll counts as a client
    /// being there.
    pub fn operation(&mut self, name: &str, now: Instant) -> Option<Arc<Operation>> {
        if let Some(execution) = self.executions.get_mut(name) {
            if execution.orphaned_since.is_some() {
                execution.orphaned_since = Some(now);
            }
            return Some(execution.updates.borrow().clone());
        }
        self.finished.get(name).map(|f| f.updates.borrow().clone())
    }

    /// Every known operation's latest state.
    pub fn operations(&self) -> Vec<Arc<Operation>> {
        let live = self.executions.values().map(|e| &e.updates);
        let done = self.finished.values().map(|f| &f.updates);
        live.chain(done).map(|u| u.borrow().clone()).collect()
    }

    /// Records a finished operation (a cache hit, say) under `name`.
    pub fn record_finished(&mut self, name: Arc<str>, updates: Updates, now: Instant) {
        let expires = now + self.config.completed_retention;
        self.finished
            .insert(name.clone(), Finished { updates, expires });
        self.finished_order.push_back(name);
    }

    /// Hands `name` to a waiting worker that can run it, or queues it.
    pub fn dispatch(&mut self, name: &Arc<str>, now: Instant) {
        let Some(execution) = self.executions.get(name) else {
            return;
        };
        let platform = execution.queue.platform.clone();
        let workers = &self.workers;
        let found = self.waiters.iter().position(|w| {
            workers
                .get(&w.worker)
                .is_some_and(|worker| worker.takes(&platform))
        });
        if let Some(index) = found {
            let waiter = self.waiters.remove(index).expect("index was just found");
            let assignment = self.assign(name, &waiter.worker, now);
            if let Err(undelivered) = waiter.sender.send(assignment) {
                self.unassign(&undelivered.execution_id, now);
            }
            return;
        }
        let execution = &self.executions[name];
        self.queues
            .push(&execution.queue, &execution.position, name.clone());
    }

    /// Ends an in-flight execution with `response` for all its clients.
    pub fn finish(&mut self, name: &str, response: ExecuteResponse, now: Instant) {
        let Some(mut execution) = self.executions.remove(name) else {
            return;
        };
        match &execution.phase {
            Phase::Queued => {
                self.queues.remove(&execution.queue, &execution.position);
            }
            Phase::Executing(assignment) => {
                let elapsed = now.saturating_duration_since(assignment.started);
                metrics::histogram!(names::EXECUTION_DURATION).record(elapsed.as_secs_f64());
                let id = assignment.execution_id.clone();
                self.release(&mut execution, &id);
            }
        }
        if let Some(key) = &execution.dedup
            && self.dedup.get(key).is_some_and(|n| **n == *name)
        {
            self.dedup.remove(key);
        }
        metrics::counter!(names::COMPLETED_TOTAL, "outcome" => outcome(&response)).increment(1);
        let done = operation::build(
            name,
            &execution.work.loaded.digest,
            Stage::Completed,
            None,
            Some(&response),
        );
        execution.updates.send_replace(Arc::new(done));
        self.record_finished(execution.name, execution.updates, now);
    }

    /// Publishes the current stage of an execution to its clients.
    pub fn publish(execution: &Execution, partial: Option<ExecutedActionMetadata>) {
        let stage = match execution.phase {
            Phase::Queued => Stage::Queued,
            Phase::Executing(_) => Stage::Executing,
        };
        let op = operation::build(
            &execution.name,
            &execution.work.loaded.digest,
            stage,
            partial,
            None,
        );
        execution.updates.send_replace(Arc::new(op));
    }

    /// Cancels a known in-flight operation; its worker, if any, is told to
    /// stop at its next heartbeat.
    pub fn cancel(&mut self, name: &str, now: Instant) -> bool {
        if !self.executions.contains_key(name) {
            return false;
        }
        let response =
            operation::failure(Code::Cancelled, format!("operation {name} was cancelled"));
        self.finish(name, response, now);
        true
    }

    /// A fresh id: unique within this scheduler process and across restarts.
    pub fn fresh_id(&mut self, what: &str) -> Arc<str> {
        self.next_id += 1;
        format!("{what}-{}-{}", self.boot, self.next_id).into()
    }
}

/// The outcome label of a finished execution.
fn outcome(response: &ExecuteResponse) -> &'static str {
    if !operation::status_is_ok(response) {
        return "error";
    }
    match &response.result {
        Some(r) if r.exit_code == 0 => "success",
        Some(_) => "nonzero_exit",
        None => "error",
    }
}
