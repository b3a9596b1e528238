//! A scheduler whose storage is another REAPI server's (`[storage] remote`):
//! it finds actions there, reports what the remote lacks as MISSING, and
//! keeps results in the remote's Action Cache.

mod common;

use common::*;
use lazybarn_cas::Digest;
use lazybarn_cas::server::{Loopback, Storage};
use lazybarn_proto::rpc::{self, PreconditionFailure};
use lazybarn_scheduler::config::StorageConfig;
use prost::Message;
use tonic::Code;

/// The other REAPI server: a Lazybarn storage in memory on a loopback port,
/// and a handle on its contents.
struct RemoteServer {
    url: String,
    storage: Storage,
    _serving: Loopback,
}

impl RemoteServer {
    async fn start() -> Self {
        let storage = Storage::in_memory(1 << 30, 4 << 20);
        let serving = Loopback::serve(storage.routes())
            .await
            .expect("serve on loopback");
        RemoteServer {
            url: serving.url(),
            storage,
            _serving: serving,
        }
    }

    /// A scheduler configured, as from its TOML, to use this server.
    async fn scheduler(&self) -> Cluster {
        let config = StorageConfig {
            remote: Some(self.url.clone()),
            ..StorageConfig::default()
        };
        config.validate().expect("valid storage config");
        let storage = lazybarn_scheduler::server::open_storage(&config)
            .await
            .expect("reach the remote");
        assert!(storage.disk.is_none());
        Cluster::start_with_storage(quick_config(), storage).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_the_remote_lacks_are_missing_preconditions() {
    let remote = RemoteServer::start().await;
    let cluster = remote.scheduler().await;
    let unknown = Digest::of(b"an action nobody uploaded");
    let err = cluster
        .execute_with(unknown, ExecuteOptions::default())
        .await
        .expect_err("missing action");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let details = rpc::Status::decode(err.details()).expect("rpc.Status details");
    let any = details.details.first().expect("one detail");
    let failure = PreconditionFailure::decode(any.value.as_slice()).expect("PreconditionFailure");
    let subjects: Vec<(String, String)> = failure
        .violations
        .into_iter()
        .map(|v| (v.r#type, v.subject))
        .collect();
    assert_eq!(
        subjects,
        vec![(
            "MISSING".to_string(),
            format!("blobs/{}/{}", unknown.hash_hex(), unknown.size())
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_and_results_live_in_the_remote() {
    let remote = RemoteServer::start().await;
    let cluster = remote.scheduler().await;
    let _worker = NoopWorker::start(cluster.channel(), "w1", &[], 1).await;

    // Uploaded through the scheduler, stored only in the remote.
    let digest = cluster.upload(&ActionSpec::new(&["echo", "hi"])).await;
    assert!(remote.storage.store.contains(&digest).await.expect("find"));

    let (_, response) = finish(cluster.execute(digest).await).await;
    assert!(!response.cached_result);
    let cached = remote
        .storage
        .action_cache
        .get(&digest)
        .await
        .expect("remote action cache");
    assert_eq!(cached.map(|r| r.exit_code), Some(0));

    // A second scheduler over the same remote answers from its cache.
    let other = remote.scheduler().await;
    let mut stream = other.execute(digest).await;
    let op = first(&mut stream).await;
    assert!(op.done, "a cache hit is answered in the first message");
    let response = lazybarn_scheduler::operation::response_of(&op).expect("response");
    assert!(response.cached_result);
}
