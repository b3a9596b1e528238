//! [`Scheduler`]: the scheduler as its services see it. This file holds the
//! client side (Execute, WaitExecution, operations); `work.rs` holds the
//! worker side. Both lock the shared [`State`] only for synchronous
//! transitions and do their storage I/O outside the lock.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use lazybarn_cas::service::ActionCacheService;
use lazybarn_cas::{ActionCache, BlobStore, Digest};
use lazybarn_proto::longrunning::Operation;
use lazybarn_proto::reapi::{
    ActionResult, ExecuteRequest, ExecuteResponse, RequestMetadata, digest_function,
    execution_stage::Value as Stage,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::action;
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::metrics as names;
use crate::operation;
use crate::state::{ActionKey, NewExecution, State, WorkTemplate};
use crate::stream::OperationStream;

/// The scheduler: queues, in-flight executions and workers, over a CAS and
/// an Action Cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Scheduler {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) action_cache: Arc<dyn ActionCache>,
    pub(crate) results: ActionCacheService,
    pub(crate) config: Arc<SchedulerConfig>,
    /// Turns true when the scheduler stops: streams and polls end.
    pub(crate) stopping: watch::Sender<bool>,
}

/// Tells the scheduler when a client's stream goes away.
struct ClientGuard {
    inner: Arc<Inner>,
    name: Arc<str>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        lock(&self.inner.state).detach(&self.name, Instant::now());
    }
}

