//! The worker end to end, in both build-directory modes: a real scheduler
//! and storage in-process, a real runner (commands as nobody), REAPI
//! Execute calls, and checks of what comes back. Runs as root, as CI does.

mod common;

use std::path::PathBuf;

use common::*;
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::Directory;
use lazybarn_proto::rpc::PreconditionFailure;
use lazybarn_proto::worker::InputFetchStatistics;
use lazybarn_worker::BuildMode;
use prost::Message;
use tonic::Code;

async fn runs_actions_and_reports_everything(mode: BuildMode) {
    let farm = Farm::start(mode).await;
    let build_dir: PathBuf = farm.build_dir();
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
    let first = lazybarn_worker::config::DEFAULT_FIRST_SLOT_ID;
    let slot_uids = [first.to_string(), (first + 1).to_string()];
    assert!(
        slot_uids.contains(&String::from_utf8_lossy(&uid).trim().to_string()),
        "runs as its slot's own user, one of {slot_uids:?}: {uid:?}"
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
    assert_eq!(entries_in(&build_dir), 0, "every action directory removed");
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
