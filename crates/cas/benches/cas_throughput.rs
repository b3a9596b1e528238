//! Storage throughput over loopback, next to `cp` of the same bytes on the
//! same disk, and FindMissingBlobs latency.
//!
//! Run with `scripts/bench-cas` (or `cargo bench -p lazybarn-cas`). For each
//! blob size it uploads 1 GiB to a fresh disk store through `CasClient`
//! over a loopback gRPC connection, downloads it back, and copies the same
//! bytes, laid out as the same number of files, with `cp -r` into the same
//! filesystem. Every figure is the median of several runs in this process;
//! ratios compare against `cp` measured in the same run. The store fsyncs
//! what it acknowledges and `cp` does not, so `cp` followed by `sync` is
//! shown as well.
//!
//! Environment: LAZYBARN_BENCH_BYTES (default 1 GiB), LAZYBARN_BENCH_RUNS
//! (default 3), LAZYBARN_BENCH_DIR (default target/bench-cas, same disk as
//! the build), LAZYBARN_BENCH_BLOB_SIZES (default "1048576,4096").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lazybarn_cas::server::{Loopback, Storage};
use lazybarn_cas::service::DEFAULT_MAX_BATCH_BYTES;
use lazybarn_cas::{BlobStore, CasClient, Digest, DiskStore};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// `count` distinct blobs of `size` bytes; blob i starts with its index so
/// no two are equal, the rest is a cheap pseudo-random fill.
fn make_blobs(count: usize, size: usize, salt: u64) -> Vec<(Digest, Bytes)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    (0..count)
        .map(|i| {
            let mut data = Vec::with_capacity(size);
            data.extend_from_slice(&(i as u64).to_le_bytes());
            data.extend_from_slice(&salt.to_le_bytes());
            while data.len() < size {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.extend_from_slice(&state.to_le_bytes());
            }
            data.truncate(size);
            (Digest::of(&data), Bytes::from(data))
        })
        .collect()
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// Writes the blobs as files into `dir` (the source for `cp`).
fn write_files(dir: &Path, blobs: &[(Digest, Bytes)]) {
    for (i, (_, data)) in blobs.iter().enumerate() {
        let sub = dir.join(format!("{:03}", i % 256));
        if i < 256 {
            std::fs::create_dir_all(&sub).expect("mkdir");
        }
        std::fs::write(sub.join(i.to_string()), data).expect("write source file");
    }
}

fn run_cp(src: &Path, dst: &Path, then_sync: bool) -> Duration {
    let _ = std::fs::remove_dir_all(dst);
    sync();
    let start = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(dst)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp failed");
    if then_sync {
        sync();
    }
    start.elapsed()
}

fn sync() {
    let _ = std::process::Command::new("sync").status();
}

async fn start_server(dir: &Path) -> (CasClient, Storage, Loopback) {
    let storage =
        Storage::open(dir, 64 << 30, DEFAULT_MAX_BATCH_BYTES).expect("open bench storage");
    let server = Loopback::serve(storage.routes())
        .await
        .expect("serve on loopback");
    let client = CasClient::connect(&server.url(), "")
        .await
        .expect("connect");
    (client, storage, server)
}

struct SizeResult {
    label: String,
    upload: Duration,
    direct: Duration,
    download: Duration,
    cp: Duration,
    cp_sync: Duration,
}

