//! The runner's configuration: one typed TOML document whose doc comments
//! are its documentation, and the credentials it resolves to.
//!
//! ```toml
//! socket_path = "/run/lazybarn/runner.sock"
//! socket_group = "lazybarn"   # optional: lets a non-root worker connect
//! user = "nobody"
//! group = "nogroup"
//! chroot_into_input_root = false
//! mount_and_network_namespaces = true
//! slot_ids = { first = 60000, count = 1024 }
//!
//! [limits]
//! max_processes = 4096
//! max_open_files = 16384
//! max_file_size_bytes = 68719476736
//! ```

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};
use serde::Deserialize;

use crate::error::ServeError;

/// The runner daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Path of the Unix socket the runner listens on. A stale socket left
    /// there by a dead runner is replaced; a live one is an error.
    /// Recommended: `/run/lazybarn/runner.sock`.
    pub socket_path: PathBuf,

    /// Group (name or number) whose members may connect, besides the
    /// runner's own user (root). Unset: the socket is mode 0600 and only
    /// root can connect. Set it when the worker does not run as root.
    #[serde(default)]
    pub socket_group: Option<String>,

    /// User (name or number) that commands run as. Default and recommended:
    /// `nobody`, so that actions cannot change their inputs or each other.
    #[serde(default = "default_user")]
    pub user: String,

    /// Group (name or number) that commands run as. Unset: the user's primary
    /// group (`nogroup` for `nobody` on Debian). Supplementary groups are
    /// always dropped.
    #[serde(default)]
    pub group: Option<String>,

    /// Whether to chroot each command into its request's input root. The
    /// root must then hold everything the command needs (a toolchain, shared
    /// libraries). Default: false. With `mount_and_network_namespaces`, the
    /// fresh proc goes on the root's own `proc` directory if it has one (else
    /// the command has no /proc), and a request's `temporary_directory` on
    /// its `tmp` directory, which must then exist.
    #[serde(default)]
    pub chroot_into_input_root: bool,

    /// Whether each command gets mount, IPC and network namespaces of its
    /// own: a fresh /proc that shows only its own processes, an empty
    /// /dev/shm and /dev/mqueue, the request's `temporary_directory` on
    /// /tmp, System V IPC of its own, and a network with nothing but
    /// loopback unless the request sets `host_network`. Default and
    /// recommended: true. Turn it off only on hosts that refuse these
    /// namespaces (some containers do); commands then share the host's
    /// /proc, /dev/shm, IPC and network, and a request with a
    /// `temporary_directory` is refused. The PID namespace, `no_new_privs`
    /// and the limits apply either way.
    #[serde(default = "default_true")]
    pub mount_and_network_namespaces: bool,

    /// The uids and gids a worker may ask commands to run as (a request's
    /// `uid` and `gid`), besides `user` and `group`: one per worker slot, so
    /// that commands running at the same time cannot touch each other's
    /// files or processes. Pick ids that no account or other service uses:
    /// a command may signal, trace and write to whatever runs or is owned by
    /// its uid. Default and recommended: `{ first = 60000, count = 1024 }`,
    /// which lies below systemd's dynamic users (61184 and up) and the usual
    /// subordinate ids of /etc/subuid (100000 and up). The range may not
    /// contain 0. A runner that is not root ignores it and accepts only its
    /// own uid and gid.
    #[serde(default)]
    pub slot_ids: IdRange,

    /// Resource limits every command runs under.
    #[serde(default)]
    pub limits: Limits,
}

fn default_user() -> String {
    "nobody".to_string()
}

fn default_true() -> bool {
    true
}

/// A range of numeric ids: `first`, `first + 1`, ... `first + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    /// The lowest id of the range.
    pub first: u32,
    /// How many ids the range holds; 0 is an empty range.
    pub count: u32,
}

impl Default for IdRange {
    fn default() -> IdRange {
        IdRange {
            first: 60000,
            count: 1024,
        }
    }
}

impl IdRange {
    /// A range that holds no id.
    pub const EMPTY: IdRange = IdRange { first: 0, count: 0 };

    /// Whether `id` lies in the range.
    pub fn contains(&self, id: u32) -> bool {
        id >= self.first && id - self.first < self.count
    }

