//! What compilers, linkers, test runners and shell scripts do to files they
//! create must work inside a mount, with passthrough on and off.

mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use common::{Fixture, sh_ok, write_files};
use lazybarn_vfs::{BlobLocation, CapturedOutput, FailureKind, VfsError};

fn input() -> tempfile::TempDir {
    write_files(&[
        ("src/main.c", "int main(void) { return 0; }\n"),
        ("src/util.h", "#define X 1\n"),
        ("tools/run.sh*", "#!/bin/sh\necho ran\n"),
        ("link", "@src/main.c"),
    ])
}

fn writable_files(passthrough: bool) {
    let input = input();
    let f = Fixture::new(input.path(), passthrough);
    let p = |rel: &str| f.path(rel);

    // create, write, read, seek
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(p("src/new.txt"))
        .expect("create");
    file.write_all(b"hello world").expect("write");
    file.seek(SeekFrom::Start(6)).expect("seek");
    let mut rest = String::new();
    file.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "world");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(b"HELLO").expect("overwrite");
    file.sync_all().expect("fsync");
    drop(file);
    assert_eq!(
        fs::read_to_string(p("src/new.txt")).expect("read"),
        "HELLO world"
    );

    // append and truncate
    let mut file = OpenOptions::new()
        .append(true)
        .open(p("src/new.txt"))
        .expect("append");
    file.write_all(b"!").expect("append write");
    drop(file);
    assert_eq!(
        fs::read_to_string(p("src/new.txt")).expect("read"),
        "HELLO world!"
    );
    OpenOptions::new()
        .write(true)
        .open(p("src/new.txt"))
        .expect("open")
        .set_len(5)
        .expect("ftruncate");
    assert_eq!(fs::read_to_string(p("src/new.txt")).expect("read"), "HELLO");
    fs::write(p("src/new.txt"), "again").expect("O_TRUNC rewrite");
    assert_eq!(fs::read_to_string(p("src/new.txt")).expect("read"), "again");

    // rename, also over an existing entry; unlink
    fs::write(p("a.o"), "object a").expect("write a");
    fs::write(p("b.o"), "object b").expect("write b");
    fs::rename(p("a.o"), p("b.o")).expect("rename over");
    assert!(!p("a.o").exists());
    assert_eq!(fs::read_to_string(p("b.o")).expect("read"), "object a");
    fs::rename(p("b.o"), p("src/b.o")).expect("rename across directories");
    fs::remove_file(p("src/b.o")).expect("unlink");
    assert!(!p("src/b.o").exists());

    // mkdir, rmdir, nested directories
    fs::create_dir_all(p("out/obj/deep")).expect("mkdir -p");
    fs::write(p("out/obj/deep/x"), "x").expect("write deep");
    assert_eq!(
        fs::remove_dir(p("out/obj"))
            .expect_err("not empty")
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::rename(p("out/obj"), p("out/moved")).expect("rename dir");
    assert_eq!(
        fs::read_to_string(p("out/moved/deep/x")).expect("read"),
        "x"
    );
    fs::remove_file(p("out/moved/deep/x")).expect("unlink");
    fs::remove_dir(p("out/moved/deep")).expect("rmdir");

    // symlink, readlink, hardlink
    std::os::unix::fs::symlink("../src/util.h", p("out/util.h")).expect("symlink");
    assert_eq!(
        fs::read_link(p("out/util.h")).expect("readlink").to_str(),
        Some("../src/util.h")
    );
    assert_eq!(
        fs::read_to_string(p("out/util.h")).expect("through link"),
        "#define X 1\n"
    );
    assert_eq!(
        fs::read_link(p("link")).expect("input link").to_str(),
        Some("src/main.c")
    );
    fs::write(p("out/orig"), "linked").expect("write");
    fs::hard_link(p("out/orig"), p("out/hard")).expect("hardlink");
    assert_eq!(fs::metadata(p("out/orig")).expect("stat").nlink(), 2);
    fs::remove_file(p("out/orig")).expect("unlink one name");
    assert_eq!(
        fs::read_to_string(p("out/hard")).expect("read other"),
        "linked"
    );
    fs::hard_link(p("src/util.h"), p("out/util-copy.h")).expect("hardlink an input");

    // chmod +x and run; utimens; statfs
    fs::write(p("out/script.sh"), "#!/bin/sh\necho made\n").expect("write script");
    let mut perms = fs::metadata(p("out/script.sh"))
        .expect("stat")
        .permissions();
    perms.set_mode(0o755);
    fs::set_permissions(p("out/script.sh"), perms).expect("chmod +x");
    assert_eq!(sh_ok(&f.path(""), None, "./out/script.sh"), "made\n");
    assert_eq!(sh_ok(&f.path(""), None, "./tools/run.sh"), "ran\n");
    let when = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(p("out/script.sh"))
        .expect("open")
        .set_modified(when)
        .expect("utimens");
    assert_eq!(
        fs::metadata(p("out/script.sh"))
            .expect("stat")
            .modified()
            .expect("mtime"),
        when
    );
    sh_ok(
        &f.path(""),
        None,
        "touch -d @1234567890 out/hard && df . >/dev/null",
    );
    assert_eq!(
        fs::metadata(p("out/hard")).expect("stat").mtime(),
        1_234_567_890
    );

    // unlinking and renaming inputs changes only this mount's view
    fs::rename(p("src/main.c"), p("main.c")).expect("rename an input");
    fs::remove_file(p("src/util.h")).expect("unlink an input");
    fs::remove_dir_all(p("tools")).expect("rm -r an input directory");
    assert_eq!(
        fs::read_to_string(p("main.c")).expect("moved input"),
        "int main(void) { return 0; }\n"
    );

    // xattrs are not supported
    let path = std::ffi::CString::new(p("main.c").as_os_str().as_encoded_bytes()).expect("path");
    let mut buf = [0u8; 64];
    // SAFETY: the path and name are NUL-terminated; buf is valid for its length.
    let rc = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.x".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1);
    assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");

    // a shell script that does what build tools do
    sh_ok(
        &f.path(""),
        None,
        "set -e; mkdir -p gen && cd gen && for i in 1 2 3; do echo $i > f$i.tmp && mv f$i.tmp f$i; done; \
         cat f1 f2 f3 > all; test \"$(cat all | wc -l)\" = 3; rm f2; ls | sort | tr '\\n' ' ' > ../listing; \
         mkfifo pipe; rm pipe",
    );
    assert_eq!(
        fs::read_to_string(p("listing")).expect("listing"),
        "all f1 f3 "
    );

    capture_outputs(&f);
}

