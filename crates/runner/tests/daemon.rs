//! The daemon around the commands: refusing bad requests with distinct
//! statuses while staying up, CheckReadiness, who may connect to the socket,
//! the `lazybarn-runner` binary itself, and chroot. These tests run as root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use lazybarn_proto::runner::CheckReadinessRequest;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_distinct_clear_statuses_and_the_runner_stays_up() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let not_executable = dir.path().join("data.txt");
    std::fs::write(&not_executable, "not a program").expect("write");
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let root_only = dir.path().join("root-only");
    std::fs::write(&root_only, "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    let mut missing_dir = request(dir.path(), &["true"]);
    missing_dir.working_directory = dir.path().join("missing").display().to_string();
    let mut relative_dir = request(dir.path(), &["true"]);
    relative_dir.working_directory = "relative".to_string();
    let mut bad_output = request(dir.path(), &["true"]);
    bad_output.stdout_path = dir.path().join("missing/stdout").display().to_string();

    let cases = [
        (
            "empty arguments",
            request(dir.path(), &[]),
            Code::InvalidArgument,
            "arguments is empty",
        ),
        (
            "missing program",
            request(dir.path(), &["no-such-program-lazybarn"]),
            Code::NotFound,
            "not found",
        ),
        (
            "missing path",
            request(dir.path(), &["./missing.sh"]),
            Code::NotFound,
            "not found",
        ),
        (
            "not executable",
            request(dir.path(), &["./data.txt"]),
            Code::PermissionDenied,
            "not executable",
        ),
        (
            "root only",
            request(dir.path(), &["./root-only"]),
            Code::PermissionDenied,
            "uid 65534",
        ),
        (
            "a directory",
            request(dir.path(), &["/tmp"]),
            Code::PermissionDenied,
            "directory",
        ),
        (
            "missing working directory",
            missing_dir,
            Code::FailedPrecondition,
            "working directory",
        ),
        (
            "relative working directory",
            relative_dir,
            Code::InvalidArgument,
            "absolute",
        ),
        (
            "unwritable output",
            bad_output,
            Code::FailedPrecondition,
            "output file",
        ),
    ];
    for (what, req, code, message) in cases {
        let status = runner.client.run(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(message),
            "{what}: {}",
            status.message()
        );
    }

    let response = runner
        .client
        .run(request(dir.path(), &["echo", "still up"]))
        .await
        .expect("runner still serves")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read_text(dir.path().join("stdout")), "still up\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failures_found_by_the_kernel_are_reported() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    // Executable bits but no valid format and no shebang: execve says ENOEXEC.
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"\x7fELF garbage").expect("write");
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A shebang whose interpreter is missing: execve says ENOENT.
    let bad_interpreter = dir.path().join("bad-interpreter");
    std::fs::write(&bad_interpreter, "#!/no/such/interpreter\n").expect("write");
    std::fs::set_permissions(&bad_interpreter, std::fs::Permissions::from_mode(0o755))
        .expect("chmod");

    let status = runner
        .client
        .run(request(dir.path(), &["./garbage"]))
        .await
        .expect_err("not a valid executable");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("execute"), "{}", status.message());
    let status = runner
        .client
        .run(request(dir.path(), &["./bad-interpreter"]))
        .await
        .expect_err("missing interpreter");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("interpreter"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_readiness_checks_the_path() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let ready = |path: &Path| CheckReadinessRequest {
        path: path.display().to_string(),
    };
    runner
        .client
        .check_readiness(ready(dir.path()))
        .await
        .expect("a writable directory is ready");
    runner
        .client
        .check_readiness(CheckReadinessRequest::default())
        .await
        .expect("no path: the runner is up");
    let status = runner
        .client
        .check_readiness(ready(&dir.path().join("missing")))
        .await
        .expect_err("missing directory");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = runner
        .client
        .check_readiness(CheckReadinessRequest {
            path: "relative".to_string(),
        })
        .await
        .expect_err("relative path");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

/// Runs, through `runner`, a command as nobody that connects to `socket`.
async fn connect_as_nobody(runner: &mut TestRunner, socket: &Path) -> (i32, String) {
    let dir = work_dir();
    let script =
        "IO::Socket::UNIX->new(Peer => $ARGV[0]) or die qq(connect: $!\\n); print qq(connected\\n)";
    let req = request(
        dir.path(),
        &[
            "perl",
            "-MIO::Socket::UNIX",
            "-e",
            script,
            &socket.display().to_string(),
        ],
    );
    let response = runner.client.run(req).await.expect("runs").into_inner();
    let output = read_text(dir.path().join("stdout")) + &read_text(dir.path().join("stderr"));
    (response.exit_code, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_or_the_socket_group_may_connect() {
    let mut runner = start_runner().await;
    let meta = std::fs::metadata(&runner.socket).expect("socket");
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    let socket = runner.socket.clone();
    let (code, output) = connect_as_nobody(&mut runner, &socket).await;
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("Permission denied"), "{output}");

    let grouped =
        start_runner_with(|config| config.socket_group = Some("nogroup".to_string())).await;
    let meta = std::fs::metadata(&grouped.socket).expect("socket");
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65534));
    let (code, output) = connect_as_nobody(&mut runner, &grouped.socket).await;
    assert_eq!((code, output.as_str()), (0, "connected\n"));
}

