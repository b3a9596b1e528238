//! One action from assignment to ExecuteResponse: prepare the directory,
//! run the command through the runner, capture and upload the outputs, and
//! describe what happened. Every stage is timed for ExecutedActionMetadata.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::{ActionResult, Command, ExecuteResponse, ExecutedActionMetadata};
use lazybarn_proto::rpc::{self, PreconditionFailure, precondition_failure::Violation};
use lazybarn_proto::runner::{EnvironmentVariable, RunRequest, RunResponse};
use lazybarn_proto::worker::{ExecutionStage, InputFetchStatistics, WorkAssignment};
use lazybarn_vfs::{BlobCache, BlobSource, CasBlobSource, MountConfig};
use prost::Message;
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::build_dir::{ActionDirectory, DirectoryContext, FetchStats};
use crate::config::BuildMode;
use crate::isolation::{Identity, Isolation};
use crate::runner::RunnerConnection;
use crate::upload;

/// Everything the worker's slots share.
pub struct ActionEnvironment {
    /// This worker's id, for ExecutedActionMetadata.worker.
    pub worker_id: String,
    /// Where action directories go.
    pub build_directory: PathBuf,
    /// Virtual or native.
    pub mode: BuildMode,
    /// The shared blob cache.
    pub cache: Arc<BlobCache>,
    /// The CAS, under the empty instance name; each action uses its own.
    pub cas: CasClient,
    /// The CAS's address, for messages.
    pub cas_address: String,
    /// The runner.
    pub runner: RunnerConnection,
    /// Mount settings (virtual mode).
    pub mount: MountConfig,
    /// Concurrent input fetches (native mode).
    pub fetch_concurrency: usize,
    /// Who actions run as, their network, and the caps.
    pub isolation: Isolation,
}

/// Where an execution is and what is known of its timing; the worker's
/// heartbeat reports it.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The current stage.
    pub stage: i32,
    /// Timestamps so far.
    pub metadata: ExecutedActionMetadata,
}

/// The status a client needs to re-upload a missing blob: FAILED_PRECONDITION
/// with a PreconditionFailure naming `blobs/{hash}/{size}`, as REAPI says.
pub fn missing_blob_status(digest: Digest) -> Status {
    let failure = PreconditionFailure {
        violations: vec![Violation {
            r#type: "MISSING".to_string(),
            subject: format!("blobs/{}/{}", digest.hash_hex(), digest.size()),
            description: format!("input blob {digest} is not in the CAS"),
        }],
    };
    let message = format!("input blob {digest} is missing from the CAS");
    let details = rpc::Status {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.PreconditionFailure".to_string(),
            value: failure.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::FailedPrecondition,
        message,
        Bytes::from(details.encode_to_vec()),
    )
}

/// A tonic status as the google.rpc.Status of an ExecuteResponse, keeping
/// rich error details.
pub fn rpc_status(status: &Status) -> rpc::Status {
    if let Ok(decoded) = rpc::Status::decode(status.details())
        && decoded.code == status.code() as i32
    {
        return decoded;
    }
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: vec![],
    }
}

fn now() -> Option<prost_types::Timestamp> {
    Some(SystemTime::now().into())
}

/// Runs one assignment in slot `slot` to the end and describes the
/// outcome. Dropping the future cancels the action (the runner kills the
/// command); the directory is then removed by the caller's cleanup of the
/// build directory.
pub async fn execute(
    env: &ActionEnvironment,
    slot: usize,
    assignment: &WorkAssignment,
    progress: &watch::Sender<Progress>,
) -> ExecuteResponse {
    let mut metadata = ExecutedActionMetadata {
        worker: env.worker_id.clone(),
        queued_timestamp: assignment.queued_timestamp,
        worker_start_timestamp: now(),
        ..Default::default()
    };
    let identity = env.isolation.identity(slot);
    let (result, status) =
        match run_stages(env, identity, assignment, progress, &mut metadata).await {
            Ok((result, timed_out)) => {
                let status = if timed_out {
                    rpc::Status {
                        code: Code::DeadlineExceeded as i32,
                        message: format!(
                            "the action ran longer than its timeout of {}s and was killed",
                            assignment.timeout.map_or(0, |t| t.seconds)
                        ),
                        details: vec![],
                    }
                } else {
                    rpc::Status::default()
                };
                (Some(result), status)
            }
            Err(status) => (None, rpc_status(&status)),
        };
    metadata.worker_completed_timestamp = now();
    ExecuteResponse {
        result: result.map(|mut r| {
            r.execution_metadata = Some(metadata);
            r
        }),
        cached_result: false,
        message: if status.code == 0 {
            String::new()
        } else {
            status.message.clone()
        },
        status: Some(status),
        server_logs: Default::default(),
    }
}

/// `status` with the CAS named, when the CAS could not be reached: its own
/// message says what failed but not where, and workers may use a CAS other
/// than the scheduler's.
fn naming_the_cas(status: Status, doing: &str, address: &str) -> Status {
    if status.code() != Code::Unavailable {
        return status;
    }
    Status::unavailable(format!(
        "{doing}: the CAS at {address} stayed unavailable: {}",
        status.message()
    ))
}

