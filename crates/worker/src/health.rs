//! [`Health`]: whether a running worker can take work now, for a readiness
//! probe (`lazybarn worker --http` serves it at `/readyz`).
//!
//! A worker is ready when the scheduler has accepted its registration, its
//! runner answered the last CheckReadiness, and it is not draining. Each
//! part is set where the worker learns it, so reading it costs nothing.

use std::sync::atomic::{AtomicBool, Ordering};

/// What the worker last learned of its own readiness.
#[derive(Debug, Default)]
pub struct Health {
    registered: AtomicBool,
    runner_ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Ok when the worker can take work; otherwise why not, in words.
    pub fn readiness(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            reasons.push("draining");
        }
        if !self.registered.load(Ordering::Relaxed) {
            reasons.push("not registered with the scheduler");
        }
        if !self.runner_ready.load(Ordering::Relaxed) {
            reasons.push("the runner is not ready");
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    pub(crate) fn set_registered(&self, registered: bool) {
        self.registered.store(registered, Ordering::Relaxed);
    }

    pub(crate) fn set_runner_ready(&self, ready: bool) {
        self.runner_ready.store(ready, Ordering::Relaxed);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_registered_with_a_ready_runner_and_not_draining() {
        let health = Health::default();
        let why = health.readiness().expect_err("a new worker is not ready");
        assert!(
            why.contains("not registered") && why.contains("runner"),
            "{why}"
        );
        health.set_registered(true);
        health.set_runner_ready(true);
        assert_eq!(health.readiness(), Ok(()));
        health.set_runner_ready(false);
        assert_eq!(
            health.readiness(),
            Err("the runner is not ready".to_string())
        );
        health.set_runner_ready(true);
        health.set_draining();
        assert_eq!(health.readiness(), Err("draining".to_string()));
    }
}