/// `dir` and every directory below it.
fn walk_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).expect("list") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_dir() {
            dirs.extend(walk_dirs(&entry.path()));
        }
    }
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_runs_the_command_inside_its_input_root() {
    let mut runner = start_runner_with(|config| config.chroot_into_input_root = true).await;
    let root = work_dir();
    // A minimal root: dash and the libraries ldd says it links.
    let ldd = std::process::Command::new("ldd")
        .arg("/bin/dash")
        .output()
        .expect("run ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let libraries = ldd
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(str::to_string);
    for file in std::iter::once("/bin/dash".to_string()).chain(libraries) {
        let target = root.path().join(file.trim_start_matches('/'));
        let parent = target.parent().expect("has a parent");
        std::fs::create_dir_all(parent).expect("mkdir");
        std::fs::copy(&file, &target).expect("copy into the root");
    }
    std::fs::create_dir(root.path().join("work")).expect("mkdir");
    for dir in walk_dirs(root.path()) {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut top: Vec<String> = std::fs::read_dir(root.path())
        .expect("list root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let outputs = work_dir();
    let mut req = request(
        &root.path().join("work"),
        &["dash", "-c", "echo $PWD; cd / && echo *"],
    );
    req.environment_variables = vec![env("PATH", "/bin")];
    req.input_root_directory = root.path().display().to_string();
    req.stdout_path = outputs.path().join("stdout").display().to_string();
    req.stderr_path = outputs.path().join("stderr").display().to_string();
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(
        (response.exit_code, read_text(outputs.path().join("stderr"))),
        (0, String::new())
    );
    assert_eq!(
        read_text(outputs.path().join("stdout")),
        format!("/work\n{}\n", top.join(" "))
    );

    // With proc and tmp directories in the root, the command gets a fresh
    // /proc and the temporary directory there, and the host sees neither.
    for dir in ["proc", "tmp"] {
        std::fs::create_dir(root.path().join(dir)).expect("mkdir");
    }
    let tmp = writable_work_dir();
    let mut req = request(
        &root.path().join("work"),
        &["dash", "-c", "echo /proc/[0-9]*; echo hello > /tmp/f"],
    );
    req.environment_variables = vec![env("PATH", "/bin")];
    req.input_root_directory = root.path().display().to_string();
    req.temporary_directory = tmp.path().display().to_string();
    req.stdout_path = outputs.path().join("stdout").display().to_string();
    req.stderr_path = outputs.path().join("stderr").display().to_string();
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0, "{response:?}");
    assert_eq!(
        read_text(outputs.path().join("stdout")),
        "/proc/1 /proc/2\n"
    );
    assert_eq!(read_text(tmp.path().join("f")), "hello\n");
    for dir in ["proc", "tmp"] {
        let left = std::fs::read_dir(root.path().join(dir))
            .expect("list")
            .count();
        assert_eq!(left, 0, "a mount on {dir} reached the host");
    }

    let mut req = request(root.path(), &["true"]);
    req.input_root_directory.clear();
    let status = runner
        .client
        .run(req)
        .await
        .expect_err("input root required");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_replaces_a_stale_socket_and_cleans_up() {
    let dir = work_dir();
    let socket = dir.path().join("runner.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let config = dir.path().join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "socket_path = {:?}\nuser = \"nobody\"\n",
            socket.display().to_string()
        ),
    )
    .expect("write config");
    let (mut daemon, mut client) =
        start_binary(&socket, &["--config".as_ref(), config.as_os_str()]).await;
    let work = work_dir();
    let response = client
        .run(request(work.path(), &["id", "-u"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read_text(work.path().join("stdout")), "65534\n");

    let pid = daemon.id().expect("running") as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), daemon.wait())
        .await
        .expect("runner exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket removed on shutdown");

    // A config with a typo is refused with a message naming it.
    std::fs::write(&config, "socket_path = \"/tmp/x.sock\"\nusr = \"nobody\"\n").expect("write");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lazybarn-runner"))
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .expect("run lazybarn-runner");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("usr"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_dies_takes_its_commands_with_it() {
    let dir = work_dir();
    let socket = dir.path().join("runner.sock");
    let (mut daemon, mut client) =
        start_binary(&socket, &["--socket".as_ref(), socket.as_os_str()]).await;
    let work = work_dir();
    let marker = unique_marker();
    let req = with_marker(
        request(work.path(), &["sh", "-c", "setsid sleep 1000 & sleep 1000"]),
        &marker,
    );
    let call = tokio::spawn(async move { client.run(req).await });
    let running = wait_for_processes(&marker, 3, Duration::from_secs(10)).await;
    assert_eq!(running.len(), 3, "the command started");

    // SIGKILL: no handler, no drop guard runs; only the kernel cleans up.
    daemon.start_kill().expect("kill the runner");
    daemon.wait().await.expect("reap the runner");
    let left = wait_for_no_processes(&marker, Duration::from_secs(10)).await;
    assert_eq!(left, Vec::<u32>::new(), "commands outlived their runner");
    assert!(call.await.expect("task").is_err(), "the call fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_is_not_root_runs_commands_as_itself_and_still_kills_trees() {
    const NOBODY: u32 = 65534;
    let dir = writable_work_dir();
    let socket = dir.path().join("runner.sock");
    let args = ["--socket".as_ref(), socket.as_os_str()];
    let (mut daemon, mut client) = start_binary_as(&socket, &args, Some(NOBODY)).await;

    let work = writable_work_dir();
    let response = client
        .run(request(work.path(), &["sh", "-c", "id -u; id -g"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0, "{response:?}");
    assert_eq!(read_text(work.path().join("stdout")), "65534\n65534\n");

    // Each command still has a PID namespace of its own, so a timeout
    // kills what it left in the background, even in a session of its own.
    let marker = unique_marker();
    let mut req = with_marker(
        request(work.path(), &["sh", "-c", "setsid sleep 1000 & sleep 1000"]),
        &marker,
    );
    req.timeout = Some(seconds(1));
    let response = client.run(req).await.expect("runs").into_inner();
    assert!(response.timed_out, "{response:?}");
    let left = wait_for_no_processes(&marker, Duration::from_secs(10)).await;
    assert_eq!(left, Vec::<u32>::new(), "the timed-out tree survived");
    daemon.start_kill().expect("kill the runner");
    daemon.wait().await.expect("reap the runner");

    // Asked to run commands as another user, it refuses to start and says
    // why.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lazybarn-runner"))
        .args([
            "--socket".as_ref(),
            socket.as_os_str(),
            "--user".as_ref(),
            "root".as_ref(),
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .await
        .expect("run lazybarn-runner");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not root") && stderr.contains("uid 0"),
        "{stderr}"
    );
}
