//! The runner's configuration: one typed TOML document whose doc comments
//! are its documentation, and the credentials it resolves to.
//!
//! ```toml
//! socket_path = "/run/lazybarn/runner.sock"
//! socket_group = "lazybarn"   # optional: lets a non-root worker connect
//! user = "nobody"
//! group = "nogroup"
//! chroot_into_input_root = false
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
    /// libraries). Default: false.
    #[serde(default)]
    pub chroot_into_input_root: bool,
}

fn default_user() -> String {
    "nobody".to_string()
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
}
