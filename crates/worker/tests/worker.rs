//! The worker end to end, in both build-directory modes: a real scheduler
//! and storage in-process, a real runner (commands as nobody), REAPI
//! Execute calls, and checks of what comes back. Runs as root, as CI does.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::server::{Storage, serve};
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::{
    Action, Command, Directory, DirectoryNode, ExecuteRequest, ExecuteResponse, FileNode,
};
use lazybarn_proto::rpc::PreconditionFailure;
use lazybarn_proto::worker::InputFetchStatistics;
use lazybarn_runner::{RunnerConfig, RunnerDaemon};
use lazybarn_scheduler::{Scheduler, SchedulerConfig};
use lazybarn_worker::{BuildMode, WorkerConfig};
use prost::Message;
use tonic::Code;
use tonic::service::RoutesBuilder;
use tonic::transport::Channel;

/// Storage + scheduler + runner + worker, torn down on drop.
struct Farm {
    storage: Storage,
    channel: Channel,
    _dir: tempfile::TempDir,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Farm {
    async fn start(mode: BuildMode) -> Farm {
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
        let storage = Storage::in_memory(1 << 30, 4 << 20);
        let config = SchedulerConfig {
            lease_duration: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(1),
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::new(storage.store.clone(), storage.action_cache.clone(), config);
        let mut routes = RoutesBuilder::default();
        storage.add_services(&mut routes, true);
        lazybarn_scheduler::server::add_services(&scheduler, &mut routes);
        lazybarn_scheduler::server::add_worker_service(&scheduler, &mut routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_server, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(listener, routes.routes(), async {
            let _ = stopped.await;
        }));

        let socket = dir.path().join("runner.sock");
        let runner = RunnerDaemon::bind(&RunnerConfig::new(&socket)).expect("runner binds");
        let (stop_runner, runner_stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(runner.serve(async {
            let _ = runner_stopped.await;
        }));

        let worker_config = WorkerConfig {
            scheduler: format!("grpc://{addr}"),
            cas: None,
            worker_id: Some(format!("test-{mode:?}")),
            slots: 2,
            platform: BTreeMap::new(),
            build_directory: dir.path().join("build"),
            cache_directory: dir.path().join("cache"),
            max_cache_bytes: 1 << 30,
            build_mode: mode,
            passthrough: true,
            runner_socket: socket,
            action_uid: 65534,
            action_gid: 65534,
            fetch_concurrency: 8,
        };
        let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            lazybarn_worker::run(worker_config, async {
                let _ = worker_stopped.await;
            })
            .await
            .expect("worker runs");
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        Farm {
            storage,
            channel,
            _dir: dir,
            stop: vec![stop_worker, stop_runner, stop_server],
            worker: Some(worker),
        }
    }

    async fn put(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let digest = Digest::of(&data);
        self.storage.store.put(digest, data).await.expect("put");
        digest
    }

    /// Uploads a directory message and returns its digest.
    async fn put_dir(&self, directory: &Directory) -> Digest {
        self.put(directory.encode_to_vec()).await
    }

    /// Runs `script` with `sh -c` over `input_root`, declaring `outputs`.
    async fn execute(
        &self,
        input_root: Digest,
        script: &str,
        outputs: &[&str],
        timeout: u64,
    ) -> ExecuteResponse {
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
        let mut stream = ExecutionClient::new(self.channel.clone())
            .execute(request)
            .await
            .expect("Execute accepted")
            .into_inner();
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

    async fn blob(&self, digest: &Option<lazybarn_proto::reapi::Digest>) -> Bytes {
        let digest = Digest::from_proto(digest.as_ref()).expect("digest");
        self.storage.store.get(&digest).await.expect("blob stored")
    }

    async fn stop(mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(60), worker)
                .await
                .expect("worker stops")
                .expect("worker task");
        }
    }
}

fn file(name: &str, digest: Digest, executable: bool) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        is_executable: executable,
        node_properties: None,
    }
}

