//! Input roots a client shaped to hurt: shared subtrees that expand past
//! the mount's entry cap, and invalid entries found only while the action
//! runs. Each failure reaches the worker with a kind it maps to a gRPC code.

mod common;

use std::fs;

use common::{Fixture, sh, tree_of_messages};
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{Directory, DirectoryNode, FileNode};
use lazybarn_vfs::{DEFAULT_MAX_INPUT_ENTRIES, FailureKind, MountConfig, VfsError};
use prost::Message;

fn file(name: &str, contents: &[u8]) -> FileNode {
    FileNode {
        name: name.to_string(),
        digest: Some(Digest::of(contents).to_proto()),
        is_executable: false,
        node_properties: None,
    }
}

fn digest_of(directory: &Directory) -> Digest {
    Digest::of(&directory.encode_to_vec())
}

/// A directory with `n` subdirectories d0..dn, all the same `child`.
fn fan_out(n: usize, child: &Directory) -> Directory {
    Directory {
        directories: (0..n)
            .map(|i| DirectoryNode {
                name: format!("d{i}"),
                digest: Some(digest_of(child).to_proto()),
            })
            .collect(),
        ..Default::default()
    }
}

fn holding(name: &str, child: &Directory) -> Directory {
    Directory {
        directories: vec![DirectoryNode {
            name: name.to_string(),
            digest: Some(digest_of(child).to_proto()),
        }],
        ..Default::default()
    }
}

fn with_cap(max_input_entries: u64) -> MountConfig {
    MountConfig {
        passthrough: false,
        max_input_entries,
        ..MountConfig::default()
    }
}

#[test]
fn a_root_directory_over_the_cap_is_refused_at_mount() {
    let root = Directory {
        files: (0..11).map(|i| file(&format!("f{i}"), b"x")).collect(),
        ..Default::default()
    };
    let tree = tree_of_messages(&root, &[], &[b"x"]);
    let Err(err) = Fixture::with_config(tree, with_cap(10)) else {
        panic!("an 11-entry root mounted under a cap of 10");
    };
    assert!(matches!(err, VfsError::InputTooLarge { .. }), "{err}");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let message = err.to_string();
    assert!(message.contains("max_input_entries = 10"), "{message}");
    assert!(message.contains("11"), "{message}");
}

#[test]
fn a_lookup_past_the_cap_gets_enospc_and_is_recorded() {
    let leaf = Directory {
        files: (0..60).map(|i| file(&format!("f{i}"), b"x")).collect(),
        ..Default::default()
    };
    let top = fan_out(60, &leaf);
    let root = holding("top", &top);
    let tree = tree_of_messages(&root, &[top, leaf.clone()], &[b"x"]);
    let f = Fixture::with_config(tree, with_cap(100)).expect("mount");
    // 1 (top) + 60 (its subdirectories) fit; 60 more do not.
    assert_eq!(fs::read_dir(f.path("top")).expect("ls top").count(), 60);
    let err = fs::read_dir(f.path("top/d0")).expect_err("over the cap");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    let failures = f.mount().failures();
    let failure = failures.last().expect("recorded");
    assert_eq!(failure.kind, FailureKind::TooLarge);
    assert_eq!(failure.code(), tonic::Code::ResourceExhausted);
    assert_eq!(failure.digest, Some(digest_of(&leaf)));
    assert!(
        failure.message.contains("max_input_entries = 100") && failure.message.contains("121"),
        "{failure:?}"
    );
    // Trying again does not grow the list.
    let _ = fs::read_dir(f.path("top/d0"));
    assert_eq!(f.mount().failures().len(), failures.len());
}

#[test]
fn shared_subtrees_expanding_to_216000_paths_stop_at_the_default_cap() {
    // 14 KB of Directory messages: 60 x 60 x 60 files.
    let leaf = Directory {
        files: (0..60).map(|i| file(&format!("f{i}"), b"x")).collect(),
        ..Default::default()
    };
    let middle = fan_out(60, &leaf);
    let top = fan_out(60, &middle);
    let root = holding("top", &top);
    let messages = [top, middle, leaf];
    let bytes: usize = messages.iter().map(|d| d.encoded_len()).sum();
    assert!(bytes < 16 << 10, "{bytes} bytes of Directory messages");
    let tree = tree_of_messages(&root, &messages, &[b"x"]);
    let config = MountConfig {
        passthrough: false,
        ..MountConfig::default()
    };
    assert_eq!(config.max_input_entries, DEFAULT_MAX_INPUT_ENTRIES);
    let f = Fixture::with_config(tree, config).expect("mount");
    let err =
        f.rt.block_on(f.mount().capture(&["top".to_string()]))
            .expect_err("capturing all of it loads past the cap");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(
        err.to_string().contains("max_input_entries = 200000"),
        "{err}"
    );
}

#[test]
fn invalid_entries_found_while_the_action_runs_are_invalid_input() {
    let dot_dot = Directory {
        files: vec![file("..", b"x")],
        ..Default::default()
    };
    let file_and_dir = Directory {
        files: vec![file("x", b"x")],
        directories: vec![DirectoryNode {
            name: "x".to_string(),
            digest: Some(digest_of(&Directory::default()).to_proto()),
        }],
        ..Default::default()
    };
    let root = Directory {
        directories: vec![
            DirectoryNode {
                name: "dotdot".to_string(),
                digest: Some(digest_of(&dot_dot).to_proto()),
            },
            DirectoryNode {
                name: "twice".to_string(),
                digest: Some(digest_of(&file_and_dir).to_proto()),
            },
        ],
        ..Default::default()
    };
    let tree = tree_of_messages(
        &root,
        &[dot_dot.clone(), file_and_dir.clone(), Directory::default()],
        &[b"x"],
    );
    let f = Fixture::with_config(tree, with_cap(1_000)).expect("mount");
    for (dir, directory, name) in [
        ("dotdot", &dot_dot, "\"..\""),
        ("twice", &file_and_dir, "\"x\""),
    ] {
        let err = fs::read_dir(f.path(dir)).expect_err("invalid directory listed");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{dir}: {err}");
        let failures = f.mount().failures();
        let failure = failures.last().expect("recorded");
        assert_eq!(failure.kind, FailureKind::InvalidInput, "{failure:?}");
        assert_eq!(failure.code(), tonic::Code::InvalidArgument);
        assert_eq!(failure.digest, Some(digest_of(directory)));
        assert!(failure.message.contains(name), "{failure:?}");
        assert!(
            failure.message.contains(&digest_of(directory).to_string()),
            "{failure:?}"
        );
    }
}

#[test]
fn a_blob_missing_from_the_cas_is_a_failed_precondition() {
    let root = Directory {
        files: vec![file("gone.txt", b"never uploaded")],
        ..Default::default()
    };
    let tree = tree_of_messages(&root, &[], &[]);
    let f = Fixture::with_config(tree, with_cap(1_000)).expect("mount");
    let out = sh(&f.path(""), None, "cat gone.txt");
    assert!(!out.status.success());
    let failures = f.mount().failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].kind, FailureKind::Missing);
    assert_eq!(failures[0].code(), tonic::Code::FailedPrecondition);
    assert_eq!(failures[0].digest, Some(Digest::of(b"never uploaded")));
}
