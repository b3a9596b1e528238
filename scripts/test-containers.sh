#!/usr/bin/env bash
# End-to-end test of the container images: the scheduler on this host and
# two worker containers, used by a real Bazel build.
#
#  1. builds the images (scripts/build-images.sh) around the given binary;
#  2. starts `lazybarn up --workers 0` on the host (scheduler and storage,
#     free ports on 127.0.0.1);
#  3. starts two worker containers with podman, each with /dev/fuse, its own
#     runner, virtual build directories, and only the capabilities the
#     Kubernetes manifests grant (deploy/kubernetes/workers.yaml);
#  4. builds and tests tests/bazel/remote_workspace with Debian's Bazel 4.2.3
#     against it, and checks that every action ran remotely, that both
#     containers ran some, in virtual mode, that commands ran as a slot's own
#     uid (60000 + slot), not root, in the runner's sandbox (only loopback,
#     only its own processes), that the workers removed every action
#     directory, including what an action left in its /tmp that root alone
#     cannot enter or unlink (a 0700 directory, a sticky one, a mode 0 one),
#     and that a test past its timeout is killed;
#  5. drain: builds again with fresh action keys, stops the container running
#     the 8-second //special:slow with SIGTERM (`podman stop -t 60`) while it
#     runs, and checks that the scheduler shows that worker as draining, that
#     the action finishes there and is not run again elsewhere, that the
#     container exits by itself with status 0, and that the build succeeds;
#  6. runs the scheduler image and a worker container with the ConfigMaps of
#     deploy/kubernetes and the manifests' user, capabilities and read-only
#     root, in a network namespace of their own, and builds against them.
#
# Usage: scripts/test-containers.sh [--binary PATH] [--no-build] [--skip-drain]
#   --binary PATH  lazybarn binary for the host and the images
#                  [default: target/debug/lazybarn, which scripts/test builds]
#   --no-build     use the images already tagged :test
#   --skip-drain   leave out step 5
#
# Runs as root, with podman, runc, debootstrap and bazel-bootstrap installed
# (scripts/install-deps). Takes about 2-3 minutes once the Debian root
# filesystem is cached, and 2 more to make it the first time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

