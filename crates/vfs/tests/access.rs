//! A mount with `allowed_uid` serves that uid and the worker's own only:
//! another action, running as another uid, gets EACCES on everything.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{Fixture, sh_as, tree_of, write_files};
use lazybarn_vfs::MountConfig;

/// The action the mount belongs to.
const ACTION: (u32, u32) = (65534, 65534);
/// Another action, in the same group.
const STRANGER: (u32, u32) = (65533, 65534);

fn mounted_for_action(passthrough: bool) -> (tempfile::TempDir, Fixture) {
    let input = write_files(&[("a.txt", "a"), ("sub/b.txt", "b"), ("c.txt", "c")]);
    let config = MountConfig {
        passthrough,
        allowed_uid: Some(ACTION.0),
        ..MountConfig::default()
    };
    let f = Fixture::with_config(tree_of(input.path()), config).expect("mount");
    (input, f)
}

/// Runs `script` as `ids` from the directory holding the mount, which is
/// reached as `m`; asserts it fails with EACCES.
fn refused(f: &Fixture, ids: (u32, u32), script: &str) {
    let script = format!("m={}; {script}", f.path("").display());
    let parent = f.dir.path();
    let out = sh_as(parent, Some(ids), &script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "{script} as {ids:?}: {stderr}"
    );
}

fn allowed(f: &Fixture, ids: (u32, u32), script: &str) -> String {
    let script = format!("m={}; {script}", f.path("").display());
    let out = sh_as(f.dir.path(), Some(ids), &script);
    assert!(
        out.status.success(),
        "{script} as {ids:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn only_the_action_uid_is_served(passthrough: bool) {
    let (_input, f) = mounted_for_action(passthrough);
    let root = fs::metadata(f.path("")).expect("stat the root as root");
    assert_eq!((root.uid(), root.mode() & 0o777), (ACTION.0, 0o700));

    // The kernel keeps the stranger out of the private root, even from a
    // name it has cached (a stat of which never reaches the mount).
    assert_eq!(
        fs::read_to_string(f.path("a.txt")).expect("read as root"),
        "a"
    );
    refused(&f, STRANGER, "stat --cached=always -c %s $m/a.txt");
    refused(&f, STRANGER, "cat $m/a.txt");
    refused(&f, STRANGER, "ls $m/sub");

    // Opened up (the action may chmod its own root), the mount itself still
    // refuses every request of the stranger. These names are not in the
    // kernel's caches yet, so each check reaches the mount.
    fs::set_permissions(f.path(""), fs::Permissions::from_mode(0o755)).expect("chmod as root");
    refused(&f, STRANGER, "stat $m/c.txt");
    refused(&f, STRANGER, "cat $m/sub/b.txt");
    refused(&f, STRANGER, "ls $m/sub");
    refused(&f, STRANGER, "mkdir $m/theirs");
    refused(&f, STRANGER, "echo x > $m/theirs.txt");

    // The action's uid, and the worker (root), are served.
    assert_eq!(
        allowed(
            &f,
            ACTION,
            "stat -c %s $m/a.txt; cat $m/a.txt $m/sub/b.txt; ls $m/sub; mkdir $m/mine"
        ),
        "1\nabb.txt\n"
    );
    assert_eq!(
        fs::read_to_string(f.path("c.txt")).expect("read as root"),
        "c"
    );
    assert_eq!(fs::read_dir(f.path("sub")).expect("ls as root").count(), 1);

    // Opening what the kernel has cached still asks the mount, which refuses.
    refused(&f, STRANGER, "cat $m/a.txt");
    refused(&f, STRANGER, "cat $m/c.txt");
    refused(&f, STRANGER, "ls $m/sub");
    refused(&f, STRANGER, "ls $m/mine");
}

#[test]
fn only_the_action_uid_is_served_with_passthrough() {
    only_the_action_uid_is_served(true);
}

#[test]
fn only_the_action_uid_is_served_without_passthrough() {
    only_the_action_uid_is_served(false);
}

#[test]
fn without_allowed_uid_every_uid_is_served() {
    let input = write_files(&[("a.txt", "a")]);
    let f = Fixture::new(input.path(), false);
    assert_eq!(allowed(&f, STRANGER, "cat $m/a.txt"), "a");
}
