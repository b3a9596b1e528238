//! Platform properties: what an action asks for, what a worker offers, and
//! whether one satisfies the other.
//!
//! An action's platform comes from `Action.platform` (REAPI 2.2 and later,
//! Bazel 7+) or, when that is empty, from `Command.platform` (older clients
//! such as Bazel 4). Where both are set the Action's wins. Names listed in
//! the configuration as ignored are dropped before matching and queueing.

use std::collections::{HashMap, HashSet};
use std::fmt;

use lazybarn_proto::reapi::{Action, Command, Platform};

/// The platform an action asks for, as matching sees it: ignored names
/// removed, properties sorted and without duplicates. Queues are keyed by it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlatformKey {
    properties: Vec<(String, String)>,
}

impl PlatformKey {
    /// The key of `platform`, leaving out properties named in `ignored`.
    pub fn new(platform: &Platform, ignored: &[String]) -> Self {
        let mut properties: Vec<(String, String)> = platform
            .properties
            .iter()
            .filter(|p| !ignored.contains(&p.name))
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        properties.sort();
        properties.dedup();
        PlatformKey { properties }
    }

    /// The properties as sorted (name, value) pairs.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }
}

impl fmt::Display for PlatformKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.properties.is_empty() {
            return f.write_str("(no properties)");
        }
        for (i, (name, value)) in self.properties.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// The platform an action asks for: the Action's when it names any
/// property, else the Command's (Bazel 4 sets only that one).
// Command.platform is deprecated in REAPI, but old clients still send only it.
#[allow(deprecated)]
pub fn requested_platform(action: &Action, command: &Command) -> Platform {
    match &action.platform {
        Some(p) if !p.properties.is_empty() => p.clone(),
        _ => command.platform.clone().unwrap_or_default(),
    }
}

/// What a worker offers: every value it has for each property name.
#[derive(Clone, Debug, Default)]
pub struct WorkerPlatform {
    properties: HashMap<String, HashSet<String>>,
}

impl WorkerPlatform {
    /// The offer of a worker that registered `platform`. A name may come with
    /// several values; the worker satisfies each.
    pub fn new(platform: &Platform) -> Self {
        let mut properties: HashMap<String, HashSet<String>> = HashMap::new();
        for p in &platform.properties {
            properties
                .entry(p.name.clone())
                .or_default()
                .insert(p.value.clone());
        }
        WorkerPlatform { properties }
    }

    /// Whether the worker has every property the action asks for.
    pub fn satisfies(&self, wanted: &PlatformKey) -> bool {
        wanted.properties.iter().all(|(name, value)| {
            self.properties
                .get(name)
                .is_some_and(|values| values.contains(value))
        })
    }

    /// The properties as sorted `name=value` strings, for display.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self
            .properties
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| format!("{name}={v}")))
            .collect();
        labels.sort();
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazybarn_proto::reapi::platform::Property;

    fn platform(props: &[(&str, &str)]) -> Platform {
        Platform {
            properties: props
                .iter()
                .map(|(n, v)| Property {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn key_is_sorted_and_drops_ignored_names() {
        let p = platform(&[("OSFamily", "linux"), ("ISA", "x86"), ("cache-silo", "a")]);
        let key = PlatformKey::new(&p, &["cache-silo".to_string()]);
        assert_eq!(key.to_string(), "ISA=x86,OSFamily=linux");
        let reordered = platform(&[("ISA", "x86"), ("OSFamily", "linux")]);
        assert_eq!(key, PlatformKey::new(&reordered, &[]));
    }

    #[test]
    fn worker_must_satisfy_every_requested_property() {
        let worker = WorkerPlatform::new(&platform(&[
            ("OSFamily", "linux"),
            ("ISA", "x86-64"),
            ("ISA", "x86-64-v3"),
        ]));
        let want = |props: &[(&str, &str)]| PlatformKey::new(&platform(props), &[]);
        assert!(worker.satisfies(&want(&[])));
        assert!(worker.satisfies(&want(&[("OSFamily", "linux")])));
        assert!(worker.satisfies(&want(&[("ISA", "x86-64-v3"), ("OSFamily", "linux")])));
        assert!(!worker.satisfies(&want(&[("OSFamily", "windows")])));
        assert!(!worker.satisfies(&want(&[("OSFamily", "linux"), ("gpu", "1")])));
    }

    #[test]
    #[allow(deprecated)]
    fn action_platform_wins_over_command_platform() {
        let command = Command {
            platform: Some(platform(&[("OSFamily", "bazel4")])),
            ..Default::default()
        };
        let old = Action::default();
        assert_eq!(
            requested_platform(&old, &command),
            platform(&[("OSFamily", "bazel4")])
        );
        let new = Action {
            platform: Some(platform(&[("OSFamily", "bazel8")])),
            ..Default::default()
        };
        assert_eq!(
            requested_platform(&new, &command),
            platform(&[("OSFamily", "bazel8")])
        );
    }
}
