//! What keeps an action away from the others and from the worker, as the
//! worker decides it: the user and group each slot's actions run as, the
//! network an action may ask for, and the caps on what an action may make
//! the worker do. The runner enforces the first two (its sandbox); the
//! worker enforces the caps as it prepares, captures and uploads.

use lazybarn_proto::reapi::{Action, Command};
use tonic::Status;

/// The platform property through which an action asks for the network.
pub const NETWORK_PROPERTY: &str = "network";
/// Its value for the default: a network namespace with only loopback.
pub const NETWORK_NONE: &str = "none";
/// Its value for the host's network, when the worker allows it.
pub const NETWORK_HOST: &str = "host";

/// The users and groups actions run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotIds {
    /// Every slot runs as this one user and group: concurrent actions are
    /// apart only through their namespaces (a worker that is not root).
    Shared {
        /// The user id.
        uid: u32,
        /// The group id.
        gid: u32,
    },
    /// Slot `i` runs as uid and gid `first + i`, so concurrent actions
    /// cannot reach each other's directories, mounts or processes.
    PerSlot {
        /// The ids of slot 0.
        first: u32,
    },
}

/// Who one action runs as, and whether that user is its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
    /// True when no other slot runs as this user and group: the action's
    /// directory is then closed to everyone else.
    pub own: bool,
}

/// Caps on what one action may cost the worker. Over one, the action fails
/// with RESOURCE_EXHAUSTED naming the cap and the figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Files, directories and symlinks in the input tree, counted per path.
    pub max_input_entries: u64,
    /// Bytes of the files among the outputs.
    pub max_output_bytes: u64,
    /// Files, directories and symlinks the action creates (virtual mode:
    /// in its mount; native mode: in its output directories).
    pub max_created_entries: u64,
    /// Bytes of standard output, and again of standard error.
    pub max_log_bytes: u64,
}

/// The worker's isolation policy.
#[derive(Clone, Copy, Debug)]
pub struct Isolation {
    /// Who actions run as.
    pub ids: SlotIds,
    /// Whether an action may ask for the host's network.
    pub allow_host_network: bool,
    /// The caps.
    pub limits: Limits,
}

impl Isolation {
    /// The user slot `slot` runs its actions as.
    pub fn identity(&self, slot: usize) -> Identity {
        match self.ids {
            SlotIds::Shared { uid, gid } => Identity {
                uid,
                gid,
                own: false,
            },
            SlotIds::PerSlot { first } => {
                let id = first.saturating_add(u32::try_from(slot).unwrap_or(u32::MAX));
                Identity {
                    uid: id,
                    gid: id,
                    own: true,
                }
            }
        }
    }

    /// The values of the `network` property this worker offers.
    pub fn network_values(&self) -> Vec<String> {
        let mut values = vec![NETWORK_NONE.to_string()];
        if self.allow_host_network {
            values.push(NETWORK_HOST.to_string());
        }
        values
    }

    /// Whether the action gets the host's network: only when it asks with
    /// `network=host` and the worker allows it. Any other request is
    /// FAILED_PRECONDITION naming the property.
    pub fn host_network(&self, action: &Action, command: &Command) -> Result<bool, Status> {
        let Some(value) = requested(action, command, NETWORK_PROPERTY) else {
            return Ok(false);
        };
        match value {
            NETWORK_NONE => Ok(false),
            NETWORK_HOST if self.allow_host_network => Ok(true),
            NETWORK_HOST => Err(Status::failed_precondition(format!(
                "the action asks for platform property {NETWORK_PROPERTY}={NETWORK_HOST}, which \
                 this worker does not allow (allow_host_network is off): actions here have only \
                 loopback"
            ))),
            other => Err(Status::failed_precondition(format!(
                "the action asks for platform property {NETWORK_PROPERTY}={other:?}; this worker \
                 knows only {NETWORK_NONE} and {NETWORK_HOST}"
            ))),
        }
    }
}

/// The value of the platform property `name` the action asks for: from the
/// Action's platform when it names any property (REAPI 2.2+), else from
/// the Command's (older clients such as Bazel 4).
// Command.platform is deprecated, but Bazel 4 sends only that one.
#[allow(deprecated)]
fn requested<'a>(action: &'a Action, command: &'a Command, name: &str) -> Option<&'a str> {
    let platform = match &action.platform {
        Some(p) if !p.properties.is_empty() => p,
        _ => command.platform.as_ref()?,
    };
    platform
        .properties
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazybarn_proto::reapi::{Platform, platform::Property};

    fn isolation(allow_host_network: bool) -> Isolation {
        Isolation {
            ids: SlotIds::PerSlot { first: 60000 },
            allow_host_network,
            limits: Limits {
                max_input_entries: 1,
                max_output_bytes: 1,
                max_created_entries: 1,
                max_log_bytes: 1,
            },
        }
    }

    #[allow(deprecated)]
    fn asking(value: &str, on_action: bool) -> (Action, Command) {
        let platform = Some(Platform {
            properties: vec![Property {
                name: NETWORK_PROPERTY.to_string(),
                value: value.to_string(),
            }],
        });
        if on_action {
            (
                Action {
                    platform,
                    ..Default::default()
                },
                Command::default(),
            )
        } else {
            (
                Action::default(),
                Command {
                    platform,
                    ..Default::default()
                },
            )
        }
    }

    #[test]
    fn the_host_network_only_when_asked_and_allowed() {
        let (action, command) = (Action::default(), Command::default());
        assert_eq!(
            isolation(true).host_network(&action, &command).ok(),
            Some(false)
        );
        for on_action in [true, false] {
            let (action, command) = asking("host", on_action);
            assert_eq!(
                isolation(true).host_network(&action, &command).ok(),
                Some(true)
            );
            let refused = isolation(false)
                .host_network(&action, &command)
                .expect_err("not allowed");
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
            assert!(refused.message().contains("network=host"), "{refused:?}");
            let (action, command) = asking("none", on_action);
            assert_eq!(
                isolation(false).host_network(&action, &command).ok(),
                Some(false)
            );
        }
        let (action, command) = asking("bridge", true);
        let refused = isolation(true)
            .host_network(&action, &command)
            .expect_err("unknown");
        assert!(
            refused.message().contains("network=\"bridge\""),
            "{refused:?}"
        );
    }

    #[test]
    fn each_slot_has_its_own_ids_unless_shared() {
        let per_slot = isolation(false);
        assert_eq!(
            per_slot.identity(3),
            Identity {
                uid: 60003,
                gid: 60003,
                own: true
            }
        );
        let shared = Isolation {
            ids: SlotIds::Shared {
                uid: 65534,
                gid: 65534,
            },
            ..per_slot
        };
        assert_eq!(shared.identity(0), shared.identity(7));
        assert!(!shared.identity(0).own);
        assert_eq!(per_slot.network_values(), vec!["none"]);
        assert_eq!(isolation(true).network_values(), vec!["none", "host"]);
    }
}
