//! Structural checks of `deploy/`: the Kubernetes manifests hang together
//! (every ConfigMap, volume, port and device they name exists), the workers
//! get /dev/fuse, the capabilities FUSE and the runner's sandbox need and no
//! more (in the manifests, the systemd units and the container test alike),
//! probes, resources and time to drain, slot ids the runner accepts, and
//! every TOML configuration in `deploy/` is one the binaries accept (parsed
//! by the binaries' own config types, which refuse unknown keys).
//!
//! `kubernetes-validate` checks the manifests against the Kubernetes schemas
//! (scripts/test runs it); this test checks what a schema cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lazybarn_runner::RunnerConfig;
use lazybarn_runner::config::IdRange;
use lazybarn_scheduler::ServerConfig;
use lazybarn_worker::WorkerConfig;
use serde::Deserialize;
use serde_yaml::Value;

/// The capabilities of `lazybarn-runner.service`: the namespaces of each
/// command's sandbox and the mounts in them (SYS_ADMIN), loopback in its
/// network namespace (NET_ADMIN), switching to the slot's uid and gid
/// (SETUID, SETGID), checking and entering the working directory as root
/// in a mount whose root is 0700 for the slot's uid (DAC_READ_SEARCH). No
/// KILL: a timed-out command is killed through its namespace's init, which
/// stays root.
const RUNNER_UNIT_CAPABILITIES: [&str; 5] = [
    "CAP_DAC_READ_SEARCH",
    "CAP_NET_ADMIN",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
];

/// The capabilities of `lazybarn-worker.service`: FUSE mounts and
/// passthrough (SYS_ADMIN), giving the action directory to the slot's group
/// and its tmp/ to its user (CHOWN), output directories in the slot's 0700
/// mount and emptying what the action left in 0700 directories and 0600
/// files (DAC_OVERRIDE), unlinking in sticky directories the action made
/// (FOWNER).
const WORKER_UNIT_CAPABILITIES: [&str; 4] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_SYS_ADMIN",
];

/// The capabilities a worker container gets: the worker and its runner
/// child share one set, so both units' sets together, with DAC_OVERRIDE
/// covering the runner's DAC_READ_SEARCH.
const WORKER_CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "NET_ADMIN",
    "SETGID",
    "SETUID",
    "SYS_ADMIN",
];

/// Seconds a worker needs past its drain timeout to give work back and
/// unmount before the kubelet's SIGKILL.
const DRAIN_MARGIN: Duration = Duration::from_secs(10);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every resource in `deploy/kubernetes/*.yaml`, by "Kind/namespace/name".
fn manifests() -> Result<BTreeMap<String, Value>> {
    let dir = deploy_dir().join("kubernetes");
    let mut resources = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension() == Some("yaml".as_ref()))
    {
        let text = std::fs::read_to_string(file)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let key = resource_key(&value)
                .with_context(|| format!("a resource in {}", file.display()))?;
            ensure!(
                resources.insert(key.clone(), value).is_none(),
                "{key} is defined twice"
            );
        }
    }
    Ok(resources)
}

fn resource_key(resource: &Value) -> Result<String> {
    let kind = str_at(resource, &["kind"])?;
    let name = str_at(resource, &["metadata", "name"])?;
    let namespace = str_at(resource, &["metadata", "namespace"]).unwrap_or("");
    Ok(format!("{kind}/{namespace}/{name}"))
}

/// The value at `path` (map keys, or list indexes written as numbers).
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| match key.parse::<usize>() {
            Ok(index) => v.get(index),
            Err(_) => v.get(*key),
        })
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Result<&'a str> {
    at(value, path)
        .and_then(Value::as_str)
        .with_context(|| format!("no string at {}", path.join(".")))
}

fn list_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn get<'a>(resources: &'a BTreeMap<String, Value>, key: &str) -> Result<&'a Value> {
    resources
        .get(key)
        .with_context(|| format!("no {key} in deploy/kubernetes"))
}

/// The pod spec of a workload, with its namespace.
fn pod_spec(resource: &Value) -> Option<(&Value, &str)> {
    let kind = resource.get("kind")?.as_str()?;
    matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet").then_some(())?;
    let namespace = at(resource, &["metadata", "namespace"])?.as_str()?;
    Some((at(resource, &["spec", "template", "spec"])?, namespace))
}