binary=target/debug/lazybarn
build=1
drain=1
while (($# > 0)); do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --skip-drain) drain=0; shift ;;
        *) echo "test-containers: unknown argument $1" >&2; exit 2 ;;
    esac
done
binary=$(realpath "$binary")

log() { echo "test-containers: $*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

if ((EUID != 0)); then
    fail "run as root (rootful podman, FUSE in the containers)"
fi
[[ -x "$binary" ]] || fail "no lazybarn binary at $binary (cargo build --workspace --bins)"
[[ -e /dev/fuse ]] || fail "/dev/fuse is missing on this host"

podman=(podman --runtime runc --cgroup-manager=cgroupfs)
tag=test
run_id=$$
containers=("lazybarn-test-worker-1-$run_id" "lazybarn-test-worker-2-$run_id")
# The Bazel server and the work files: under /tmp and open to every uid.
work=$(mktemp -d /tmp/lazybarn-containers.XXXXXX)
chmod 0755 "$work"
up_pid=""
bazel_startup=()
# The network namespace Bazel runs in, when not this one.
bazel_netns=""

# Runs bazel with $bazel_startup in the workspace (and in $bazel_netns).
bazel_cmd() {
    local enter=()
    [[ -n "$bazel_netns" ]] && enter=(nsenter "--net=$bazel_netns")
    (cd "$work/ws" && timeout 600 "${enter[@]}" bazel "${bazel_startup[@]}" "$@")
}

cleanup() {
    local status=$?
    set +e
    if ((status != 0)); then
        for c in "${containers[@]}"; do
            log "last lines of $c:"
            "${podman[@]}" logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2
        done
        log "last lines of lazybarn up:"
        tail -n 30 "$work/up.log" 2>/dev/null | sed 's/^/    /' >&2
    fi
    ((${#bazel_startup[@]} > 0)) && bazel_cmd shutdown >/dev/null 2>&1
    for c in "${containers[@]}"; do
        "${podman[@]}" rm --force --volumes --time 0 "$c" >/dev/null 2>&1
    done
    if [[ -n "$up_pid" ]]; then
        kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
    fi
    chmod -R u+w "$work" 2>/dev/null
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

started=$SECONDS
# Checks passed; the last line counts them the way test runners do.
passed=0

# --- 1. images ---------------------------------------------------------------
if ((build)); then
    scripts/build-images.sh --binary "$binary" --tag "$tag"
fi
log "images ready after $((SECONDS - started))s"
passed=$((passed + 1))

# --- 2. scheduler and storage on the host -------------------------------------
"$binary" up --workers 0 --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    --data-dir "$work/up" >"$work/up.log" 2>&1 &
up_pid=$!

# Waits up to $2 seconds for a line matching the regex $1 in file $3, and
# prints the first match.
wait_for_line() {
    local pattern=$1 seconds=$2 file=$3 line
    for ((i = 0; i < seconds * 10; i++)); do
        if line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

ready=$(wait_for_line '^lazybarn ready: grpc://' 60 "$work/up.log") ||
    fail "lazybarn up did not print its ready line"
grpc=${ready#lazybarn ready: }
status=$(grep -m1 '^lazybarn status: ' "$work/up.log") || fail "no status line from lazybarn up"
status_url=${status#lazybarn status: }
log "scheduler at $grpc, status page $status_url"

# Questions about the scheduler's /api/status:
#   scheduler_status workers         how many workers are registered
#   scheduler_status holder TARGET   the worker holding TARGET's action
#   scheduler_status watch WORKER TARGET
#                                    WORKER's state, and "rerun-on W" if a
#                                    worker W other than WORKER holds TARGET
cat >"$work/status.py" <<'END_OF_PYTHON'
import json, sys, urllib.request

url, question, *args = sys.argv[1:]
status = json.load(urllib.request.urlopen(url + "/api/status", timeout=5))
if question == "workers":
    print(len(status["workers"]))
elif question == "holder":
    holders = [op["worker"] for op in status["executing"]
               if op.get("target") == args[0] and op.get("worker")]
    print(holders[0] if holders else "")
elif question == "watch":
    worker, target = args
    print(" ".join(w.get("state", "") for w in status["workers"] if w["id"] == worker))
    for op in status["executing"]:
        if op.get("target") == target and op.get("worker") not in (None, worker):
            print("rerun-on", op["worker"])
END_OF_PYTHON
scheduler_status() {
    python3 "$work/status.py" "$status_url" "$@"
}

# --- 3. two worker containers -----------------------------------------------
# The same capabilities as deploy/kubernetes/workers.yaml, and nothing else
# (the worker and its runner child share the container's one set):
#   SYS_ADMIN  mount(2) of /dev/fuse, FUSE passthrough; the runner's PID,
#              mount, IPC and network namespaces and the mounts in them
#   NET_ADMIN  the runner bringing up loopback in each command's network
#              namespace
#   SETUID, SETGID  the runner switching each command to its slot's ids
#   CHOWN      the worker giving each action directory to its slot's group
#              and its tmp/ to the slot's user
#   DAC_OVERRIDE  the worker creating output directories in the mount (its
#              root is 0700 for the slot's uid) and emptying the action's
#              tmp/; the runner entering the working directory as root
#   FOWNER     the worker unlinking in sticky directories the action made
# and no_new_privs, as allowPrivilegeEscalation: false sets it. Phase 4
# fails without any one of them. No KILL: the runner kills a timed-out
# command through the init of its PID namespace, which stays root (phase 4
# times out //special:sleeps to show it).
caps=(--cap-drop all
    --cap-add SYS_ADMIN,NET_ADMIN,SETUID,SETGID,CHOWN,DAC_OVERRIDE,FOWNER
    --security-opt no-new-privileges)
# Podman's default rlimits (1048576 open files) can exceed the host's hard
# limits, which runc may then not raise; stay within them.
hard_nofile=$(ulimit -Hn)
nofile=$((hard_nofile < 65536 ? hard_nofile : 65536))
# Without SYS_RESOURCE the runner cannot raise a hard limit, so the
# container's must cover the runner's default max_open_files.
((nofile >= 16384)) ||
    fail "the hard limit on open files here is $hard_nofile; commands need 16384 (runner max_open_files)"
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=16384:16384)

for c in "${containers[@]}"; do
    # --network host: the scheduler listens on the host's 127.0.0.1.
    # --hostname: the worker's id is hostname:pid, and pid is 1 in both.
    # --read-only: as on Kubernetes; podman puts tmpfs on /tmp and /run.
    # -v /var/lib/lazybarn: an anonymous volume, removed with the container,
    #   for the blob cache and the action directories.
    # worker-token: `up` serves the worker protocol only to holders of the
    #   token it generated, which it wrote into its data directory.
    "${podman[@]}" run --detach --name "$c" --hostname "$c" --network host \
        --device /dev/fuse "${caps[@]}" "${limits[@]}" --read-only \
        -v /var/lib/lazybarn -v "$work/up/worker-token:/etc/lazybarn/worker-token:ro" \
        "localhost/lazybarn-worker:$tag" \
        worker --scheduler "$grpc" --workers 2 --build-dir virtual \
        --scheduler-token-file /etc/lazybarn/worker-token \
        --data-dir /var/lib/lazybarn --http 127.0.0.1:0 >/dev/null
done

for c in "${containers[@]}"; do
    for ((i = 0; i < 300; i++)); do
        "${podman[@]}" logs "$c" >"$work/$c.log" 2>&1
        grep -q '^lazybarn worker started' "$work/$c.log" && break
        [[ "$("${podman[@]}" inspect --format '{{.State.Running}}' "$c")" == true ]] ||
            fail "container $c exited before it started its worker"
        sleep 0.1
    done
    grep -q '^lazybarn worker started' "$work/$c.log" || fail "$c did not start its worker"
    grep -q '^lazybarn build directory: .* (virtual)$' "$work/$c.log" ||
        fail "$c does not use virtual build directories: $(grep 'build directory' "$work/$c.log")"
done

for ((i = 0; i < 100; i++)); do
    registered=$(scheduler_status workers)
    ((registered == 2)) && break
    sleep 0.2
done
((registered == 2)) || fail "$registered workers registered, not 2"
log "two worker containers registered after $((SECONDS - started))s"
passed=$((passed + 1))

# --- 4. a C++ build and test across both containers ----------------------------
cp -r tests/bazel/remote_workspace "$work/ws"
# //sandbox:probe reports what its command sees of the runner's sandbox, and
# leaves in its /tmp (the action's tmp/, the slot user's, 0700) what root
# can list and empty only with DAC_OVERRIDE (0700 and mode 0 directories)
# and FOWNER (a sticky one).
mkdir "$work/ws/sandbox"
cat >"$work/ws/sandbox/BUILD" <<'EOF'
genrule(
    name = "probe",
    outs = ["nested/probe.txt"],
    cmd = "$(location probe.sh) > $@",
    tools = ["probe.sh"],
)
EOF
cat >"$work/ws/sandbox/probe.sh" <<'EOF'
#!/bin/sh
set -e
echo "uid $(id -u)"
echo "init $(tr '\0' ' ' </proc/1/cmdline | cut -d' ' -f2)"
echo "interfaces $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | xargs)"
echo "workers-visible $(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ' | grep -c 'lazybarn[ ]worker' || true)"
mkdir -m 0700 /tmp/private && echo secret >/tmp/private/file && chmod 0600 /tmp/private/file
mkdir -m 1777 /tmp/sticky && echo x >/tmp/sticky/file
mkdir /tmp/locked && touch /tmp/locked/file && chmod 0 /tmp/locked
EOF
chmod 0755 "$work/ws/sandbox/probe.sh"
overrides=$repo/tests/bazel/overrides
bazel_startup=(--output_user_root="$work/bazel-root" --nohome_rc --noworkspace_rc --max_idle_secs=300)
bazel_flags=(
    --override_repository=rules_cc="$overrides/rules_cc"
    --override_repository=rules_java="$overrides/rules_java"
    --override_repository=remote_coverage_tools="$overrides/remote_coverage_tools"
    --color=no --curses=no --nosandbox_debug --symlink_prefix=/
    --remote_executor="$grpc" --remote_default_exec_properties=OSFamily=linux
    --remote_timeout=60 --spawn_strategy=remote --test_output=errors
)

# Runs `bazel $1 <flags> ${@:2}` in the workspace, its stderr in
# $work/bazel.log; fails with the end of it if Bazel does.
bazel_run() {
    local command=$1
    shift
    if ! bazel_cmd "$command" "${bazel_flags[@]}" "$@" >"$work/bazel.out" 2>"$work/bazel.log"; then
        tail -n 40 "$work/bazel.log" >&2
        fail "bazel $command $* failed"
    fi
}

# Checks that Bazel's last process summary counts only internal and remote
# processes, and at least $1 remote ones.
expect_all_remote() {
    local least=$1 summary
    summary=$(grep -E '^INFO: [0-9]+ process(es)?:' "$work/bazel.log" | tail -n 1)
    python3 - "$summary" "$least" <<'EOF' || fail "not every process ran remotely: $summary"
import re, sys
summary, least = sys.argv[1], int(sys.argv[2])
kinds = dict((k, int(n)) for n, k in re.findall(r"(\d+) ([a-z -]+?)(?:,|\.$)", summary.split(": ", 1)[1]))
others = {k: n for k, n in kinds.items() if k not in ("internal", "remote")}
sys.exit(1 if others or kinds.get("remote", 0) < least else 0)
EOF
    log "bazel: ${summary#INFO: }"
}

# The number of actions a container's worker finished, from its /metrics.
actions_done() {
    local metrics_url
    metrics_url=$(grep -m1 -o 'metrics http://[^ ]*' "$work/$1.log")
    python3 - "${metrics_url#metrics }" <<'EOF'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(int(sum(float(v) for v in re.findall(r"^lazybarn_worker_actions_total\{[^}]*\} (\S+)$", text, re.M))))
EOF
}

bazel_run test //app/... //base/...
expect_all_remote 10
for c in "${containers[@]}"; do
    n=$(actions_done "$c")
    ((n > 0)) || fail "$c ran no action; the build did not spread over both containers"
    log "$c ran $n actions"
done
passed=$((passed + 1))

# Each container's 2 slots run as uids 60000 and 60001 (first_slot_id).
bazel_run build //special:whoami //sandbox:probe
bazel_bin=$(bazel_cmd info "${bazel_flags[@]}" bazel-bin 2>/dev/null)
uid=$(cat "$bazel_bin/special/whoami.txt")
[[ "$uid" == 6000[01] ]] || fail "//special:whoami ran as uid $uid, not a slot's own (60000, 60001)"
probe=$(cat "$bazel_bin/sandbox/nested/probe.txt")
expected="uid 6000[01]
init runner
interfaces lo
workers-visible 0"
# shellcheck disable=SC2053  # the right side is a pattern
[[ "$probe" == $expected ]] ||
    fail "//sandbox:probe saw '$(echo "$probe" | xargs)', not its slot's uid, the runner's" \
        "init as pid 1 of its own PID namespace, loopback alone and a /proc without the worker"
# Action directories are removed before each result is reported, so none
# may be left by now, and removing none may have failed.
for c in "${containers[@]}"; do
    "${podman[@]}" logs "$c" >"$work/$c.log" 2>&1
    build_dir=$(sed -n 's/^lazybarn build directory: \(.*\) (virtual)$/\1/p' "$work/$c.log")
    left=$("${podman[@]}" exec "$c" find "$build_dir" -mindepth 1 -maxdepth 1)
    [[ -z "$left" ]] || fail "$c left action directories behind: $left"
    if grep -E 'WARN.*(removing|creating|chown)' "$work/$c.log" >&2; then
        fail "$c could not handle an action directory (above)"
    fi
done

# A test that sleeps 600 s with a 3 s timeout: the runner must kill its
# whole tree, which runs as a slot's uid, in time.
timeout_started=$SECONDS
if bazel_cmd test "${bazel_flags[@]}" --test_timeout=3 //special:sleeps \
    >"$work/bazel.out" 2>"$work/bazel.log"; then
    fail "//special:sleeps passed; it should have timed out"
fi
grep -qE '^TIMEOUT: //special:sleeps|^//special:sleeps +TIMEOUT' "$work/bazel.out" "$work/bazel.log" || {
    tail -n 20 "$work/bazel.log" >&2
    fail "//special:sleeps did not time out"
}
for c in "${containers[@]}"; do
    if "${podman[@]}" top "$c" args | grep -q 'sleep 600'; then
        fail "$c still runs the timed-out //special:sleeps"
    fi
done
log "actions run as uid $uid in their sandbox; every action directory was removed;" \
    "a timed-out test was killed in $((SECONDS - timeout_started))s;" \
    "build and test took $((SECONDS - started))s in all"
passed=$((passed + 1))

# --- 5. drain on SIGTERM --------------------------------------------------------
test_drain() {
    # Fresh action keys, so nothing comes from the Action Cache.
    bazel_flags+=(--action_env=LAZYBARN_TEST_RUN="$run_id-$RANDOM")
    bazel_cmd test "${bazel_flags[@]}" //special:slow //app/... //base/... \
        >"$work/bazel.out" 2>"$work/bazel.log" &
    bazel_pid=$!

    # The worker holding //special:slow, once one took it (the action sleeps 8s).
    holder=""
    for ((i = 0; i < 600; i++)); do
        holder=$(scheduler_status holder //special:slow)
        [[ -n "$holder" ]] && break
        kill -0 "$bazel_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n "$holder" ]] || fail "never saw //special:slow running on a worker"
    victim=${holder%%:*}
    log "stopping $victim (worker $holder) while it runs //special:slow"

    stop_started=$SECONDS
    "${podman[@]}" stop --time 60 "$victim" >/dev/null &
    stop_pid=$!

    # Until the build ends: the victim must show as draining, and the slow
    # action must never be handed to another worker.
    seen_draining=0
    rerun=""
    stop_seconds=""
    while kill -0 "$bazel_pid" 2>/dev/null || kill -0 "$stop_pid" 2>/dev/null; do
        state=$(scheduler_status watch "$holder" //special:slow 2>/dev/null || true)
        [[ "$state" == *draining* ]] && seen_draining=1
        [[ "$state" == *rerun-on* ]] && rerun=$state
        if [[ -z "$stop_seconds" ]] && ! kill -0 "$stop_pid" 2>/dev/null; then
            stop_seconds=$((SECONDS - stop_started))
        fi
        sleep 0.2
    done
    wait "$stop_pid" || fail "podman stop $victim failed"
    stop_seconds=${stop_seconds:-$((SECONDS - stop_started))}
    exit_code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$victim")
    "${podman[@]}" logs "$victim" >"$work/$victim.log" 2>&1

    wait "$bazel_pid" || {
        tail -n 40 "$work/bazel.log" >&2
        fail "the build failed after $victim was stopped"
    }
    expect_all_remote 10
    [[ -z "$rerun" ]] || fail "//special:slow was handed to another worker after SIGTERM ($rerun): not drained"
    ((seen_draining)) || fail "the scheduler never showed $holder as draining"
    [[ "$exit_code" == 0 ]] || fail "$victim exited with $exit_code after SIGTERM (137: killed, not drained)"
    ((stop_seconds < 60)) || fail "$victim took ${stop_seconds}s to stop"
    log "$victim drained and exited 0 in ${stop_seconds}s; the build succeeded"
}

# --- 6. the Kubernetes configuration ------------------------------------------
# The images run with the ConfigMaps of deploy/kubernetes, the way the
# manifests run them: the scheduler as uid 65532 with a read-only root, no
# capabilities and its storage on a volume; a worker with a read-only root
# and the capabilities above. They share a network namespace of their
# own (the scheduler container's, with no network) where the Services' names
# resolve to loopback; Bazel builds from inside it, and both probe endpoints
# must answer.
test_kubernetes_configs() {
    local etc=$work/kubernetes
    local scheduler=lazybarn-test-scheduler-$run_id worker=lazybarn-test-k8s-worker-$run_id
    mkdir -p "$etc/scheduler" "$etc/worker" "$etc/storage"
    python3 - "$etc" <<'END_OF_PYTHON' || fail "reading the ConfigMaps (PyYAML comes with kubernetes-validate)"
import sys, yaml

etc = sys.argv[1]
for role, manifest in [("scheduler", "scheduler.yaml"), ("worker", "workers.yaml")]:
    with open("deploy/kubernetes/" + manifest) as f:
        for resource in yaml.safe_load_all(f):
            if resource and resource["kind"] == "ConfigMap":
                for name, text in resource["data"].items():
                    with open(f"{etc}/{role}/{name}", "w") as out:
                        out.write(text)
END_OF_PYTHON
    chown 65532:65532 "$etc/storage"
    printf '127.0.0.1 localhost lazybarn-scheduler lazybarn-scheduler-workers\n' >"$etc/hosts"
    # The worker first: it lives in the scheduler's network namespace.
    containers+=("$worker" "$scheduler")

    "${podman[@]}" run --detach --name "$scheduler" --network none --read-only \
        --cap-drop all --user 65532:65532 "${limits[@]}" \
        -v "$etc/scheduler:/etc/lazybarn:ro" -v "$etc/storage:/var/lib/lazybarn" \
        "localhost/lazybarn:$tag" scheduler --config /etc/lazybarn/scheduler.toml >/dev/null
    "${podman[@]}" run --detach --name "$worker" --network "container:$scheduler" --read-only \
        --device /dev/fuse "${caps[@]}" "${limits[@]}" -v "$etc/hosts:/etc/hosts:ro" \
        -v "$etc/worker:/etc/lazybarn:ro" -v /var/lib/lazybarn \
        "localhost/lazybarn-worker:$tag" \
        worker --config /etc/lazybarn/worker.toml --workers 2 --http 0.0.0.0:8983 >/dev/null
    bazel_netns=/proc/$("${podman[@]}" inspect --format '{{.State.Pid}}' "$scheduler")/ns/net

    # The probes' endpoints, from inside the namespace, until all answer 200
    # (the worker's /readyz once it is registered with a ready runner) and
    # the scheduler counts the worker.
    local probe='
import sys, urllib.request
for url in sys.argv[1:]:
    urllib.request.urlopen(url, timeout=2).read()
'
    local ready=0
    for ((i = 0; i < 100; i++)); do
        if nsenter "--net=$bazel_netns" python3 -c "$probe" \
            http://127.0.0.1:8981/metrics http://127.0.0.1:8983/healthz \
            http://127.0.0.1:8983/readyz 2>/dev/null &&
            [[ "$(nsenter "--net=$bazel_netns" python3 "$work/status.py" \
                http://127.0.0.1:8981 workers)" == 1 ]]; then
            ready=1
            break
        fi
        sleep 0.2
    done
    ((ready)) || fail "the scheduler and worker of deploy/kubernetes did not come up"

    bazel_startup=(--output_user_root="$work/bazel-root-kubernetes" --nohome_rc --noworkspace_rc --max_idle_secs=300)
    bazel_flags=("${bazel_flags[@]/--remote_executor=*/--remote_executor=grpc://127.0.0.1:8980}")
    bazel_run test //app/... //base/...
    expect_all_remote 10
    bazel_cmd shutdown >/dev/null 2>&1

    for c in "$worker" "$scheduler"; do
        "${podman[@]}" stop --time 30 "$c" >/dev/null
        local code
        code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$c")
        [[ "$code" == 0 ]] || fail "$c exited with $code on SIGTERM"
    done
    log "deploy/kubernetes's configuration: the build ran remotely; both containers stopped with 0"
}

skipped=0
if ((drain)); then
    test_drain
    passed=$((passed + 1))
else
    log "drain skipped"
    skipped=1
fi
# The host's Bazel server is done; phase 6 starts its own in the namespace.
bazel_cmd shutdown >/dev/null 2>&1 || true
test_kubernetes_configs
passed=$((passed + 1))
log "PASSED in $((SECONDS - started))s"
echo "test-containers: $passed passed, 0 failed, $skipped skipped"
