//! A worker whose surroundings fail: with no runner answering it takes no
//! work until one does, and with a CAS that stays unreachable the action
//! fails with UNAVAILABLE, after retries, instead of hanging.

mod common;

use std::time::Duration;

use common::*;
use lazybarn_proto::longrunning::Operation;
use lazybarn_proto::reapi::ExecuteOperationMetadata;
use lazybarn_proto::reapi::execution_stage::Value as Stage;
use lazybarn_worker::BuildMode;
use prost::Message;
use tonic::Code;

/// How long an action must stay queued to show the worker is not taking it.
const NOT_TAKEN_FOR: Duration = Duration::from_secs(3);

fn stage_of(operation: &Operation) -> Option<Stage> {
    let metadata = operation.metadata.as_ref()?;
    let metadata = ExecuteOperationMetadata::decode(metadata.value.as_slice()).ok()?;
    Stage::try_from(metadata.stage).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_work_is_taken_until_the_runner_is_ready() {
    let mut farm = Farm::start_with(FarmOptions {
        runner: false,
        ..FarmOptions::new(BuildMode::Native)
    })
    .await;
    let (root, _) = input_root(&farm).await;
    let mut stream = farm.start_execute(root, "cat in/a.txt", &[], 60).await;
    let queued_throughout = tokio::time::timeout(NOT_TAKEN_FOR, async {
        while let Some(operation) = stream.message().await.expect("operation stream") {
            assert!(
                !operation.done && stage_of(&operation) == Some(Stage::Queued),
                "the action left the queue with no runner to run it: {operation:?}"
            );
        }
    })
    .await;
    assert!(
        queued_throughout.is_err(),
        "the operation stream ended while the action was queued"
    );

    farm.start_runner();
    let response = finish(stream).await;
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}");
    let result = response.result.expect("a result");
    assert_eq!(farm.blob(&result.stdout_digest).await, "input contents\n");
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cas_fails_the_action_with_unavailable() {
    // A port nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let cas = format!("grpc://{closed}");
    let farm = Farm::start_with(FarmOptions {
        cas: Some(cas.clone()),
        ..FarmOptions::new(BuildMode::Native)
    })
    .await;
    let (root, _) = input_root(&farm).await;
    let response = farm.execute(root, "cat in/a.txt", &[], 60).await;
    let status = response.status.expect("a status");
    assert_eq!(status.code, Code::Unavailable as i32, "{status:?}");
    assert!(
        status.message.contains(&cas),
        "the message should name the CAS: {status:?}"
    );
    farm.stop().await;
}
