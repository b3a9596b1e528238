//! Configuration: [`SchedulerConfig`] for scheduling behaviour, and
//! [`ServerConfig`], the TOML document the `lazybarn-scheduler` binary reads.
//!
//! The doc comments here are the configuration's documentation. Unknown keys
//! are errors. Durations are written the humantime way: `"30s"`, `"15m"`,
//! `"500ms"`. A complete example:
//!
//! ```toml
//! listen = "127.0.0.1:8980"
//! worker_listen = "127.0.0.1:8982"   # optional; default: on `listen`
//! http_listen = "127.0.0.1:8981"
//!
//! [storage]
//! data_dir = "/var/lib/lazybarn"     # optional; default: in memory
//! max_size_bytes = 10737418240
//!
//! [scheduler]
//! default_timeout = "15m"
//! max_timeout = "2h"
//! lease_duration = "30s"
//! max_retries = 2
//! ignored_platform_properties = ["dockerNetwork"]
//!
//! [auth]
//! tokens_file = "/etc/lazybarn/tokens"   # optional; default: the worker protocol is open
//! worker_group = "workers"
//! ```
//!
//! A scheduler whose CAS and Action Cache are another REAPI server's
//! (bb-storage, bazel-remote, NativeLink, a `lazybarn storage`) names it in
//! `[storage]` instead of a data directory; its workers take
//! `--cas grpc://cas.example:8980` to read and write the same blobs:
//!
//! ```toml
//! listen = "0.0.0.0:8980"
//!
//! [storage]
//! remote = "grpc://cas.example:8980"
//! remote_instance_name = "main"      # optional; default: ""
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How the scheduler schedules: timeouts, leases, retries, platform matching.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// The timeout of an action that sets none. Recommended: `"15m"`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The longest timeout an action may ask for; Execute rejects a longer one
    /// with INVALID_ARGUMENT, as REAPI requires. Recommended: `"2h"`, above
    /// Bazel's "eternal" test timeout of one hour.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// A worker (or one of its executions) not heard from for this long is
    /// lost: its actions go back to the queue. Recommended: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// The longest a worker's PollWork call is held open before it is
    /// answered empty. Keep it below any proxy's idle timeout. Recommended:
    /// `"20s"`.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// How many times an action lost with its worker is queued again before
    /// it fails with UNAVAILABLE. Recommended: `2` (three attempts in all).
    pub max_retries: u32,
    /// A queued action none of whose clients has been connected for this long
    /// is dropped. Recommended: `"1m"`.
    #[serde(with = "humantime_serde")]
    pub client_gone_timeout: Duration,
    /// Queued actions whose platform no registered worker has satisfied for
    /// this long fail with FAILED_PRECONDITION naming the platform.
    /// Recommended: `"5m"`, time enough for workers to start.
    #[serde(with = "humantime_serde")]
    pub no_worker_timeout: Duration,
    /// How long a finished operation stays known to WaitExecution and
    /// GetOperation. Recommended: `"1m"`.
    #[serde(with = "humantime_serde")]
    pub completed_retention: Duration,
    /// While nothing changes, an Execute or WaitExecution stream repeats the
    /// operation's state this often, so that idle-stream timeouts in clients
    /// and proxies do not cut it. Recommended: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Platform property names that take no part in matching actions to
    /// workers (they still travel to the worker). Empty by default.
    pub ignored_platform_properties: Vec<String>,
    /// The largest Action or Command blob the scheduler reads, in bytes.
    /// Both are read whole and sent to a worker in one message, so a client
    /// naming a bigger one gets INVALID_ARGUMENT naming this cap before
    /// anything is read. Recommended: 32 MiB (`33554432`); real Commands,
    /// even with long argument lists, stay far below it.
    pub max_message_bytes: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            default_timeout: Duration::from_secs(15 * 60),
            max_timeout: Duration::from_secs(2 * 3600),
            lease_duration: Duration::from_secs(30),
            poll_timeout: Duration::from_secs(20),
            max_retries: 2,
            client_gone_timeout: Duration::from_secs(60),
            no_worker_timeout: Duration::from_secs(5 * 60),
            completed_retention: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            ignored_platform_properties: Vec::new(),
            max_message_bytes: 32 << 20,
        }
    }
}

