//! Input staging against input size (scripts/bench, part 2): how long a
//! worker takes from taking an action to starting its command, for input
//! roots of 100, 10,000 and 100,000 files, in virtual and native mode.
//!
//! It goes through the real path rather than calling the build directory
//! code alone: an in-process storage and scheduler, a real runner (commands
//! run as nobody), the worker daemon, and REAPI Execute calls of `true`
//! over a synthetic input root. The figure is the worker's own
//! ExecutedActionMetadata, worker_start -> execution_start, the same
//! timestamps the Bazel part of scripts/bench reads, so both parts measure
//! one thing. Input fetch start -> completed is reported beside it.
//!
//! For each size the first action runs on an empty blob cache ("cold");
//! the median of the following runs is "warm", the steady state of a
//! worker that has seen these inputs before (the Bazel case: every compile
//! declares the same Boost headers).
//!
//! Runs as root (mounts, runner). Knobs: LAZYBARN_BENCH_SIZES (default
//! "100,10000,100000"), LAZYBARN_BENCH_RUNS (warm runs, default 5),
//! LAZYBARN_BENCH_MODES ("virtual,native"), LAZYBARN_BENCH_PLOT_DATA (a
//! file to write "files virtual_ms native_ms" rows into, for the plot).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_cas::server::Storage;
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::{
    Action, Command, Directory, DirectoryNode, ExecuteRequest, ExecuteResponse,
    ExecutedActionMetadata, FileNode,
};
use lazybarn_runner::{RunnerConfig, RunnerDaemon};
use lazybarn_scheduler::SchedulerConfig;
use lazybarn_scheduler::server::InProcess;
use lazybarn_worker::{BuildMode, WorkerConfig};
use prost::Message;
use tokio::sync::oneshot;

/// Files per leaf directory of the synthetic tree.
const FILES_PER_DIR: usize = 100;
/// Leaf directories per directory above them.
const FAN_OUT: usize = 32;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let sizes: Vec<usize> = env_or("LAZYBARN_BENCH_SIZES", "100,10000,100000")
        .split(',')
        .map(|s| s.trim().parse().expect("LAZYBARN_BENCH_SIZES: numbers"))
        .collect();
    let runs: usize = env_or("LAZYBARN_BENCH_RUNS", "5")
        .parse()
        .expect("LAZYBARN_BENCH_RUNS: a number");
    let modes: Vec<BuildMode> = env_or("LAZYBARN_BENCH_MODES", "virtual,native")
        .split(',')
        .map(|m| match m.trim() {
            "virtual" => BuildMode::Virtual,
            "native" => BuildMode::Native,
            other => panic!("LAZYBARN_BENCH_MODES: unknown mode {other:?}"),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    // One mode at a time: native runs leave 100,000s of files to write back
    // and delete, which would otherwise land on the next virtual run.
    for &mode in &modes {
        for &files in &sizes {
            eprintln!("bench staging: {files} files, {mode:?}");
            let row = runtime.block_on(measure(mode, files, runs));
            rows.push((files, mode, row));
        }
    }
    print_table(&rows);
    if let Ok(path) = std::env::var("LAZYBARN_BENCH_PLOT_DATA") {
        write_plot_data(&path, &sizes, &rows);
    }
}

/// Medians in milliseconds.
#[derive(Clone, Copy, Default)]
struct Figures {
    cold_start: f64,
    warm_start: f64,
    warm_fetch: f64,
    warm_p90_start: f64,
}

async fn measure(mode: BuildMode, files: usize, runs: usize) -> Figures {
    let farm = Farm::start(mode).await;
    let root = farm.synthetic_tree(files).await;
    let first = farm.run_true(root, 0).await;
    let mut starts = Vec::new();
    let mut fetches = Vec::new();
    for run in 1..=runs {
        let metadata = farm.run_true(root, run).await;
        starts.push(span(&metadata, Span::WorkerToExecution));
        fetches.push(span(&metadata, Span::InputFetch));
    }
    farm.stop().await;
    starts.sort_by(f64::total_cmp);
    fetches.sort_by(f64::total_cmp);
    Figures {
        cold_start: span(&first, Span::WorkerToExecution),
        warm_start: starts[starts.len() / 2],
        warm_fetch: fetches[fetches.len() / 2],
        warm_p90_start: starts[(starts.len() * 9 / 10).min(starts.len() - 1)],
    }
}

enum Span {
    WorkerToExecution,
    InputFetch,
}

fn span(m: &ExecutedActionMetadata, which: Span) -> f64 {
    let (from, to) = match which {
        Span::WorkerToExecution => (&m.worker_start_timestamp, &m.execution_start_timestamp),
        Span::InputFetch => (
            &m.input_fetch_start_timestamp,
            &m.input_fetch_completed_timestamp,
        ),
    };
    let ms = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().expect("the worker fills every timestamp");
        t.seconds as f64 * 1e3 + f64::from(t.nanos) / 1e6
    };
    ms(to) - ms(from)
}

fn print_table(rows: &[(usize, BuildMode, Figures)]) {
    println!(
        "| input files | mode | cold: take -> start | warm: take -> start (median) | warm p90 | warm: input fetch (median) |"
    );
    println!("|---|---|---|---|---|---|");
    for (files, mode, f) in rows {
        println!(
            "| {files} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            format!("{mode:?}").to_lowercase(),
            f.cold_start,
            f.warm_start,
            f.warm_p90_start,
            f.warm_fetch
        );
    }
}

