//! The worker tests' farm: a real scheduler and storage in-process, a real
//! runner (commands as nobody) and the worker under test, with REAPI
//! Execute calls against them. Runs as root, as CI does.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::server::Storage;
use lazybarn_proto::longrunning::Operation;
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::{
    Action, Command, Directory, DirectoryNode, ExecuteRequest, ExecuteResponse, FileNode,
};
use lazybarn_runner::{RunnerConfig, RunnerDaemon};
use lazybarn_scheduler::server::InProcess;
use lazybarn_scheduler::{Scheduler, SchedulerConfig};
use lazybarn_worker::{BuildMode, Stop, WorkerConfig};
use prost::Message;
use tokio::sync::watch;
use tonic::Streaming;
use tonic::transport::Channel;

/// How a farm is set up.
pub struct FarmOptions {
    /// The worker's build-directory mode.
    pub mode: BuildMode,
    /// The worker's drain timeout.
    pub drain_timeout: Duration,
    /// The scheduler's lease.
    pub lease: Duration,
    /// Whether the farm starts a runner (else [`Farm::start_runner`] does).
    pub runner: bool,
    /// The CAS the worker uses instead of the farm's storage.
    pub cas: Option<String>,
}

impl FarmOptions {
    /// The defaults of the end-to-end tests, in `mode`.
    pub fn new(mode: BuildMode) -> Self {
        FarmOptions {
            mode,
            drain_timeout: Duration::from_secs(20),
            lease: Duration::from_secs(10),
            runner: true,
            cas: None,
        }
    }
}

/// Storage + scheduler + runner + worker, torn down on drop.
pub struct Farm {
    pub storage: Storage,
    pub scheduler: Scheduler,
    pub channel: Channel,
    pub worker_id: String,
    pub dir: tempfile::TempDir,
    /// Raises the worker's stop level.
    pub stop_worker: watch::Sender<Stop>,
    /// Stops the runners.
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The scheduler and storage, served until dropped.
    serving: Option<InProcess>,
    pub worker: Option<tokio::task::JoinHandle<()>>,
}

impl Farm {
    pub async fn start(mode: BuildMode) -> Farm {
        Farm::start_with(FarmOptions::new(mode)).await
    }

