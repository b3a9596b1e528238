//! The worker side of the state: registration, taking actions, progress,
//! completion, draining, and handing actions back to the queue.
//!
//! An execution held by a worker has its own lease (`Assignment::renewed`),
//! renewed whenever the worker lists it in ReportProgress; `leases.rs` takes
//! back executions whose lease ran out.

use std::sync::Arc;
use std::time::SystemTime;

use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{ExecuteResponse, ExecutedActionMetadata, Platform};
use lazybarn_proto::worker::{ExecutionProgress, ExecutionStage, WorkAssignment};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Result, SchedulerError};
use crate::metrics as names;
use crate::platform::WorkerPlatform;
use crate::state::{Assignment, Execution, Phase, State, Waiter, Worker};

impl State {
    /// Registers a worker. Under a known `id`, the same non-empty `session`
    /// updates it and it keeps its executions (and its draining state);
    /// another session is a restarted process, which has forgotten what the
    /// old one ran, so those executions are queued again at once.
    pub fn register(
        &mut self,
        id: &str,
        platform: &Platform,
        slots: u32,
        session: &str,
        now: Instant,
    ) {
        let offer = WorkerPlatform::new(platform);
        if let Some(worker) = self.workers.get_mut(id) {
            if !session.is_empty() && *worker.session == *session {
                worker.platform = offer;
                worker.slots = slots;
                worker.last_seen = now;
                return;
            }
            tracing::info!(
                worker = %id,
                executions = worker.executions.len(),
                "worker restarted (new session): retrying what it held"
            );
            self.remove_worker(id, "the worker restarted", now);
        }
        let id: Arc<str> = id.into();
        self.workers.insert(
            id.clone(),
            Worker {
                id,
                session: session.into(),
                draining_since: None,
                platform: offer,
                slots,
                executions: Default::default(),
                last_seen: now,
                active_polls: 0,
                registered: SystemTime::now(),
            },
        );
        self.count_workers();
    }

    /// Renews the lease of a registered worker.
    pub fn touch(&mut self, id: &str, now: Instant) -> Result<&mut Worker> {
        let worker = self.workers.get_mut(id).ok_or_else(|| {
            SchedulerError::NotFound(format!(
                "worker {id:?} is not registered (its lease ran out or the scheduler restarted); \
                 call Register again"
            ))
        })?;
        worker.last_seen = now;
        Ok(worker)
    }

    /// A PollWork call of worker `id` starts: its lease holds meanwhile. A
    /// draining worker is refused.
    pub fn begin_poll(&mut self, id: &str, now: Instant) -> Result<()> {
        let worker = self.touch(id, now)?;
        if worker.draining_since.is_some() {
            return Err(SchedulerError::FailedPrecondition(format!(
                "PollWork: worker {id:?} is draining and takes no new work"
            )));
        }
        worker.active_polls += 1;
        Ok(())
    }

    /// A PollWork call of worker `id` ends.
    pub fn end_poll(&mut self, id: &str, now: Instant) {
        if let Some(worker) = self.workers.get_mut(id) {
            worker.active_polls = worker.active_polls.saturating_sub(1);
            worker.last_seen = now;
        }
    }

    /// Takes the best queued action worker `id` can run.
    pub fn take_work(&mut self, id: &str, now: Instant) -> Option<WorkAssignment> {
        let worker = self
            .workers
            .get(id)
            .filter(|w| w.draining_since.is_none())?;
        let worker_id = worker.id.clone();
        let counts = &self.executing_by_build;
        let executing = |build: &str| counts.get(build).copied().unwrap_or(0);
        let name = self.queues.pop_best(&worker.platform, &executing)?;
        Some(self.assign(&name, &worker_id, now))
    }

    /// Parks a PollWork call of worker `id` until an action comes.
    pub fn add_waiter(&mut self, id: &str, sender: oneshot::Sender<WorkAssignment>) -> u64 {
        self.next_id += 1;
        let waiter_id = self.next_id;
        let worker = self
            .workers
            .get(id)
            .map_or_else(|| id.into(), |w| w.id.clone());
        self.waiters.push_back(Waiter {
            id: waiter_id,
            worker,
            sender,
        });
        waiter_id
    }

