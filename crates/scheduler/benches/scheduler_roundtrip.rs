//! Scheduler benchmark through the real gRPC stack on loopback: Execute to
//! COMPLETED round trips per second with no-op workers speaking the worker
//! protocol, and the latency of Execute calls answered from the Action
//! Cache (p50, p99). Clients, workers and server share this machine.
//!
//! Knobs (environment): LAZYBARN_BENCH_ACTIONS (per run, default 20000),
//! LAZYBARN_BENCH_RUNS (default 3), LAZYBARN_BENCH_CLIENTS (concurrent
//! Execute calls, default 256), LAZYBARN_BENCH_SLOTS (no-op worker slots,
//! default 64, over LAZYBARN_BENCH_WORKERS workers, default 4),
//! LAZYBARN_BENCH_CONNECTIONS (client connections, default 4), LAZYBARN_BENCH_HITS (cache-hit calls, default 5000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::server::Storage;
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::{Action, ActionResult, Command, ExecuteRequest, ExecuteResponse};
use lazybarn_proto::worker::scheduler_client::SchedulerClient;
use lazybarn_proto::worker::{CompleteExecutionRequest, PollWorkRequest, RegisterRequest};
use lazybarn_scheduler::SchedulerConfig;
use lazybarn_scheduler::server;
use prost::Message;
use tonic::transport::Channel;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let actions = knob("LAZYBARN_BENCH_ACTIONS", 20_000);
    let runs = knob("LAZYBARN_BENCH_RUNS", 3);
    let clients = knob("LAZYBARN_BENCH_CLIENTS", 256);
    let slots = knob("LAZYBARN_BENCH_SLOTS", 64);
    let hits = knob("LAZYBARN_BENCH_HITS", 5_000);

    let serving = server::InProcess::start(
        Storage::in_memory(4 << 30, 4 << 20),
        SchedulerConfig::default(),
    )
    .await
    .expect("serve");
    let addr = serving.addr;
    let storage = serving.storage.clone();
    let channel = |_| {
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy()
    };
    // Several connections each way: one HTTP/2 connection is served by one
    // task, which would otherwise cap the rate on its own.
    let workers = knob("LAZYBARN_BENCH_WORKERS", 4);
    for w in 0..workers {
        start_noop_worker(channel(()), &format!("bench-noop-{w}"), slots / workers).await;
    }
    let client_channels: Vec<Channel> = (0..knob("LAZYBARN_BENCH_CONNECTIONS", 4))
        .map(|_| channel(()))
        .collect();

    println!(
        "scheduler round trips: {runs} runs x {actions} distinct actions, \
         {clients} concurrent Execute calls, {workers} no-op workers with {slots} slots in all"
    );
    let mut rates = Vec::new();
    let mut all_digests = Vec::new();
    for run in 0..runs {
        let digests = upload_actions(&storage, run, actions).await;
        let started = Instant::now();
        execute_all(&client_channels, &digests, clients).await;
        let elapsed = started.elapsed();
        let rate = actions as f64 / elapsed.as_secs_f64();
        println!(
            "  run {}: {:.2} s, {rate:.0} round trips/s",
            run + 1,
            elapsed.as_secs_f64()
        );
        rates.push(rate);
        all_digests.extend(digests);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "Execute-to-COMPLETED round trips: median {:.0}/s (target >= 5000/s)",
        rates[rates.len() / 2]
    );

    let mut latencies = Vec::with_capacity(hits);
    let mut client = ExecutionClient::new(client_channels[0].clone());
    for digest in all_digests.iter().cycle().take(hits) {
        let started = Instant::now();
        let response = execute_one(&mut client, *digest).await;
        latencies.push(started.elapsed());
        assert!(
            response.cached_result,
            "every action ran before: expected a cache hit"
        );
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "cache-hit Execute latency over {hits} sequential calls: p50 {:?}, p99 {:?}",
        pct(0.50),
        pct(0.99)
    );
}

/// Stores `count` distinct actions (their Commands differ) for run `run`.
async fn upload_actions(storage: &Storage, run: usize, count: usize) -> Vec<Digest> {
    let mut blobs = Vec::with_capacity(2 * count);
    let mut digests = Vec::with_capacity(count);
    for i in 0..count {
        let command = Command {
            arguments: vec!["true".into(), format!("{run}-{i}")],
            ..Default::default()
        }
        .encode_to_vec();
        let command_digest = Digest::of(&command);
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(Digest::EMPTY.to_proto()),
            ..Default::default()
        }
        .encode_to_vec();
        let action_digest = Digest::of(&action);
        blobs.push((command_digest, Bytes::from(command)));
        blobs.push((action_digest, Bytes::from(action)));
        digests.push(action_digest);
    }
    for result in storage.store.put_batch(blobs).await {
        result.expect("store action");
    }
    digests
}

/// Runs every digest through Execute with `concurrency` calls in flight.
async fn execute_all(channels: &[Channel], digests: &[Digest], concurrency: usize) {
    let digests = Arc::new(digests.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let digests = digests.clone();
            let next = next.clone();
            let mut client = ExecutionClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(digest) = digests.get(index) else {
                        return;
                    };
                    let response = execute_one(&mut client, *digest).await;
                    assert_eq!(response.result.map(|r| r.exit_code), Some(0));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
}

/// One Execute call, read to its done operation.
async fn execute_one(client: &mut ExecutionClient<Channel>, digest: Digest) -> ExecuteResponse {
    let request = ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        ..Default::default()
    };
    let mut stream = client.execute(request).await.expect("Execute").into_inner();
    let deadline = Duration::from_secs(120);
    loop {
        let op = tokio::time::timeout(deadline, stream.message())
            .await
            .expect("operation within the hang guard")
            .expect("stream")
            .expect("stream ended before done");
        if op.done {
            return lazybarn_scheduler::operation::response_of(&op).expect("response");
        }
    }
}

/// A worker with `slots` PollWork loops that complete everything at once.
async fn start_noop_worker(channel: Channel, id: &str, slots: usize) {
    let mut client = SchedulerClient::new(channel);
    client
        .register(RegisterRequest {
            worker_id: id.into(),
            platform: None,
            slots: slots as u32,
            session_id: String::new(),
        })
        .await
        .expect("register");
    for _ in 0..slots {
        let mut client = client.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                let request = PollWorkRequest {
                    worker_id: id.clone(),
                };
                let Ok(reply) = client.poll_work(request).await else {
                    return;
                };
                let Some(assignment) = reply.into_inner().assignment else {
                    continue;
                };
                let response = ExecuteResponse {
                    result: Some(ActionResult::default()),
                    ..Default::default()
                };
                let _ = client
                    .complete_execution(CompleteExecutionRequest {
                        worker_id: id.clone(),
                        execution_id: assignment.execution_id,
                        response: Some(response),
                    })
                    .await;
            }
        });
    }
}
