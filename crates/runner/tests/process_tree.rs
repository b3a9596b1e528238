//! Leaving nothing behind: on timeout, on a client that goes away, and at
//! normal exit, every process a command started is gone, daemonized ones
//! too; and concurrent runs do not interfere. These tests run as root.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_background_children_and_keeps_partial_output() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let marker = unique_marker();
    let mut req = with_marker(
        request(
            dir.path(),
            &[
                "sh",
                "-c",
                "echo before; echo oops >&2; sleep 1000 & sleep 1000",
            ],
        ),
        &marker,
    );
    req.timeout = Some(seconds(1));
    let watcher = tokio::spawn({
        let marker = marker.clone();
        async move { wait_for_processes(&marker, 3, Duration::from_secs(5)).await }
    });
    let started = Instant::now();
    let response = runner.client.run(req).await.expect("runs").into_inner();
    let elapsed = started.elapsed();
    let left = processes_with_marker(&marker);

    assert!(response.timed_out, "{response:?}");
    assert_eq!((response.signal, response.exit_code), (libc::SIGKILL, 137));
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_eq!(
        watcher.await.expect("watcher").len(),
        3,
        "sh and both sleeps were running"
    );
    assert_eq!(left, Vec::<u32>::new(), "processes survived the timeout");
    assert_eq!(read_text(dir.path().join("stdout")), "before\n");
    assert_eq!(read_text(dir.path().join("stderr")), "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_a_double_forked_daemon() {
    let mut runner = start_runner().await;
    let dir = writable_work_dir();
    let marker = unique_marker();
    // The daemon: setsid into a new session, fork, and let the parent exit,
    // so that the sleep is orphaned and in no process group of the command.
    let script = "setsid sh -c 'sleep 1000 & echo up > up'; \
                  while [ ! -s up ]; do sleep 0.05; done; echo daemon started; sleep 1000";
    let mut req = with_marker(request(dir.path(), &["sh", "-c", script]), &marker);
    req.timeout = Some(seconds(2));
    let response = runner.client.run(req).await.expect("runs").into_inner();
    let left = processes_with_marker(&marker);

    assert!(response.timed_out, "{response:?}");
    assert_eq!(read_text(dir.path().join("stdout")), "daemon started\n");
    assert_eq!(left, Vec::<u32>::new(), "the daemon survived the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_exit_kills_what_the_command_left_running() {
    let mut runner = start_runner().await;
    let dir = writable_work_dir();
    let marker = unique_marker();
    let script = "setsid sh -c 'sleep 1000 & echo up > up'; \
                  while [ ! -s up ]; do sleep 0.05; done; \
                  sleep 1000 & echo done";
    let req = with_marker(request(dir.path(), &["sh", "-c", script]), &marker);
    let response = runner.client.run(req).await.expect("runs").into_inner();
    let left = processes_with_marker(&marker);

    assert_eq!((response.exit_code, response.timed_out), (0, false));
    assert_eq!(read_text(dir.path().join("stdout")), "done\n");
    assert_eq!(left, Vec::<u32>::new(), "background processes outlived Run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_gets_its_command_killed() {
    let runner = start_runner().await;
    let dir = work_dir();
    let marker = unique_marker();
    let req = with_marker(
        request(dir.path(), &["sh", "-c", "sleep 1000 & sleep 1000"]),
        &marker,
    );
    let mut client = runner.client.clone();
    let call = tokio::spawn(async move { client.run(req).await });
    let running = wait_for_processes(&marker, 3, Duration::from_secs(10)).await;
    assert_eq!(running.len(), 3, "the command started");

    // Drop the call mid-run: the client resets the HTTP/2 stream.
    call.abort();
    assert!(call.await.expect_err("aborted").is_cancelled());
    let left = wait_for_no_processes(&marker, Duration::from_secs(10)).await;
    assert_eq!(left, Vec::<u32>::new(), "the command outlived its RPC");

    // The runner is unaffected and the connection still usable.
    let mut client = runner.client.clone();
    let response = client
        .run(request(dir.path(), &["true"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_gets_its_command_killed() {
    let runner = start_runner().await;
    let dir = work_dir();
    let marker = unique_marker();
    let req = with_marker(request(dir.path(), &["sleep", "1000"]), &marker);
    let mut client = lazybarn_runner::client::connect(&runner.socket)
        .await
        .expect("second connection");
    let call = tokio::spawn(async move { client.run(req).await });
    let running = wait_for_processes(&marker, 1, Duration::from_secs(10)).await;
    assert_eq!(running.len(), 1, "the command started");
    // The task owns the only handle on this connection: aborting it closes it.
    call.abort();
    let _ = call.await;
    let left = wait_for_no_processes(&marker, Duration::from_secs(10)).await;
    assert_eq!(
        left,
        Vec::<u32>::new(),
        "the command outlived its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_do_not_interfere() {
    let runner = start_runner().await;
    let slow_dir = work_dir();
    let timeout_dir = work_dir();
    let marker = unique_marker();

    let mut slow_client = runner.client.clone();
    let slow_req = request(slow_dir.path(), &["sh", "-c", "sleep 2; echo slow; exit 7"]);
    let slow = tokio::spawn(async move { slow_client.run(slow_req).await });

    let mut timeout_client = runner.client.clone();
    let mut timeout_req = with_marker(
        request(
            timeout_dir.path(),
            &["sh", "-c", "echo partial; sleep 1000"],
        ),
        &marker,
    );
    timeout_req.timeout = Some(seconds(1));
    let timing_out = tokio::spawn(async move { timeout_client.run(timeout_req).await });

    // Quick ones finish while the others are still running.
    let started = Instant::now();
    let mut quick = Vec::new();
    for i in 0..8 {
        let dir = work_dir();
        let mut client = runner.client.clone();
        let req = request(
            dir.path(),
            &["sh", "-c", &format!("echo {i}; echo e{i} >&2; exit {i}")],
        );
        quick.push(tokio::spawn(async move {
            let response = client.run(req).await;
            (i, dir, response)
        }));
    }
    for handle in quick {
        let (i, dir, response) = handle.await.expect("task");
        let response = response.expect("runs").into_inner();
        assert_eq!(response.exit_code, i);
        assert_eq!(read_text(dir.path().join("stdout")), format!("{i}\n"));
        assert_eq!(read_text(dir.path().join("stderr")), format!("e{i}\n"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "quick runs waited for slow ones"
    );

    let timed_out = timing_out.await.expect("task").expect("runs").into_inner();
    assert!(timed_out.timed_out);
    assert_eq!(read_text(timeout_dir.path().join("stdout")), "partial\n");
    assert_eq!(processes_with_marker(&marker), Vec::<u32>::new());

    let slow = slow.await.expect("task").expect("runs").into_inner();
    assert_eq!((slow.exit_code, slow.timed_out), (7, false));
    assert_eq!(read_text(slow_dir.path().join("stdout")), "slow\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_cannot_signal_another() {
    let runner = start_runner().await;
    let (victim_dir, killer_dir) = (work_dir(), work_dir());
    let marker = unique_marker();
    let mut victim_client = runner.client.clone();
    let victim_req = with_marker(
        request(victim_dir.path(), &["sh", "-c", "sleep 3; echo survived"]),
        &marker,
    );
    let victim = tokio::spawn(async move { victim_client.run(victim_req).await });
    assert_eq!(
        wait_for_processes(&marker, 2, Duration::from_secs(10))
            .await
            .len(),
        2
    );

    // Both run as nobody: without PID namespaces this would kill the victim.
    let mut killer_client = runner.client.clone();
    let response = killer_client
        .run(request(
            killer_dir.path(),
            &["sh", "-c", "kill -KILL -1; echo tried"],
        ))
        .await
        .expect("runs")
        .into_inner();
    // kill(-1) spares the caller and init: the shell goes on.
    assert_eq!(response.exit_code, 0);
    assert_eq!(read_text(killer_dir.path().join("stdout")), "tried\n");

    let victim = victim.await.expect("task").expect("runs").into_inner();
    assert_eq!((victim.exit_code, victim.signal), (0, 0));
    assert_eq!(read_text(victim_dir.path().join("stdout")), "survived\n");
}