/// The text of ConfigMap `name`'s key `key`.
fn config_map_entry<'a>(
    resources: &'a BTreeMap<String, Value>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<&'a str> {
    let map = get(resources, &format!("ConfigMap/{namespace}/{name}"))?;
    str_at(map, &["data", key]).with_context(|| format!("ConfigMap {name} has no key {key}"))
}

/// The `--config FILE` a container is started with, as (ConfigMap, key): the
/// file must come from a ConfigMap volume mounted at its directory.
fn config_source(pod: &Value, container: &Value) -> Result<Option<(String, String)>> {
    let args: Vec<&str> = list_at(container, &["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let Some(file) = args
        .windows(2)
        .find(|pair| pair[0] == "--config")
        .map(|pair| Path::new(pair[1]))
    else {
        return Ok(None);
    };
    let dir = file.parent().context("--config has no directory")?;
    let key = file.file_name().context("--config names no file")?;
    let mount = list_at(container, &["volumeMounts"])
        .iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == dir.to_str())
        .with_context(|| format!("nothing is mounted at {}", dir.display()))?;
    let volume_name = str_at(mount, &["name"])?;
    let volume = list_at(pod, &["volumes"])
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(volume_name))
        .with_context(|| format!("no volume {volume_name}"))?;
    let map = str_at(volume, &["configMap", "name"])
        .with_context(|| format!("volume {volume_name} is not a ConfigMap"))?;
    Ok(Some((map.to_string(), key.to_string_lossy().into_owned())))
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    list_at(pod, &["containers"]).iter()
}