    /// Checks that the range fits in 32 bits and does not hold 0.
    pub fn validate(&self) -> Result<(), ServeError> {
        if self.count == 0 {
            return Ok(());
        }
        if self.first == 0 {
            return Err(ServeError::Config(
                "slot_ids may not contain 0: commands never run as root through a request"
                    .to_string(),
            ));
        }
        if self.first.checked_add(self.count - 1).is_none() {
            return Err(ServeError::Config(format!(
                "slot_ids {{ first = {}, count = {} }} goes past the largest uid",
                self.first, self.count
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.count {
            0 => write!(f, "none"),
            count => write!(f, "{}..={}", self.first, self.first + (count - 1)),
        }
    }
}

/// The resource limits of every command (`setrlimit(2)`), each set as both
/// the soft and the hard limit so that the command cannot raise it. Core
/// dumps are always off (`RLIMIT_CORE` 0): a dump of a build tool is of no
/// use to a remote client and can fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `RLIMIT_NPROC`: how many processes *and threads* the command's uid
    /// may have at once, counted across everything that runs as that uid
    /// (so across all commands when they share one uid, and per slot with
    /// `slot_ids`). Stops a fork bomb. Default: 4096, room for a parallel
    /// make whose compilers and JVMs run a few hundred threads.
    #[serde(default = "default_max_processes")]
    pub max_processes: u64,

    /// `RLIMIT_NOFILE`: how many files one process of the command may have
    /// open. Default: 16384, well above what linkers and JVMs open. A runner
    /// that is not root cannot go above its own hard limit, and root not
    /// above `/proc/sys/fs/nr_open`: the value is lowered to fit, with a
    /// warning.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u64,

    /// `RLIMIT_FSIZE`: the largest file the command may write, in bytes; a
    /// write past it fails with `EFBIG` and the writer gets `SIGXFSZ`.
    /// Default: 64 GiB. Legitimate build outputs (images, archives, debug
    /// info) stay far below it, while a runaway writer is stopped before one
    /// file takes a whole disk of typical worker size. Lower it on small
    /// disks.
    #[serde(default = "default_max_file_size_bytes")]
    pub max_file_size_bytes: u64,

    /// The size of the command's own `/dev/shm` (a tmpfs), in bytes. Its
    /// pages are memory no process's size shows, so each command's is
    /// capped. Default: 1 GiB, far above what compilers and test runners
    /// use (browsers in tests use the most, tens of MiB).
    #[serde(default = "default_max_shared_memory_bytes")]
    pub max_shared_memory_bytes: u64,
}

fn default_max_shared_memory_bytes() -> u64 {
    1 << 30
}

fn default_max_processes() -> u64 {
    4096
}

fn default_max_open_files() -> u64 {
    16384
}

fn default_max_file_size_bytes() -> u64 {
    64 << 30
}

impl Limits {
    /// Refuses a limit of 0, which would make every command fail in a way
    /// that names no limit (no process could start, no file be opened).
    pub fn validate(&self) -> Result<(), ServeError> {
        let named = [
            ("max_processes", self.max_processes),
            ("max_open_files", self.max_open_files),
            ("max_file_size_bytes", self.max_file_size_bytes),
            ("max_shared_memory_bytes", self.max_shared_memory_bytes),
        ];
        match named.into_iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(ServeError::Config(format!(
                "[limits] {name} = 0 would let no command run; give it a positive value"
            ))),
            None => Ok(()),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_processes: default_max_processes(),
            max_open_files: default_max_open_files(),
            max_file_size_bytes: default_max_file_size_bytes(),
            max_shared_memory_bytes: default_max_shared_memory_bytes(),
        }
    }
}

impl RunnerConfig {
    /// A configuration with every option at its default.
    pub fn new(socket_path: impl Into<PathBuf>) -> RunnerConfig {
        RunnerConfig {
            socket_path: socket_path.into(),
            socket_group: None,
            user: default_user(),
            group: None,
            chroot_into_input_root: false,
            mount_and_network_namespaces: true,
            slot_ids: IdRange::default(),
            limits: Limits::default(),
        }
    }

    /// Parses a configuration from TOML text.
    pub fn from_toml(text: &str) -> Result<RunnerConfig, ServeError> {
        toml::from_str(text).map_err(|e| ServeError::Config(e.to_string()))
    }

    /// Reads and parses a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<RunnerConfig, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("cannot read {path:?}: {e}")))?;
        Self::from_toml(&text).map_err(|e| ServeError::Config(format!("{path:?}: {e}")))
    }

    /// Resolves `user` and `group` to the numeric ids commands run as.
    pub fn credentials(&self) -> Result<Credentials, ServeError> {
        let user = lookup_user(&self.user)?;
        let gid = match &self.group {
            Some(group) => lookup_group(group)?,
            None => match &user {
                (_, Some(entry)) => entry.gid,
                (uid, None) => {
                    return Err(ServeError::Config(format!(
                        "uid {uid} has no passwd entry, so `group` must be given"
                    )));
                }
            },
        };
        Ok(Credentials {
            uid: user.0.as_raw(),
            gid: gid.as_raw(),
        })
    }

    /// Resolves `socket_group`, if set, to a numeric gid.
    pub fn socket_gid(&self) -> Result<Option<u32>, ServeError> {
        self.socket_group
            .as_deref()
            .map(|g| lookup_group(g).map(Gid::as_raw))
            .transpose()
    }
}

/// The numeric user and group a command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The user id.
    pub uid: u32,
    /// The group id; the command has no supplementary groups.
    pub gid: u32,
}

