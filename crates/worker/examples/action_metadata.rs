//! Summarises what a worker recorded about the actions of one build, for
//! scripts/bench: reads every ActionResult from the Action Cache (over
//! REAPI's GetActionResult; the action digests are the names of the entries
//! in the storage's `ac` directory) and keeps those a worker started at or
//! after a given time, i.e. the actions of the build that just ran.
//!
//! Usage: action_metadata grpc://ADDR AC_DIR SINCE_UNIX_MS [OUTPUT_SUFFIX]
//! (with LAZYBARN_ACTION_METADATA_EACH set, one line per action on stderr)
//!
//! Prints one line of `key=value` pairs: the number of actions; medians,
//! over the actions with an output file ending in OUTPUT_SUFFIX (all
//! actions without it), of the spans of ExecutedActionMetadata: input
//! staging (input fetch start -> completed), worker take -> command start,
//! queued -> taken, the command itself, output upload, and the worker's
//! whole share; and the files and bytes the worker fetched
//! (InputFetchStatistics) over all of the build's actions.

use lazybarn_cas::Digest;
use lazybarn_proto::reapi::action_cache_client::ActionCacheClient;
use lazybarn_proto::reapi::{ActionResult, GetActionResultRequest};
use lazybarn_proto::worker::InputFetchStatistics;
use prost::Message;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, ac_dir, since, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: action_metadata grpc://ADDR AC_DIR SINCE_UNIX_MS [OUTPUT_SUFFIX]".into(),
        );
    };
    let since: f64 = since.parse()?;
    let suffix = rest.first().map(String::as_str).unwrap_or("");
    let endpoint = addr.replacen("grpc://", "http://", 1);
    let mut client = ActionCacheClient::connect(endpoint).await?;
    let mut summary = Summary::default();
    for entry in std::fs::read_dir(ac_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(digest) = entry_digest(&name) else {
            continue;
        };
        let request = GetActionResultRequest {
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        };
        let result = match client.get_action_result(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => continue,
            Err(status) => return Err(status.into()),
        };
        summary.add(&result, since, suffix);
    }
    summary.print();
    Ok(())
}

/// An Action Cache entry is named `{hash}-{size}`.
fn entry_digest(name: &str) -> Option<Digest> {
    Digest::parse(&name.replacen('-', "/", 1)).ok()
}

#[derive(Default)]
struct Summary {
    actions: u64,
    staging_ms: Vec<f64>,
    take_to_start_ms: Vec<f64>,
    queued_ms: Vec<f64>,
    execution_ms: Vec<f64>,
    upload_ms: Vec<f64>,
    worker_ms: Vec<f64>,
    files_fetched: u64,
    bytes_fetched: u64,
}

impl Summary {
    fn add(&mut self, result: &ActionResult, since: f64, suffix: &str) {
        let Some(m) = &result.execution_metadata else {
            return;
        };
        let Some(started) = millis(&m.worker_start_timestamp) else {
            return;
        };
        if started < since {
            return;
        }
        self.actions += 1;
        for any in &m.auxiliary_metadata {
            if any
                .type_url
                .ends_with("lazybarn.worker.v1.InputFetchStatistics")
                && let Ok(stats) = InputFetchStatistics::decode(any.value.as_slice())
            {
                self.files_fetched += stats.files_fetched;
                self.bytes_fetched += stats.bytes_fetched;
                if std::env::var_os("LAZYBARN_ACTION_METADATA_EACH").is_some() {
                    let output = result.output_files.first().map_or("", |f| f.path.as_str());
                    let staging = between(
                        &m.input_fetch_start_timestamp,
                        &m.input_fetch_completed_timestamp,
                    );
                    eprintln!(
                        "{output}: staging {:.1} ms, fetched {} files, {} bytes",
                        staging.unwrap_or(f64::NAN),
                        stats.files_fetched,
                        stats.bytes_fetched
                    );
                }
            }
        }
        if result.output_files.iter().any(|f| f.path.ends_with(suffix)) {
            if let Some(ms) = between(
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ) {
                self.staging_ms.push(ms);
            }
            let spans = [
                (
                    &m.worker_start_timestamp,
                    &m.execution_start_timestamp,
                    &mut self.take_to_start_ms,
                ),
                (
                    &m.queued_timestamp,
                    &m.worker_start_timestamp,
                    &mut self.queued_ms,
                ),
                (
                    &m.execution_start_timestamp,
                    &m.execution_completed_timestamp,
                    &mut self.execution_ms,
                ),
                (
                    &m.output_upload_start_timestamp,
                    &m.output_upload_completed_timestamp,
                    &mut self.upload_ms,
                ),
                (
                    &m.worker_start_timestamp,
                    &m.worker_completed_timestamp,
                    &mut self.worker_ms,
                ),
            ];
            for (from, to, values) in spans {
                if let Some(ms) = between(from, to) {
                    values.push(ms);
                }
            }
        }
    }

    fn print(mut self) {
        println!(
            "actions={} measured={} staging_median_ms={:.2} take_to_start_median_ms={:.2} \
             queued_median_ms={:.1} execution_median_ms={:.1} upload_median_ms={:.2} \
             worker_median_ms={:.1} files_fetched={} bytes_fetched={}",
            self.actions,
            self.staging_ms.len(),
            median(&mut self.staging_ms),
            median(&mut self.take_to_start_ms),
            median(&mut self.queued_ms),
            median(&mut self.execution_ms),
            median(&mut self.upload_ms),
            median(&mut self.worker_ms),
            self.files_fetched,
            self.bytes_fetched
        );
    }
}

fn millis(t: &Option<prost_types::Timestamp>) -> Option<f64> {
    t.as_ref()
        .map(|t| t.seconds as f64 * 1e3 + f64::from(t.nanos) / 1e6)
}

fn between(
    from: &Option<prost_types::Timestamp>,
    to: &Option<prost_types::Timestamp>,
) -> Option<f64> {
    Some(millis(to)? - millis(from)?)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
