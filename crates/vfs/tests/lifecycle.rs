//! Mount lifecycle and failures: lazy loading, unmount while files are
//! open, cleaning mounts a crashed worker left, CAS errors as EIO, and
//! input roots that break REAPI's rules.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use common::{CountingSource, Fixture, TestCas, open_tempdir, runtime, sh, write_files};
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{Directory, FileNode};
use lazybarn_vfs::{
    BlobCache, BlobSource, FailureKind, Mount, MountConfig, VfsError, clean_stale_mounts,
};
use prost::Message;

fn mounted(path: &std::path::Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*path))
}

#[test]
fn directories_load_on_first_use_only() {
    let input = write_files(&[
        ("a/b/c/d.txt", "deep"),
        ("x/y.txt", "y"),
        ("top.txt", "top"),
    ]);
    let f = Fixture::new(input.path(), true);
    assert_eq!(f.mount().stats().directories_loaded, 1);
    assert_eq!(fs::read_to_string(f.path("top.txt")).expect("read"), "top");
    assert_eq!(f.mount().stats().directories_loaded, 1);
    assert_eq!(
        fs::read_to_string(f.path("a/b/c/d.txt")).expect("read"),
        "deep"
    );
    assert_eq!(
        f.mount().stats().directories_loaded,
        4,
        "x/ is still not loaded"
    );
    let stats = f.mount().stats();
    assert_eq!((stats.files_fetched, stats.bytes_fetched), (2, 7));
}

#[test]
fn unmount_succeeds_while_a_file_is_open() {
    let input = write_files(&[("held.txt", "held")]);
    let mut f = Fixture::new(input.path(), true);
    let held = fs::File::open(f.path("held.txt")).expect("open");
    let cwd_holder = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(f.path(""))
        .spawn()
        .expect("sleep");
    let point = f.path("");
    let mount = f.mount.take().expect("mounted");
    f.rt.block_on(mount.unmount()).expect("unmount");
    assert!(!mounted(&point), "{} still mounted", point.display());
    drop(held);
    let mut cwd_holder = cwd_holder;
    let _ = cwd_holder.kill();
    let _ = cwd_holder.wait();
}

#[test]
fn stale_mounts_of_a_crashed_worker_are_cleaned() {
    let dir = open_tempdir();
    let point = dir.path().join("stale");
    fs::create_dir(&point).expect("mkdir");
    // What a worker killed mid-action leaves: a FUSE mount whose daemon is gone.
    let fuse = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("/dev/fuse");
    let options = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        std::os::fd::AsRawFd::as_raw_fd(&fuse)
    );
    let c = |s: &[u8]| std::ffi::CString::new(s).expect("c string");
    let (source, target, fstype, data) = (
        c(b"lazybarn"),
        c(point.as_os_str().as_bytes()),
        c(b"fuse"),
        c(options.as_bytes()),
    );
    // SAFETY: every argument is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
    drop(fuse);
    assert!(mounted(&point));
    let cleaned = clean_stale_mounts(dir.path()).expect("clean");
    assert_eq!(cleaned, vec![point.clone()]);
    assert!(!mounted(&point));
    fs::remove_dir(&point).expect("the mount point is a plain directory again");
}

#[test]
fn cas_errors_return_eio_and_are_recorded() {
    let input = write_files(&[("ok.txt", "fine"), ("bad.txt", "unlucky"), ("sub/x", "x")]);
    let f = Fixture::new(input.path(), true);
    let bad = Digest::of(b"unlucky");
    f.source.failing.lock().insert(bad);
    let out = sh(&f.path(""), None, "cat bad.txt");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Input/output error"));
    assert_eq!(fs::read_to_string(f.path("ok.txt")).expect("read"), "fine");
    let failures = f.mount().failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].digest, Some(bad));
    assert_eq!(failures[0].kind, FailureKind::Unavailable);
    assert_eq!(failures[0].code(), tonic::Code::Unavailable);
    assert!(
        failures[0].message.contains("injected failure"),
        "{failures:?}"
    );
    // Failures are not remembered: once the CAS answers, the file reads.
    f.source.failing.lock().clear();
    assert_eq!(
        fs::read_to_string(f.path("bad.txt")).expect("read"),
        "unlucky"
    );

    let sub = f.tree.blobs.iter().find(|(_, data)| {
        Directory::decode(data.clone()).is_ok_and(|d| d.files.iter().any(|f| f.name == "x"))
    });
    let (sub, _) = sub.expect("sub's Directory");
    f.source.failing.lock().insert(*sub);
    let err = fs::read_dir(f.path("sub")).expect_err("listing a directory the CAS fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        f.mount().failures().last().and_then(|f| f.digest),
        Some(*sub)
    );
}

