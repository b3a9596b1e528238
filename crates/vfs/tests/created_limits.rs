//! An action that creates names in its mount without end (`touch`, `mkdir`,
//! `ln -s`, `ln` in a loop) would grow the worker's node table without end;
//! `max_created_entries` stops it with ENOSPC and a failure the worker
//! answers with RESOURCE_EXHAUSTED.

mod common;

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{Fixture, sh, tree_of, write_files};
use lazybarn_vfs::{DEFAULT_MAX_CREATED_ENTRIES, FailureKind, MountConfig};

const CAP: u64 = 100;

fn mount_with_cap(max_created_entries: u64) -> (tempfile::TempDir, Fixture) {
    let input = write_files(&[("in.txt", "input\n"), ("dir/a.txt", "a\n")]);
    let config = MountConfig {
        passthrough: false,
        max_created_entries,
        ..MountConfig::default()
    };
    let f = Fixture::with_config(tree_of(input.path()), config).expect("mount");
    (input, f)
}

fn mkfifo(path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: `path` is a valid NUL-terminated string for the whole call.
    if unsafe { libc::mkfifo(path.as_ptr(), 0o644) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every way of adding a name, each refused with ENOSPC.
fn assert_full(f: &Fixture) {
    let attempts: [(&str, io::Result<()>); 6] = [
        ("create", File::create_new(f.path("over")).map(drop)),
        ("mkdir", fs::create_dir(f.path("over_dir"))),
        ("symlink", symlink("f1", f.path("over_link"))),
        ("link", fs::hard_link(f.path("f1"), f.path("over_hard"))),
        (
            "link to an input",
            fs::hard_link(f.path("in.txt"), f.path("over_input")),
        ),
        ("mknod", mkfifo(&f.path("over_fifo"))),
    ];
    for (what, result) in attempts {
        let err = result.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{what}: {err}");
    }
    for name in [
        "over",
        "over_dir",
        "over_link",
        "over_hard",
        "over_input",
        "over_fifo",
    ] {
        assert!(
            fs::symlink_metadata(f.path(name)).is_err(),
            "{name} was added"
        );
    }
}

fn create_files(f: &Fixture, range: std::ops::Range<u64>) {
    for i in range {
        File::create_new(f.path(&format!("f{i}"))).unwrap_or_else(|e| panic!("f{i}: {e}"));
    }
}

#[test]
fn the_name_past_the_cap_gets_enospc_and_is_recorded_once() {
    let (_input, f) = mount_with_cap(CAP);
    create_files(&f, 0..CAP);
    assert_full(&f);
    // Asking again changes nothing, and records nothing new.
    assert_full(&f);

    let failures = f.mount().failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(failure.kind, FailureKind::TooLarge);
    assert_eq!(failure.code(), tonic::Code::ResourceExhausted);
    assert_eq!(failure.digest, None);
    assert!(
        failure.message.contains("max_created_entries") && failure.message.contains("100"),
        "{failure:?}"
    );
    // Input entries are counted apart: reading them still works.
    assert_eq!(
        fs::read_to_string(f.path("dir/a.txt")).expect("read"),
        "a\n"
    );
}

#[test]
fn removing_a_name_makes_room_for_one_more() {
    let (_input, f) = mount_with_cap(CAP);
    create_files(&f, 0..CAP);

    fs::remove_file(f.path("f0")).expect("rm");
    fs::create_dir(f.path("d")).expect("mkdir after rm");
    assert_full(&f);

    fs::remove_dir(f.path("d")).expect("rmdir");
    symlink("f1", f.path("s")).expect("symlink after rmdir");
    assert_full(&f);

    // A rename over an existing name takes that name away.
    fs::rename(f.path("f2"), f.path("f3")).expect("rename over");
    fs::hard_link(f.path("f1"), f.path("h")).expect("link after rename");
    assert_full(&f);

    // A plain rename neither adds nor removes a name.
    fs::rename(f.path("h"), f.path("h2")).expect("rename");
    assert_full(&f);

    // Removing an input name frees nothing: the cap counts what the action added.
    fs::remove_file(f.path("dir/a.txt")).expect("rm input");
    assert_full(&f);
    assert_eq!(f.mount().failures().len(), 1);
}

#[test]
fn hard_links_count_per_name_and_free_per_name() {
    let (_input, f) = mount_with_cap(CAP);
    File::create_new(f.path("f0")).expect("create");
    for i in 1..CAP {
        fs::hard_link(f.path("f0"), f.path(&format!("f{i}"))).expect("link");
    }
    assert_full(&f);
    fs::remove_file(f.path("f50")).expect("rm one link");
    fs::hard_link(f.path("in.txt"), f.path("linked_input")).expect("link an input");
    assert_full(&f);
}

#[test]
fn a_shell_loop_of_touch_stops_at_the_cap() {
    let (_input, f) = mount_with_cap(CAP);
    let out = sh(
        &f.path(""),
        None,
        "i=0; while [ $i -lt 1000 ] && touch f$i 2>/dev/null; do i=$((i+1)); done; \
         echo $i; touch f$i",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "100\n");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}

#[test]
fn a_default_mount_config_has_the_default_cap() {
    assert_eq!(
        MountConfig::default().max_created_entries,
        DEFAULT_MAX_CREATED_ENTRIES
    );
}
