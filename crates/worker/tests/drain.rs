//! A worker told to stop while an action runs (what SIGTERM does to
//! `lazybarn worker`): it takes no new work, lets the action finish within
//! its drain timeout or gives it back to the scheduler, and leaves no mount
//! behind. The scheduler's lease is far longer than these tests, so an
//! action queued again was given back, not lost.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use lazybarn_proto::reapi::{ActionResult, ExecuteResponse};
use lazybarn_proto::worker::scheduler_client::SchedulerClient;
use lazybarn_proto::worker::{
    CompleteExecutionRequest, PollWorkRequest, RegisterRequest, WorkAssignment,
};
use lazybarn_scheduler::status::WorkerState;
use lazybarn_worker::{BuildMode, Stop};

/// Far longer than any of these tests.
const LEASE: Duration = Duration::from_secs(300);

/// A farm in virtual mode whose worker drains for `drain_timeout`, and a
/// directory every uid may write marks into.
async fn farm(drain_timeout: Duration) -> (Farm, PathBuf) {
    let farm = Farm::start_with(FarmOptions {
        mode: BuildMode::Virtual,
        drain_timeout,
        lease: LEASE,
        ..FarmOptions::new(BuildMode::Virtual)
    })
    .await;
    let marks = farm.dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks directory");
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    (farm, marks)
}

/// Waits until `path` exists.
async fn appears(path: &Path) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never appeared", path.display()));
}

/// Waits until the scheduler shows the farm's worker as draining.
async fn shown_draining(farm: &Farm) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let status = farm.scheduler.status();
            if status
                .workers
                .iter()
                .any(|w| w.id == farm.worker_id && w.state == WorkerState::Draining)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the scheduler shows the worker as draining");
}

/// Checks that the worker left neither a mount nor a directory behind.
fn left_nothing(farm: &Farm) {
    let build_dir = farm.build_dir();
    assert!(no_mounts_under(&build_dir), "no mount left behind");
    assert_eq!(entries_in(&build_dir), 0, "every action directory removed");
}

/// Another worker, speaking the protocol by hand, takes the next action and
/// completes it with exit code 0.
async fn rescue(farm: &Farm) -> WorkAssignment {
    let mut client = SchedulerClient::new(farm.channel.clone());
    client
        .register(RegisterRequest {
            worker_id: "rescuer".into(),
            platform: None,
            slots: 1,
            session_id: "rescuer-session".into(),
        })
        .await
        .expect("register");
    let assignment = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let request = PollWorkRequest {
                worker_id: "rescuer".into(),
            };
            let reply = client.poll_work(request).await.expect("PollWork");
            if let Some(assignment) = reply.into_inner().assignment {
                return assignment;
            }
        }
    })
    .await
    .expect("the given-back action is there to take, long before any lease ran out");
    let response = ExecuteResponse {
        result: Some(ActionResult::default()),
        ..Default::default()
    };
    let accepted = client
        .complete_execution(CompleteExecutionRequest {
            worker_id: "rescuer".into(),
            execution_id: assignment.execution_id.clone(),
            response: Some(response),
        })
        .await
        .expect("CompleteExecution")
        .into_inner()
        .accepted;
    assert!(accepted);
    assignment
}

/// Asserts that the one in-flight action is queued again after its first
/// attempt, held by nobody.
fn queued_again(farm: &Farm) {
    let status = farm.scheduler.status();
    assert!(status.executing.is_empty(), "{status:?}");
    assert_eq!(status.queued.len(), 1, "{status:?}");
    assert_eq!(status.queued[0].attempts, 1, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_outlasts_a_short_drain_is_given_back_and_nothing_is_left_mounted() {
    let (mut farm, marks) = farm(Duration::from_secs(1)).await;
    let (root, _) = input_root(&farm).await;
    let script = format!(
        "touch {0}/started; sleep 60; touch {0}/finished",
        marks.display()
    );
    let stream = farm.start_execute(root, &script, &[], 120).await;
    appears(&marks.join("started")).await;
    assert!(
        !no_mounts_under(&farm.build_dir()),
        "the action runs inside its mount"
    );

    let told = Instant::now();
    farm.tell_worker(Stop::Drain);
    farm.worker_stopped().await;
    let took = told.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the worker waited {took:?}, not its drain timeout of 1s"
    );
    left_nothing(&farm);
    queued_again(&farm);
    assert!(!marks.join("finished").exists(), "the command was stopped");

    let retried = rescue(&farm).await;
    assert_eq!(retried.attempt, 2);
    let response = finish(stream).await;
    let metadata = response
        .result
        .expect("result")
        .execution_metadata
        .expect("metadata");
    assert_eq!(metadata.worker, "rescuer");
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_cuts_a_long_drain_short() {
    let (mut farm, marks) = farm(Duration::from_secs(120)).await;
    let (root, _) = input_root(&farm).await;
    let script = format!("touch {}/started; sleep 60", marks.display());
    let stream = farm.start_execute(root, &script, &[], 120).await;
    appears(&marks.join("started")).await;

    farm.tell_worker(Stop::Drain);
    shown_draining(&farm).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        farm.worker.as_ref().is_some_and(|w| !w.is_finished()),
        "the worker waits for its action"
    );
    let told = Instant::now();
    farm.tell_worker(Stop::Now);
    farm.worker_stopped().await;
    assert!(told.elapsed() < Duration::from_secs(30));
    left_nothing(&farm);
    queued_again(&farm);

    assert_eq!(rescue(&farm).await.attempt, 2);
    finish(stream).await;
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_drain_timeout_the_running_action_completes_and_no_new_one_starts() {
    let (mut farm, marks) = farm(Duration::from_secs(120)).await;
    let (root, _) = input_root(&farm).await;
    let script = format!(
        "touch {}/started; sleep 3; cat in/a.txt > out/result",
        marks.display()
    );
    let running = farm
        .start_execute(root, &script, &["out/result"], 120)
        .await;
    appears(&marks.join("started")).await;

    farm.tell_worker(Stop::Drain);
    shown_draining(&farm).await;
    // The worker has a free slot, but a draining worker takes nothing new.
    let waiting = farm.start_execute(root, "true", &[], 120).await;

    let response = finish(running).await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
    let result = response.result.expect("result");
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files.len(), 1, "{result:?}");
    assert_eq!(
        farm.blob(&result.output_files[0].digest).await,
        "input contents\n"
    );
    let worker = result.execution_metadata.expect("metadata").worker;
    assert_eq!(worker, farm.worker_id);

    farm.worker_stopped().await;
    left_nothing(&farm);
    let status = farm.scheduler.status();
    assert!(status.executing.is_empty(), "{status:?}");
    assert_eq!(status.queued.len(), 1, "{status:?}");
    assert_eq!(status.queued[0].attempts, 0, "never taken: {status:?}");
    drop(waiting);
    farm.stop().await;
}
