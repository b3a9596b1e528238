//! Queues of actions waiting for a worker: one [`OperationQueue`] per
//! instance name and platform, gathered in [`Queues`].
//!
//! Order inside a queue: lowest `ExecutionPolicy.priority` first; within a
//! priority, the build (tool invocation) that has the fewest actions
//! executing right now, so a small build is not starved by a large one that
//! queued first; within a build, first in, first out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use metrics::Gauge;
use tokio::time::Instant;

use crate::metrics as names;
use crate::platform::{PlatformKey, WorkerPlatform};

/// Which queue an action waits in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueKey {
    /// The REAPI instance name.
    pub instance_name: Arc<str>,
    /// The platform the action asks for.
    pub platform: Arc<PlatformKey>,
}

/// Where an action sits inside its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// ExecutionPolicy.priority: lower runs first.
    pub priority: i32,
    /// The tool invocation (build) that asked first.
    pub invocation: Arc<str>,
    /// Arrival order across the scheduler; kept when an action is requeued.
    pub seq: u64,
}

/// How good a queued action's claim to run next is; the lowest wins:
/// priority, then the executing count of its build, then arrival.
pub type Rank = (i32, usize, u64);

/// The operations of one build at one priority, by arrival.
type Fifo = BTreeMap<u64, Arc<str>>;

/// The actions waiting in one queue, by priority, build and arrival.
#[derive(Default)]
pub struct OperationQueue {
    levels: BTreeMap<i32, HashMap<Arc<str>, Fifo>>,
    len: usize,
}

impl OperationQueue {
    /// Adds the operation `name` at `pos`.
    pub fn push(&mut self, pos: &Position, name: Arc<str>) {
        let builds = self.levels.entry(pos.priority).or_default();
        let fifo = builds.entry(pos.invocation.clone()).or_default();
        if fifo.insert(pos.seq, name).is_none() {
            self.len += 1;
        }
    }

    /// Removes what sits at `pos`, returning its operation name.
    pub fn remove(&mut self, pos: &Position) -> Option<Arc<str>> {
        let builds = self.levels.get_mut(&pos.priority)?;
        let fifo = builds.get_mut(&pos.invocation)?;
        let name = fifo.remove(&pos.seq)?;
        if fifo.is_empty() {
            builds.remove(&pos.invocation);
        }
        if builds.is_empty() {
            self.levels.remove(&pos.priority);
        }
        self.len -= 1;
        Some(name)
    }

    /// The action that should run next and its rank. `executing` tells how
    /// many actions of a build are executing now.
    pub fn best(&self, executing: &dyn Fn(&str) -> usize) -> Option<(Rank, Position)> {
        let (&priority, builds) = self.levels.first_key_value()?;
        builds
            .iter()
            .filter_map(|(invocation, fifo)| {
                let (&seq, _) = fifo.first_key_value()?;
                let rank = (priority, executing(invocation), seq);
                let pos = Position {
                    priority,
                    invocation: invocation.clone(),
                    seq,
                };
                Some((rank, pos))
            })
            .min_by_key(|(rank, _)| *rank)
    }

    /// Removes and returns every waiting operation name.
    pub fn drain(&mut self) -> Vec<Arc<str>> {
        let levels = std::mem::take(&mut self.levels);
        self.len = 0;
        levels
            .into_values()
            .flat_map(|builds| builds.into_values().flat_map(|fifo| fifo.into_values()))
            .collect()
    }

    /// How many actions wait.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One queue with what the scheduler tracks about it.
pub struct PlatformQueue {
    /// The waiting actions.
    pub queue: OperationQueue,
    /// Since when no registered worker satisfies this platform, if so.
    pub no_worker_since: Option<Instant>,
    gauge: Gauge,
}

/// Every non-empty queue, by instance name and platform.
#[derive(Default)]
pub struct Queues {
    queues: HashMap<QueueKey, PlatformQueue>,
}

impl Queues {
    /// Queues `name` at `pos` in the queue of `key`, creating that queue.
    pub fn push(&mut self, key: &QueueKey, pos: &Position, name: Arc<str>) {
        let entry = self.queues.entry(key.clone()).or_insert_with(|| {
            let gauge = metrics::gauge!(
                names::QUEUED_OPERATIONS,
                "instance_name" => key.instance_name.to_string(),
                "platform" => key.platform.to_string(),
            );
            PlatformQueue {
                queue: OperationQueue::default(),
                no_worker_since: None,
                gauge,
            }
        });
        entry.queue.push(pos, name);
        entry.gauge.set(entry.queue.len() as f64);
    }

