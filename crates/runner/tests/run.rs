//! What a command sees and what the runner reports: exit codes and signals,
//! the user it runs as, its environment, its arguments, and its output.
//! These tests run as root, as CI does.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_are_reported() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let cases: [(&str, i32, i32); 5] = [
        ("exit 0", 0, 0),
        ("exit 3", 3, 0),
        ("exit 255", 255, 0),
        ("kill -TERM $$", 143, libc::SIGTERM),
        ("kill -SEGV $$", 139, libc::SIGSEGV),
    ];
    for (script, exit_code, signal) in cases {
        let response = runner
            .client
            .run(request(dir.path(), &["sh", "-c", script]))
            .await
            .expect("command runs")
            .into_inner();
        assert_eq!(
            (response.exit_code, response.signal, response.timed_out),
            (exit_code, signal, false),
            "{script}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_usage_is_reported() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    // Busy for a while in user space, in a child of the shell: descendants count.
    let script = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; head -c 50000000 /dev/zero | tail -c 1 >/dev/null";
    let response = runner
        .client
        .run(request(dir.path(), &["sh", "-c", script]))
        .await
        .expect("command runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    let usage = response.resource_usage.expect("resource usage");
    let user = usage.user_time.expect("user time");
    assert!(user.seconds > 0 || user.nanos > 10_000_000, "{user:?}");
    assert!(usage.max_resident_set_size_bytes > 1 << 20, "{usage:?}");
    let wall = usage.wall_time.expect("wall time");
    assert!(wall.seconds > 0 || wall.nanos > 0);
    let (start, end) = (
        usage.start_time.expect("start"),
        usage.end_time.expect("end"),
    );
    assert!((end.seconds, end.nanos) > (start.seconds, start.nanos));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_as_nobody_without_supplementary_groups() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let response = runner
        .client
        .run(request(
            dir.path(),
            &[
                "sh",
                "-c",
                "id -u; id -g; id -G; touch /etc/lazybarn-test 2>/dev/null || echo denied",
            ],
        ))
        .await
        .expect("command runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(
        read_text(dir.path().join("stdout")),
        "65534\n65534\n65534\ndenied\n"
    );
    assert!(!std::path::Path::new("/etc/lazybarn-test").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_exactly_the_requests() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let mut req = request(dir.path(), &["env"]);
    req.environment_variables = vec![
        env("B", "two words"),
        env("A", "1"),
        env("PATH", "/usr/bin:/bin"),
        env("EMPTY", ""),
    ];
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(
        read_text(dir.path().join("stdout")),
        "B=two words\nA=1\nPATH=/usr/bin:/bin\nEMPTY=\n"
    );

    // Nothing at all, not even PATH: the program is then found in the
    // runner's documented default path.
    let mut req = request(dir.path(), &["env"]);
    req.environment_variables.clear();
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read_text(dir.path().join("stdout")), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv0_is_resolved_as_reapi_says_and_passed_unchanged() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).expect("mkdir");
    std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = tools.join("hello");
    std::fs::write(&script, "#!/bin/sh\necho \"$0 $PWD $*\"\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let wd = dir.path().display().to_string();

    // With a slash: relative to the working directory.
    let response = runner
        .client
        .run(request(dir.path(), &["./tools/hello", "x"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(
        read_text(dir.path().join("stdout")),
        format!("./tools/hello {wd} x\n")
    );

    // Without: looked up in the request's PATH, not the runner's.
    let mut req = request(dir.path(), &["hello", "y"]);
    req.environment_variables = vec![env("PATH", &format!("/nonexistent:{}", tools.display()))];
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0);
    // The interpreter sees the path found in PATH, as with execvp.
    let found = tools.join("hello");
    assert_eq!(
        read_text(dir.path().join("stdout")),
        format!("{} {wd} y\n", found.display())
    );

    // A binary gets arguments[0] itself as its argv[0].
    let response = runner
        .client
        .run(request(dir.path(), &["cat", "/proc/self/cmdline"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(
        read(dir.path().join("stdout")),
        b"cat\0/proc/self/cmdline\0"
    );

    // A relative PATH entry is relative to the working directory too.
    let mut req = request(dir.path(), &["hello"]);
    req.environment_variables = vec![env("PATH", "tools")];
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0);

    let status = runner
        .client
        .run(request(dir.path(), &["hello"]))
        .await
        .expect_err("not in the request's PATH");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

/// Deterministic bytes covering every byte value.
fn binary_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn write_readable(path: &std::path::Path, data: &[u8]) {
    std::fs::write(path, data).expect("write input");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_stdout_and_stderr_are_captured_byte_exact() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let mut out: Vec<u8> = (0..=255u8).cycle().take(256 * 64).collect();
    out.extend_from_slice(b"\0\0\r\n\xff");
    let err = binary_data(100_003, 7);
    write_readable(&dir.path().join("out.bin"), &out);
    write_readable(&dir.path().join("err.bin"), &err);
    let response = runner
        .client
        .run(request(
            dir.path(),
            &["sh", "-c", "cat out.bin; cat err.bin >&2"],
        ))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert!(read(dir.path().join("stdout")) == out, "stdout differs");
    assert!(read(dir.path().join("stderr")) == err, "stderr differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabytes_of_output_are_captured_byte_exact() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let data = binary_data(100 * 1024 * 1024, 42);
    write_readable(&dir.path().join("big.bin"), &data);
    let response = runner
        .client
        .run(request(
            dir.path(),
            &["sh", "-c", "cat big.bin; cat big.bin >&2"],
        ))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert!(read(dir.path().join("stdout")) == data, "stdout differs");
    assert!(read(dir.path().join("stderr")) == data, "stderr differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_for_both_streams_keeps_their_order_and_empty_paths_discard() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let mut req = request(dir.path(), &["sh", "-c", "echo a; echo b >&2; echo c"]);
    req.stderr_path = req.stdout_path.clone();
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read_text(dir.path().join("stdout")), "a\nb\nc\n");

    let mut req = request(
        dir.path(),
        &["sh", "-c", "echo out; echo err >&2; read x; echo \"[$x]\""],
    );
    req.stdout_path.clear();
    req.stderr_path.clear();
    let response = runner.client.run(req).await.expect("runs").into_inner();
    assert_eq!(response.exit_code, 0);

    // Existing output files are truncated, not appended to.
    std::fs::write(dir.path().join("stdout"), "stale stale stale\n").expect("write");
    let response = runner
        .client
        .run(request(dir.path(), &["echo", "new"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read_text(dir.path().join("stdout")), "new\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_empty_and_no_runner_descriptor_leaks() {
    let mut runner = start_runner().await;
    let dir = work_dir();
    let response = runner
        .client
        .run(request(dir.path(), &["sh", "-c", "cat; ls /proc/self/fd"]))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    // 0, 1, 2, and the descriptor ls opens to read the directory.
    assert_eq!(read_text(dir.path().join("stdout")), "0\n1\n2\n3\n");
}
