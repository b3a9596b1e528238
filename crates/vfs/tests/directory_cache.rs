//! The worker-wide Directory cache: a Directory one mount fetched is never
//! fetched again by a later mount of a tree that contains it, and a mount
//! still resolves subdirectories lazily (nothing is fetched before it is
//! looked into).

mod common;

use std::fs;
use std::path::Path;

use common::{Fixture, write_files};

/// Reads every directory under `dir` (no file is opened).
fn walk(dir: &Path) -> usize {
    let mut seen = 1;
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_dir() {
            seen += walk(&entry.path());
        }
    }
    seen
}

fn directory_fetches(f: &Fixture) -> usize {
    f.source.fetches.lock().values().sum()
}

#[test]
fn a_second_mount_of_the_same_tree_fetches_no_directory() {
    let input = write_files(&[
        ("a/b/c/deep.h", "deep"),
        ("a/b/mid.h", "mid"),
        ("a/d/other.h", "other"),
        ("e/top.h", "top"),
        ("root.h", "root"),
    ]);
    let mut f = Fixture::new(input.path(), true);
    let total = f.tree.directories;
    assert_eq!(total, 6, "root, a, a/b, a/b/c, a/d, e");

    // Lazy as before: the mount fetched the root only, and a lookup of one
    // path fetches only the directories on it.
    assert_eq!(directory_fetches(&f), 1);
    assert!(f.path("a/b/mid.h").exists());
    assert_eq!(directory_fetches(&f), 3);

    assert_eq!(walk(&f.path("")), total);
    let first = f.mount().stats();
    assert_eq!(first.directories_loaded, total as u64);
    assert_eq!(first.directories_fetched, total as u64);
    assert_eq!(directory_fetches(&f), total, "each Directory fetched once");
    assert_eq!(f.cache.directories().len(), total);

    f.remount(true);
    assert_eq!(walk(&f.path("")), total);
    let second = f.mount().stats();
    assert_eq!(second.directories_loaded, total as u64);
    assert_eq!(second.directories_fetched, 0);
    assert_eq!(directory_fetches(&f), total, "nothing fetched again");
    assert_eq!(
        fs::read_to_string(f.path("a/b/c/deep.h")).expect("read through the second mount"),
        "deep"
    );
}

#[test]
fn a_tree_sharing_subdirectories_fetches_only_what_is_new() {
    let first = write_files(&[("shared/x.h", "x"), ("shared/sub/y.h", "y"), ("one.h", "1")]);
    let second = write_files(&[("shared/x.h", "x"), ("shared/sub/y.h", "y"), ("two.h", "2")]);
    let mut f = Fixture::new(first.path(), true);
    walk(&f.path(""));
    assert_eq!(directory_fetches(&f), 3);

    // Mount a different root (its own Directory) over the same shared/ tree.
    let tree = common::tree_of(second.path());
    f.rt.block_on(f.cas.client.upload_missing(tree.blobs.clone()))
        .expect("upload");
    f.tree = tree;
    f.remount(true);
    walk(&f.path(""));
    let stats = f.mount().stats();
    assert_eq!(stats.directories_loaded, 3);
    assert_eq!(stats.directories_fetched, 1, "only the new root");
    assert!(f.path("two.h").exists());
    assert!(!f.path("one.h").exists());
}
