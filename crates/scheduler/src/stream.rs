//! [`OperationStream`]: what Execute and WaitExecution return, the states of
//! one operation until it is done.
//!
//! It follows the operation's `watch` channel, so a slow client sees the
//! latest state rather than every intermediate one, and it repeats the
//! current state every keepalive interval while nothing changes, so idle
//! timeouts in clients and proxies do not cut a long execution. It holds a
//! guard that tells the scheduler when the client has gone away. When the
//! scheduler stops, the stream ends with UNAVAILABLE, which tells clients
//! such as Bazel to retry.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
use lazybarn_proto::longrunning::Operation;
use tokio::sync::watch;
use tonic::Status;

/// The states of one operation, ending with the done one.
pub struct OperationStream {
    inner: BoxStream<'static, Result<Operation, Status>>,
}

/// What the stream holds between two messages.
struct Following<G> {
    updates: watch::Receiver<Arc<Operation>>,
    stopping: watch::Receiver<bool>,
    _guard: G,
    first: bool,
}

/// Why the stream wakes up.
enum Wake {
    Send,
    Dropped,
    Stopping,
}

impl OperationStream {
    /// Follows `updates` until an operation is done or `stopping` turns
    /// true. `guard` is dropped with the stream.
    pub(crate) fn new<G: Send + 'static>(
        updates: watch::Receiver<Arc<Operation>>,
        stopping: watch::Receiver<bool>,
        guard: G,
        keepalive: Duration,
    ) -> Self {
        let state = Some(Following {
            updates,
            stopping,
            _guard: guard,
            first: true,
        });
        let inner = futures::stream::unfold(state, move |state| async move {
            let mut f = state?;
            let wake = if f.first {
                Wake::Send
            } else {
                tokio::select! {
                    changed = f.updates.changed() => match changed {
                        Ok(()) => Wake::Send,
                        Err(_) => Wake::Dropped,
                    },
                    _ = f.stopping.wait_for(|s| *s) => Wake::Stopping,
                    _ = tokio::time::sleep(keepalive) => Wake::Send,
                }
            };
            let name = f.updates.borrow().name.clone();
            match wake {
                Wake::Send => {}
                Wake::Dropped => {
                    let lost = Status::internal(format!("operation {name} was dropped"));
                    return Some((Err(lost), None));
                }
                Wake::Stopping => {
                    let stop = Status::unavailable(format!(
                        "the scheduler is shutting down; call WaitExecution({name}) or \
                         Execute again"
                    ));
                    return Some((Err(stop), None));
                }
            }
            let operation = Operation::clone(&f.updates.borrow_and_update());
            f.first = false;
            let next = (!operation.done).then_some(f);
            Some((Ok(operation), next))
        });
        OperationStream {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for OperationStream {
    type Item = Result<Operation, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
