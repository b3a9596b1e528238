//! Input files are immutable for every caller, root included: opening for
//! writing, O_TRUNC, truncate, write, chmod and chown fail, and the cached
//! blob never changes. Directories stay writable.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;

use common::{Fixture, sh, sh_ok, write_files};
use lazybarn_cas::Digest;

const HEADER: &str = "#pragma once\nint answer();\n";
const NOBODY: u32 = 65534;

fn attempts() -> Vec<&'static str> {
    vec![
        "echo x > inc/a.h",
        "echo x >> inc/a.h",
        "truncate -s 0 inc/a.h",
        "dd if=/dev/zero of=inc/a.h bs=1 count=1 conv=notrunc",
        "chmod 666 inc/a.h",
        "chmod +x inc/a.h",
        "chown 1234 inc/a.h",
        "touch inc/a.h",
        "exec 3<>inc/a.h",
        "cp /etc/hostname inc/a.h",
    ]
}

fn immutable_inputs(passthrough: bool, uid: Option<u32>) {
    let input = write_files(&[("inc/a.h", HEADER), ("inc/b.h", HEADER)]);
    let f = Fixture::new(input.path(), passthrough);
    let root = f.path("");
    // Read it once so its blob is in the cache and open pages exist.
    assert_eq!(sh_ok(&root, uid, "cat inc/a.h"), HEADER);
    for attempt in attempts() {
        let out = sh(&root, uid, attempt);
        assert!(
            !out.status.success(),
            "{attempt} succeeded as uid {uid:?} (passthrough {passthrough})"
        );
    }
    assert_eq!(sh_ok(&root, uid, "cat inc/a.h"), HEADER);
    let perms = fs::metadata(f.path("inc/a.h")).expect("stat").permissions();
    assert_eq!(perms.mode() & 0o777, 0o444);
    let digest = Digest::of(HEADER.as_bytes());
    let cached = fs::read(f.cache.path(&digest)).expect("cached blob");
    assert_eq!(Digest::of(&cached), digest, "the cached blob never changes");

    // Directories are writable: the action may replace an input by name.
    sh_ok(
        &root,
        uid,
        "set -e; rm inc/b.h; echo mine > inc/b.h; cat inc/b.h; mv inc/a.h inc/c.h; mkdir new; echo y > new/f",
    );
    assert_eq!(
        fs::read_to_string(f.path("inc/b.h")).expect("read"),
        "mine\n"
    );
    assert_eq!(fs::read_to_string(f.path("inc/c.h")).expect("read"), HEADER);
    // Another input with the same bytes still reads the original.
    assert_eq!(
        Digest::of(&fs::read(f.cache.path(&digest)).expect("blob")),
        digest
    );
}

#[test]
fn root_cannot_change_inputs_with_passthrough() {
    immutable_inputs(true, None);
}

#[test]
fn root_cannot_change_inputs_without_passthrough() {
    immutable_inputs(false, None);
}

#[test]
fn unprivileged_uid_cannot_change_inputs_with_passthrough() {
    immutable_inputs(true, Some(NOBODY));
}

#[test]
fn unprivileged_uid_cannot_change_inputs_without_passthrough() {
    immutable_inputs(false, Some(NOBODY));
}

#[test]
fn write_opens_fail_with_a_permission_error() {
    let input = write_files(&[("a.h", HEADER)]);
    let f = Fixture::new(input.path(), true);
    for (write, truncate, append) in [
        (true, false, false),
        (true, true, false),
        (false, false, true),
    ] {
        let err = OpenOptions::new()
            .read(true)
            .write(write)
            .truncate(truncate)
            .append(append)
            .open(f.path("a.h"))
            .expect_err("write open of an input");
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            ),
            "{err}"
        );
    }
    let err = fs::set_permissions(f.path("a.h"), fs::Permissions::from_mode(0o644))
        .expect_err("chmod of an input");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(fs::read_to_string(f.path("a.h")).expect("read"), HEADER);
}