    pub async fn start_with(options: FarmOptions) -> Farm {
        let dir = tempfile::Builder::new()
            .prefix("lazybarn-worker-test")
            .tempdir_in("/tmp")
            .expect("tempdir");
        // The runner's uid must traverse the build directory's parents.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        // A hang guard: a worker blocked on its own mount cannot be killed,
        // so after a generous time abort the farm's FUSE connections, which
        // turns a hang into a failure.
        let watched = dir.path().to_path_buf();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(240));
            if watched.exists() {
                let _ = lazybarn_vfs::clean_stale_mounts(&watched);
            }
        });
        let config = SchedulerConfig {
            lease_duration: options.lease,
            poll_timeout: Duration::from_secs(1),
            ..SchedulerConfig::default()
        };
        let serving = InProcess::start(Storage::in_memory(1 << 30, 4 << 20), config)
            .await
            .expect("serve the scheduler");
        let addr = serving.addr;

        let socket = dir.path().join("runner.sock");
        let mut stop = Vec::new();
        if options.runner {
            stop.push(serve_runner(&socket));
        }

        let mode = options.mode;
        let worker_id = format!("test-{mode:?}");
        let worker_config = WorkerConfig {
            cas: options.cas,
            worker_id: Some(worker_id.clone()),
            slots: 2,
            max_cache_bytes: 1 << 30,
            build_mode: mode,
            fetch_concurrency: 8,
            drain_timeout: options.drain_timeout,
            ..WorkerConfig::new(
                format!("grpc://{addr}"),
                dir.path().join("build"),
                dir.path().join("cache"),
                socket,
            )
        };
        let (stop_worker, stop_level) = watch::channel(Stop::Run);
        let worker = tokio::spawn(async move {
            lazybarn_worker::run_until(worker_config, stop_level)
                .await
                .expect("worker runs");
        });
        Farm {
            storage: serving.storage.clone(),
            scheduler: serving.scheduler.clone(),
            channel: serving.channel(),
            serving: Some(serving),
            worker_id,
            dir,
            stop_worker,
            stop,
            worker: Some(worker),
        }
    }

    /// Starts a runner on the worker's socket (for a farm started without).
    pub fn start_runner(&mut self) {
        let stop = serve_runner(&self.dir.path().join("runner.sock"));
        self.stop.push(stop);
    }

    /// Where the worker puts action directories.
    pub fn build_dir(&self) -> PathBuf {
        self.dir.path().join("build")
    }

    pub async fn put(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let digest = Digest::of(&data);
        self.storage.store.put(digest, data).await.expect("put");
        digest
    }

    /// Uploads a directory message and returns its digest.
    pub async fn put_dir(&self, directory: &Directory) -> Digest {
        self.put(directory.encode_to_vec()).await
    }

    /// Starts running `script` with `sh -c` over `input_root`, declaring
    /// `outputs`; returns the operation stream.
    pub async fn start_execute(
        &self,
        input_root: Digest,
        script: &str,
        outputs: &[&str],
        timeout: u64,
    ) -> Streaming<Operation> {
        let command = Command {
            arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
            output_paths: outputs.iter().map(|s| s.to_string()).collect(),
            environment_variables: vec![lazybarn_proto::reapi::command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            ..Default::default()
        };
        let action = Action {
            command_digest: Some(self.put(command.encode_to_vec()).await.to_proto()),
            input_root_digest: Some(input_root.to_proto()),
            timeout: Some(prost_types::Duration {
                seconds: timeout as i64,
                nanos: 0,
            }),
            do_not_cache: true,
            ..Default::default()
        };
        let action_digest = self.put(action.encode_to_vec()).await;
        let request = ExecuteRequest {
            action_digest: Some(action_digest.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        };
        ExecutionClient::new(self.channel.clone())
            .execute(request)
            .await
            .expect("Execute accepted")
            .into_inner()
    }

    /// Runs `script` with `sh -c` over `input_root`, declaring `outputs`.
    pub async fn execute(
        &self,
        input_root: Digest,
        script: &str,
        outputs: &[&str],
        timeout: u64,
    ) -> ExecuteResponse {
        let stream = self
            .start_execute(input_root, script, outputs, timeout)
            .await;
        finish(stream).await
    }

    pub async fn blob(&self, digest: &Option<lazybarn_proto::reapi::Digest>) -> Bytes {
        let digest = Digest::from_proto(digest.as_ref()).expect("digest");
        self.storage.store.get(&digest).await.expect("blob stored")
    }

    /// Raises the worker's stop level.
    pub fn tell_worker(&self, level: Stop) {
        self.stop_worker.send_replace(level);
    }

    /// Waits for the worker to return (it must have been told to stop).
    pub async fn worker_stopped(&mut self) {
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(60), worker)
                .await
                .expect("worker stops")
                .expect("worker task");
        }
    }

    /// Drains the worker and waits for it, then stops the runners and the
    /// scheduler.
    pub async fn stop(mut self) {
        self.tell_worker(Stop::Drain);
        self.worker_stopped().await;
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        self.serving.take();
    }
}

/// Serves a runner on `socket` until the returned sender fires.
fn serve_runner(socket: &Path) -> tokio::sync::oneshot::Sender<()> {
    let runner = RunnerDaemon::bind(&RunnerConfig::new(socket)).expect("runner binds");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(runner.serve(async {
        let _ = stopped.await;
    }));
    stop
}

/// Follows an operation stream to the end; returns its ExecuteResponse.
pub async fn finish(mut stream: Streaming<Operation>) -> ExecuteResponse {
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(op) = stream.message().await.expect("operation stream") {
            if op.done {
                return op;
            }
        }
        panic!("the operation stream ended before the operation was done");
    })
    .await
    .expect("the action finished in time");
    match finished.result.expect("a result") {
        lazybarn_proto::longrunning::operation::Result::Response(any) => {
            ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
        }
        lazybarn_proto::longrunning::operation::Result::Error(e) => {
            panic!("operation failed: {e:?}")
        }
    }
}

pub fn file(name: &str, digest: Digest, executable: bool) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        is_executable: executable,
        node_properties: None,
    }
}

/// An input root `{in/a.txt, in/tool.sh}`.
pub async fn input_root(farm: &Farm) -> (Digest, Digest) {
    let a = farm.put(Bytes::from_static(b"input contents\n")).await;
    let tool = farm
        .put(Bytes::from_static(b"#!/bin/sh\necho tool ran\n"))
        .await;
    let inner = Directory {
        files: vec![file("a.txt", a, false), file("tool.sh", tool, true)],
        ..Default::default()
    };
    let inner = farm.put_dir(&inner).await;
    let root = Directory {
        directories: vec![DirectoryNode {
            name: "in".into(),
            digest: Some(inner.to_proto()),
        }],
        ..Default::default()
    };
    (farm.put_dir(&root).await, a)
}

pub fn no_mounts_under(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    !mounts.contains(&path.display().to_string())
}

/// How many entries `dir` holds; a missing directory holds none.
pub fn entries_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
