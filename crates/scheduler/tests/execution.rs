//! Execute through the real gRPC services: deduplication, the Action Cache,
//! missing inputs, WaitExecution and GetOperation.

mod common;

use common::*;
use lazybarn_cas::Digest;
use lazybarn_proto::longrunning::GetOperationRequest;
use lazybarn_proto::reapi::{ActionResult, WaitExecutionRequest, execution_stage::Value as Stage};
use lazybarn_proto::rpc::{self, PreconditionFailure};
use lazybarn_scheduler::SchedulerConfig;
use prost::Message;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_identical_executes_share_one_execution() {
    let cluster = Cluster::start(quick_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["cc", "-c", "a.c"])).await;
    // All ten at once, so several load the action concurrently.
    let streams = futures::future::join_all((0..10).map(|_| async {
        let mut stream = cluster.execute(digest).await;
        let op = first(&mut stream).await;
        assert_eq!(stage(&op), Stage::Queued as i32);
        (op.name, stream)
    }))
    .await;
    let name = streams[0].0.clone();
    assert!(
        streams.iter().all(|(n, _)| *n == name),
        "all share one operation"
    );

    let mut worker = cluster.worker("w1", &[], 1).await;
    let assignment = worker.take().await;
    assert_eq!(assignment.action_digest, Some(digest.to_proto()));
    assert_eq!(assignment.attempt, 1);
    assert_eq!(
        assignment.command.as_ref().map(|c| c.arguments.clone()),
        Some(vec!["cc".to_string(), "-c".into(), "a.c".into()])
    );
    assert_eq!(
        worker.poll().await,
        None,
        "only one execution for ten clients"
    );
    assert!(worker.complete(&assignment, 0).await);

    let mut first_stream_stages = None;
    for (_, stream) in streams {
        let (ops, response) = finish(stream).await;
        assert_eq!(response.result.expect("result").exit_code, 0);
        assert!(!response.cached_result);
        first_stream_stages.get_or_insert_with(|| ops.iter().map(stage).collect::<Vec<_>>());
    }
    let stages = first_stream_stages.expect("ten streams");
    assert_eq!(stages.last(), Some(&(Stage::Completed as i32)));
    let status = cluster.scheduler.status();
    assert!(status.queued.is_empty() && status.executing.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_go_queued_executing_completed() {
    let cluster = Cluster::start(quick_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["true"])).await;
    let mut stream = cluster.execute(digest).await;
    assert_eq!(stage(&first(&mut stream).await), Stage::Queued as i32);
    let mut worker = cluster.worker("w1", &[], 1).await;
    let assignment = worker.take().await;
    // Keepalives may repeat QUEUED before the change arrives.
    let mut next = first(&mut stream).await;
    while stage(&next) == Stage::Queued as i32 {
        next = first(&mut stream).await;
    }
    assert_eq!(stage(&next), Stage::Executing as i32);
    worker.complete(&assignment, 0).await;
    let (ops, _) = finish(stream).await;
    assert_eq!(stage(ops.last().expect("done")), Stage::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_results_answer_at_once() {
    let cluster = Cluster::start(quick_config()).await;
    let _worker = NoopWorker::start(cluster.channel(), "w1", &[], 2).await;
    let digest = cluster.upload(&ActionSpec::new(&["echo", "hi"])).await;
    let (_, response) = finish(cluster.execute(digest).await).await;
    assert!(!response.cached_result);

    let mut stream = cluster.execute(digest).await;
    let op = first(&mut stream).await;
    assert!(op.done, "a cache hit is answered in the first message");
    let response = lazybarn_scheduler::operation::response_of(&op).expect("response");
    assert!(response.cached_result);
    assert_eq!(response.result.expect("result").exit_code, 0);

    let skip = ExecuteOptions {
        skip_cache_lookup: true,
        ..Default::default()
    };
    let stream = cluster.execute_with(digest, skip).await.expect("execute");
    let (_, response) = finish(stream).await;
    assert!(!response.cached_result, "skip_cache_lookup executes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_result_with_evicted_blobs_is_not_used() {
    let cluster = Cluster::start(quick_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["gen"])).await;
    let gone = Digest::of(b"stdout that was evicted");
    let stale = ActionResult {
        stdout_digest: Some(gone.to_proto()),
        ..Default::default()
    };
    cluster
        .storage
        .action_cache
        .put(&digest, &stale)
        .await
        .expect("put");
    let mut stream = cluster.execute(digest).await;
    let op = first(&mut stream).await;
    assert!(!op.done, "the stale entry must not be served");
    assert_eq!(stage(&op), Stage::Queued as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_do_not_cache_results_are_not_cached() {
    let cluster = Cluster::start(quick_config()).await;
    let mut worker = cluster.worker("w1", &[], 1).await;

    let failing = cluster.upload(&ActionSpec::new(&["false"])).await;
    let stream = cluster.execute(failing).await;
    let a = worker.take().await;
    worker.complete(&a, 1).await;
    let (_, response) = finish(stream).await;
    assert_eq!(response.result.expect("result").exit_code, 1);
    let again = cluster.execute(failing).await;
    let a = worker.take().await;
    assert_eq!(
        a.action_digest,
        Some(failing.to_proto()),
        "exit 1 was not cached"
    );
    worker.complete(&a, 0).await;
    finish(again).await;

    let volatile = cluster
        .upload(&ActionSpec::new(&["date"]).do_not_cache())
        .await;
    let s1 = cluster.execute(volatile).await;
    let s2 = cluster.execute(volatile).await;
    let a1 = worker.take().await;
    let a2 = worker.take().await;
    assert_ne!(
        a1.execution_id, a2.execution_id,
        "do_not_cache is not deduplicated"
    );
    worker.complete(&a1, 0).await;
    worker.complete(&a2, 0).await;
    finish(s1).await;
    finish(s2).await;
    let cached = cluster
        .storage
        .action_cache
        .get(&volatile)
        .await
        .expect("get");
    assert!(
        cached.is_none(),
        "do_not_cache results stay out of the Action Cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inputs_are_listed_as_precondition_failures() {
    let cluster = Cluster::start(quick_config()).await;
    let unknown = Digest::of(b"an action nobody uploaded");
    let err = cluster
        .execute_with(unknown, ExecuteOptions::default())
        .await
        .expect_err("missing action");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        violations(&err),
        vec![format!("blobs/{}/{}", unknown.hash_hex(), unknown.size())]
    );

    // The Action is there, its Command and input root are not.
    let command = Digest::of(b"not uploaded command");
    let root = Digest::of(b"not uploaded root");
    let action = lazybarn_proto::reapi::Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let digest = cluster.put(action.encode_to_vec()).await;
    let err = cluster
        .execute_with(digest, ExecuteOptions::default())
        .await
        .expect_err("missing command and root");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let expected: Vec<String> = [command, root]
        .iter()
        .map(|d| format!("blobs/{}/{}", d.hash_hex(), d.size()))
        .collect();
    assert_eq!(violations(&err), expected);
    assert!(
        err.message().contains(&command.to_string()),
        "{}",
        err.message()
    );
}

fn violations(status: &tonic::Status) -> Vec<String> {
    let details = rpc::Status::decode(status.details()).expect("rpc.Status details");
    let any = details.details.first().expect("one detail");
    assert!(
        any.type_url.ends_with("google.rpc.PreconditionFailure"),
        "{}",
        any.type_url
    );
    let failure = PreconditionFailure::decode(any.value.as_slice()).expect("PreconditionFailure");
    failure
        .violations
        .iter()
        .map(|v| {
            assert_eq!(v.r#type, "MISSING");
            v.subject.clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_arguments() {
    let cluster = Cluster::start(quick_config()).await;
    let not_an_action = cluster.put(b"\xff\xff garbage".to_vec()).await;
    let err = cluster
        .execute_with(not_an_action, ExecuteOptions::default())
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut spec = ActionSpec::new(&["sleep", "1000000"]);
    spec.timeout_seconds = Some(100 * 3600);
    let too_long = cluster.upload(&spec).await;
    let err = cluster
        .execute_with(too_long, ExecuteOptions::default())
        .await
        .expect_err("timeout above max");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("maximum"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_and_commands_over_max_message_bytes_are_refused_unread() {
    let config = SchedulerConfig {
        max_message_bytes: 1000,
        ..quick_config()
    };
    let cluster = Cluster::start(config).await;
    let long = "x".repeat(2000);
    let big_command = cluster.upload(&ActionSpec::new(&["echo", &long])).await;
    // A digest naming a huge blob that is not even there: refused by its
    // size, without a read and without a missing-blob answer.
    let huge = Digest::parse(&format!("{}/{}", "ab".repeat(32), 1u64 << 40)).expect("digest");
    for (digest, what) in [(big_command, "command"), (huge, "action")] {
        let err = cluster
            .execute_with(digest, ExecuteOptions::default())
            .await
            .expect_err("over the cap");
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("max_message_bytes of 1000"),
            "{what}: {}",
            err.message()
        );
    }
    let fits = cluster.upload(&ActionSpec::new(&["true"])).await;
    assert!(
        cluster
            .execute_with(fits, ExecuteOptions::default())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_reattaches_after_a_dropped_stream() {
    let config = lazybarn_scheduler::SchedulerConfig {
        client_gone_timeout: std::time::Duration::from_secs(30),
        ..quick_config()
    };
    let cluster = Cluster::start(config).await;
    let digest = cluster.upload(&ActionSpec::new(&["long"])).await;
    let mut stream = cluster.execute(digest).await;
    let name = first(&mut stream).await.name;
    drop(stream);

    let mut worker = cluster.worker("w1", &[], 1).await;
    let assignment = worker.take().await;
    let mut client = cluster.execution();
    let mut waiting = client
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .expect("WaitExecution")
        .into_inner();
    let op = first(&mut waiting).await;
    assert_eq!(op.name, name);
    assert_eq!(stage(&op), Stage::Executing as i32);

    let polled = cluster
        .operations()
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .expect("GetOperation")
        .into_inner();
    assert!(!polled.done);

    worker.complete(&assignment, 0).await;
    let (_, response) = finish(waiting).await;
    assert_eq!(response.result.expect("result").exit_code, 0);

    // Finished operations stay known for a while.
    let done = cluster
        .operations()
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .expect("GetOperation")
        .into_inner();
    assert!(done.done);
    let replay = client
        .wait_execution(WaitExecutionRequest { name })
        .await
        .expect("WaitExecution of a finished operation")
        .into_inner();
    finish(replay).await;

    let err = client
        .wait_execution(WaitExecutionRequest {
            name: "operations/unknown".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}