/// An input root `{in/a.txt, in/tool.sh}`.
async fn input_root(farm: &Farm) -> (Digest, Digest) {
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

fn no_mounts_under(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    !mounts.contains(&path.display().to_string())
}

async fn runs_actions_and_reports_everything(mode: BuildMode) {
    let farm = Farm::start(mode).await;
    let build_dir: PathBuf = farm._dir.path().join("build");
    let (root, a) = input_root(&farm).await;

    let response = farm
        .execute(
            root,
            "cat in/a.txt > out/copy.txt && in/tool.sh && id -u > out/uid && echo oops >&2 \
             && echo made > in/gen/made.txt",
            // in/gen needs the input directory `in`, not yet loaded in
            // virtual mode, to be read while the worker creates it.
            &["out/copy.txt", "out/uid", "out/never", "in/gen/made.txt"],
            60,
        )
        .await;
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}");
    let result = response.result.expect("result");
    assert_eq!(
        result.exit_code,
        0,
        "stderr: {:?}",
        farm.blob(&result.stderr_digest).await
    );
    let files: Vec<_> = result
        .output_files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        files,
        vec!["out/copy.txt", "out/uid", "in/gen/made.txt"],
        "a missing output is absent"
    );
    assert_eq!(result.output_files[0].digest, Some(a.to_proto()));
    let uid = farm.blob(&result.output_files[1].digest).await;
    assert_eq!(
        String::from_utf8_lossy(&uid).trim(),
        "65534",
        "runs as nobody"
    );
    assert_eq!(farm.blob(&result.stdout_digest).await, "tool ran\n");
    assert_eq!(farm.blob(&result.stderr_digest).await, "oops\n");
    let metadata = result.execution_metadata.expect("metadata");
    assert_eq!(metadata.worker, format!("test-{mode:?}"));
    for stamp in [
        metadata.worker_start_timestamp,
        metadata.input_fetch_start_timestamp,
        metadata.input_fetch_completed_timestamp,
        metadata.execution_start_timestamp,
        metadata.execution_completed_timestamp,
        metadata.output_upload_start_timestamp,
        metadata.output_upload_completed_timestamp,
        metadata.worker_completed_timestamp,
    ] {
        assert!(stamp.is_some(), "every stage is timed: {metadata:?}");
    }
    let stats = metadata
        .auxiliary_metadata
        .iter()
        .find(|a| a.type_url.ends_with("InputFetchStatistics"))
        .map(|a| InputFetchStatistics::decode(a.value.as_slice()).expect("decodes"))
        .expect("fetch statistics attached");
    assert_eq!(stats.build_mode, format!("{mode:?}").to_lowercase());
    assert_eq!(
        stats.files_fetched, 2,
        "a.txt and tool.sh came from the CAS"
    );

    // Inputs cannot be changed; the next action sees them intact.
    let response = farm
        .execute(
            root,
            "echo tampered >> in/a.txt || chmod 666 in/a.txt || true; echo x > in/a.txt",
            &[],
            60,
        )
        .await;
    assert_ne!(
        response.result.expect("result").exit_code,
        0,
        "writing an input fails"
    );
    let response = farm.execute(root, "cat in/a.txt", &[], 60).await;
    let result = response.result.expect("result");
    assert_eq!(farm.blob(&result.stdout_digest).await, "input contents\n");

    // A timeout keeps what the command wrote so far.
    let response = farm.execute(root, "echo started; sleep 30", &[], 1).await;
    let status = response.status.expect("status");
    assert_eq!(status.code, Code::DeadlineExceeded as i32, "{status:?}");
    let result = response.result.expect("partial result");
    assert_eq!(farm.blob(&result.stdout_digest).await, "started\n");

    // A missing input is FAILED_PRECONDITION naming the blob, so the client
    // uploads it again.
    let missing = Digest::of(b"never uploaded");
    let broken = farm
        .put_dir(&Directory {
            files: vec![file("gone", missing, false)],
            ..Default::default()
        })
        .await;
    let response = farm.execute(broken, "cat gone", &[], 60).await;
    let status = response.status.expect("status");
    assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
    let failure = status
        .details
        .iter()
        .find(|d| d.type_url.ends_with("google.rpc.PreconditionFailure"))
        .map(|d| PreconditionFailure::decode(d.value.as_slice()).expect("decodes"))
        .expect("a PreconditionFailure");
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", missing.hash_hex(), missing.size())
    );
    assert_eq!(failure.violations[0].r#type, "MISSING");

    farm.stop().await;
    assert!(no_mounts_under(&build_dir), "no mount left behind");
    let left = std::fs::read_dir(&build_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "every action directory removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_mode_runs_actions_end_to_end() {
    runs_actions_and_reports_everything(BuildMode::Native).await;
}

// One runtime thread: if the worker ever made a blocking call into its own
// mount from the runtime, the mount could not answer and this would hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn virtual_mode_runs_actions_end_to_end() {
    runs_actions_and_reports_everything(BuildMode::Virtual).await;
}
