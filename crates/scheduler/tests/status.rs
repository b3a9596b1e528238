//! The whole `lazybarn-scheduler` server as the binary wires it (storage,
//! scheduler, a separate worker port, the status page), and what the status
//! page, its JSON and /metrics show.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::{Action, Command, ExecuteRequest, Platform, platform::Property};
use lazybarn_scheduler::server::{self, Listeners};
use lazybarn_scheduler::{SchedulerConfig, ServerConfig};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// One HTTP/1.1 GET; returns the status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: lazybarn\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reply = String::new();
    guard("HTTP reply", stream.read_to_string(&mut reply))
        .await
        .expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("headers end");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

async fn upload_action(cas: &CasClient, args: &[&str], platform: &[(&str, &str)]) -> Digest {
    let command = Command {
        arguments: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let command_digest = Digest::of(&command);
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(Digest::EMPTY.to_proto()),
        platform: Some(Platform {
            properties: platform
                .iter()
                .map(|(n, v)| Property {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let action_digest = Digest::of(&action);
    cas.upload(vec![
        (command_digest, Bytes::from(command)),
        (action_digest, Bytes::from(action)),
    ])
    .await
    .expect("upload");
    action_digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_json_and_metrics_show_workers_and_operations() {
    let metrics = lazybarn_scheduler::metrics::install_prometheus().expect("recorder");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        worker_listen: Some("127.0.0.1:0".parse().expect("addr")),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        scheduler: SchedulerConfig {
            poll_timeout: Duration::from_millis(200),
            ..SchedulerConfig::default()
        },
        ..ServerConfig::default()
    };
    let listeners = Listeners::bind(&config).await.expect("bind");
    let grpc = listeners.grpc.local_addr().expect("addr");
    let workers = listeners
        .worker
        .as_ref()
        .expect("worker port")
        .local_addr()
        .expect("addr");
    let http = listeners.http.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(config, listeners, Some(metrics), async {
        let _ = stopped.await;
    }));

    let cas = CasClient::connect(&format!("grpc://{grpc}"), "")
        .await
        .expect("cas");
    let worker_channel = Channel::from_shared(format!("http://{workers}"))
        .expect("url")
        .connect_lazy();
    let _worker = NoopWorker::start(
        worker_channel,
        "status-worker<1>",
        &[("OSFamily", "linux")],
        2,
    )
    .await;
    let client_channel = Channel::from_shared(format!("http://{grpc}"))
        .expect("url")
        .connect_lazy();
    let mut execution = ExecutionClient::new(client_channel);
    let execute = |digest: Digest| ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        ..Default::default()
    };

    // One executed action, then a cache hit of it.
    let ran = upload_action(&cas, &["cc"], &[("OSFamily", "linux")]).await;
    // The worker port serves the same storage, for workers whose CAS is
    // their scheduler address.
    let worker_cas = CasClient::connect(&format!("grpc://{workers}"), "")
        .await
        .expect("CAS on the worker port");
    assert!(
        worker_cas.download(ran).await.is_ok(),
        "the worker port does not serve the uploaded action"
    );
    for _ in 0..2 {
        let stream = execution
            .execute(execute(ran))
            .await
            .expect("execute")
            .into_inner();
        finish(stream).await;
    }
    // Two identical clients of an action nobody can run: queued, deduplicated.
    let stuck = upload_action(&cas, &["train"], &[("gpu", "a100")]).await;
    let mut s1 = execution
        .execute(execute(stuck))
        .await
        .expect("execute")
        .into_inner();
    let mut s2 = execution
        .execute(execute(stuck))
        .await
        .expect("execute")
        .into_inner();
    let queued_name = first(&mut s1).await.name;
    first(&mut s2).await;

    let (code, json) = http_get(http, "/api/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let worker = &status["workers"][0];
    assert_eq!(worker["id"], "status-worker<1>");
    assert_eq!(worker["slots"], 2);
    assert_eq!(worker["platform"][0], "OSFamily=linux");
    assert!(worker["last_seen_seconds_ago"].is_number());
    let queued = &status["queued"][0];
    assert_eq!(queued["name"], queued_name.as_str());
    assert_eq!(queued["platform"], "gpu=a100");
    assert_eq!(queued["clients"], 2);
    assert_eq!(status["executing"].as_array().map(Vec::len), Some(0));

    let (code, workers_json) = http_get(http, "/api/workers").await;
    assert_eq!(code, 200);
    assert!(workers_json.contains("status-worker<1>"));

    let (code, html) = http_get(http, "/").await;
    assert_eq!(code, 200);
    assert!(html.contains("status-worker&lt;1&gt;"), "{html}");
    assert!(html.contains(&queued_name));
    assert!(html.contains("gpu=a100"));

    let (code, text) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "lazybarn_scheduler_queued_operations",
        "lazybarn_scheduler_executing_operations",
        "lazybarn_scheduler_executions_total",
        "lazybarn_scheduler_deduplicated_total",
        "lazybarn_scheduler_cache_hits_total",
        "lazybarn_scheduler_retries_total",
        "lazybarn_scheduler_workers",
        "lazybarn_scheduler_execution_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        text.contains(
            "lazybarn_scheduler_queued_operations{instance_name=\"\",platform=\"gpu=a100\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("lazybarn_scheduler_executions_total 2"),
        "{text}"
    );
    assert!(
        text.contains("lazybarn_scheduler_deduplicated_total 1"),
        "{text}"
    );
    assert!(
        text.contains("lazybarn_scheduler_cache_hits_total 1"),
        "{text}"
    );
    assert!(text.contains("lazybarn_scheduler_workers 1"), "{text}");
    assert!(
        text.contains("lazybarn_scheduler_workers_by_state{state=\"active\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lazybarn_scheduler_workers_by_state{state=\"draining\"} 0"),
        "{text}"
    );
    assert_eq!(worker["state"], "active");

    // The worker announces it is stopping: the page, its JSON and the
    // metrics say so.
    let worker_channel = Channel::from_shared(format!("http://{workers}"))
        .expect("url")
        .connect_lazy();
    let mut stopping = TestWorker {
        id: "status-worker<1>".into(),
        client: lazybarn_proto::worker::scheduler_client::SchedulerClient::new(worker_channel),
    };
    stopping.drain().await.expect("drain");
    let (_, json) = http_get(http, "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(status["workers"][0]["state"], "draining", "{json}");
    assert!(
        status["workers"][0]["draining_seconds"].is_number(),
        "{json}"
    );
    let (_, html) = http_get(http, "/").await;
    assert!(html.contains("1 draining"), "{html}");
    assert!(html.contains("<td>draining for "), "{html}");
    let (_, text) = http_get(http, "/metrics").await;
    assert!(
        text.contains("lazybarn_scheduler_workers_by_state{state=\"draining\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lazybarn_scheduler_workers_by_state{state=\"active\"} 0"),
        "{text}"
    );

    drop((s1, s2));
    let _ = stop.send(());
    guard("shutdown", serving)
        .await
        .expect("task")
        .expect("served");
}
