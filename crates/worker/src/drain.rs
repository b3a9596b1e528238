//! How a worker stops: it drains.
//!
//! 1. It takes no new work: slots start no new poll, and the scheduler is
//!    told with `Drain`, which answers the worker's open polls empty and
//!    gives it nothing more. Only then are polls still open cancelled: an
//!    action the scheduler handed to a poll before it knew of the drain
//!    would otherwise be lost until its lease ran out.
//! 2. The actions it runs go on, are reported and completed as usual, until
//!    they are all done, the drain timeout runs out, or the owner asks for
//!    [`Stop::Now`].
//! 3. What still runs then is stopped (the runner kills the command, the
//!    mount goes) and given back with `RequeueExecution`, so another worker
//!    retries it at once instead of after the lease.
//! 4. A last `Drain` asks what the scheduler still counts as this worker's:
//!    an assignment whose poll answer was lost, say. That is given back too.
//!
//! Then [`crate::run`] removes every action directory and returns.

use std::sync::Arc;
use std::time::Duration;

use lazybarn_proto::worker::{DrainRequest, RequeueExecutionRequest};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::Code;

use crate::daemon::{Shared, Stop, reached};

/// How long one Drain or RequeueExecution call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Tries of a Drain or RequeueExecution call that fails in transit.
const CALL_TRIES: usize = 3;

/// Pause between those tries.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How long slots may take to wind down once their actions were stopped:
/// the runner kills a command and the mount goes within this.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

impl Shared {
    /// Drains the worker; returns when nothing of it is left running.
    pub(crate) async fn drain(
        self: &Arc<Self>,
        mut slots: JoinSet<()>,
        mut stop: watch::Receiver<Stop>,
    ) {
        let timeout = self.config.drain_timeout;
        // The drain timeout counts from the signal, not from the scheduler's
        // answer: the supervisor's grace period is counting too.
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(
            worker = %self.worker_id,
            running = self.running_count(),
            "draining: taking no new work; running actions have {timeout:?} to finish"
        );
        self.draining.send_replace(true);
        self.health.set_draining();
        self.announce_drain().await;
        self.polls_closed.send_replace(true);

        let why = tokio::select! {
            biased;
            () = all_ended(&mut slots) => None,
            () = reached(&mut stop, Stop::Now) => {
                Some("the worker was told to stop at once".to_string())
            }
            () = tokio::time::sleep_until(deadline) => {
                Some(format!("the worker's drain timeout of {timeout:?} ran out"))
            }
        };
        if let Some(why) = why {
            self.give_back_running(&why).await;
            if tokio::time::timeout(SETTLE_TIMEOUT, all_ended(&mut slots))
                .await
                .is_err()
            {
                tracing::warn!(
                    "slots still busy {SETTLE_TIMEOUT:?} after their actions were stopped; aborting them"
                );
                slots.abort_all();
                all_ended(&mut slots).await;
            }
            // An action a slot started just as the others were stopped.
            self.give_back_running(&why).await;
        }
        self.give_back_leftovers().await;
    }

    /// How many actions run now.
    fn running_count(&self) -> usize {
        self.running
            .lock()
            .expect("running table lock poisoned")
            .len()
    }

    /// Tells the scheduler the worker is draining; returns the executions it
    /// counts as this worker's, or None when it could not be told.
    async fn announce_drain(&self) -> Option<Vec<String>> {
        for attempt in 1..=CALL_TRIES {
            let mut request = tonic::Request::new(DrainRequest {
                worker_id: self.worker_id.clone(),
            });
            request.set_timeout(CALL_TIMEOUT);
            match self.scheduler.clone().drain(request).await {
                Ok(reply) => return Some(reply.into_inner().held_execution_ids),
                Err(status) if status.code() == Code::NotFound => {
                    tracing::info!(error = %status, "the scheduler does not know this worker; nothing to tell it");
                    return Some(Vec::new());
                }
                Err(status) => {
                    tracing::warn!(attempt, error = %status, "telling the scheduler this worker drains");
                    if attempt < CALL_TRIES {
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                }
            }
        }
        None
    }

    /// Stops every running action and gives it back, because of `why`.
    async fn give_back_running(&self, why: &str) {
        let stopped: Vec<String> = {
            let mut running = self.running.lock().expect("running table lock poisoned");
            running
                .drain()
                .map(|(id, (_, action))| {
                    action.abort();
                    id
                })
                .collect()
        };
        if !stopped.is_empty() {
            tracing::info!(
                actions = stopped.len(),
                "{why}: giving back what still runs"
            );
        }
        futures::future::join_all(stopped.iter().map(|id| self.give_back(id, why))).await;
    }

    /// Gives back what the scheduler still counts as this worker's, now that
    /// nothing runs here any more.
    async fn give_back_leftovers(&self) {
        let Some(held) = self.announce_drain().await else {
            return;
        };
        let why = "the scheduler counted it as this worker's, but it never ran here";
        futures::future::join_all(held.iter().map(|id| self.give_back(id, why))).await;
    }

    /// Gives back one execution; the scheduler queues it again at once.
    async fn give_back(&self, execution_id: &str, why: &str) {
        for attempt in 1..=CALL_TRIES {
            let mut request = tonic::Request::new(RequeueExecutionRequest {
                worker_id: self.worker_id.clone(),
                execution_id: execution_id.to_string(),
                reason: why.to_string(),
            });
            request.set_timeout(CALL_TIMEOUT);
            match self.scheduler.clone().requeue_execution(request).await {
                Ok(_) => {
                    tracing::info!(execution = %execution_id, "given back to the scheduler");
                    return;
                }
                Err(status)
                    if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) =>
                {
                    // Completed, cancelled or lost meanwhile: not ours to give.
                    tracing::info!(execution = %execution_id, error = %status, "nothing to give back");
                    return;
                }
                Err(status) => {
                    tracing::warn!(execution = %execution_id, attempt, error = %status, "giving an execution back");
                    if attempt < CALL_TRIES {
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                }
            }
        }
        tracing::warn!(execution = %execution_id, "could not give it back; the scheduler retries it when its lease runs out");
    }
}

/// Waits for every task of `tasks` to end.
async fn all_ended(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}
