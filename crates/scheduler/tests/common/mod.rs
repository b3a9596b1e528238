//! Shared test harness: storage, scheduler and worker protocol on one
//! in-process gRPC port, clients for it, and test workers that speak the
//! worker protocol.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::server::Storage;
use lazybarn_proto::longrunning::Operation;
use lazybarn_proto::longrunning::operations_client::OperationsClient;
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::platform::Property;
use lazybarn_proto::reapi::{
    Action, ActionResult, Command, ExecuteRequest, ExecuteResponse, ExecutionPolicy, Platform,
    RequestMetadata,
};
use lazybarn_proto::worker::scheduler_client::SchedulerClient;
use lazybarn_proto::worker::{
    CompleteExecutionRequest, DrainRequest, ExecutionProgress, ExecutionStage, PollWorkRequest,
    RegisterRequest, ReportProgressRequest, RequeueExecutionRequest, WorkAssignment,
};
use lazybarn_scheduler::server;
use lazybarn_scheduler::{Scheduler, SchedulerConfig, operation};
use prost::Message;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// A hang guard, never a timing assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Fails the test instead of hanging forever.
pub async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG_GUARD:?}"))
}

/// A scheduler config with short durations, so tests of timeouts are quick.
pub fn quick_config() -> SchedulerConfig {
    SchedulerConfig {
        lease_duration: Duration::from_millis(400),
        poll_timeout: Duration::from_millis(200),
        client_gone_timeout: Duration::from_millis(300),
        no_worker_timeout: Duration::from_secs(30),
        completed_retention: Duration::from_secs(30),
        keepalive_interval: Duration::from_secs(1),
        ..SchedulerConfig::default()
    }
}

/// Storage, scheduler and worker protocol on one loopback port.
pub struct Cluster {
    pub addr: SocketAddr,
    pub storage: Storage,
    pub scheduler: Scheduler,
    channel: Channel,
    _serving: server::InProcess,
}

impl Cluster {
    pub async fn start(config: SchedulerConfig) -> Self {
        Self::start_with_storage(config, Storage::in_memory(1 << 30, 4 << 20)).await
    }

    /// The same over a storage of the caller's choosing.
    pub async fn start_with_storage(config: SchedulerConfig, storage: Storage) -> Self {
        let serving = server::InProcess::start(storage, config)
            .await
            .expect("serve");
        Cluster {
            addr: serving.addr,
            storage: serving.storage.clone(),
            scheduler: serving.scheduler.clone(),
            channel: serving.channel(),
            _serving: serving,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn execution(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.channel())
    }

    pub fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel())
    }

    /// Stores a blob in the CAS.
    pub async fn put(&self, data: Vec<u8>) -> Digest {
        let digest = Digest::of(&data);
        self.storage
            .store
            .put(digest, Bytes::from(data))
            .await
            .expect("put");
        digest
    }

    /// Stores the Command and Action of `spec`; returns the Action digest.
    pub async fn upload(&self, spec: &ActionSpec) -> Digest {
        let (action, command) = spec.messages();
        let command_digest = self.put(command.encode_to_vec()).await;
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            ..action
        };
        self.put(action.encode_to_vec()).await
    }

    /// Starts an Execute call.
    pub async fn execute(&self, digest: Digest) -> Streaming<Operation> {
        self.execute_with(digest, ExecuteOptions::default())
            .await
            .expect("Execute accepted")
    }

    pub async fn execute_with(
        &self,
        digest: Digest,
        options: ExecuteOptions,
    ) -> Result<Streaming<Operation>, tonic::Status> {
        let mut request = tonic::Request::new(ExecuteRequest {
            instance_name: "test".to_string(),
            action_digest: Some(digest.to_proto()),
            skip_cache_lookup: options.skip_cache_lookup,
            execution_policy: Some(ExecutionPolicy {
                priority: options.priority,
            }),
            ..Default::default()
        });
        let metadata = RequestMetadata {
            tool_invocation_id: options.invocation.clone(),
            ..Default::default()
        };
        request.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            MetadataValue::from_bytes(&metadata.encode_to_vec()),
        );
        let mut client = self.execution();
        Ok(client.execute(request).await?.into_inner())
    }

    pub async fn worker(&self, id: &str, platform: &[(&str, &str)], slots: u32) -> TestWorker {
        TestWorker::register(self.channel(), id, platform, slots).await
    }
}

