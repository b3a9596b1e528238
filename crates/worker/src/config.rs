//! The worker's configuration: one typed document, read from TOML by the
//! binaries. The doc comments are the documentation; unknown keys are an
//! error that names them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How an action's input root is laid out on the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// A FUSE mount per action that fetches each input file on first read.
    /// Recommended wherever /dev/fuse is available.
    #[default]
    Virtual,
    /// Every input downloaded into the blob cache and hardlinked into a
    /// plain directory before the command starts. The fallback without FUSE,
    /// and the baseline the benchmarks compare against.
    Native,
}

impl std::str::FromStr for BuildMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "virtual" => Ok(BuildMode::Virtual),
            "native" => Ok(BuildMode::Native),
            other => Err(format!(
                "unknown build directory mode {other:?}: use virtual or native"
            )),
        }
    }
}

/// Everything one worker process needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The scheduler's worker-protocol address, e.g. `grpc://127.0.0.1:8980`.
    pub scheduler: String,
    /// A file holding this worker's token in clear (mode 0600), sent as
    /// `authorization: Bearer <token>` on every call to the scheduler; the
    /// scheduler's `[auth] tokens_file` lists its digest. Needed when the
    /// scheduler has a tokens file (`lazybarn up` always does: its token is
    /// `worker-token` in its data directory). Unset: no credential is sent.
    #[serde(default)]
    pub scheduler_token_file: Option<PathBuf>,
    /// The CAS to fetch inputs from and upload outputs to. Unset: the
    /// scheduler's address (its embedded storage). Any REAPI CAS works.
    #[serde(default)]
    pub cas: Option<String>,
    /// This worker's name in the cluster. Unset: `{hostname}:{pid}`.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Actions run at once. Recommended: the number of cores.
    pub slots: usize,
    /// Platform properties this worker offers; an action runs here only if
    /// every property it asks for is listed. E.g. `OSFamily = ["linux"]`.
    #[serde(default)]
    pub platform: BTreeMap<String, Vec<String>>,
    /// Where action directories are created: a path every uid can traverse
    /// (not under /root), since commands run as the runner's uid.
    /// Recommended: `/var/lib/lazybarn/build`.
    pub build_directory: PathBuf,
    /// The blob cache shared by all actions of this worker.
    pub cache_directory: PathBuf,
    /// Most bytes the blob cache keeps (blobs in use are never evicted).
    /// Recommended: 10-20% of the disk, at least a few times the inputs of
    /// the largest action.
    pub max_cache_bytes: u64,
    /// Virtual (FUSE) or native build directories.
    #[serde(default)]
    pub build_mode: BuildMode,
    /// Use FUSE passthrough for input reads where the kernel offers it.
    /// Recommended: true.
    #[serde(default = "default_true")]
    pub passthrough: bool,
    /// The runner's Unix socket.
    pub runner_socket: PathBuf,
    /// The uid and gid commands run as (the runner's) when slots do not
    /// have ids of their own (`isolate_slots = false`): input files are
    /// shown as theirs.
    #[serde(default = "nobody")]
    pub action_uid: u32,
    /// See `action_uid`.
    #[serde(default = "nogroup")]
    pub action_gid: u32,
    /// Give each slot a user and group of its own, `first_slot_id + slot`
    /// (uid and gid alike), so that actions running at the same time cannot
    /// reach each other's files, mounts or processes: an action's directory
    /// is open to root and its slot's group only, and its FUSE mount answers
    /// only its slot's user. Needs a worker running as root and a runner
    /// that allows these ids (its `slot_ids`). Default and recommended:
    /// true. Off, every slot runs as `action_uid`.
    #[serde(default = "default_true")]
    pub isolate_slots: bool,
    /// The id of slot 0 when `isolate_slots` is on; slots use the
    /// following ones. Ids no one else on the host uses; workers sharing a
    /// host need ranges that do not overlap. Default: 60000.
    #[serde(default = "default_first_slot_id")]
    pub first_slot_id: u32,
    /// Let actions ask for the host's network with the platform property
    /// `network = "host"`. Every other action runs in a network namespace
    /// of its own with only loopback: it reaches nothing, not even services
    /// on this host's loopback. The worker offers `network = ["none"]`, plus
    /// `"host"` when this is on, so the scheduler sends it only actions it
    /// takes. Default: false.
    #[serde(default)]
    pub allow_host_network: bool,
    /// Most files, directories and symlinks an action's input tree may
    /// hold, counted per path (a directory shared by many paths counts at
    /// each). Over it the action fails with RESOURCE_EXHAUSTED. Default:
    /// 200,000 (a C++ compile against all of Boost has about 16,500).
    #[serde(default = "default_max_input_entries")]
    pub max_input_entries: u64,
    /// Most bytes of written output files an action may upload. Default:
    /// 16 GiB.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Most files, directories and symlinks an action may create. In
    /// virtual mode each one is an entry in the worker's memory, so the
    /// mount refuses the next one (ENOSPC) and the action fails with
    /// RESOURCE_EXHAUSTED; in native mode they are counted in the output
    /// directories as they are captured. Default: 1,000,000.
    #[serde(default = "default_max_created_entries")]
    pub max_created_entries: u64,
    /// Most bytes an action may write to its standard output, and again to
    /// its standard error. Logs go to the CAS streamed from disk, so this
    /// guards the disk and the CAS, not memory. Default: 256 MiB.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// Inputs downloaded at once in native mode. Recommended: 32.
    #[serde(default = "default_fetch_concurrency")]
    pub fetch_concurrency: usize,
    /// How long a stopping worker (SIGTERM) lets the actions it is running
    /// finish. It takes no new work from the moment it is told to stop; what
    /// is still running when this runs out is killed and given back to the
    /// scheduler, which has another worker retry it at once. Written the
    /// humantime way (`"20s"`, `"5m"`); `"0s"` gives everything back at
    /// once. Keep it at least 10 s below the time the supervisor waits
    /// before SIGKILL (Kubernetes `terminationGracePeriodSeconds`, systemd
    /// `TimeoutStopSec`, `podman stop --time`), which leaves time to give
    /// work back and unmount. Recommended: `"20s"` with the defaults of
    /// those supervisors; a few minutes (with a grace period to match) where
    /// actions are long and restarts rare.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// The drain timeout when none is configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