/// The stages; Ok carries the result and whether the command timed out.
async fn run_stages(
    env: &ActionEnvironment,
    identity: Identity,
    assignment: &WorkAssignment,
    progress: &watch::Sender<Progress>,
    metadata: &mut ExecutedActionMetadata,
) -> Result<(ActionResult, bool), Status> {
    let action = assignment
        .action
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("the assignment carries no Action"))?;
    let command = assignment
        .command
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("the assignment carries no Command"))?;
    let input_root = Digest::from_proto(action.input_root_digest.as_ref())
        .map_err(|e| Status::invalid_argument(format!("input root: {e}")))?;
    let host_network = env.isolation.host_network(action, command)?;
    let cas = env.cas.for_instance(&assignment.instance_name);
    let source: Arc<dyn BlobSource> = Arc::new(CasBlobSource::new(cas.clone()));

    report(progress, ExecutionStage::FetchingInputs, metadata);
    metadata.input_fetch_start_timestamp = now();
    let context = DirectoryContext {
        build_directory: &env.build_directory,
        mode: env.mode,
        cache: &env.cache,
        source: &source,
        cas: &cas,
        mount: &env.mount,
        fetch_concurrency: env.fetch_concurrency,
        identity,
        limits: env.isolation.limits,
    };
    let directory = ActionDirectory::prepare(&context, &assignment.execution_id, input_root)
        .await
        .map_err(|e| naming_the_cas(e, "fetching inputs", &env.cas_address))?;
    let sandbox = Sandbox {
        identity,
        host_network,
    };
    let outcome = run_in(
        env, assignment, command, &directory, sandbox, &cas, progress, metadata,
    )
    .await;
    let stats = directory.fetch_stats();
    let fetch_failure = directory.first_fetch_failure();
    directory.destroy().await;
    if let Some((failure, true)) = fetch_failure {
        // The command saw only part of an invalid or oversized input tree,
        // whatever came of it.
        return Err(failure);
    }
    let (mut result, run) = outcome?;
    if let Some((failure, _)) = fetch_failure
        && run.exit_code != 0
    {
        // The command most likely failed because an input read got EIO.
        return Err(failure);
    }
    metadata
        .auxiliary_metadata
        .push(fetch_statistics(env.mode, stats));
    result.exit_code = run.exit_code;
    Ok((result, run.timed_out))
}

/// What the runner is told about the command's sandbox.
#[derive(Clone, Copy)]
struct Sandbox {
    identity: Identity,
    host_network: bool,
}

/// Everything between a prepared directory and its removal.
#[allow(clippy::too_many_arguments)]
async fn run_in(
    env: &ActionEnvironment,
    assignment: &WorkAssignment,
    command: &Command,
    directory: &ActionDirectory,
    sandbox: Sandbox,
    cas: &CasClient,
    progress: &watch::Sender<Progress>,
    metadata: &mut ExecutedActionMetadata,
) -> Result<(ActionResult, RunResponse), Status> {
    directory.create_output_parents(command).await?;
    metadata.input_fetch_completed_timestamp = now();

    report(progress, ExecutionStage::Executing, metadata);
    metadata.execution_start_timestamp = now();
    let run = env
        .runner
        .run(run_request(assignment, command, directory, sandbox))
        .await?;
    metadata.execution_completed_timestamp = now();

    report(progress, ExecutionStage::UploadingOutputs, metadata);
    metadata.output_upload_start_timestamp = now();
    let captured = directory.capture(command).await?;
    let mut result = ActionResult::default();
    let mut blobs = captured.into_result(&mut result);
    let (stdout, stderr) = directory.logs().await?;
    result.stdout_digest = Some(stdout.digest.to_proto());
    result.stderr_digest = Some(stderr.digest.to_proto());
    blobs.push((stdout.digest, stdout.data));
    blobs.push((stderr.digest, stderr.data));
    upload::upload_blobs(cas, blobs)
        .await
        .map_err(|e| naming_the_cas(e, "uploading outputs", &env.cas_address))?;
    metadata.output_upload_completed_timestamp = now();
    Ok((result, run))
}

fn run_request(
    assignment: &WorkAssignment,
    command: &Command,
    directory: &ActionDirectory,
    sandbox: Sandbox,
) -> RunRequest {
    // A slot of its own names its user; otherwise the runner's configured
    // user runs every command.
    let own = sandbox.identity.own;
    let working_directory = directory.root().join(&command.working_directory);
    RunRequest {
        arguments: command.arguments.clone(),
        environment_variables: command
            .environment_variables
            .iter()
            .map(|v| EnvironmentVariable {
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect(),
        working_directory: working_directory.display().to_string(),
        stdout_path: directory.stdout_path().display().to_string(),
        stderr_path: directory.stderr_path().display().to_string(),
        timeout: assignment.timeout,
        input_root_directory: directory.root().display().to_string(),
        uid: own.then_some(sandbox.identity.uid),
        gid: own.then_some(sandbox.identity.gid),
        host_network: sandbox.host_network,
        temporary_directory: directory.tmp_path().display().to_string(),
    }
}

fn report(
    progress: &watch::Sender<Progress>,
    stage: ExecutionStage,
    metadata: &ExecutedActionMetadata,
) {
    progress.send_replace(Progress {
        stage: stage as i32,
        metadata: metadata.clone(),
    });
}

fn fetch_statistics(mode: BuildMode, stats: FetchStats) -> prost_types::Any {
    let message = InputFetchStatistics {
        build_mode: match mode {
            BuildMode::Virtual => "virtual",
            BuildMode::Native => "native",
        }
        .to_string(),
        files_fetched: stats.files_fetched,
        bytes_fetched: stats.bytes_fetched,
    };
    prost_types::Any {
        type_url: "type.googleapis.com/lazybarn.worker.v1.InputFetchStatistics".to_string(),
        value: message.encode_to_vec(),
    }
}
