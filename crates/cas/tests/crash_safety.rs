//! Crash safety and full disks, against real processes and filesystems.
//!
//! - The storage binary is killed with SIGKILL in the middle of many
//!   uploads, restarted on the same directory, and must then hold every
//!   acknowledged blob, serve only blobs that verify, and keep no leftovers.
//! - A store on a tiny tmpfs answers RESOURCE_EXHAUSTED when the disk fills,
//!   and stays correct afterwards. Mounting needs root, which CI has.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, blob};
use lazybarn_cas::{CasClient, Digest};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;

async fn start_storage(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lazybarn-storage"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start lazybarn-storage");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("storage ready in time")
        .expect("read stdout")
        .expect("a ready line");
    let url = line
        .strip_prefix("lazybarn-storage ready: ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

/// Every file under `blobs/` must hash to the name it is stored under.
fn check_files_on_disk(dir: &Path) -> usize {
    let mut count = 0;
    for shard in std::fs::read_dir(dir.join("cas/blobs")).expect("blobs dir") {
        for entry in std::fs::read_dir(shard.expect("shard").path()).expect("shard dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_string();
            let data = std::fs::read(&path).expect("read blob");
            let actual = Digest::of(&data);
            assert_eq!(
                format!("{}-{}", actual.hash_hex(), actual.size()),
                name,
                "corrupt blob file"
            );
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_leaves_only_whole_verified_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, url) = start_storage(dir.path()).await;
    let client = CasClient::connect(&url, "").await.expect("connect");
    let acknowledged = Arc::new(Mutex::new(Vec::<Digest>::new()));
    let attempted = Arc::new(Mutex::new(Vec::<Digest>::new()));
    let writers: Vec<_> = (0..6u64)
        .map(|w| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            let attempted = attempted.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    // Alternate batches of small blobs and single large ones.
                    let blobs: Vec<_> = if i % 2 == 0 {
                        (0..20).map(|j| blob(w << 40 | i << 8 | j, 3000)).collect()
                    } else {
                        vec![blob(w << 40 | i << 8, 1_500_000 + i as usize)]
                    };
                    attempted
                        .lock()
                        .expect("lock")
                        .extend(blobs.iter().map(|(d, _)| *d));
                    let digests: Vec<_> = blobs.iter().map(|(d, _)| *d).collect();
                    if client.upload(blobs).await.is_err() {
                        return;
                    }
                    acknowledged.lock().expect("lock").extend(digests);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reap");
    // Uploads in flight now retry against a dead server; stop them.
    for w in writers {
        w.abort();
        let _ = w.await;
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let attempted = attempted.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 20,
        "the writers made progress before the kill"
    );
    assert!(
        attempted.len() > acknowledged.len(),
        "the kill interrupted uploads"
    );

    let (_child, url) = start_storage(dir.path()).await;
    let client = CasClient::connect(&url, "").await.expect("reconnect");
    let missing = client.find_missing(&acknowledged).await.expect("find");
    assert!(missing.is_empty(), "acknowledged blobs lost: {missing:?}");
    let missing: std::collections::HashSet<_> = client
        .find_missing(&attempted)
        .await
        .expect("find")
        .into_iter()
        .collect();
    for d in attempted.iter().filter(|d| !missing.contains(d)) {
        client
            .download(*d)
            .await
            .expect("every blob served verifies");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("cas/tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert!(check_files_on_disk(dir.path()) >= acknowledged.len());
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: this test needs root"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_and_corrupts_nothing() {
    let disk = SmallDisk::mount("4m");
    let server = TestServer::disk(disk.dir.path(), 1 << 30, 1 << 20).await;
    let client = server.client().await;
    let (kept, kept_data) = blob(1, 100_000);
    client
        .upload(vec![(kept, kept_data.clone())])
        .await
        .expect("small blob fits");

    let (big, big_data) = blob(2, 6 << 20);
    let err = client
        .upload(vec![(big, big_data)])
        .await
        .expect_err("disk full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());

    // Space taken by the failed write is usable again.
    let (after, after_data) = blob(3, 100_000);
    client
        .upload(vec![(after, after_data.clone())])
        .await
        .expect("fits again");
    assert_eq!(client.download(after).await.expect("read"), after_data);

    // In a batch that overflows, the blobs that fit are stored, the rest
    // are refused, and everything stored verifies.

    let small: Vec<_> = (10..80).map(|i| blob(i, 60_000)).collect();
    let digests: Vec<_> = small.iter().map(|(d, _)| *d).collect();
    let err = client
        .upload(small)
        .await
        .expect_err("batch fills the disk");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());

    let missing = client.find_missing(&digests).await.expect("find");
    assert!(
        !missing.is_empty() && missing.len() < digests.len(),
        "some fit, some did not"
    );
    for d in digests.iter().filter(|d| !missing.contains(d)) {
        client.download(*d).await.expect("stored blobs verify");
    }
    assert_eq!(client.find_missing(&[big]).await.expect("find"), vec![big]);
    assert_eq!(
        client.download(kept).await.expect("old blob intact"),
        kept_data
    );
    let tmp = disk.dir.path().join("cas/tmp");
    assert_eq!(
        std::fs::read_dir(tmp).expect("tmp").count(),
        0,
        "no partial files left"
    );
    assert!(check_files_on_disk(disk.dir.path()) >= 2);
    drop(server);
}
