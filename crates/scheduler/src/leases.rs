//! Everything that happens because time passed: lost workers and expired
//! execution leases (retry, then UNAVAILABLE), queued actions whose clients
//! are gone, platforms no worker serves, and finished operations that are
//! old enough to forget. [`State::sweep`] runs all of them; the scheduler
//! calls it periodically.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use crate::metrics as names;
use crate::operation;
use crate::state::{Phase, State};

impl State {
    /// Applies every timeout that has run out by `now`.
    pub fn sweep(&mut self, now: Instant) {
        self.expire_workers(now);
        self.expire_executions(now);
        self.drop_orphans(now);
        self.fail_unserved_platforms(now);
        self.forget_finished(now);
    }

    /// Removes workers silent for longer than the lease; their executions
    /// are lost.
    fn expire_workers(&mut self, now: Instant) {
        let lease = self.config.lease_duration;
        let expired: Vec<Arc<str>> = self
            .workers
            .values()
            .filter(|w| w.active_polls == 0 && now.saturating_duration_since(w.last_seen) > lease)
            .map(|w| w.id.clone())
            .collect();
        for id in expired {
            tracing::warn!(worker = %id, "worker lost: no contact for {lease:?}");
            self.remove_worker(&id, &format!("no contact for {lease:?}"), now);
        }
    }

    /// Removes worker `id`, gone because of `why`; every execution it held
    /// is lost, and its open PollWork calls end empty.
    pub fn remove_worker(&mut self, id: &str, why: &str, now: Instant) {
        let Some(worker) = self.workers.remove(id) else {
            return;
        };
        // A call still open from the worker that is gone must not receive an
        // action meant for a worker registering under its id.
        self.waiters.retain(|w| w.worker != worker.id);
        self.count_workers();
        let mut held: Vec<_> = worker.executions.into_iter().collect();
        held.sort();
        for execution_id in held {
            if let Some(name) = self.assignments.get(&execution_id).cloned() {
                self.lose(&name, &worker.id, why, now);
            }
        }
    }

    /// Takes back executions whose worker has not mentioned them for longer
    /// than the lease (an assignment lost in transit, or a worker that
    /// forgot them).
    fn expire_executions(&mut self, now: Instant) {
        let lease = self.config.lease_duration;
        let expired: Vec<(Arc<str>, Arc<str>)> = self
            .executions
            .values()
            .filter_map(|e| match &e.phase {
                Phase::Executing(a) if now.saturating_duration_since(a.renewed) > lease => {
                    Some((e.name.clone(), a.worker.clone()))
                }
                _ => None,
            })
            .collect();
        for (name, worker) in expired {
            tracing::warn!(operation = %name, %worker, "execution lease ran out");
            let why = format!("no progress reported for {lease:?}");
            self.lose(&name, &worker, &why, now);
        }
    }

    /// An execution's worker is gone (because of `why`): queue it again, or
    /// fail it once it has used up its retries.
    fn lose(&mut self, name: &Arc<str>, worker: &Arc<str>, why: &str, now: Instant) {
        let Some(execution) = self.executions.get_mut(name) else {
            return;
        };
        execution.lost_worker = Some(worker.clone());
        let attempts = execution.attempts;
        if attempts.saturating_sub(execution.given_back) > self.config.max_retries {
            let message = format!(
                "action {} was lost with worker {worker} ({why}); \
                 gave up after {attempts} attempt(s)",
                execution.work.loaded.digest
            );
            self.finish(name, operation::failure(Code::Unavailable, message), now);
            return;
        }
        metrics::counter!(names::RETRIES_TOTAL).increment(1);
        self.requeue(name, now);
    }

    /// Drops queued actions none of whose clients has been there for the
    /// configured time.
    fn drop_orphans(&mut self, now: Instant) {
        let limit = self.config.client_gone_timeout;
        let orphans: Vec<Arc<str>> = self
            .executions
            .values()
            .filter(|e| matches!(e.phase, Phase::Queued))
            .filter(|e| {
                e.orphaned_since
                    .is_some_and(|since| now.saturating_duration_since(since) > limit)
            })
            .map(|e| e.name.clone())
            .collect();
        for name in orphans {
            tracing::info!(operation = %name, "dropping queued action: no client for {limit:?}");
            let message = format!("dropped: no client waited for operation {name} for {limit:?}");
            self.finish(&name, operation::failure(Code::Cancelled, message), now);
        }
    }

    /// Fails the queued actions of platforms no registered worker has
    /// taken for the configured time. A draining worker does not count: it
    /// will never take them.
    fn fail_unserved_platforms(&mut self, now: Instant) {
        let limit = self.config.no_worker_timeout;
        let workers = &self.workers;
        let mut unserved = Vec::new();
        for (key, queue) in self.queues.iter_mut() {
            if workers.values().any(|w| w.takes(&key.platform)) {
                queue.no_worker_since = None;
                continue;
            }
            let since = *queue.no_worker_since.get_or_insert(now);
            if now.saturating_duration_since(since) > limit {
                unserved.push(key.clone());
            }
        }
        for key in unserved {
            let message = format!(
                "no worker with platform {} (instance {:?}) has been registered for {limit:?}",
                key.platform, key.instance_name
            );
            tracing::warn!("{message}");
            for name in self.queues.drain(&key) {
                let response = operation::failure(Code::FailedPrecondition, message.clone());
                self.finish(&name, response, now);
            }
        }
    }

    /// Forgets finished operations past their retention.
    fn forget_finished(&mut self, now: Instant) {
        while let Some(name) = self.finished_order.front() {
            match self.finished.get(name) {
                Some(f) if f.expires > now => break,
                Some(_) => {
                    self.finished.remove(name);
                }
                None => {}
            }
            self.finished_order.pop_front();
        }
    }
}