fn default_true() -> bool {
    true
}

fn nobody() -> u32 {
    65534
}

fn nogroup() -> u32 {
    65534
}

fn default_fetch_concurrency() -> usize {
    32
}

/// The id of slot 0 when slots have ids of their own.
pub const DEFAULT_FIRST_SLOT_ID: u32 = 60000;

fn default_first_slot_id() -> u32 {
    DEFAULT_FIRST_SLOT_ID
}

/// The default of `max_input_entries`: the vfs's own.
pub const DEFAULT_MAX_INPUT_ENTRIES: u64 = lazybarn_vfs::DEFAULT_MAX_INPUT_ENTRIES;

fn default_max_input_entries() -> u64 {
    DEFAULT_MAX_INPUT_ENTRIES
}

/// The default of `max_output_bytes`.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 30;

fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

/// The default of `max_created_entries`: the vfs's own.
pub const DEFAULT_MAX_CREATED_ENTRIES: u64 = lazybarn_vfs::DEFAULT_MAX_CREATED_ENTRIES;

fn default_max_created_entries() -> u64 {
    DEFAULT_MAX_CREATED_ENTRIES
}

/// The default of `max_log_bytes`.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 256 << 20;

fn default_max_log_bytes() -> u64 {
    DEFAULT_MAX_LOG_BYTES
}

impl WorkerConfig {
    /// A configuration for a worker of `scheduler` with its directories and
    /// runner socket, and every other setting at its default (one slot, a
    /// 10 GiB blob cache). Set fields over it with `..WorkerConfig::new(...)`.
    pub fn new(
        scheduler: impl Into<String>,
        build_directory: impl Into<PathBuf>,
        cache_directory: impl Into<PathBuf>,
        runner_socket: impl Into<PathBuf>,
    ) -> WorkerConfig {
        WorkerConfig {
            scheduler: scheduler.into(),
            scheduler_token_file: None,
            cas: None,
            worker_id: None,
            slots: 1,
            platform: BTreeMap::new(),
            build_directory: build_directory.into(),
            cache_directory: cache_directory.into(),
            max_cache_bytes: 10 << 30,
            build_mode: BuildMode::default(),
            passthrough: true,
            runner_socket: runner_socket.into(),
            action_uid: nobody(),
            action_gid: nogroup(),
            isolate_slots: true,
            first_slot_id: DEFAULT_FIRST_SLOT_ID,
            allow_host_network: false,
            max_input_entries: DEFAULT_MAX_INPUT_ENTRIES,
            max_created_entries: DEFAULT_MAX_CREATED_ENTRIES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            fetch_concurrency: default_fetch_concurrency(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// Parses a TOML document; unknown keys are errors naming them.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The CAS address in use.
    pub fn cas_address(&self) -> &str {
        self.cas.as_deref().unwrap_or(&self.scheduler)
    }

    /// The isolation policy these settings describe.
    pub fn isolation(&self) -> crate::isolation::Isolation {
        use crate::isolation::{Isolation, Limits, SlotIds};
        Isolation {
            ids: if self.isolate_slots {
                SlotIds::PerSlot {
                    first: self.first_slot_id,
                }
            } else {
                SlotIds::Shared {
                    uid: self.action_uid,
                    gid: self.action_gid,
                }
            },
            allow_host_network: self.allow_host_network,
            limits: Limits {
                max_input_entries: self.max_input_entries,
                max_output_bytes: self.max_output_bytes,
                max_created_entries: self.max_created_entries,
                max_log_bytes: self.max_log_bytes,
            },
        }
    }

    /// The worker id in use.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".to_string());
            format!("{host}:{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_and_refuses_unknown_keys() {
        let text = r#"
            scheduler = "grpc://127.0.0.1:8980"
            slots = 2
            build_directory = "/var/lib/lazybarn/build"
            cache_directory = "/var/lib/lazybarn/cache"
            max_cache_bytes = 1000000
            runner_socket = "/run/lazybarn/runner.sock"
            build_mode = "native"
            [platform]
            OSFamily = ["linux"]
        "#;
        let config = WorkerConfig::from_toml(text).expect("valid");
        assert_eq!(config.build_mode, BuildMode::Native);
        assert_eq!(config.cas_address(), "grpc://127.0.0.1:8980");
        assert_eq!(config.action_uid, 65534);
        assert_eq!(config.platform["OSFamily"], vec!["linux".to_string()]);
        assert_eq!(config.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let config =
            WorkerConfig::from_toml(&format!("drain_timeout = \"2m\"\n{text}")).expect("valid");
        assert_eq!(config.drain_timeout, Duration::from_secs(120));
        let err = WorkerConfig::from_toml(&format!("drain_timeout = \"soon\"\n{text}"))
            .expect_err("not a duration")
            .to_string();
        assert!(err.contains("drain_timeout"), "{err}");
        let err = WorkerConfig::from_toml(&format!("slotz = 3\n{text}"))
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("slotz"), "{err}");
        assert!("fuse".parse::<BuildMode>().is_err());
    }
}