fn try_mount(root: Directory, extra: Vec<(Digest, bytes::Bytes)>) -> Result<Mount, VfsError> {
    let rt = runtime();
    let dir = open_tempdir();
    rt.block_on(async {
        let cas = TestCas::start().await;
        let bytes = bytes::Bytes::from(root.encode_to_vec());
        let digest = Digest::of(&bytes);
        let mut blobs = extra;
        blobs.push((digest, bytes));
        cas.client.upload(blobs).await.expect("upload");
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 20).expect("cache");
        let point = dir.path().join("mnt");
        fs::create_dir(&point).expect("mkdir");
        let source: Arc<dyn BlobSource> = CountingSource::new(cas.client.clone());
        Mount::new(
            &point,
            &dir.path().join("scratch"),
            digest,
            cache,
            source,
            &MountConfig::default(),
        )
        .await
    })
}

#[test]
fn a_directory_the_cas_serves_corrupt_is_unavailable_and_retried() {
    let input = write_files(&[("ok.txt", "fine"), ("sub/x", "x")]);
    let f = Fixture::new(input.path(), true);
    let sub = f.tree.blobs.iter().find(|(_, data)| {
        Directory::decode(data.clone()).is_ok_and(|d| d.files.iter().any(|f| f.name == "x"))
    });
    let (sub, _) = sub.expect("sub's Directory");
    f.source.corrupt.lock().insert(*sub);
    let err = fs::read_dir(f.path("sub")).expect_err("listing a directory served corrupt");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let failures = f.mount().failures();
    let failure = failures.last().expect("recorded");
    assert_eq!(failure.digest, Some(*sub));
    // The CAS checks digests on upload, so the client did nothing wrong: the
    // CAS did, and another try may get good bytes.
    assert_eq!(failure.kind, FailureKind::Unavailable, "{failure:?}");
    assert_eq!(failure.code(), tonic::Code::Unavailable);
    assert!(failure.message.contains("corrupt"), "{failure:?}");
    assert!(failure.message.contains(&sub.to_string()), "{failure:?}");

    f.source.corrupt.lock().clear();
    let names: Vec<_> = fs::read_dir(f.path("sub"))
        .expect("listed once the CAS serves good bytes")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["x"]);
}

#[test]
fn invalid_input_roots_are_refused_as_invalid_arguments() {
    for name in ["..", "a/b", "", ".", "nul\0"] {
        let root = Directory {
            files: vec![FileNode {
                name: name.to_string(),
                digest: Some(Digest::of(b"x").to_proto()),
                is_executable: false,
                node_properties: None,
            }],
            ..Default::default()
        };
        let digest = Digest::of(&root.encode_to_vec());
        match try_mount(root, vec![]) {
            Err(err @ VfsError::InvalidInputRoot(_)) => {
                let why = err.to_string();
                assert!(why.contains("invalid name"), "{why}");
                assert!(why.contains(&format!("{name:?}")), "{why}");
                assert!(why.contains(&digest.to_string()), "{why}");
                assert_eq!(err.code(), tonic::Code::InvalidArgument);
            }
            Err(other) => panic!("{name:?}: {other}"),
            Ok(_) => panic!("{name:?} was mounted"),
        }
    }
}

#[test]
fn mount_point_must_be_empty() {
    let input = write_files(&[("a", "a")]);
    let f = Fixture::new(input.path(), false);
    let busy = open_tempdir();
    fs::write(busy.path().join("something"), "x").expect("write");
    let source: Arc<dyn BlobSource> = f.source.clone();
    let result = f.rt.block_on(Mount::new(
        busy.path(),
        &busy.path().join("scratch"),
        f.tree.root,
        f.cache.clone(),
        source,
        &MountConfig::default(),
    ));
    assert!(matches!(result, Err(VfsError::MountPoint { .. })));
}
