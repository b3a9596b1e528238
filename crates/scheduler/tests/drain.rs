//! Workers that stop and workers that come back: Drain, RequeueExecution,
//! and a Register under a known id by a new process. Leases here are far
//! longer than any test, so whatever is retried was retried because of the
//! call under test, not because a lease ran out.

mod common;

use std::time::Duration;

use common::*;
use lazybarn_proto::worker::{PollWorkRequest, WorkAssignment};
use lazybarn_scheduler::SchedulerConfig;
use lazybarn_scheduler::status::WorkerState;
use tonic::Code;

/// Long leases: nothing in these tests may wait for one.
fn patient_config() -> SchedulerConfig {
    SchedulerConfig {
        lease_duration: Duration::from_secs(600),
        ..quick_config()
    }
}

/// How long an immediate retry may take to reach a waiting worker: generous
/// for a loaded machine, far below the lease.
const PROMPTLY: Duration = Duration::from_secs(10);

/// The next assignment of `worker`, which must come well before any lease
/// could have run out.
async fn takes_promptly(worker: &mut TestWorker) -> WorkAssignment {
    tokio::time::timeout(PROMPTLY, worker.take())
        .await
        .unwrap_or_else(|_| panic!("{} got nothing within {PROMPTLY:?}", worker.id))
}