impl SchedulerConfig {
    /// How often ReportProgress should come: a quarter of the lease, so that
    /// a lost call or two does not cost it.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_duration / 4
    }

    /// How often leases, absent clients and worker-less platforms are
    /// checked: often enough that each timeout fires within a quarter of its
    /// length, and at least every second.
    pub fn sweep_interval(&self) -> Duration {
        let shortest = self
            .lease_duration
            .min(self.client_gone_timeout)
            .min(self.no_worker_timeout)
            .min(self.completed_retention);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Rejects values that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_timeout > self.max_timeout {
            return Err(format!(
                "default_timeout ({:?}) is above max_timeout ({:?})",
                self.default_timeout, self.max_timeout
            ));
        }
        if self.lease_duration.is_zero() || self.poll_timeout.is_zero() {
            return Err("lease_duration and poll_timeout must be above zero".to_string());
        }
        if self.keepalive_interval.is_zero() {
            return Err("keepalive_interval must be above zero".to_string());
        }
        Ok(())
    }
}

/// Where the CAS and Action Cache keep their data: the embedded store (on
/// disk under `data_dir`, or in memory), or another REAPI server (`remote`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for blobs (`cas/`) and Action Cache entries (`ac/`). Unset
    /// (and no `remote`): everything is kept in memory and lost at exit.
    pub data_dir: Option<PathBuf>,
    /// Most bytes of blobs kept in the embedded store; least recently used
    /// blobs are evicted above it. Recommended: most of the disk. Default:
    /// 10 GiB. Not used with `remote`, which manages its own space.
    pub max_size_bytes: u64,
    /// Largest sum of blob sizes in one batch call, advertised in
    /// Capabilities. Default: 4 MiB. With `remote`, calls to the remote
    /// follow the limit it advertises, whatever this is.
    pub max_batch_bytes: usize,
    /// Another REAPI CAS and Action Cache to use instead of the embedded
    /// store, as `grpc://host:port` (plaintext gRPC; `http://` means the
    /// same): Buildbarn's bb-storage, bazel-remote, NativeLink or a
    /// `lazybarn storage`. The scheduler reads actions and checks inputs
    /// there, stores results in its Action Cache, and proxies the CAS,
    /// ByteStream and Action Cache services it serves to it, so clients may
    /// use either address. Point every worker's `--cas` at the same server.
    /// Cannot be combined with `data_dir`. Unset by default.
    pub remote: Option<String>,
    /// The instance name sent to `remote` on every call. Default: `""`.
    /// Clients' instance names are not passed through: every instance of
    /// this scheduler shares the one remote instance.
    pub remote_instance_name: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: None,
            max_size_bytes: 10 << 30,
            max_batch_bytes: lazybarn_cas::service::DEFAULT_MAX_BATCH_BYTES,
            remote: None,
            remote_instance_name: String::new(),
        }
    }
}

impl StorageConfig {
    /// Rejects values that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if let Some(dir) = &self.data_dir {
            return Err(format!(
                "[storage] sets both data_dir ({}) and remote ({remote}); \
                 give data_dir for the embedded store or remote for another CAS, not both",
                dir.display()
            ));
        }
        if !(remote.starts_with("grpc://") || remote.starts_with("http://")) {
            return Err(format!(
                "[storage] remote = {remote:?} is not a grpc://host:port address"
            ));
        }
        Ok(())
    }
}

/// Who may talk to the scheduler. For now this guards the worker protocol
/// only; clients are not authenticated yet.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A tokens file (see `lazybarn_auth`): one line per token, `SHA256-HEX
    /// NAME [GROUP,GROUP...]`, the token itself never in clear. When set,
    /// every call of the worker protocol (Register, PollWork,
    /// ReportProgress, CompleteExecution, Drain, RequeueExecution), on
    /// `listen` or `worker_listen`, needs `authorization: Bearer <token>`
    /// with a token of `worker_group`: UNAUTHENTICATED without one or with
    /// an unknown one, PERMISSION_DENIED for a token of another group.
    /// Unset (the default), anyone who reaches the port may act as a
    /// worker, as before this key existed: kept open so existing farms work
    /// until TLS and client identities exist too.
    /// Recommended: set, e.g. `/etc/lazybarn/tokens`, mode 0600; `lazybarn
    /// up` always sets one it generates.
    pub tokens_file: Option<PathBuf>,
    /// The group whose identities may use the worker protocol. Default and
    /// recommended: `"workers"`.
    pub worker_group: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens_file: None,
            worker_group: "workers".to_string(),
        }
    }
}