    /// Takes `pos` out of the queue of `key`; drops the queue once empty.
    pub fn remove(&mut self, key: &QueueKey, pos: &Position) -> Option<Arc<str>> {
        let entry = self.queues.get_mut(key)?;
        let name = entry.queue.remove(pos);
        self.settle(key);
        name
    }

    /// Takes the best action for a worker offering `worker` out of all the
    /// queues it can serve.
    pub fn pop_best(
        &mut self,
        worker: &WorkerPlatform,
        executing: &dyn Fn(&str) -> usize,
    ) -> Option<Arc<str>> {
        let (key, pos) = self
            .queues
            .iter()
            .filter(|(key, _)| worker.satisfies(&key.platform))
            .filter_map(|(key, q)| q.queue.best(executing).map(|(rank, pos)| (rank, key, pos)))
            .min_by_key(|(rank, _, _)| *rank)
            .map(|(_, key, pos)| (key.clone(), pos))?;
        self.remove(&key, &pos)
    }

    /// The queues, for sweeps and the status page.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&QueueKey, &mut PlatformQueue)> {
        self.queues.iter_mut()
    }

    /// Empties the queue of `key`, returning its operation names.
    pub fn drain(&mut self, key: &QueueKey) -> Vec<Arc<str>> {
        let names = match self.queues.get_mut(key) {
            Some(entry) => entry.queue.drain(),
            None => Vec::new(),
        };
        self.settle(key);
        names
    }

    /// Updates the gauge of `key` and forgets the queue if it is empty.
    fn settle(&mut self, key: &QueueKey) {
        if let Some(entry) = self.queues.get(key) {
            entry.gauge.set(entry.queue.len() as f64);
            if entry.queue.is_empty() {
                self.queues.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(priority: i32, invocation: &str, seq: u64) -> Position {
        Position {
            priority,
            invocation: invocation.into(),
            seq,
        }
    }

    fn pop(q: &mut OperationQueue, executing: &dyn Fn(&str) -> usize) -> Option<String> {
        let (_, p) = q.best(executing)?;
        q.remove(&p).map(|n| n.to_string())
    }

    #[test]
    fn lower_priority_value_first_then_fifo() {
        let mut q = OperationQueue::default();
        q.push(&pos(5, "b", 1), "late-low".into());
        q.push(&pos(0, "b", 2), "first-normal".into());
        q.push(&pos(-3, "b", 3), "urgent".into());
        q.push(&pos(0, "b", 4), "second-normal".into());
        let none = |_: &str| 0;
        let order: Vec<_> = std::iter::from_fn(|| pop(&mut q, &none)).collect();
        assert_eq!(
            order,
            ["urgent", "first-normal", "second-normal", "late-low"]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn build_with_fewer_executing_actions_goes_first() {
        let mut q = OperationQueue::default();
        for seq in 0..5 {
            q.push(&pos(0, "big", seq), format!("big-{seq}").into());
        }
        q.push(&pos(0, "small", 10), "small-0".into());
        let executing = |inv: &str| if inv == "big" { 3 } else { 0 };
        assert_eq!(pop(&mut q, &executing).as_deref(), Some("small-0"));
        assert_eq!(pop(&mut q, &executing).as_deref(), Some("big-0"));
    }

    #[test]
    fn remove_from_the_middle_and_drain() {
        let mut q = OperationQueue::default();
        q.push(&pos(0, "a", 1), "one".into());
        q.push(&pos(0, "a", 2), "two".into());
        q.push(&pos(1, "c", 3), "three".into());
        assert_eq!(q.remove(&pos(0, "a", 2)).as_deref(), Some("two"));
        assert_eq!(q.remove(&pos(0, "a", 2)), None);
        assert_eq!(q.len(), 2);
        let mut drained: Vec<_> = q.drain().iter().map(|n| n.to_string()).collect();
        drained.sort();
        assert_eq!(drained, ["one", "three"]);
        assert!(q.is_empty());
    }
}