/// Locks the state; a panic elsewhere while holding it leaves it usable.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Scheduler {
    /// A scheduler over `store` and `action_cache`. Must be called inside a
    /// Tokio runtime: it starts the task that applies leases and timeouts,
    /// which ends when the last clone of the scheduler is dropped.
    pub fn new(
        store: Arc<dyn BlobStore>,
        action_cache: Arc<dyn ActionCache>,
        config: SchedulerConfig,
    ) -> Self {
        let config = Arc::new(config);
        names::register();
        // Inline limits do not apply: only first_missing_blob is used.
        let results = ActionCacheService::new(action_cache.clone(), store.clone(), 0);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(config.clone())),
            store,
            action_cache,
            results,
            config,
            stopping: watch::Sender::new(false),
        });
        tokio::spawn(sweep_periodically(Arc::downgrade(&inner)));
        Scheduler { inner }
    }

    /// Ends every open operation stream (with UNAVAILABLE, so clients retry)
    /// and every open PollWork call, so that a graceful server shutdown
    /// does not wait for executions to finish.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// The configuration in force.
    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Starts or joins the execution of an action and follows it.
    pub async fn execute(
        &self,
        request: ExecuteRequest,
        metadata: RequestMetadata,
    ) -> Result<OperationStream> {
        check_digest_function(request.digest_function)?;
        let digest = Digest::from_proto(request.action_digest.as_ref())
            .map_err(|e| SchedulerError::InvalidArgument(format!("action_digest: {e}")))?;
        if !request.skip_cache_lookup
            && let Some(result) = self.cached_result(&digest).await
        {
            return Ok(self.answer_from_cache(digest, result));
        }
        let key = ActionKey {
            instance_name: request.instance_name.as_str().into(),
            digest,
        };
        if let Some(joined) = self.state().join(&key) {
            return Ok(self.follow(joined));
        }
        let loaded = action::load(self.inner.store.as_ref(), digest, &self.inner.config).await?;
        let dedup = (!loaded.action.do_not_cache).then_some(key.clone());
        let new = NewExecution {
            dedup,
            work: WorkTemplate {
                instance_name: key.instance_name.clone(),
                loaded,
                queued_timestamp: std::time::SystemTime::now(),
                request_metadata: metadata.clone(),
            },
            priority: request.execution_policy.map_or(0, |p| p.priority),
            invocation: metadata.tool_invocation_id.as_str().into(),
        };
        let mut state = self.state();
        let joined = new.dedup.as_ref().and_then(|k| state.join(k));
        let followed = joined.unwrap_or_else(|| state.enqueue(new, Instant::now()));
        drop(state);
        Ok(self.follow(followed))
    }

    /// Follows a known operation by name.
    pub fn wait_execution(&self, name: &str) -> Result<OperationStream> {
        let attached = self.state().attach(name);
        let Some((updates, counted)) = attached else {
            return Err(unknown_operation(name));
        };
        let guard = counted.then(|| ClientGuard {
            inner: self.inner.clone(),
            name: name.into(),
        });
        Ok(self.stream(updates, guard))
    }

    /// The latest state of a known operation.
    pub fn get_operation(&self, name: &str) -> Result<Operation> {
        let operation = self.state().operation(name, Instant::now());
        operation
            .map(|op| Operation::clone(&op))
            .ok_or_else(|| unknown_operation(name))
    }

    /// The latest state of every known operation.
    pub fn list_operations(&self) -> Vec<Operation> {
        let operations = self.state().operations();
        operations.iter().map(|op| Operation::clone(op)).collect()
    }

    /// Cancels an in-flight operation: its clients get CANCELLED and its
    /// worker is told to stop.
    pub fn cancel_operation(&self, name: &str) -> Result<()> {
        if self.state().cancel(name, Instant::now()) {
            return Ok(());
        }
        if self.state().finished.contains_key(name) {
            return Ok(());
        }
        Err(unknown_operation(name))
    }

    /// Forgets a finished operation; in-flight ones are left alone.
    pub fn delete_operation(&self, name: &str) -> Result<()> {
        let mut state = self.state();
        if state.finished.remove(name).is_some() || state.executions.contains_key(name) {
            return Ok(());
        }
        Err(unknown_operation(name))
    }

    fn follow(
        &self,
        (name, updates): (Arc<str>, watch::Receiver<Arc<Operation>>),
    ) -> OperationStream {
        let guard = ClientGuard {
            inner: self.inner.clone(),
            name,
        };
        self.stream(updates, guard)
    }

    fn stream<G: Send + 'static>(
        &self,
        updates: watch::Receiver<Arc<Operation>>,
        guard: G,
    ) -> OperationStream {
        let stopping = self.inner.stopping.subscribe();
        OperationStream::new(
            updates,
            stopping,
            guard,
            self.inner.config.keepalive_interval,
        )
    }

    /// A cached result whose blobs are all still in the CAS. Storage errors
    /// count as a miss: the action then simply runs.
    async fn cached_result(&self, digest: &Digest) -> Option<ActionResult> {
        let result = match self.inner.action_cache.get(digest).await {
            Ok(result) => result?,
            Err(e) => {
                tracing::warn!("Action Cache lookup of {digest} failed, executing: {e}");
                return None;
            }
        };
        match self.inner.results.first_missing_blob(&result).await {
            Ok(None) => Some(result),
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!("checking cached result of {digest} failed, executing: {e}");
                None
            }
        }
    }

    fn answer_from_cache(&self, digest: Digest, result: ActionResult) -> OperationStream {
        metrics::counter!(names::CACHE_HITS_TOTAL).increment(1);
        let name: Arc<str> = operation::new_name().into();
        let response = ExecuteResponse {
            result: Some(result),
            cached_result: true,
            ..Default::default()
        };
        let done = operation::build(&name, &digest, Stage::Completed, None, Some(&response));
        let (updates, receiver) = watch::channel(Arc::new(done));
        self.state().record_finished(name, updates, Instant::now());
        self.stream(receiver, ())
    }
}

fn unknown_operation(name: &str) -> SchedulerError {
    SchedulerError::NotFound(format!(
        "operation {name:?} is not known: it never existed, or finished too long ago"
    ))
}

/// Accepts SHA-256, or unset (SHA-256 for 64-character hashes).
fn check_digest_function(value: i32) -> Result<()> {
    match digest_function::Value::try_from(value) {
        Ok(digest_function::Value::Unknown | digest_function::Value::Sha256) => Ok(()),
        _ => Err(SchedulerError::InvalidArgument(format!(
            "digest function {value} is not supported; this scheduler uses SHA256"
        ))),
    }
}

/// Applies leases and timeouts until the scheduler is dropped.
async fn sweep_periodically(inner: Weak<Inner>) {
    let Some(interval) = inner.upgrade().map(|i| i.config.sweep_interval()) else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        lock(&inner.state).sweep(Instant::now());
    }
}