/// The `lazybarn-scheduler` binary's configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC address for clients: Execution, Operations, Capabilities, CAS,
    /// ByteStream and Action Cache. Default: `127.0.0.1:8980`.
    pub listen: SocketAddr,
    /// gRPC address for the worker protocol. Unset: served on `listen` too.
    /// Set it to keep workers' traffic off the clients' port, or to expose
    /// the worker protocol on a private network only.
    pub worker_listen: Option<SocketAddr>,
    /// HTTP address of the status page (`/`, `/api/status`) and Prometheus
    /// metrics (`/metrics`). Default: `127.0.0.1:8981`; port 0 picks a
    /// free port.
    pub http_listen: SocketAddr,
    /// The CAS and Action Cache: embedded, or another REAPI server's.
    pub storage: StorageConfig,
    /// Scheduling behaviour.
    pub scheduler: SchedulerConfig,
    /// Who may use the worker protocol.
    pub auth: AuthConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8980)),
            worker_listen: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8981)),
            storage: StorageConfig::default(),
            scheduler: SchedulerConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Parses a TOML document; an unknown key is an error that names it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: ServerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.scheduler.validate()?;
        config.storage.validate()?;
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("in {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
            listen = "127.0.0.1:8980"
            worker_listen = "127.0.0.1:8982"
            http_listen = "127.0.0.1:8981"
            [storage]
            data_dir = "/var/lib/lazybarn"
            max_size_bytes = 10737418240
            [scheduler]
            default_timeout = "15m"
            max_timeout = "2h"
            lease_duration = "500ms"
            max_retries = 2
            ignored_platform_properties = ["dockerNetwork"]
            [auth]
            tokens_file = "/etc/lazybarn/tokens"
            worker_group = "workers"
        "#;
        let config = ServerConfig::parse(text).expect("valid");
        assert_eq!(
            config.auth.tokens_file.as_deref(),
            Some(Path::new("/etc/lazybarn/tokens"))
        );
        let open = ServerConfig::parse("").expect("defaults");
        assert_eq!(
            (open.auth.tokens_file, open.auth.worker_group.as_str()),
            (None, "workers")
        );
        assert_eq!(config.scheduler.lease_duration, Duration::from_millis(500));
        assert_eq!(config.scheduler.max_timeout, Duration::from_secs(7200));
        assert_eq!(
            config.worker_listen,
            Some("127.0.0.1:8982".parse().unwrap())
        );
    }

    #[test]
    fn unknown_keys_are_errors_that_name_them() {
        let err = ServerConfig::parse("[scheduler]\nlease = \"1s\"\n").expect_err("unknown");
        assert!(err.contains("lease"), "{err}");
        let err = ServerConfig::parse("listne = \"127.0.0.1:1\"\n").expect_err("unknown");
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn the_remote_storage_example_parses() {
        let example = include_str!("config.rs")
            .split("```toml\n")
            .nth(2)
            .and_then(|rest| rest.split("//! ```").next())
            .expect("the module doc has a second TOML example")
            .lines()
            .map(|line| line.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let config = ServerConfig::parse(&example).expect("example parses");
        assert_eq!(
            config.storage.remote.as_deref(),
            Some("grpc://cas.example:8980")
        );
        assert_eq!(config.storage.remote_instance_name, "main");
        assert_eq!(config.storage.data_dir, None);
    }

    #[test]
    fn remote_storage_and_a_data_dir_exclude_each_other() {
        let text = "[storage]\ndata_dir = \"/srv\"\nremote = \"grpc://cas:8980\"\n";
        let err = ServerConfig::parse(text).expect_err("both");
        assert!(err.contains("data_dir") && err.contains("remote"), "{err}");
        let err = ServerConfig::parse("[storage]\nremote = \"cas:8980\"\n").expect_err("no scheme");
        assert!(err.contains("grpc://"), "{err}");
    }

    #[test]
    fn default_above_max_is_rejected() {
        let err = ServerConfig::parse("[scheduler]\ndefault_timeout = \"3h\"\n").expect_err("bad");
        assert!(err.contains("max_timeout"), "{err}");
    }
}