/// Options of one Execute call.
#[derive(Clone, Default)]
pub struct ExecuteOptions {
    pub skip_cache_lookup: bool,
    pub priority: i32,
    pub invocation: String,
}

/// What an action looks like; the input root is the empty Directory.
#[derive(Clone, Default)]
pub struct ActionSpec {
    pub arguments: Vec<String>,
    pub action_platform: Vec<(String, String)>,
    pub command_platform: Vec<(String, String)>,
    pub do_not_cache: bool,
    pub timeout_seconds: Option<i64>,
}

impl ActionSpec {
    pub fn new(arguments: &[&str]) -> Self {
        ActionSpec {
            arguments: arguments.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn on(mut self, platform: &[(&str, &str)]) -> Self {
        self.action_platform = pairs(platform);
        self
    }

    /// The platform as Bazel 4 sends it: on the Command only.
    pub fn on_command(mut self, platform: &[(&str, &str)]) -> Self {
        self.command_platform = pairs(platform);
        self
    }

    pub fn do_not_cache(mut self) -> Self {
        self.do_not_cache = true;
        self
    }

    #[allow(deprecated)]
    fn messages(&self) -> (Action, Command) {
        let command = Command {
            arguments: self.arguments.clone(),
            platform: (!self.command_platform.is_empty()).then(|| platform(&self.command_platform)),
            ..Default::default()
        };
        let action = Action {
            input_root_digest: Some(Digest::EMPTY.to_proto()),
            do_not_cache: self.do_not_cache,
            timeout: self
                .timeout_seconds
                .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            platform: (!self.action_platform.is_empty()).then(|| platform(&self.action_platform)),
            ..Default::default()
        };
        (action, command)
    }
}

fn pairs(platform: &[(&str, &str)]) -> Vec<(String, String)> {
    platform
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn platform(pairs: &[(String, String)]) -> Platform {
    Platform {
        properties: pairs
            .iter()
            .map(|(name, value)| Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

/// Reads a stream to its end; returns every operation and the response.
pub async fn finish(mut stream: Streaming<Operation>) -> (Vec<Operation>, ExecuteResponse) {
    let mut seen = Vec::new();
    while let Some(op) = guard("operation stream", stream.message())
        .await
        .expect("stream ok")
    {
        let done = op.done;
        seen.push(op);
        if done {
            break;
        }
    }
    let last = seen.last().expect("at least one operation");
    assert!(last.done, "stream ended before the operation was done");
    let response = operation::response_of(last).expect("done operation has a response");
    (seen, response)
}

/// The first operation of a stream (Execute sends one at once).
pub async fn first(stream: &mut Streaming<Operation>) -> Operation {
    guard("first operation", stream.message())
        .await
        .expect("stream ok")
        .expect("one operation")
}

/// The stage of an operation as a number (ExecutionStage.Value).
pub fn stage(op: &Operation) -> i32 {
    operation::metadata_of(op).expect("metadata").stage
}

/// A worker speaking the worker protocol, step by step.
pub struct TestWorker {
    pub id: String,
    pub client: SchedulerClient<Channel>,
}

impl TestWorker {
    pub async fn register(
        channel: Channel,
        id: &str,
        platform_: &[(&str, &str)],
        slots: u32,
    ) -> Self {
        let mut worker = TestWorker {
            id: id.to_string(),
            client: SchedulerClient::new(channel),
        };
        worker.register_again(platform_, slots, "").await;
        worker
    }

    /// A second handle on the same worker, for a call running beside others.
    pub fn clone_client(&self) -> TestWorker {
        TestWorker {
            id: self.id.clone(),
            client: self.client.clone(),
        }
    }

    /// Registers this worker's id again, as the process of `session`.
    pub async fn register_again(&mut self, platform_: &[(&str, &str)], slots: u32, session: &str) {
        self.client
            .register(RegisterRequest {
                worker_id: self.id.clone(),
                platform: Some(platform(&pairs(platform_))),
                slots,
                session_id: session.to_string(),
            })
            .await
            .expect("register");
    }

    /// Announces that this worker is stopping; returns what it holds.
    pub async fn drain(&mut self) -> Result<Vec<String>, tonic::Status> {
        let request = DrainRequest {
            worker_id: self.id.clone(),
        };
        let reply = guard("Drain", self.client.drain(request)).await?;
        Ok(reply.into_inner().held_execution_ids)
    }

    /// Gives `assignment` back unfinished.
    pub async fn requeue(&mut self, assignment: &WorkAssignment) -> Result<(), tonic::Status> {
        let request = RequeueExecutionRequest {
            worker_id: self.id.clone(),
            execution_id: assignment.execution_id.clone(),
            reason: "test worker stopping".to_string(),
        };
        guard("RequeueExecution", self.client.requeue_execution(request)).await?;
        Ok(())
    }

    /// One PollWork call: an assignment, or None when it timed out.
    pub async fn poll(&mut self) -> Option<WorkAssignment> {
        let request = PollWorkRequest {
            worker_id: self.id.clone(),
        };
        guard("PollWork", self.client.poll_work(request))
            .await
            .expect("PollWork")
            .into_inner()
            .assignment
    }

    /// Polls until an assignment comes.
    pub async fn take(&mut self) -> WorkAssignment {
        guard("an assignment", async {
            loop {
                if let Some(a) = self.poll().await {
                    return a;
                }
            }
        })
        .await
    }

    /// Reports the given executions; returns those to stop.
    pub async fn report(&mut self, executions: &[&WorkAssignment]) -> Vec<String> {
        let executions = executions
            .iter()
            .map(|a| ExecutionProgress {
                execution_id: a.execution_id.clone(),
                stage: ExecutionStage::Executing as i32,
                partial_execution_metadata: None,
            })
            .collect();
        self.client
            .report_progress(ReportProgressRequest {
                worker_id: self.id.clone(),
                executions,
            })
            .await
            .expect("ReportProgress")
            .into_inner()
            .cancelled_execution_ids
    }

    /// Completes with the given exit code; returns whether it was accepted.
    pub async fn complete(&mut self, assignment: &WorkAssignment, exit_code: i32) -> bool {
        let response = ExecuteResponse {
            result: Some(ActionResult {
                exit_code,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.complete_with(assignment, response).await
    }

    pub async fn complete_with(
        &mut self,
        assignment: &WorkAssignment,
        response: ExecuteResponse,
    ) -> bool {
        self.client
            .complete_execution(CompleteExecutionRequest {
                worker_id: self.id.clone(),
                execution_id: assignment.execution_id.clone(),
                response: Some(response),
            })
            .await
            .expect("CompleteExecution")
            .into_inner()
            .accepted
    }
}

/// A worker that completes everything with exit code 0, until dropped.
pub struct NoopWorker {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NoopWorker {
    pub async fn start(channel: Channel, id: &str, platform: &[(&str, &str)], slots: u32) -> Self {
        let worker = TestWorker::register(channel, id, platform, slots).await;
        let tasks = (0..slots)
            .map(|_| {
                let mut w = TestWorker {
                    id: worker.id.clone(),
                    client: worker.client.clone(),
                };
                tokio::spawn(async move {
                    loop {
                        let request = PollWorkRequest {
                            worker_id: w.id.clone(),
                        };
                        let Ok(reply) = w.client.poll_work(request).await else {
                            return;
                        };
                        if let Some(a) = reply.into_inner().assignment {
                            w.complete(&a, 0).await;
                        }
                    }
                })
            })
            .collect();
        NoopWorker { tasks }
    }
}

impl Drop for NoopWorker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
