//! Eight processes reading overlapping files at once: each blob is fetched
//! exactly once, and every reader sees the right bytes.

mod common;

use std::process::Command;

use common::{Fixture, open_tempdir};
use lazybarn_cas::Digest;

const FILES: usize = 40;
const READERS: usize = 8;

fn contents(i: usize) -> Vec<u8> {
    (0..256 * 1024)
        .map(|j| ((i * 7919 + j * 31) % 251) as u8)
        .collect()
}

fn overlapping_readers(passthrough: bool) {
    let input = open_tempdir();
    for i in 0..FILES {
        std::fs::write(input.path().join(format!("f{i}")), contents(i)).expect("write");
    }
    let f = Fixture::new(input.path(), passthrough);
    let handles: Vec<_> = (0..READERS)
        .map(|r| {
            let root = f.path("");
            std::thread::spawn(move || {
                let files: Vec<String> = (0..20)
                    .map(|k| format!("f{}", (r * 3 + k) % FILES))
                    .collect();
                let out = Command::new("sha256sum")
                    .args(&files)
                    .current_dir(root)
                    .output()
                    .expect("sha256sum");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).expect("utf-8")
            })
        })
        .collect();
    for handle in handles {
        let sums = handle.join().expect("reader");
        for line in sums.lines() {
            let (hash, name) = line.split_once("  ").expect("sha256sum line");
            let i: usize = name[1..].parse().expect("index");
            assert_eq!(hash, Digest::of(&contents(i)).hash_hex(), "{name}");
        }
    }
    for i in 0..FILES {
        assert!(
            f.source.fetches_of(&Digest::of(&contents(i))) <= 1,
            "f{i} fetched twice"
        );
    }
    let fetched = f.source.fetches.lock().len();
    // Every file was read by someone, plus the root Directory.
    assert_eq!(fetched, FILES + 1);
    let stats = f.mount().stats();
    assert_eq!(stats.files_fetched as usize, FILES);
}

#[test]
fn each_blob_fetched_once_with_passthrough() {
    overlapping_readers(true);
}

#[test]
fn each_blob_fetched_once_without_passthrough() {
    overlapping_readers(false);
}