fn write_plot_data(path: &str, sizes: &[usize], rows: &[(usize, BuildMode, Figures)]) {
    let mut out = String::from("# files virtual_ms native_ms (warm median, take -> start)\n");
    for &files in sizes {
        let of = |mode: BuildMode| {
            rows.iter()
                .find(|(f, m, _)| *f == files && *m == mode)
                .map_or("NaN".to_string(), |(_, _, fig)| {
                    format!("{:.3}", fig.warm_start)
                })
        };
        out.push_str(&format!(
            "{files} {} {}\n",
            of(BuildMode::Virtual),
            of(BuildMode::Native)
        ));
    }
    std::fs::write(path, out).expect("writing the plot data");
}

/// Storage, scheduler, runner and one single-slot worker, in this process.
struct Farm {
    server: InProcess,
    stop: Vec<oneshot::Sender<()>>,
    worker: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Farm {
    async fn start(mode: BuildMode) -> Farm {
        let dir = tempfile::Builder::new()
            .prefix("lazybarn-bench-staging")
            .tempdir_in("/tmp")
            .expect("tempdir");
        // The runner's uid (nobody) must traverse to the build directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let storage = Storage::in_memory(8 << 30, 4 << 20);
        let server = InProcess::start(storage, SchedulerConfig::default())
            .await
            .expect("scheduler");

        let socket = dir.path().join("runner.sock");
        let runner = RunnerDaemon::bind(&RunnerConfig::new(&socket)).expect("runner binds");
        let (stop_runner, runner_stopped) = oneshot::channel();
        tokio::spawn(runner.serve(async {
            let _ = runner_stopped.await;
        }));

        let config = WorkerConfig {
            worker_id: Some(format!("bench-{mode:?}")),
            max_cache_bytes: 8 << 30,
            build_mode: mode,
            ..WorkerConfig::new(
                format!("grpc://{}", server.addr),
                dir.path().join("build"),
                dir.path().join("cache"),
                socket,
            )
        };
        let (stop_worker, worker_stopped) = oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            lazybarn_worker::run(config, async {
                let _ = worker_stopped.await;
            })
            .await
            .expect("worker runs");
        });
        Farm {
            server,
            stop: vec![stop_worker, stop_runner],
            worker,
            _dir: dir,
        }
    }

    async fn put(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let digest = Digest::of(&data);
        self.server
            .storage
            .store
            .put(digest, data)
            .await
            .expect("put");
        digest
    }

    /// An input root of `files` distinct small files, 100 to a directory,
    /// 32 such directories to a directory above them, up to a root that
    /// lists at most 32 entries (so the root Directory stays small).
    async fn synthetic_tree(&self, files: usize) -> Digest {
        let mut level: Vec<Directory> = Vec::new();
        let mut blobs = Vec::new();
        for start in (0..files).step_by(FILES_PER_DIR) {
            let mut directory = Directory::default();
            for i in start..(start + FILES_PER_DIR).min(files) {
                let data = Bytes::from(format!("// input file {i}\n"));
                let digest = Digest::of(&data);
                blobs.push((digest, data));
                directory.files.push(FileNode {
                    name: format!("f{i}.h"),
                    digest: Some(digest.to_proto()),
                    is_executable: false,
                    node_properties: None,
                });
            }
            level.push(directory);
        }
        for result in self.server.storage.store.put_batch(blobs).await {
            result.expect("put");
        }
        while level.len() > 1 {
            let mut above = Vec::new();
            for group in level.chunks(FAN_OUT) {
                let mut parent = Directory::default();
                for (i, child) in group.iter().enumerate() {
                    let digest = self.put(child.encode_to_vec()).await;
                    parent.directories.push(DirectoryNode {
                        name: format!("d{i}"),
                        digest: Some(digest.to_proto()),
                    });
                }
                above.push(parent);
            }
            level = above;
        }
        self.put(level.remove(0).encode_to_vec()).await
    }

    /// Runs `true` over `root`; `run` makes each action distinct.
    async fn run_true(&self, root: Digest, run: usize) -> ExecutedActionMetadata {
        let command = Command {
            arguments: vec!["/bin/true".into(), format!("run-{run}")],
            output_paths: vec!["out/result".into()],
            ..Default::default()
        };
        let action = Action {
            command_digest: Some(self.put(command.encode_to_vec()).await.to_proto()),
            input_root_digest: Some(root.to_proto()),
            do_not_cache: true,
            ..Default::default()
        };
        let request = ExecuteRequest {
            action_digest: Some(self.put(action.encode_to_vec()).await.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        };
        let mut stream = ExecutionClient::new(self.server.channel())
            .execute(request)
            .await
            .expect("Execute accepted")
            .into_inner();
        let mut done = None;
        while let Some(op) = stream.message().await.expect("operation stream") {
            if op.done {
                done = Some(op);
                break;
            }
        }
        let response = match done.and_then(|op| op.result) {
            Some(lazybarn_proto::longrunning::operation::Result::Response(any)) => {
                ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
            }
            other => panic!("the action did not finish: {other:?}"),
        };
        let status = response.status.clone().unwrap_or_default();
        assert_eq!(status.code, 0, "the action failed: {}", status.message);
        response
            .result
            .and_then(|r| r.execution_metadata)
            .expect("execution metadata")
    }

    async fn stop(mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.worker)
            .await
            .expect("worker stops")
            .expect("worker task");
    }
}