    /// Withdraws a parked PollWork call; nothing is sent to it afterwards.
    pub fn remove_waiter(&mut self, waiter_id: u64) {
        self.waiters.retain(|w| w.id != waiter_id);
    }

    /// Gives the queued execution `name` (already out of its queue) to
    /// worker `worker_id`.
    pub(crate) fn assign(
        &mut self,
        name: &Arc<str>,
        worker_id: &Arc<str>,
        now: Instant,
    ) -> WorkAssignment {
        let execution_id = self.fresh_id("exec");
        let execution = self
            .executions
            .get_mut(name)
            .expect("only in-flight executions are queued");
        execution.attempts += 1;
        execution.phase = Phase::Executing(Assignment {
            worker: worker_id.clone(),
            execution_id: execution_id.clone(),
            started: now,
            renewed: now,
            stage: ExecutionStage::FetchingInputs,
        });
        let message = work_assignment(execution, &execution_id);
        let partial = ExecutedActionMetadata {
            worker: worker_id.to_string(),
            ..Default::default()
        };
        State::publish(execution, Some(partial));
        let build = execution.position.invocation.clone();
        *self.executing_by_build.entry(build).or_default() += 1;
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.executions.insert(execution_id.clone());
        }
        self.assignments.insert(execution_id, name.clone());
        self.executing_gauge.set(self.assignments.len() as f64);
        message
    }

    /// Undoes the bookkeeping of an assignment (not the execution's phase).
    pub(crate) fn release(&mut self, execution: &mut Execution, execution_id: &Arc<str>) {
        self.assignments.remove(execution_id);
        if let Phase::Executing(a) = &execution.phase
            && let Some(worker) = self.workers.get_mut(&a.worker)
        {
            worker.executions.remove(execution_id);
        }
        let build = &execution.position.invocation;
        if let Some(count) = self.executing_by_build.get_mut(build) {
            *count -= 1;
            if *count == 0 {
                self.executing_by_build.remove(build);
            }
        }
        self.executing_gauge.set(self.assignments.len() as f64);
    }

    /// Puts an executing action back in its queue, at its old place.
    pub fn requeue(&mut self, name: &Arc<str>, now: Instant) {
        let Some(mut execution) = self.executions.remove(name) else {
            return;
        };
        if let Phase::Executing(a) = &execution.phase {
            let id = a.execution_id.clone();
            self.release(&mut execution, &id);
        }
        execution.phase = Phase::Queued;
        State::publish(&execution, None);
        self.executions.insert(name.clone(), execution);
        self.dispatch(name, now);
    }

    /// An assignment that never reached its worker goes back to the queue;
    /// the attempt does not count.
    pub fn unassign(&mut self, execution_id: &str, now: Instant) {
        let Some(name) = self.assignments.get(execution_id).cloned() else {
            return;
        };
        if let Some(execution) = self.executions.get_mut(&name) {
            execution.attempts = execution.attempts.saturating_sub(1);
        }
        self.requeue(&name, now);
    }

    /// Applies a heartbeat: renews the worker and every execution it lists
    /// that it still holds. Returns the listed executions it must stop.
    pub fn report(
        &mut self,
        worker_id: &str,
        progress: &[ExecutionProgress],
        now: Instant,
    ) -> Result<Vec<String>> {
        self.touch(worker_id, now)?;
        let mut cancelled = Vec::new();
        for p in progress {
            let held = self
                .assignments
                .get(p.execution_id.as_str())
                .and_then(|name| self.executions.get_mut(name))
                .filter(|e| held_by(e, worker_id, &p.execution_id));
            let Some(execution) = held else {
                cancelled.push(p.execution_id.clone());
                continue;
            };
            let stage = match p.stage() {
                ExecutionStage::Unspecified => ExecutionStage::FetchingInputs,
                s => s,
            };
            if let Phase::Executing(a) = &mut execution.phase {
                a.renewed = now;
                if a.stage != stage {
                    a.stage = stage;
                    State::publish(execution, p.partial_execution_metadata.clone());
                }
            }
        }
        Ok(cancelled)
    }

    /// Marks worker `id` as draining (again): its open PollWork calls end
    /// empty and it gets no more work. Returns the execution ids it holds,
    /// sorted.
    pub fn drain(&mut self, id: &str, now: Instant) -> Result<Vec<String>> {
        let worker = self.workers.get_mut(id).ok_or_else(|| {
            SchedulerError::NotFound(format!("Drain: worker {id:?} is not registered"))
        })?;
        worker.last_seen = now;
        if worker.draining_since.is_none() {
            worker.draining_since = Some(now);
            tracing::info!(worker = %id, executions = worker.executions.len(), "worker draining");
        }
        let mut held: Vec<String> = worker.executions.iter().map(|e| e.to_string()).collect();
        held.sort();
        // Dropping a waiter's sender answers its PollWork call with nothing.
        self.waiters.retain(|w| &*w.worker != id);
        self.count_workers();
        Ok(held)
    }

    /// Worker `worker_id` gives back `execution_id` unfinished: it is queued
    /// again at once, at its old place, without counting as a failure.
    pub fn give_back(
        &mut self,
        worker_id: &str,
        execution_id: &str,
        reason: &str,
        now: Instant,
    ) -> Result<()> {
        let worker = self.workers.get_mut(worker_id).ok_or_else(|| {
            SchedulerError::NotFound(format!(
                "RequeueExecution: worker {worker_id:?} is not registered"
            ))
        })?;
        worker.last_seen = now;
        if self.completion_target(worker_id, execution_id).is_none() {
            return Err(SchedulerError::FailedPrecondition(format!(
                "RequeueExecution: worker {worker_id:?} does not hold execution {execution_id:?} \
                 (it was completed, cancelled, given back already, or taken back after a lost \
                 lease)"
            )));
        }
        let name = self.assignments[execution_id].clone();
        if let Some(execution) = self.executions.get_mut(&name) {
            execution.given_back += 1;
        }
        tracing::info!(worker = %worker_id, execution = %execution_id, operation = %name, reason, "execution given back; queued again");
        metrics::counter!(names::REQUEUED_TOTAL).increment(1);
        self.requeue(&name, now);
        Ok(())
    }

    /// The action digest of `execution_id` and whether its result may be
    /// cached, if worker `worker_id` holds it.
    pub fn completion_target(&self, worker_id: &str, execution_id: &str) -> Option<(Digest, bool)> {
        let name = self.assignments.get(execution_id)?;
        let execution = self.executions.get(name)?;
        if !held_by(execution, worker_id, execution_id) {
            return None;
        }
        let cacheable = !execution.work.loaded.action.do_not_cache;
        Some((execution.work.loaded.digest, cacheable))
    }

    /// Finishes `execution_id` with the worker's response, if the worker
    /// still holds it. Returns whether it did.
    pub fn complete(
        &mut self,
        worker_id: &str,
        execution_id: &str,
        mut response: ExecuteResponse,
        now: Instant,
    ) -> bool {
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.last_seen = now;
        }
        if self.completion_target(worker_id, execution_id).is_none() {
            return false;
        }
        let name = self.assignments[execution_id].clone();
        response.cached_result = false;
        if let Some(metadata) = response
            .result
            .as_mut()
            .map(|r| r.execution_metadata.get_or_insert_default())
            && metadata.worker.is_empty()
        {
            metadata.worker = worker_id.to_string();
        }
        self.finish(&name, response, now);
        true
    }
}

/// Whether `execution` is held by `worker_id` under `execution_id`.
fn held_by(execution: &Execution, worker_id: &str, execution_id: &str) -> bool {
    matches!(&execution.phase, Phase::Executing(a)
        if &*a.worker == worker_id && &*a.execution_id == execution_id)
}

/// The message a worker gets for `execution`.
fn work_assignment(execution: &Execution, execution_id: &str) -> WorkAssignment {
    let work = &execution.work;
    WorkAssignment {
        execution_id: execution_id.to_string(),
        instance_name: work.instance_name.to_string(),
        action_digest: Some(work.loaded.digest.to_proto()),
        action: Some(work.loaded.action.clone()),
        command: Some(work.loaded.command.clone()),
        timeout: prost_types::Duration::try_from(work.loaded.timeout).ok(),
        queued_timestamp: Some(work.queued_timestamp.into()),
        attempt: execution.attempts,
        platform: Some(work.loaded.platform.clone()),
        request_metadata: Some(work.request_metadata.clone()),
    }
}