#[test]
fn every_reference_in_the_manifests_resolves() -> Result<()> {
    let resources = manifests()?;
    let mut workloads = 0;
    for (key, resource) in &resources {
        let Some((pod, namespace)) = pod_spec(resource) else {
            continue;
        };
        workloads += 1;
        let volumes: BTreeSet<&str> = list_at(pod, &["volumes"])
            .iter()
            .filter_map(|v| v.get("name")?.as_str())
            .collect();
        let claims: BTreeSet<&str> = list_at(resource, &["spec", "volumeClaimTemplates"])
            .iter()
            .filter_map(|c| at(c, &["metadata", "name"])?.as_str())
            .collect();
        for volume in list_at(pod, &["volumes"]) {
            if let Some(map) = at(volume, &["configMap", "name"]).and_then(Value::as_str) {
                get(&resources, &format!("ConfigMap/{namespace}/{map}"))
                    .with_context(|| format!("{key} mounts it"))?;
            }
        }
        for container in containers(pod) {
            let name = str_at(container, &["name"])?;
            for mount in list_at(container, &["volumeMounts"]) {
                let volume = str_at(mount, &["name"])?;
                ensure!(
                    volumes.contains(volume) || claims.contains(volume),
                    "{key}: container {name} mounts {volume}, which is no volume of the pod"
                );
            }
            let ports: BTreeSet<&str> = list_at(container, &["ports"])
                .iter()
                .filter_map(|p| p.get("name")?.as_str())
                .collect();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if let Some(port) = at(container, &[probe, "httpGet", "port"]) {
                    let port = port.as_str().context("probe ports are named")?;
                    ensure!(
                        ports.contains(port),
                        "{key}: {probe} names no port of {name}"
                    );
                }
            }
            if let Some((map, file)) = config_source(pod, container)? {
                config_map_entry(&resources, namespace, &map, &file)
                    .with_context(|| format!("{key}: container {name}'s --config"))?;
            }
        }
    }
    ensure!(
        workloads >= 3,
        "found {workloads} workloads, expected scheduler, workers, device plugin"
    );

    for (key, service) in resources.iter().filter(|(k, _)| k.starts_with("Service/")) {
        let namespace = str_at(service, &["metadata", "namespace"])?;
        let selector = at(service, &["spec", "selector"])
            .and_then(Value::as_mapping)
            .context("a Service without selector")?;
        let target = resources
            .values()
            .filter_map(|r| Some((r, pod_spec(r)?)))
            .find(|(r, (_, ns))| {
                let labels = at(r, &["spec", "template", "metadata", "labels"]);
                *ns == namespace
                    && selector
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .with_context(|| format!("{key} selects no workload"))?;
        let ports: BTreeSet<&str> = containers(target.1.0)
            .flat_map(|c| list_at(c, &["ports"]))
            .filter_map(|p| p.get("name")?.as_str())
            .collect();
        for port in list_at(service, &["spec", "ports"]) {
            let target_port = str_at(port, &["targetPort"])?;
            ensure!(
                ports.contains(target_port),
                "{key} targets no port named {target_port}"
            );
        }
    }
    Ok(())
}

/// The worker Deployment's pod, its one container and its configuration.
fn worker(resources: &BTreeMap<String, Value>) -> Result<(&Value, &Value, &Value, WorkerConfig)> {
    let deployment = get(resources, "Deployment/lazybarn/lazybarn-worker")?;
    let pod = at(deployment, &["spec", "template", "spec"]).context("no pod template")?;
    let container = containers(pod).next().context("no container")?;
    let (map, file) = config_source(pod, container)?.context("the worker has no --config")?;
    let text = config_map_entry(resources, "lazybarn", &map, &file)?;
    let config = WorkerConfig::from_toml(text).context("the worker's ConfigMap")?;
    Ok((deployment, pod, container, config))
}

#[test]
fn workers_get_fuse_and_no_more_privilege_than_it_needs() -> Result<()> {
    let resources = manifests()?;
    let (_, pod, container, config) = worker(&resources)?;
    let security = container
        .get("securityContext")
        .context("no securityContext")?;
    ensure!(
        at(security, &["privileged"]).and_then(Value::as_bool) != Some(true),
        "the worker must not run privileged"
    );
    ensure!(
        at(security, &["allowPrivilegeEscalation"]).and_then(Value::as_bool) == Some(false),
        "commands must not gain privilege through setuid programs (no_new_privs)"
    );
    let dropped: Vec<&str> = list_at(security, &["capabilities", "drop"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(dropped == ["ALL"], "the worker drops {dropped:?}, not ALL");
    let mut added: Vec<&str> = list_at(security, &["capabilities", "add"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    added.sort_unstable();
    ensure!(added == WORKER_CAPABILITIES, "the worker adds {added:?}");

    // /dev/fuse: from a device plugin (a resource whose name ends in /fuse,
    // served by a DaemonSet here) or a CharDevice hostPath mounted there.
    let plugin_resource = at(container, &["resources", "limits"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(name, _)| name.as_str())
        .find(|name| name.ends_with("/fuse"));
    match plugin_resource {
        Some(resource) => {
            let (domain, _) = resource.split_once('/').expect("ends in /fuse");
            let served = resources.values().any(|r| {
                r.get("kind").and_then(Value::as_str) == Some("DaemonSet")
                    && pod_spec(r).is_some_and(|(pod, _)| {
                        containers(pod).any(|c| {
                            let args = serde_yaml::to_string(&c["args"]).unwrap_or_default();
                            args.contains(domain) && args.contains("/dev/fuse")
                        })
                    })
            });
            ensure!(served, "no DaemonSet serves {resource}");
        }
        None => {
            let device = list_at(pod, &["volumes"])
                .iter()
                .find(|v| at(v, &["hostPath", "path"]).and_then(Value::as_str) == Some("/dev/fuse"))
                .context("no /dev/fuse: neither a device plugin resource nor a hostPath")?;
            ensure!(
                str_at(device, &["hostPath", "type"])? == "CharDevice",
                "/dev/fuse is not a CharDevice"
            );
        }
    }

    // The runner's uid must reach the action directories: they are under
    // the data volume, not the read-only root filesystem.
    let data = list_at(container, &["volumeMounts"])
        .iter()
        .filter_map(|m| m.get("mountPath")?.as_str())
        .find(|path| config.build_directory.starts_with(path) && *path != "/")
        .context("build_directory is on no volume")?;
    ensure!(
        config.cache_directory.starts_with(data),
        "the blob cache is not on {data}"
    );
    ensure!(
        config.runner_socket.starts_with(data),
        "the runner socket is not on {data}"
    );
    ensure!(
        config.action_uid != 0 && config.action_gid != 0,
        "actions must not run as root"
    );

    // Each slot runs as its own uid, which the runner child (started with
    // the runner's defaults: no runner.toml in the pod) must accept for
    // every slot the CPU limit gives.
    ensure!(config.isolate_slots, "slots must run as users of their own");
    ensure!(
        !config.allow_host_network,
        "actions must not get the host's network"
    );
    let cpus: u32 = str_at(container, &["resources", "limits", "cpu"])?
        .parse()
        .context("the CPU limit is a whole number of cores (one slot each)")?;
    slot_ids_allowed(config.first_slot_id, cpus, RunnerConfig::new("/s").slot_ids)?;
    Ok(())
}

/// Checks that slots `0..slots` from `first` all have ids the runner
/// accepts, none of them 0.
fn slot_ids_allowed(first: u32, slots: u32, runner: IdRange) -> Result<()> {
    ensure!(slots > 0, "no slots");
    let last = first
        .checked_add(slots - 1)
        .context("slot ids past the largest uid")?;
    ensure!(
        first != 0 && runner.contains(first) && runner.contains(last),
        "slots run as {first}..={last}, the runner accepts {runner}"
    );
    Ok(())
}

/// The `--cap-add` capabilities `scripts/test-containers.sh` gives its
/// worker containers, sorted.
fn test_container_capabilities() -> Result<Vec<String>> {
    let path = deploy_dir().join("../scripts/test-containers.sh");
    let script =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut caps: Vec<String> = script
        .split_once("--cap-add ")
        .context("test-containers.sh adds no capability")?
        .1
        .split_whitespace()
        .next()
        .context("--cap-add names nothing")?
        .split(',')
        .map(str::to_string)
        .collect();
    caps.sort_unstable();
    Ok(caps)
}

#[test]
fn every_place_grants_exactly_the_capabilities_needed() -> Result<()> {
    let sorted = |line: &str| {
        let mut caps: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        caps.sort_unstable();
        caps
    };
    let runner = sorted(directive(
        &systemd_file("lazybarn-runner.service")?,
        "CapabilityBoundingSet",
    )?);
    ensure!(
        runner == RUNNER_UNIT_CAPABILITIES,
        "lazybarn-runner.service keeps {runner:?}"
    );
    let worker = sorted(directive(
        &systemd_file("lazybarn-worker.service")?,
        "CapabilityBoundingSet",
    )?);
    ensure!(
        worker == WORKER_UNIT_CAPABILITIES,
        "lazybarn-worker.service keeps {worker:?}"
    );

    // The container's one set is both units' sets, and no more.
    let mut both: Vec<&str> = RUNNER_UNIT_CAPABILITIES
        .iter()
        .chain(&WORKER_UNIT_CAPABILITIES)
        .map(|cap| cap.trim_start_matches("CAP_"))
        .map(|cap| match cap {
            "DAC_READ_SEARCH" => "DAC_OVERRIDE",
            other => other,
        })
        .collect();
    both.sort_unstable();
    both.dedup();
    ensure!(
        both == WORKER_CAPABILITIES,
        "the container set {WORKER_CAPABILITIES:?} is not the units' {both:?}"
    );

    // scripts/test-containers.sh runs the containers as workers.yaml does.
    let tested = test_container_capabilities()?;
    ensure!(
        tested == WORKER_CAPABILITIES,
        "scripts/test-containers.sh adds {tested:?}, the manifests {WORKER_CAPABILITIES:?}"
    );
    Ok(())
}

#[test]
fn workers_have_probes_resources_and_time_to_drain() -> Result<()> {
    let resources = manifests()?;
    let (deployment, pod, container, config) = worker(&resources)?;

    // The probes ask the port `lazybarn worker --http` serves /metrics on.
    let args: Vec<&str> = list_at(container, &["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let http = args
        .windows(2)
        .find(|pair| pair[0] == "--http")
        .map(|pair| pair[1])
        .context("the worker serves no /metrics (--http)")?;
    let http_port: u64 = http
        .rsplit_once(':')
        .context("--http ADDR:PORT")?
        .1
        .parse()?;
    let metrics_port = list_at(container, &["ports"])
        .iter()
        .find(|p| p.get("containerPort").and_then(Value::as_u64) == Some(http_port))
        .and_then(|p| p.get("name")?.as_str())
        .context("--http's port is no named container port")?;
    for probe in ["readinessProbe", "livenessProbe"] {
        ensure!(
            str_at(container, &[probe, "httpGet", "port"])? == metrics_port,
            "the worker's {probe} does not ask {metrics_port}"
        );
        ensure!(str_at(container, &[probe, "httpGet", "path"])?.starts_with('/'));
    }

    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory", "ephemeral-storage"] {
            ensure!(
                at(container, &["resources", kind, resource]).is_some(),
                "the worker sets no {kind}.{resource}"
            );
        }
    }
    // Slots follow the CPU limit.
    ensure!(
        args.windows(2).any(|p| p == ["--workers", "$(SLOTS)"]),
        "slots are not set from the CPU limit"
    );
    let slots_env = list_at(container, &["env"])
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some("SLOTS"))
        .context("no SLOTS variable")?;
    ensure!(str_at(slots_env, &["valueFrom", "resourceFieldRef", "resource"])? == "limits.cpu");

    let grace = at(pod, &["terminationGracePeriodSeconds"])
        .and_then(Value::as_u64)
        .context("no terminationGracePeriodSeconds")?;
    ensure!(
        Duration::from_secs(grace) >= config.drain_timeout + DRAIN_MARGIN,
        "terminationGracePeriodSeconds {grace} leaves no time past drain_timeout {:?}",
        config.drain_timeout
    );
    ensure!(
        at(
            deployment,
            &["spec", "strategy", "rollingUpdate", "maxUnavailable"]
        )
        .and_then(Value::as_u64)
            == Some(0),
        "a rollout should drain a worker only once its replacement runs"
    );
    Ok(())
}

#[test]
fn the_scheduler_keeps_its_storage_and_serves_every_port_workers_use() -> Result<()> {
    let resources = manifests()?;
    let set = get(&resources, "StatefulSet/lazybarn/lazybarn-scheduler")?;
    let pod = at(set, &["spec", "template", "spec"]).context("no pod template")?;
    let container = containers(pod).next().context("no container")?;
    let (map, file) = config_source(pod, container)?.context("the scheduler has no --config")?;
    let config = ServerConfig::parse(config_map_entry(&resources, "lazybarn", &map, &file)?)
        .map_err(anyhow::Error::msg)
        .context("the scheduler's ConfigMap")?;

    let data_dir = config
        .storage
        .data_dir
        .as_ref()
        .context("the storage is in memory")?;
    let claim = list_at(set, &["spec", "volumeClaimTemplates"])
        .first()
        .context("no PersistentVolumeClaim")?;
    let claim_name = str_at(claim, &["metadata", "name"])?;
    let mounted = list_at(container, &["volumeMounts"]).iter().any(|m| {
        m.get("name").and_then(Value::as_str) == Some(claim_name)
            && m.get("mountPath")
                .and_then(Value::as_str)
                .is_some_and(|p| data_dir.starts_with(p))
    });
    ensure!(
        mounted,
        "{} is not on the claim {claim_name}",
        data_dir.display()
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        ensure!(
            at(container, &[probe, "httpGet"]).is_some(),
            "the scheduler has no {probe}"
        );
    }
    for kind in ["requests.cpu", "requests.memory", "limits.memory"] {
        let (a, b) = kind.split_once('.').expect("two parts");
        ensure!(
            at(container, &["resources", a, b]).is_some(),
            "the scheduler sets no {kind}"
        );
    }

    // The worker's scheduler and CAS addresses are Services on the ports
    // the scheduler's configuration listens on.
    let (_, _, _, worker) = worker(&resources)?;
    let worker_port = config.worker_listen.context("no worker_listen")?.port();
    let cas = worker.cas.as_deref().context("the worker names no CAS")?;
    for (address, port, what) in [
        (worker.scheduler.as_str(), worker_port, "scheduler"),
        (cas, config.listen.port(), "cas"),
    ] {
        let host_port = address.strip_prefix("grpc://").context("grpc:// address")?;
        let (host, service_port) = host_port.rsplit_once(':').context("HOST:PORT")?;
        let service = get(&resources, &format!("Service/lazybarn/{host}"))
            .with_context(|| format!("the worker's {what} address {address}"))?;
        let port_entry = list_at(service, &["spec", "ports"])
            .iter()
            .find(|p| p.get("port").and_then(Value::as_u64) == service_port.parse().ok())
            .with_context(|| format!("{host} has no port {service_port}"))?;
        let target = str_at(port_entry, &["targetPort"])?;
        let container_port = list_at(container, &["ports"])
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(target))
            .and_then(|p| p.get("containerPort")?.as_u64());
        ensure!(
            container_port == Some(u64::from(port)),
            "the worker's {what} reaches port {container_port:?}, the scheduler listens on {port}"
        );
    }
    Ok(())
}

/// The files of `deploy/systemd`, by name.
fn systemd_file(name: &str) -> Result<String> {
    let path = deploy_dir().join("systemd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[test]
fn the_systemd_configurations_parse_and_agree() -> Result<()> {
    let scheduler =
        ServerConfig::parse(&systemd_file("scheduler.toml")?).map_err(anyhow::Error::msg)?;
    let worker = WorkerConfig::from_toml(&systemd_file("worker.toml")?)?;
    let runner = RunnerConfig::from_toml(&systemd_file("runner.toml")?)?;
    ensure!(
        worker.runner_socket == runner.socket_path,
        "the worker and runner sockets differ"
    );
    ensure!(
        runner.user == "nobody" && worker.action_uid == 65534,
        "the action uid differs"
    );
    ensure!(worker.isolate_slots, "slots must run as users of their own");
    slot_ids_allowed(
        worker.first_slot_id,
        u32::try_from(worker.slots)?,
        runner.slot_ids,
    )?;
    ensure!(
        !worker.allow_host_network,
        "actions must not get the host's network"
    );
    ensure!(
        runner.mount_and_network_namespaces,
        "commands must get their own /proc, /tmp and network"
    );

    let worker_unit = systemd_file("lazybarn-worker.service")?;
    let runner_unit = systemd_file("lazybarn-runner.service")?;
    let scheduler_unit = systemd_file("lazybarn-scheduler.service")?;
    ensure!(
        worker_unit.contains("--external-runner"),
        "the worker unit starts its own runner"
    );
    for (unit, config) in [
        (&worker_unit, "worker.toml"),
        (&runner_unit, "runner.toml"),
        (&scheduler_unit, "scheduler.toml"),
    ] {
        ensure!(
            unit.contains(&format!("--config /etc/lazybarn/{config}")),
            "a unit does not read {config}"
        );
    }
    let state_dir = directive(&worker_unit, "StateDirectory")?;
    ensure!(
        worker
            .build_directory
            .starts_with(format!("/var/lib/{state_dir}"))
            && worker
                .cache_directory
                .starts_with(format!("/var/lib/{state_dir}")),
        "the worker's directories are not in its StateDirectory"
    );
    let runtime_dir = directive(&runner_unit, "RuntimeDirectory")?;
    ensure!(
        runner
            .socket_path
            .starts_with(format!("/run/{runtime_dir}"))
    );
    let scheduler_state = directive(&scheduler_unit, "StateDirectory")?;
    ensure!(
        scheduler.storage.data_dir.as_deref()
            == Some(Path::new(&format!("/var/lib/{scheduler_state}")))
    );
    // Mount namespaces would hide the worker's FUSE mounts from the runner.
    for unit in [&worker_unit, &runner_unit] {
        for option in [
            "PrivateTmp",
            "ProtectSystem",
            "ProtectHome",
            "PrivateMounts",
            "DynamicUser",
        ] {
            ensure!(
                directive(unit, option).is_err(),
                "{option} in a worker host unit"
            );
        }
    }
    // Without CAP_SYS_RESOURCE the runner cannot raise a hard limit above
    // its own, so the unit's must cover the commands' limit.
    let nofile: u64 = directive(&runner_unit, "LimitNOFILE")?
        .rsplit(':')
        .next()
        .context("LimitNOFILE=")?
        .parse()?;
    ensure!(
        runner.limits.max_open_files <= nofile,
        "runner.toml's max_open_files {} is above the unit's LimitNOFILE {nofile}",
        runner.limits.max_open_files
    );
    let stop = directive(&worker_unit, "TimeoutStopSec")?;
    let stop = humantime_seconds(stop)?;
    ensure!(
        stop >= worker.drain_timeout + DRAIN_MARGIN,
        "TimeoutStopSec {stop:?} is below the drain timeout"
    );
    Ok(())
}

/// The value of `Key=` in a unit file.
fn directive<'a>(unit: &'a str, key: &str) -> Result<&'a str> {
    unit.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .with_context(|| format!("no {key}="))
}

/// A systemd time span as this directory writes them: "6min" or "90s".
fn humantime_seconds(span: &str) -> Result<Duration> {
    if let Some(minutes) = span.strip_suffix("min") {
        return Ok(Duration::from_secs(minutes.parse::<u64>()? * 60));
    }
    if let Some(seconds) = span.strip_suffix('s') {
        return Ok(Duration::from_secs(seconds.parse()?));
    }
    bail!("time span {span:?} is neither Nmin nor Ns")
}
