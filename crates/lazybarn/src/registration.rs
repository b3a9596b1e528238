//! Telling when the in-process worker has registered with the scheduler,
//! so that `lazybarn up` announces itself only once it can run actions.
//!
//! The scheduler counts registered workers in the gauge
//! `lazybarn_scheduler_workers`, and `up` holds the handle of the process's
//! Prometheus recorder, so it reads the count from there rather than asking
//! itself over the network.

use std::time::Duration;

use lazybarn_scheduler::metrics::WORKERS;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::sleep;

/// Pause between looks at the gauge.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Resolves once at least `count` workers are registered.
pub async fn workers_registered(metrics: &PrometheusHandle, count: u64) {
    loop {
        if gauge_value(&metrics.render(), WORKERS).is_some_and(|value| value >= count as f64) {
            return;
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// The value of the unlabelled metric `name` in Prometheus text format.
pub fn gauge_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gauge_and_not_its_namesakes() {
        let text = "# HELP lazybarn_scheduler_workers Registered workers.\n\
                    # TYPE lazybarn_scheduler_workers gauge\n\
                    lazybarn_scheduler_workers_total 7\n\
                    lazybarn_scheduler_workers 2\n";
        assert_eq!(gauge_value(text, WORKERS), Some(2.0));
        assert_eq!(gauge_value("", WORKERS), None);
    }
}