fn lookup_user(name: &str) -> Result<(Uid, Option<User>), ServeError> {
    let entry = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    }
    .map_err(|e| ServeError::Config(format!("cannot look up user {name:?}: {e}")))?;
    match (name.parse::<u32>(), entry) {
        (Ok(uid), entry) => Ok((Uid::from_raw(uid), entry)),
        (Err(_), Some(entry)) => Ok((entry.uid, Some(entry))),
        (Err(_), None) => Err(ServeError::Config(format!("no such user {name:?}"))),
    }
}

fn lookup_group(name: &str) -> Result<Gid, ServeError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => Err(ServeError::Config(format!("no such group {name:?}"))),
        Err(e) => Err(ServeError::Config(format!(
            "cannot look up group {name:?}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_nobody_and_its_primary_group() {
        let config = RunnerConfig::from_toml(r#"socket_path = "/run/r.sock""#)
            .expect("minimal config parses");
        assert_eq!(config, RunnerConfig::new("/run/r.sock"));
        let nobody = User::from_name("nobody")
            .expect("passwd readable")
            .expect("nobody exists");
        let creds = config.credentials().expect("nobody resolves");
        assert_eq!(creds.uid, nobody.uid.as_raw());
        assert_eq!(creds.gid, nobody.gid.as_raw());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = RunnerConfig::from_toml("socket_path = \"/s\"\nusr = \"nobody\"")
            .expect_err("typo must not be ignored");
        assert!(err.to_string().contains("usr"), "{err}");
    }

    #[test]
    fn numeric_ids_and_unknown_names() {
        let mut config = RunnerConfig::new("/s");
        config.user = "12345".to_string();
        config.group = Some("23456".to_string());
        assert_eq!(
            config.credentials().expect("numbers resolve"),
            Credentials {
                uid: 12345,
                gid: 23456
            }
        );
        config.group = None;
        assert!(config.credentials().is_err(), "no passwd entry, no group");
        config.user = "no-such-user-lazybarn".to_string();
        assert!(config.credentials().is_err());
        config.socket_group = Some("no-such-group-lazybarn".to_string());
        assert!(config.socket_gid().is_err());
    }

    #[test]
    fn sandbox_settings_parse_and_default() {
        let config = RunnerConfig::from_toml(
            "socket_path = \"/s\"\nmount_and_network_namespaces = false\n\
             slot_ids = { first = 70000, count = 8 }\n[limits]\nmax_processes = 100\n",
        )
        .expect("parses");
        assert!(!config.mount_and_network_namespaces);
        assert_eq!(
            config.slot_ids,
            IdRange {
                first: 70000,
                count: 8
            }
        );
        assert_eq!(config.limits.max_processes, 100);
        assert_eq!(config.limits.max_open_files, 16384);
        assert_eq!(config.limits.max_file_size_bytes, 64 << 30);
        assert!(
            RunnerConfig::from_toml("socket_path = \"/s\"\n[limits]\nmax_procs = 1\n").is_err()
        );
    }

    #[test]
    fn id_ranges() {
        let range = IdRange {
            first: 10,
            count: 3,
        };
        assert!(!range.contains(9) && range.contains(10) && range.contains(12));
        assert!(!range.contains(13));
        assert_eq!(range.to_string(), "10..=12");
        assert!(!IdRange::EMPTY.contains(0));
        assert!(IdRange { first: 0, count: 5 }.validate().is_err());
        assert!(Limits::default().validate().is_ok());
        let none = Limits {
            max_open_files: 0,
            ..Limits::default()
        };
        let err = none.validate().expect_err("zero open files");
        assert!(err.to_string().contains("max_open_files"), "{err}");
        assert!(
            IdRange {
                first: u32::MAX,
                count: 2
            }
            .validate()
            .is_err()
        );
        assert!(
            IdRange {
                first: u32::MAX,
                count: 1
            }
            .validate()
            .is_ok()
        );
    }
}
