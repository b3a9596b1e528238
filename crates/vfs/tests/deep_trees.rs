//! Trees whose depth the action chooses: capturing a 100,000-deep output
//! directory and unmounting it must not recurse (a stack overflow there
//! kills the whole worker, not just the action).

mod common;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use common::{Fixture, write_files};
use lazybarn_cas::Digest;
use lazybarn_vfs::CapturedOutput;

/// Levels of the chain below the output directory.
const DEPTH: usize = 100_000;

fn check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Makes `top/d/d/.../d/bottom.txt`, `depth` directories deep, one level at
/// a time relative to the directory above: the whole path is far longer
/// than PATH_MAX.
fn make_chain(top: PathBuf, depth: usize) {
    let top = CString::new(top.into_os_string().into_encoded_bytes()).expect("no NUL");
    let d = c"d";
    // SAFETY: every pointer is a NUL-terminated string; every fd returned is
    // checked, then owned by an OwnedFd that closes it.
    unsafe {
        let fd = libc::open(top.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
        check(fd, "open top");
        let mut dir = OwnedFd::from_raw_fd(fd);
        for _ in 0..depth {
            check(libc::mkdirat(dir.as_raw_fd(), d.as_ptr(), 0o755), "mkdirat");
            let fd = libc::openat(
                dir.as_raw_fd(),
                d.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY,
            );
            check(fd, "openat");
            dir = OwnedFd::from_raw_fd(fd);
        }
        let fd = libc::openat(
            dir.as_raw_fd(),
            c"bottom.txt".as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
            0o644,
        );
        check(fd, "create bottom.txt");
        let file = OwnedFd::from_raw_fd(fd);
        check(
            libc::write(file.as_raw_fd(), b"deep".as_ptr().cast(), 4) as libc::c_int,
            "write",
        );
    }
}

#[test]
fn a_100000_deep_output_directory_is_captured_and_unmounted() {
    let input = write_files(&[("src/a.c", "int a;\n")]);
    let mut f = Fixture::new(input.path(), false);
    fs::create_dir(f.path("out")).expect("mkdir out");
    let top = f.path("out");
    // The chain is made in a thread of its own so the test thread's stack
    // is the one capture runs on, as a worker's would be.
    std::thread::spawn(move || make_chain(top, DEPTH))
        .join()
        .expect("chain made");

    let outputs =
        f.rt.block_on(f.mount().capture(&["out".to_string()]))
            .expect("capture");
    let [CapturedOutput::Directory { tree, files, .. }] = outputs.as_slice() else {
        panic!("expected one directory, got {outputs:?}");
    };
    assert_eq!(
        tree.children.len(),
        DEPTH,
        "every level is a distinct Directory"
    );
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].digest, Digest::of(b"deep"));

    // Walk the Tree from its root to the bottom, one level at a time.
    let children: HashMap<Digest, _> = tree
        .children
        .iter()
        .map(|d| (Digest::of(&prost::Message::encode_to_vec(d)), d))
        .collect();
    let mut directory = tree.root.as_ref().expect("root");
    let mut depth = 0;
    while let Some(node) = directory.directories.first() {
        assert_eq!(node.name, "d");
        let digest = Digest::from_proto(node.digest.as_ref()).expect("digest");
        directory = children.get(&digest).expect("child in the Tree");
        depth += 1;
    }
    assert_eq!(depth, DEPTH);
    assert_eq!(directory.files.len(), 1);
    assert_eq!(directory.files[0].name, "bottom.txt");

    let mount = f.mount.take().expect("mounted");
    f.rt.block_on(mount.unmount()).expect("unmount");
}