fn capture_outputs(f: &Fixture) {
    let outputs =
        f.rt.block_on(f.mount().capture(&[
            "main.c".to_string(),
            "out/script.sh".to_string(),
            "out/util.h".to_string(),
            "gen".to_string(),
            "missing/file".to_string(),
        ]))
        .expect("capture");
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    let CapturedOutput::File { file: main, .. } = &outputs[0] else {
        panic!("main.c: {:?}", outputs[0]);
    };
    assert_eq!(
        main.location,
        BlobLocation::Cas,
        "an input file is never re-read"
    );
    assert_eq!(
        main.digest,
        lazybarn_cas::Digest::of(b"int main(void) { return 0; }\n")
    );
    let CapturedOutput::File { file: script, .. } = &outputs[1] else {
        panic!("script: {:?}", outputs[1]);
    };
    assert!(script.is_executable);
    assert_eq!(
        script.digest,
        lazybarn_cas::Digest::of(b"#!/bin/sh\necho made\n")
    );
    assert!(matches!(&script.location, BlobLocation::Local(path) if path.exists()));
    assert!(
        matches!(&outputs[2], CapturedOutput::Symlink { target, .. } if target == "../src/util.h")
    );
    let CapturedOutput::Directory { tree, files, .. } = &outputs[3] else {
        panic!("gen: {:?}", outputs[3]);
    };
    let root = tree.root.as_ref().expect("root");
    let names: Vec<_> = root.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["all", "f1", "f3"]);
    assert_eq!(files.len(), 3);
}

#[test]
fn writable_files_with_passthrough() {
    writable_files(true);
}

#[test]
fn writable_files_without_passthrough() {
    writable_files(false);
}

/// REAPI names are strings: an output directory holding a name that is not
/// UTF-8 fails the capture, naming it, rather than being reported under a
/// lossy name that another entry may share.
#[test]
fn a_name_that_is_not_utf8_fails_the_capture_naming_it() {
    let input = input();
    let f = Fixture::new(input.path(), false);
    fs::create_dir_all(f.path("out/sub")).expect("mkdir");
    fs::write(f.path("out/ok.txt"), "ok").expect("write");
    for bad in [&b"bad\xff"[..], b"bad\xfe"] {
        let name = OsStr::from_bytes(bad);
        fs::write(f.path("out/sub").join(name), "x").expect("a non-UTF-8 name");
    }
    let err =
        f.rt.block_on(f.mount().capture(&["out".to_string()]))
            .expect_err("a non-UTF-8 name captured");
    assert!(
        matches!(&err, VfsError::OutputNameNotUtf8 { path } if path.starts_with("out/sub")),
        "{err}"
    );
    assert_eq!(err.kind(), FailureKind::InvalidInput);
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let message = err.to_string();
    assert!(
        message.contains("out/sub/bad\\xFE") && message.contains("not UTF-8"),
        "{message}"
    );

    // The rest of the mount is still captured.
    let outputs =
        f.rt.block_on(f.mount().capture(&["out/ok.txt".to_string()]))
            .expect("capture");
    assert_eq!(outputs.len(), 1, "{outputs:?}");
}
