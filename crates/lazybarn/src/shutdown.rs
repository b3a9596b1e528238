//! SIGINT (Ctrl-C) and SIGTERM as a future, installed before anything starts
//! so that a signal during startup still stops everything cleanly.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::error::LazybarnError;

/// The signals that stop a `lazybarn` process.
#[derive(Debug)]
pub struct ShutdownSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignal {
    /// Takes over SIGINT and SIGTERM. Must be called within a tokio runtime.
    pub fn install() -> Result<Self, LazybarnError> {
        let handler = |kind| {
            signal(kind).map_err(|e| LazybarnError::Startup(format!("handling signals: {e}")))
        };
        Ok(ShutdownSignal {
            interrupt: handler(SignalKind::interrupt())?,
            terminate: handler(SignalKind::terminate())?,
        })
    }

    /// Resolves when SIGINT or SIGTERM arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