fn state_of(cluster: &Cluster, id: &str) -> WorkerState {
    let status = cluster.scheduler.status();
    status
        .workers
        .iter()
        .find(|w| w.id == id)
        .unwrap_or_else(|| panic!("{id} is not registered: {status:?}"))
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_gets_no_new_work_and_its_open_poll_ends() {
    let config = SchedulerConfig {
        poll_timeout: Duration::from_secs(30),
        ..patient_config()
    };
    let cluster = Cluster::start(config).await;
    let mut leaving = cluster.worker("leaving", &[], 1).await;
    let mut staying = cluster.worker("staying", &[], 1).await;

    // A poll open when the worker drains is answered at once, empty.
    let mut open_poll = leaving.clone_client();
    let poll = tokio::spawn(async move { open_poll.poll().await });
    guard("the poll to open", async {
        while !cluster
            .scheduler
            .status()
            .workers
            .iter()
            .any(|w| w.id == "leaving" && w.polling)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(leaving.drain().await.expect("drain"), Vec::<String>::new());
    let answered = tokio::time::timeout(PROMPTLY, poll)
        .await
        .expect("the open poll ended long before the 30 s poll timeout")
        .expect("poll task");
    assert_eq!(answered, None);
    assert_eq!(state_of(&cluster, "leaving"), WorkerState::Draining);
    assert_eq!(state_of(&cluster, "staying"), WorkerState::Active);
    // Draining again is harmless.
    leaving.drain().await.expect("drain again");

    // Later polls are refused, naming the worker.
    let err = leaving
        .client
        .poll_work(PollWorkRequest {
            worker_id: "leaving".into(),
        })
        .await
        .expect_err("a draining worker may not poll");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("\"leaving\""), "{}", err.message());

    // Work goes to the other worker only, even while nothing else polls.
    let digest = cluster.upload(&ActionSpec::new(&["cc", "a.c"])).await;
    let stream = cluster.execute(digest).await;
    let a = takes_promptly(&mut staying).await;
    assert_eq!(a.action_digest, Some(digest.to_proto()));
    assert!(staying.complete(&a, 0).await);
    let (_, response) = finish(stream).await;
    let metadata = response
        .result
        .expect("result")
        .execution_metadata
        .expect("metadata");
    assert_eq!(metadata.worker, "staying");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_back_execution_is_retried_elsewhere_at_once() {
    // No retries allowed: a hand-back must not count as a failure.
    let config = SchedulerConfig {
        max_retries: 0,
        ..patient_config()
    };
    let cluster = Cluster::start(config).await;
    let digest = cluster.upload(&ActionSpec::new(&["link", "big"])).await;
    let stream = cluster.execute(digest).await;
    let mut leaving = cluster.worker("leaving", &[], 2).await;
    let first_attempt = takes_promptly(&mut leaving).await;
    assert_eq!(first_attempt.attempt, 1);
    let held = leaving.drain().await.expect("drain");
    assert_eq!(held, vec![first_attempt.execution_id.clone()]);

    let mut rescuer = cluster.worker("rescuer", &[], 1).await;
    let mut waiting = rescuer.clone_client();
    let retry = tokio::spawn(async move { takes_promptly(&mut waiting).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    leaving.requeue(&first_attempt).await.expect("given back");
    let retried = retry.await.expect("retry task");
    assert_eq!(retried.action_digest, Some(digest.to_proto()));
    assert_eq!(retried.attempt, 2);
    assert_ne!(retried.execution_id, first_attempt.execution_id);

    // The given-back attempt is no longer the leaving worker's.
    assert_eq!(
        leaving.report(&[&first_attempt]).await,
        vec![first_attempt.execution_id.clone()]
    );
    assert!(!leaving.complete(&first_attempt, 0).await);
    let err = leaving
        .requeue(&first_attempt)
        .await
        .expect_err("given back twice");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&first_attempt.execution_id) && err.message().contains("leaving"),
        "{}",
        err.message()
    );
    // Nor can a worker give back what another one holds.
    let err = leaving
        .requeue(&retried)
        .await
        .expect_err("not the leaving worker's");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&retried.execution_id),
        "{}",
        err.message()
    );

    assert!(rescuer.complete(&retried, 0).await);
    let (_, response) = finish(stream).await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
    let result = response.result.expect("result");
    assert_eq!(
        result.execution_metadata.expect("metadata").worker,
        "rescuer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_requeue_name_what_they_do_not_know() {
    let cluster = Cluster::start(patient_config()).await;
    let mut ghost = cluster.worker("ghost", &[], 1).await;
    ghost.id = "never-registered".into();
    let err = ghost.drain().await.expect_err("unknown worker");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("never-registered"),
        "{}",
        err.message()
    );

    let bogus = WorkAssignment {
        execution_id: "exec-nobody-knows".into(),
        ..Default::default()
    };
    let err = ghost.requeue(&bogus).await.expect_err("unknown worker");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("never-registered"),
        "{}",
        err.message()
    );

    ghost.id = "ghost".into();
    let err = ghost.requeue(&bogus).await.expect_err("unknown execution");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("exec-nobody-knows") && err.message().contains("ghost"),
        "{}",
        err.message()
    );
    let err = ghost
        .requeue(&WorkAssignment::default())
        .await
        .expect_err("empty execution id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("execution_id"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_is_new_and_its_old_executions_are_retried_at_once() {
    let cluster = Cluster::start(patient_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["test", "//a"])).await;
    let stream = cluster.execute(digest).await;
    let mut pod = cluster.worker("pod-0", &[], 1).await;
    pod.register_again(&[], 1, "first-run").await;
    let before = takes_promptly(&mut pod).await;
    assert_eq!(before.attempt, 1);
    pod.drain().await.expect("drain");

    // The same process registering again (a lost connection) keeps its
    // execution and its draining state.
    pod.register_again(&[], 1, "first-run").await;
    assert!(pod.report(&[&before]).await.is_empty(), "still held");
    assert_eq!(state_of(&cluster, "pod-0"), WorkerState::Draining);

    // A new process under the same id: what the old one held goes back to
    // the queue at once, and the new one is an active worker like any other.
    let mut other = cluster.worker("other", &[], 1).await;
    let mut waiting = other.clone_client();
    let retry = tokio::spawn(async move { takes_promptly(&mut waiting).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pod.register_again(&[], 1, "second-run").await;
    let retried = retry.await.expect("retry task");
    assert_eq!(retried.action_digest, Some(digest.to_proto()));
    assert_eq!(retried.attempt, 2);
    assert_eq!(state_of(&cluster, "pod-0"), WorkerState::Active);
    let status = cluster.scheduler.status();
    let pod_status = status
        .workers
        .iter()
        .find(|w| w.id == "pod-0")
        .expect("registered");
    assert!(pod_status.current_executions.is_empty(), "{status:?}");

    // The old process's result is refused; the retry's is used.
    assert!(!pod.complete(&before, 0).await);
    assert!(other.complete(&retried, 0).await);
    let (_, response) = finish(stream).await;
    let result = response.result.expect("result");
    assert_eq!(result.execution_metadata.expect("metadata").worker, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_without_a_session_counts_as_a_restart() {
    let cluster = Cluster::start(patient_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["gen"])).await;
    let stream = cluster.execute(digest).await;
    let mut worker = cluster.worker("legacy", &[], 1).await;
    let first_attempt = takes_promptly(&mut worker).await;
    worker.register_again(&[], 1, "").await;
    let second = takes_promptly(&mut worker).await;
    assert_eq!(second.attempt, 2);
    assert_ne!(second.execution_id, first_attempt.execution_id);
    assert!(worker.complete(&second, 0).await);
    finish(stream).await;
}