async fn bench_size(base: &Path, total: u64, blob_size: usize, runs: u64) -> SizeResult {
    let count = (total / blob_size as u64) as usize;
    let blobs = make_blobs(count, blob_size, blob_size as u64);
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let src = fresh_dir(base, "cp-src");
    write_files(&src, &blobs);
    let (mut up, mut down, mut cp, mut cp_sync) = (vec![], vec![], vec![], vec![]);
    let mut direct = vec![];
    for run in 0..runs {
        let dir = fresh_dir(base, &format!("store-{run}"));
        let (client, _storage, _server) = start_server(&dir).await;
        sync();
        let start = Instant::now();
        client.upload(blobs.clone()).await.expect("upload");
        up.push(start.elapsed());

        let store_dir = fresh_dir(base, &format!("direct-{run}"));
        sync();
        direct.push(put_directly(&store_dir, &blobs).await);
        let _ = std::fs::remove_dir_all(&store_dir);

        let start = Instant::now();
        let read = client.download_batch(&digests).await.expect("download");
        down.push(start.elapsed());
        assert_eq!(read.len(), count);
        drop(read);

        cp.push(run_cp(&src, &base.join("cp-dst"), false));
        cp_sync.push(run_cp(&src, &base.join("cp-dst"), true));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(base.join("cp-dst"));
    let _ = std::fs::remove_dir_all(&src);
    SizeResult {
        label: format!("{count} x {}", human(blob_size as u64)),
        upload: median(up),
        direct: median(direct),
        download: median(down),
        cp: median(cp),
        cp_sync: median(cp_sync),
    }
}

/// The same blobs put straight into a DiskStore, batched and in parallel
/// as the client would send them, with no gRPC: what the disk path costs.
async fn put_directly(dir: &Path, blobs: &[(Digest, Bytes)]) -> Duration {
    let store = DiskStore::open(dir, 64 << 30).expect("open store");
    let per_batch = (DEFAULT_MAX_BATCH_BYTES / (blobs[0].1.len() + 256)).max(1);
    let start = Instant::now();
    let results: Vec<Vec<_>> = futures::stream::iter(blobs.chunks(per_batch))
        .map(|batch| store.put_batch(batch.to_vec()))
        .buffer_unordered(4)
        .collect()
        .await;
    let elapsed = start.elapsed();
    assert!(results.iter().flatten().all(|r| r.is_ok()));
    elapsed
}

async fn bench_find_missing(base: &Path, runs: usize) -> (Duration, Duration) {
    let dir = fresh_dir(base, "store-find");
    let (client, _storage, _server) = start_server(&dir).await;
    let present = make_blobs(5_000, 64, 1);
    client.upload(present.clone()).await.expect("upload");
    let absent = make_blobs(5_000, 64, 2);
    let digests: Vec<Digest> = present.iter().chain(&absent).map(|(d, _)| *d).collect();
    let mut samples = vec![];
    for _ in 0..runs {
        let start = Instant::now();
        let missing = client.find_missing(&digests).await.expect("find");
        samples.push(start.elapsed());
        assert_eq!(missing.len(), 5_000);
    }
    let _ = std::fs::remove_dir_all(&dir);
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 9 / 10])
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

#[tokio::main]
async fn main() {
    let total = env_or("LAZYBARN_BENCH_BYTES", 1 << 30);
    let runs = env_or("LAZYBARN_BENCH_RUNS", 3);
    let base = std::env::var("LAZYBARN_BENCH_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-cas"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&base).expect("bench dir");
    println!(
        "CAS throughput over loopback: {} per case, median of {runs} runs, in {}",
        human(total),
        base.display()
    );
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>12} {:>14} {:>8} {:>8} {:>10}",
        "blobs",
        "upload MiB/s",
        "download",
        "store only",
        "cp -r",
        "cp -r + sync",
        "up/cp",
        "down/cp",
        "store/cp"
    );
    let sizes =
        std::env::var("LAZYBARN_BENCH_BLOB_SIZES").unwrap_or_else(|_| "1048576,4096".into());
    for blob_size in sizes
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
    {
        let r = bench_size(&base, total, blob_size, runs).await;
        let (u, d, s, c, cs) = (
            mib_per_s(total, r.upload),
            mib_per_s(total, r.download),
            mib_per_s(total, r.direct),
            mib_per_s(total, r.cp),
            mib_per_s(total, r.cp_sync),
        );
        println!(
            "{:<18} {u:>12.0} {d:>12.0} {s:>12.0} {c:>12.0} {cs:>14.0} {:>8.2} {:>8.2} {:>10.2}",
            r.label,
            u / c,
            d / c,
            s / c
        );
    }
    let (median, p90) = bench_find_missing(&base, 50).await;
    println!(
        "FindMissingBlobs of 10,000 digests (5,000 present): median {:.2} ms, p90 {:.2} ms (target < 20 ms)",
        median.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3
    );
}
