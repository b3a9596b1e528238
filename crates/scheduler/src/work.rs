//! The worker side of [`Scheduler`]: Register, PollWork (a long poll that
//! takes an action straight from the queue or waits for one),
//! ReportProgress, CompleteExecution, and Drain and RequeueExecution for
//! workers that stop.

use std::sync::Arc;

use lazybarn_proto::worker::{
    CompleteExecutionRequest, DrainRequest, PollWorkRequest, RegisterRequest, RegisterResponse,
    ReportProgressRequest, RequeueExecutionRequest, WorkAssignment,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Result, SchedulerError};
use crate::operation;
use crate::scheduler::{Inner, Scheduler, lock};

/// An open PollWork call. Dropping it (the call ended or the worker went
/// away) withdraws it, and an action that reached it but not the worker goes
/// back to the queue.
struct PendingPoll {
    inner: Arc<Inner>,
    worker_id: String,
    waiter_id: u64,
    receiver: oneshot::Receiver<WorkAssignment>,
    delivered: bool,
}

impl PendingPoll {
    async fn wait(&mut self) -> Option<WorkAssignment> {
        let timeout = tokio::time::sleep(self.inner.config.poll_timeout);
        let mut stopping = self.inner.stopping.subscribe();
        tokio::select! {
            received = &mut self.receiver => if let Ok(assignment) = received {
                self.delivered = true;
                return Some(assignment);
            },
            _ = stopping.wait_for(|s| *s) => {}
            () = timeout => {}
        }
        // Withdraw under the lock, then take anything sent just before.
        lock(&self.inner.state).remove_waiter(self.waiter_id);
        let late = self.receiver.try_recv().ok();
        self.delivered = late.is_some();
        late
    }
}

impl Drop for PendingPoll {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        state.remove_waiter(self.waiter_id);
        state.end_poll(&self.worker_id, now);
        if !self.delivered
            && let Ok(undelivered) = self.receiver.try_recv()
        {
            state.unassign(&undelivered.execution_id, now);
        }
    }
}

impl Scheduler {
    /// Registers (or re-registers) a worker.
    pub fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse> {
        if request.worker_id.is_empty() {
            return Err(SchedulerError::InvalidArgument(
                "Register: worker_id is empty".to_string(),
            ));
        }
        if request.slots == 0 {
            return Err(SchedulerError::InvalidArgument(format!(
                "Register: worker {:?} offers 0 slots",
                request.worker_id
            )));
        }
        let platform = request.platform.clone().unwrap_or_default();
        self.state().register(
            &request.worker_id,
            &platform,
            request.slots,
            &request.session_id,
            Instant::now(),
        );
        tracing::info!(worker = %request.worker_id, slots = request.slots, "worker registered");
        let config = self.config();
        let duration = |d| prost_types::Duration::try_from(d).ok();
        Ok(RegisterResponse {
            lease_duration: duration(config.lease_duration),
            heartbeat_interval: duration(config.heartbeat_interval()),
            poll_timeout: duration(config.poll_timeout),
        })
    }

    /// Takes one action for the worker, waiting up to the poll timeout.
    pub async fn poll_work(&self, request: &PollWorkRequest) -> Result<Option<WorkAssignment>> {
        let worker_id = request.worker_id.as_str();
        let (sender, receiver) = oneshot::channel();
        let waiter_id = {
            let now = Instant::now();
            let mut state = self.state();
            state.begin_poll(worker_id, now)?;
            if let Some(assignment) = state.take_work(worker_id, now) {
                state.end_poll(worker_id, now);
                return Ok(Some(assignment));
            }
            state.add_waiter(worker_id, sender)
        };
        let mut pending = PendingPoll {
            inner: self.inner.clone(),
            worker_id: worker_id.to_string(),
            waiter_id,
            receiver,
            delivered: false,
        };
        Ok(pending.wait().await)
    }

    /// Applies a worker's heartbeat; returns the executions it must stop.
    pub fn report_progress(&self, request: &ReportProgressRequest) -> Result<Vec<String>> {
        self.state()
            .report(&request.worker_id, &request.executions, Instant::now())
    }

    /// Marks a worker as draining; returns the executions it holds.
    pub fn drain(&self, request: &DrainRequest) -> Result<Vec<String>> {
        if request.worker_id.is_empty() {
            return Err(SchedulerError::InvalidArgument(
                "Drain: worker_id is empty".to_string(),
            ));
        }
        self.state().drain(&request.worker_id, Instant::now())
    }

    /// Takes back an execution a worker will not finish and queues it again
    /// at once.
    pub fn requeue_execution(&self, request: &RequeueExecutionRequest) -> Result<()> {
        for (field, value) in [
            ("worker_id", &request.worker_id),
            ("execution_id", &request.execution_id),
        ] {
            if value.is_empty() {
                return Err(SchedulerError::InvalidArgument(format!(
                    "RequeueExecution: {field} is empty"
                )));
            }
        }
        self.state().give_back(
            &request.worker_id,
            &request.execution_id,
            &request.reason,
            Instant::now(),
        )
    }

    /// Takes a worker's result: stores it in the Action Cache when it is
    /// cacheable, then answers every client. Returns whether it was used.
    pub async fn complete_execution(&self, request: CompleteExecutionRequest) -> Result<bool> {
        let CompleteExecutionRequest {
            worker_id,
            execution_id,
            response,
        } = request;
        let response = response.ok_or_else(|| {
            SchedulerError::InvalidArgument(format!(
                "CompleteExecution of {execution_id} carries no response"
            ))
        })?;
        let target = self.state().completion_target(&worker_id, &execution_id);
        let Some((digest, cacheable)) = target else {
            tracing::info!(worker = %worker_id, %execution_id, "discarding result of an execution the worker no longer holds");
            return Ok(false);
        };
        let successful = operation::status_is_ok(&response)
            && response.result.as_ref().is_some_and(|r| r.exit_code == 0);
        if cacheable
            && successful
            && let Some(result) = &response.result
            && let Err(e) = self.inner.action_cache.put(&digest, result).await
        {
            tracing::warn!("storing the result of action {digest} in the Action Cache: {e}");
        }
        let accepted = self
            .state()
            .complete(&worker_id, &execution_id, response, Instant::now());
        Ok(accepted)
    }
}
