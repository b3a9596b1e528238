//! The scheduler's Prometheus metrics: their names, descriptions, and the
//! recorder that renders them at `/metrics`.
//!
//! Metrics go through the `metrics` facade, so a process that runs several
//! Lazybarn components (`lazybarn up`) installs one recorder with
//! [`install_prometheus`] and every component's metrics appear together.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge, by instance name and platform: actions waiting for a worker.
pub const QUEUED_OPERATIONS: &str = "lazybarn_scheduler_queued_operations";
/// Gauge: actions a worker is running.
pub const EXECUTING_OPERATIONS: &str = "lazybarn_scheduler_executing_operations";
/// Counter: actions queued for execution (cache misses that joined nothing).
pub const EXECUTIONS_TOTAL: &str = "lazybarn_scheduler_executions_total";
/// Counter: Execute calls that joined an identical in-flight action.
pub const DEDUPLICATED_TOTAL: &str = "lazybarn_scheduler_deduplicated_total";
/// Counter: Execute calls answered from the Action Cache.
pub const CACHE_HITS_TOTAL: &str = "lazybarn_scheduler_cache_hits_total";
/// Counter: actions queued again after their worker was lost.
pub const RETRIES_TOTAL: &str = "lazybarn_scheduler_retries_total";
/// Gauge: registered workers.
pub const WORKERS: &str = "lazybarn_scheduler_workers";
/// Gauge, by state (`active`, `draining`): registered workers.
pub const WORKERS_BY_STATE: &str = "lazybarn_scheduler_workers_by_state";
/// Counter: executions a worker gave back unfinished (it was stopping),
/// queued again at once.
pub const REQUEUED_TOTAL: &str = "lazybarn_scheduler_requeued_total";
/// Counter, by outcome: executions finished.
pub const COMPLETED_TOTAL: &str = "lazybarn_scheduler_completed_total";
/// Histogram: seconds from a worker taking an action to its result.
pub const EXECUTION_DURATION: &str = "lazybarn_scheduler_execution_duration_seconds";

/// Histogram buckets for execution durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Registers the descriptions of the scheduler's metrics with the installed
/// recorder.
pub fn describe() {
    describe_gauge!(QUEUED_OPERATIONS, "Actions waiting for a worker.");
    describe_gauge!(EXECUTING_OPERATIONS, "Actions a worker is running.");
    describe_counter!(EXECUTIONS_TOTAL, "Actions queued for execution.");
    describe_counter!(
        DEDUPLICATED_TOTAL,
        "Execute calls that joined an identical in-flight action."
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        "Execute calls answered from the Action Cache."
    );
    describe_counter!(
        RETRIES_TOTAL,
        "Actions queued again after their worker was lost."
    );
    describe_gauge!(WORKERS, "Registered workers.");
    describe_gauge!(
        WORKERS_BY_STATE,
        "Registered workers, by state: active (taking work) or draining (stopping)."
    );
    describe_counter!(
        REQUEUED_TOTAL,
        "Executions a stopping worker gave back unfinished, queued again at once."
    );
    describe_counter!(COMPLETED_TOTAL, "Executions finished, by outcome.");
    describe_histogram!(
        EXECUTION_DURATION,
        Unit::Seconds,
        "Time from a worker taking an action to its result."
    );
}

/// Creates every counter and gauge at zero, so that `/metrics` lists them
/// before anything happens and rates start from a known value.
pub fn register() {
    for counter in [
        EXECUTIONS_TOTAL,
        DEDUPLICATED_TOTAL,
        CACHE_HITS_TOTAL,
        RETRIES_TOTAL,
        REQUEUED_TOTAL,
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!(EXECUTING_OPERATIONS).set(0.0);
    metrics::gauge!(WORKERS).set(0.0);
    for state in ["active", "draining"] {
        metrics::gauge!(WORKERS_BY_STATE, "state" => state).set(0.0);
    }
}

/// A Prometheus recorder with the scheduler's histogram buckets, installed
/// as the process's global recorder; its handle renders `/metrics`.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(EXECUTION_DURATION.to_string()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}
