//! The action sandbox, seen from inside commands: a /proc that shows only
//! the command's own processes, a network with nothing but loopback unless
//! the request asks for the host's, `no_new_privs`, the configured resource
//! limits, the uid and gid a request may choose, and a /tmp of its own.
//! These tests run as root; the last one starts a runner as `nobody`.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use lazybarn_proto::runner::runner_client::RunnerClient;
use lazybarn_proto::runner::{RunRequest, RunResponse};
use lazybarn_runner::config::Limits;
use tonic::Code;
use tonic::transport::Channel;

const NOBODY: u32 = 65534;

/// Lists the pids in /proc as `pid N` lines and prints every environment
/// it can read there, one variable a line, all with shell builtins so that
/// the listing itself starts no process.
const LIST_PROCESSES: &str = r#"for p in /proc/[0-9]*; do
  echo "pid ${p#/proc/}"
  while IFS= read -r -d '' var; do echo "$var"; done < "$p/environ"
done 2>/dev/null
echo listed"#;

fn listed_pids(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix("pid "))
        .collect()
}

/// The last component of `path`, as text.
fn entry_name(path: &Path) -> String {
    path.file_name()
        .expect("a named directory")
        .to_string_lossy()
        .into_owned()
}

async fn run_ok(client: &mut RunnerClient<Channel>, request: RunRequest) -> RunResponse {
    let response = client
        .run(request)
        .await
        .expect("the command runs")
        .into_inner();
    assert_eq!(response.exit_code, 0, "{response:?}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_commands_processes_and_environment_are_out_of_sight() {
    let mut runner = start_runner().await;
    let work_a = work_dir();
    let marker = unique_marker();
    let secret = format!("lazybarn-secret-{}", unique_marker());
    let mut a = with_marker(request(work_a.path(), &["sleep", "30"]), &marker);
    a.environment_variables.push(env("SECRET", &secret));
    let mut client = runner.client.clone();
    let call_a = tokio::spawn(async move { client.run(a).await });
    let running = wait_for_processes(&marker, 1, Duration::from_secs(10)).await;
    assert_eq!(running.len(), 1, "command A is running, as nobody like B");

    let work_b = work_dir();
    run_ok(
        &mut runner.client,
        request(work_b.path(), &["bash", "-c", LIST_PROCESSES]),
    )
    .await;
    let output = read_text(work_b.path().join("stdout"));
    assert!(output.ends_with("listed\n"), "{output}");
    // Its init and itself: nothing of A's, nothing of the host's.
    assert_eq!(listed_pids(&output), ["1", "2"], "{output}");
    assert!(
        !output.contains(&secret),
        "B read A's environment: {output}"
    );

    call_a.abort();
    let left = wait_for_no_processes(&marker, Duration::from_secs(10)).await;
    assert_eq!(left, Vec::<u32>::new(), "A is killed when its call goes");
}

/// Leaves a file in /dev/shm and a System V shared memory segment, then
/// waits: what command A does while B looks.
const LEAVE_SHARED_MEMORY: &str =
    "echo secret > /dev/shm/$MARKER_NAME && ipcmk -M 4096 && sleep 30";

/// What B finds of them.
const LOOK_FOR_SHARED_MEMORY: &str =
    "set -o pipefail; ls -A /dev/shm; ipcs -m | { grep -c '^0x' || true; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_and_ipc_of_another_command_are_out_of_sight() {
    let mut runner = start_runner().await;
    let work_a = work_dir();
    let marker = unique_marker();
    let name = format!("lazybarn-shm-{marker}");
    let mut a = with_marker(
        request(work_a.path(), &["bash", "-c", LEAVE_SHARED_MEMORY]),
        &marker,
    );
    a.environment_variables.push(env("MARKER_NAME", &name));
    let mut client = runner.client.clone();
    let call_a = tokio::spawn(async move { client.run(a).await });
    wait_for_processes(&marker, 1, Duration::from_secs(10)).await;
    // A's sleep starts after its file and segment exist.
    wait_for_text(
        work_a.path().join("stdout"),
        "Shared memory id",
        "A made no segment",
    )
    .await;

    let work_b = work_dir();
    run_ok(
        &mut runner.client,
        request(work_b.path(), &["bash", "-c", LOOK_FOR_SHARED_MEMORY]),
    )
    .await;
    let output = read_text(work_b.path().join("stdout"));
    assert_eq!(output, "0\n", "B saw A's /dev/shm or segment");
    assert!(
        !Path::new("/dev/shm").join(&name).exists(),
        "A's /dev/shm file reached the host's"
    );
    call_a.abort();
    wait_for_no_processes(&marker, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespaces_can_be_turned_off() {
    let mut runner = start_runner_with(|config| config.mount_and_network_namespaces = false).await;
    let work = work_dir();
    run_ok(
        &mut runner.client,
        request(work.path(), &["bash", "-c", LIST_PROCESSES]),
    )
    .await;
    let output = read_text(work.path().join("stdout"));
    assert!(listed_pids(&output).len() > 2, "the host's /proc: {output}");

    let mut req = request(work.path(), &["true"]);
    req.temporary_directory = work.path().display().to_string();
    let status = runner.client.run(req).await.expect_err("no private /tmp");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("mount_and_network_namespaces"),
        "{status:?}"
    );
}

/// A shell line that connects to 127.0.0.1:`port` and prints `connected`.
fn connect_script(port: u16) -> String {
    format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_have_only_loopback_unless_they_ask_for_the_host_network() {
    let mut runner = start_runner().await;
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("address").port();
    let work = work_dir();
    let script = connect_script(port);

    let response = runner
        .client
        .run(request(work.path(), &["bash", "-c", &script]))
        .await
        .expect("runs")
        .into_inner();
    assert_ne!(response.exit_code, 0, "reached the host's loopback");
    assert_eq!(read_text(work.path().join("stdout")), "");
    // Refused, not unreachable: the command's own loopback is up, and
    // nothing listens on it.
    let stderr = read_text(work.path().join("stderr"));
    assert!(stderr.contains("Connection refused"), "{stderr}");
    let accepted = listener.accept().map(|_| ());
    assert!(
        matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "{accepted:?}"
    );

    let mut req = request(work.path(), &["bash", "-c", &script]);
    req.host_network = true;
    run_ok(&mut runner.client, req).await;
    assert_eq!(read_text(work.path().join("stdout")), "connected\n");
    // The kernel completed the handshake; the connection waits to be taken.
    listener.accept().expect("the command's connection arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_binaries_cannot_raise_the_command() {
    let mut runner = start_runner().await;
    let tools = work_dir();
    let id = tools.path().join("id");
    std::fs::copy("/usr/bin/id", &id).expect("copy id");
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).expect("setuid root");
    let work = work_dir();
    let script = format!("grep NoNewPrivs /proc/self/status; {} -u", id.display());
    run_ok(
        &mut runner.client,
        request(work.path(), &["sh", "-c", &script]),
    )
    .await;
    assert_eq!(
        read_text(work.path().join("stdout")),
        format!("NoNewPrivs:\t1\n{NOBODY}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_come_from_the_configuration() {
    let mut runner = start_runner_with(|config| {
        config.limits = Limits {
            max_processes: 1000,
            max_open_files: 1024,
            max_file_size_bytes: 1 << 20,
            ..Limits::default()
        }
    })
    .await;
    let work = writable_work_dir();
    let script = "ulimit -u; ulimit -n; ulimit -Hn; ulimit -f; ulimit -c; \
                  head -c 2097152 /dev/zero > big; echo \"head: $?\"";
    run_ok(
        &mut runner.client,
        request(work.path(), &["bash", "-c", script]),
    )
    .await;
    // ulimit -f counts 1024-byte blocks; head dies of SIGXFSZ (25).
    assert_eq!(
        read_text(work.path().join("stdout")),
        "1000\n1024\n1024\n1024\n0\nhead: 153\n"
    );
    let written = std::fs::metadata(work.path().join("big")).expect("big exists");
    assert_eq!(written.len(), 1 << 20, "stopped at the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_shared_memory_is_capped() {
    let mut runner = start_runner_with(|config| {
        config.limits = Limits {
            max_shared_memory_bytes: 8 << 20,
            ..Limits::default()
        }
    })
    .await;
    let work = work_dir();
    let script = "for i in $(seq 16); do \
                    head -c 1048576 /dev/zero > /dev/shm/f$i 2>/dev/null || { echo full at $i; exit; }; \
                  done; echo never full";
    run_ok(
        &mut runner.client,
        request(work.path(), &["bash", "-c", script]),
    )
    .await;
    let output = read_text(work.path().join("stdout"));
    let at: u32 = output
        .trim()
        .strip_prefix("full at ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("16 MiB fit in an 8 MiB /dev/shm: {output:?}"));
    assert!((8..=9).contains(&at), "full at file {at} of 1 MiB");
}

/// Gives the host a /dev/mqueue, as systemd does, if it has none. It stays
/// afterwards: removing it could race with commands of the other tests
/// here, which mount over it when it exists.
fn ensure_host_mqueue() {
    let dir = Path::new("/dev/mqueue");
    if dir.is_dir() {
        return;
    }
    std::fs::create_dir(dir).expect("mkdir /dev/mqueue");
    let status = std::process::Command::new("mount")
        .args(["-t", "mqueue", "mqueue", "/dev/mqueue"])
        .status()
        .expect("mount runs");
    assert!(status.success(), "mounting mqueue on /dev/mqueue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_commands_message_queues_are_out_of_sight() {
    ensure_host_mqueue();
    let mut runner = start_runner().await;
    let work_a = work_dir();
    let marker = unique_marker();
    let name = format!("lazybarn-mq-{marker}");
    let mut a = with_marker(
        request(
            work_a.path(),
            &[
                "bash",
                "-c",
                ": > /dev/mqueue/$QUEUE && echo made && sleep 30",
            ],
        ),
        &marker,
    );
    a.environment_variables.push(env("QUEUE", &name));
    let mut client = runner.client.clone();
    let call_a = tokio::spawn(async move { client.run(a).await });
    wait_for_processes(&marker, 1, Duration::from_secs(10)).await;
    wait_for_text(work_a.path().join("stdout"), "made", "A made no queue").await;

    let work_b = work_dir();
    run_ok(
        &mut runner.client,
        request(
            work_b.path(),
            &["bash", "-c", "ls -A /dev/mqueue; echo listed"],
        ),
    )
    .await;
    assert_eq!(
        read_text(work_b.path().join("stdout")),
        "listed\n",
        "B saw A's message queue"
    );
    assert!(
        !Path::new("/dev/mqueue").join(&name).exists(),
        "A's queue reached the host's /dev/mqueue"
    );
    call_a.abort();
    wait_for_no_processes(&marker, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_choose_their_uid_and_gid_from_the_slot_range() {
    let mut runner = start_runner().await;
    let work = work_dir();
    let mut req = request(work.path(), &["sh", "-c", "id -u; id -g; id -G"]);
    req.uid = Some(60001);
    req.gid = Some(60002);
    run_ok(&mut runner.client, req).await;
    assert_eq!(
        read_text(work.path().join("stdout")),
        "60001\n60002\n60002\n"
    );

    for (uid, gid, named) in [
        (Some(0), None, "uid 0"),
        (None, Some(0), "gid 0"),
        (Some(70000), None, "uid 70000"),
        (Some(1000), Some(60001), "uid 1000"),
    ] {
        let mut req = request(work.path(), &["id"]);
        req.uid = uid;
        req.gid = gid;
        let status = runner.client.run(req).await.expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(named) && status.message().contains("60000..=61023"),
            "{status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_temporary_directory_is_the_commands_tmp() {
    let mut runner = start_runner().await;
    let tmp = writable_work_dir();
    let work = work_dir();
    let name = format!("lazybarn-tmp-{}", unique_marker());
    let script = format!("echo hello > /tmp/{name} && ls -A /tmp");
    let mut req = request(work.path(), &["sh", "-c", &script]);
    req.temporary_directory = tmp.path().display().to_string();
    run_ok(&mut runner.client, req).await;
    // Of the host's /tmp, only the entry that holds the working directory
    // is left, at its own path.
    let mut listed: Vec<String> = read_text(work.path().join("stdout"))
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut expected = vec![name.clone(), entry_name(work.path())];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(read_text(tmp.path().join(&name)), "hello\n");
    assert!(
        !Path::new("/tmp").join(&name).exists(),
        "landed in the host's /tmp"
    );

    let mut req = request(work.path(), &["true"]);
    req.temporary_directory = "tmp".to_string();
    let status = runner.client.run(req).await.expect_err("relative");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut req = request(work.path(), &["true"]);
    req.temporary_directory = tmp.path().join("missing").display().to_string();
    let status = runner.client.run(req).await.expect_err("missing");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("missing"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_is_not_root_sandboxes_its_commands_too() {
    let dir = writable_work_dir();
    let socket = dir.path().join("runner.sock");
    let args = ["--socket".as_ref(), socket.as_os_str()];
    let (mut daemon, mut client) = start_binary_as(&socket, &args, Some(NOBODY)).await;
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("address").port();
    let work = writable_work_dir();
    let tmp = writable_work_dir();
    let script = format!(
        "{LIST_PROCESSES}\ngrep NoNewPrivs /proc/self/status\nls -A /tmp\n{} || echo refused",
        connect_script(port)
    );
    let mut req = request(work.path(), &["bash", "-c", &script]);
    req.temporary_directory = tmp.path().display().to_string();
    run_ok(&mut client, req).await;
    let output = read_text(work.path().join("stdout"));
    assert_eq!(listed_pids(&output), ["1", "2"], "{output}");
    let expected = format!(
        "listed\nNoNewPrivs:\t1\n{}\nrefused\n",
        entry_name(work.path())
    );
    assert!(output.ends_with(&expected), "{output}");

    // It accepts no uid but its own.
    let mut req = request(work.path(), &["true"]);
    req.uid = Some(60001);
    let status = client.run(req).await.expect_err("not its own");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("only uid 65534"), "{status:?}");
    daemon.start_kill().expect("kill the runner");
    daemon.wait().await.expect("reap the runner");
}
