//! The worker side through the real gRPC services: platform matching,
//! priorities and fairness, leases and retries, absent clients, heartbeats.

mod common;

use std::time::Duration;

use common::*;
use lazybarn_proto::longrunning::GetOperationRequest;
use lazybarn_proto::worker::PollWorkRequest;
use lazybarn_scheduler::{SchedulerConfig, operation};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_go_only_to_workers_whose_platform_matches() {
    let config = SchedulerConfig {
        ignored_platform_properties: vec!["cache-silo-key".into()],
        ..quick_config()
    };
    let cluster = Cluster::start(config).await;
    let mut linux = cluster
        .worker("linux", &[("OSFamily", "linux"), ("ISA", "x86-64")], 1)
        .await;
    let mut windows = cluster
        .worker("windows", &[("OSFamily", "windows")], 1)
        .await;

    let spec = ActionSpec::new(&["cl.exe"]).on(&[("OSFamily", "windows"), ("cache-silo-key", "7")]);
    let digest = cluster.upload(&spec).await;
    let stream = cluster.execute(digest).await;
    assert_eq!(
        linux.poll().await,
        None,
        "linux must not take a windows action"
    );
    let a = windows.take().await;
    assert_eq!(a.action_digest, Some(digest.to_proto()));
    assert_eq!(
        a.platform.as_ref().expect("platform").properties.len(),
        2,
        "ignored names still travel"
    );
    windows.complete(&a, 0).await;
    finish(stream).await;

    // Bazel 4 puts the platform on the Command only.
    let old = cluster
        .upload(&ActionSpec::new(&["gcc"]).on_command(&[("OSFamily", "linux")]))
        .await;
    let stream = cluster.execute(old).await;
    assert_eq!(windows.poll().await, None);
    let a = linux.take().await;
    assert_eq!(a.action_digest, Some(old.to_proto()));
    linux.complete(&a, 0).await;
    finish(stream).await;

    // Where both are set, the Action's platform wins.
    let both = cluster
        .upload(
            &ActionSpec::new(&["gcc", "-v"])
                .on(&[("OSFamily", "windows")])
                .on_command(&[("OSFamily", "linux")]),
        )
        .await;
    let stream = cluster.execute(both).await;
    assert_eq!(linux.poll().await, None);
    let a = windows.take().await;
    windows.complete(&a, 0).await;
    finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_no_worker_serves_fails_with_its_name() {
    let config = SchedulerConfig {
        no_worker_timeout: Duration::from_millis(300),
        ..quick_config()
    };
    let cluster = Cluster::start(config).await;
    let _cpu = NoopWorker::start(cluster.channel(), "cpu", &[("OSFamily", "linux")], 1).await;
    let digest = cluster
        .upload(&ActionSpec::new(&["train"]).on(&[("gpu", "a100")]))
        .await;
    let (_, response) = finish(cluster.execute(digest).await).await;
    let status = response.status.expect("a failure status");
    assert_eq!(status.code, Code::FailedPrecondition as i32);
    assert!(status.message.contains("gpu=a100"), "{}", status.message);
    assert!(response.result.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_values_run_first() {
    let cluster = Cluster::start(quick_config()).await;
    let mut expected = Vec::new();
    let mut streams = Vec::new();
    for (i, priority) in [5, -1, 0, 0].into_iter().enumerate() {
        let digest = cluster
            .upload(&ActionSpec::new(&["step", &i.to_string()]))
            .await;
        let options = ExecuteOptions {
            priority,
            ..Default::default()
        };
        let mut stream = cluster
            .execute_with(digest, options)
            .await
            .expect("execute");
        first(&mut stream).await;
        streams.push(stream);
        expected.push((priority, i, digest));
    }
    expected.sort_by_key(|(priority, i, _)| (*priority, *i));
    let mut worker = cluster.worker("w1", &[], 1).await;
    for (_, _, digest) in expected {
        let a = worker.take().await;
        assert_eq!(a.action_digest, Some(digest.to_proto()));
        worker.complete(&a, 0).await;
    }
    for stream in streams {
        finish(stream).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_build_is_not_starved_by_a_large_one() {
    let cluster = Cluster::start(quick_config()).await;
    let mut streams = Vec::new();
    let mut submit = async |build: &str, i: usize| {
        let digest = cluster
            .upload(&ActionSpec::new(&[build, &i.to_string()]))
            .await;
        let options = ExecuteOptions {
            invocation: build.to_string(),
            ..Default::default()
        };
        let mut stream = cluster
            .execute_with(digest, options)
            .await
            .expect("execute");
        first(&mut stream).await;
        streams.push(stream);
        digest
    };
    let mut large = Vec::new();
    for i in 0..4 {
        large.push(submit("large", i).await);
    }
    let small = submit("small", 0).await;
    let mut worker = cluster.worker("w1", &[], 2).await;
    let first_taken = worker.take().await;
    assert_eq!(
        first_taken.action_digest,
        Some(large[0].to_proto()),
        "FIFO among equals"
    );
    // The large build now has one action executing, the small one none.
    let second = worker.take().await;
    assert_eq!(second.action_digest, Some(small.to_proto()));
    worker.complete(&first_taken, 0).await;
    worker.complete(&second, 0).await;
    for _ in 1..4 {
        let a = worker.take().await;
        worker.complete(&a, 0).await;
    }
    for stream in streams {
        finish(stream).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_workers_action_is_retried_on_another_worker() {
    let cluster = Cluster::start(quick_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["make"])).await;
    let stream = cluster.execute(digest).await;
    let mut doomed = cluster.worker("doomed", &[], 1).await;
    let lost = doomed.take().await;
    assert_eq!(lost.attempt, 1);
    // "doomed" now falls silent; its lease runs out.
    let mut rescuer = cluster.worker("rescuer", &[], 1).await;
    let retried = rescuer.take().await;
    assert_eq!(retried.action_digest, Some(digest.to_proto()));
    assert_eq!(retried.attempt, 2);
    assert_ne!(retried.execution_id, lost.execution_id);
    assert!(rescuer.complete(&retried, 0).await);
    let (_, response) = finish(stream).await;
    let result = response.result.expect("result");
    assert_eq!(result.exit_code, 0);
    assert_eq!(
        result.execution_metadata.expect("metadata").worker,
        "rescuer"
    );

    // The lost worker's late result is refused, and it must register again.
    assert!(!doomed.complete(&lost, 0).await);
    guard("the lost worker's removal", async {
        while cluster
            .scheduler
            .status()
            .workers
            .iter()
            .any(|w| w.id == "doomed")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let err = doomed
        .client
        .poll_work(PollWorkRequest {
            worker_id: "doomed".into(),
        })
        .await
        .expect_err("unregistered");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_with_unavailable_naming_the_worker() {
    let config = SchedulerConfig {
        max_retries: 1,
        ..quick_config()
    };
    let cluster = Cluster::start(config).await;
    let digest = cluster.upload(&ActionSpec::new(&["crash"])).await;
    let stream = cluster.execute(digest).await;
    for name in ["first-casualty", "second-casualty"] {
        let mut worker = cluster.worker(name, &[], 1).await;
        worker.take().await;
    }
    let (_, response) = finish(stream).await;
    let status = response.status.expect("failure");
    assert_eq!(status.code, Code::Unavailable as i32);
    assert!(
        status.message.contains("second-casualty"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_executions_and_cancel_unknown_ones() {
    let config = SchedulerConfig {
        lease_duration: Duration::from_secs(1),
        ..quick_config()
    };
    let cluster = Cluster::start(config).await;
    let digest = cluster.upload(&ActionSpec::new(&["slow"])).await;
    let stream = cluster.execute(digest).await;
    let mut worker = cluster.worker("steady", &[], 1).await;
    let a = worker.take().await;
    // Heartbeat for several leases: the execution stays with this worker.
    let lease = cluster.scheduler.config().lease_duration;
    for _ in 0..6 {
        assert!(worker.report(&[&a]).await.is_empty());
        tokio::time::sleep(lease / 4).await;
    }
    let mut bogus = a.clone();
    bogus.execution_id = "exec-from-before-a-restart".into();
    assert_eq!(
        worker.report(&[&a, &bogus]).await,
        vec![bogus.execution_id.clone()]
    );
    assert!(worker.complete(&a, 0).await);
    let (_, response) = finish(stream).await;
    assert_eq!(response.result.expect("result").exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_operations_tell_the_worker_to_stop() {
    let cluster = Cluster::start(quick_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["forever"])).await;
    let mut stream = cluster.execute(digest).await;
    let name = first(&mut stream).await.name;
    let mut worker = cluster.worker("w1", &[], 1).await;
    let a = worker.take().await;
    cluster
        .operations()
        .cancel_operation(lazybarn_proto::longrunning::CancelOperationRequest { name })
        .await
        .expect("cancel");
    let (_, response) = finish(stream).await;
    assert_eq!(
        response.status.expect("status").code,
        Code::Cancelled as i32
    );
    assert_eq!(worker.report(&[&a]).await, vec![a.execution_id.clone()]);
    assert!(!worker.complete(&a, 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_action_whose_clients_left_is_dropped() {
    let cluster = Cluster::start(quick_config()).await;
    let digest = cluster.upload(&ActionSpec::new(&["abandoned"])).await;
    let mut stream = cluster.execute(digest).await;
    let name = first(&mut stream).await.name;
    drop(stream);
    let mut operations = cluster.operations();
    let dropped = guard("the drop", async {
        loop {
            let op = operations
                .get_operation(GetOperationRequest { name: name.clone() })
                .await
                .expect("known")
                .into_inner();
            if op.done {
                return op;
            }
            // Polling counts as presence; wait longer than the timeout.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let response = operation::response_of(&dropped).expect("response");
    assert_eq!(
        response.status.expect("status").code,
        Code::Cancelled as i32
    );
    let mut worker = cluster.worker("late", &[], 1).await;
    assert_eq!(worker.poll().await, None, "nothing left to run");
    assert!(cluster.scheduler.status().queued.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_poll_holds_the_lease_and_registration_is_checked() {
    let cluster = Cluster::start(quick_config()).await;
    let mut worker = cluster.worker("idle", &[("OSFamily", "linux")], 3).await;
    // Poll across several leases: the worker stays registered throughout.
    for _ in 0..5 {
        assert_eq!(worker.poll().await, None);
    }
    let status = cluster.scheduler.status();
    assert_eq!(status.workers.len(), 1);
    assert_eq!(status.workers[0].slots, 3);
    assert_eq!(
        status.workers[0].platform,
        vec!["OSFamily=linux".to_string()]
    );

    let mut client = worker.client.clone();
    let err = client
        .register(lazybarn_proto::worker::RegisterRequest {
            worker_id: String::new(),
            platform: None,
            slots: 1,
            session_id: String::new(),
        })
        .await
        .expect_err("empty id");
    assert_eq!(err.code(), Code::InvalidArgument);
}
