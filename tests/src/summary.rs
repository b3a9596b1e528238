//! Bazel's process summary.
//!
//! After every build Bazel prints how the build's processes (spawns) were
//! run, for example
//!
//! ```text
//! INFO: 17 processes: 7 remote cache hit, 10 internal.
//! INFO: 17 processes: 10 internal, 7 linux-sandbox.
//! INFO: 1 process: 1 internal.
//! ```
//!
//! "internal" processes are Bazel's own bookkeeping (symlink trees, workspace
//! status, ...) that never touch a cache. Everything else either came from a
//! cache or was executed by a strategy (`local`, `linux-sandbox`,
//! `processwrapper-sandbox`, `remote`, ...).

use std::collections::BTreeMap;

/// The kind Bazel gives its own bookkeeping processes.
pub const INTERNAL: &str = "internal";

/// The kind Bazel gives processes answered by `--remote_cache` (Bazel 4 also
/// reports `--disk_cache` hits this way).
pub const REMOTE_CACHE_HIT: &str = "remote cache hit";

/// The kind Bazel gives processes executed by `--remote_executor`.
pub const REMOTE: &str = "remote";

/// The kind newer Bazel versions give processes answered by `--disk_cache`.
pub const DISK_CACHE_HIT: &str = "disk cache hit";

/// The counts of one "N processes: ..." line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSummary {
    /// The total number of processes.
    pub total: u64,
    /// How many processes of each kind ("internal", "remote cache hit", "local", ...).
    pub by_kind: BTreeMap<String, u64>,
}

impl ProcessSummary {
    /// Returns the summary of the last summary line in `output` (Bazel's
    /// stderr), if there is one.
    pub fn find_last(output: &str) -> Option<Self> {
        output.lines().rev().find_map(Self::parse_line)
    }

    /// Parses one line such as "INFO: 7 processes: 4 remote cache hit, 3 internal.".
    pub fn parse_line(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("INFO: ")?;
        let rest = rest.strip_suffix('.')?;
        let (head, kinds) = match rest.split_once(": ") {
            Some((head, kinds)) => (head, Some(kinds)),
            None => (rest, None),
        };
        let total = parse_count(head, &["process", "processes"])?;
        let mut by_kind = BTreeMap::new();
        for entry in kinds.into_iter().flat_map(|kinds| kinds.split(", ")) {
            let (count, kind) = entry.split_once(' ')?;
            *by_kind.entry(kind.to_string()).or_insert(0) += count.parse::<u64>().ok()?;
        }
        let summary = Self { total, by_kind };
        (summary.by_kind.values().sum::<u64>() == total).then_some(summary)
    }

    /// How many processes were of `kind`.
    pub fn count(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// How many processes were not Bazel's internal bookkeeping.
    pub fn non_internal(&self) -> u64 {
        self.total - self.count(INTERNAL)
    }

    /// How many processes the remote cache answered.
    pub fn remote_cache_hits(&self) -> u64 {
        self.count(REMOTE_CACHE_HIT)
    }

    /// How many processes the remote executor ran.
    pub fn remotely_executed(&self) -> u64 {
        self.count(REMOTE)
    }

    /// How many processes were actually executed, by any strategy.
    pub fn executed(&self) -> u64 {
        self.by_kind
            .iter()
            .filter(|(kind, _)| {
                ![INTERNAL, REMOTE_CACHE_HIT, DISK_CACHE_HIT].contains(&kind.as_str())
            })
            .map(|(_, count)| count)
            .sum()
    }
}

/// Parses "<n> <unit>" where unit is one of `units`.
fn parse_count(text: &str, units: &[&str]) -> Option<u64> {
    let (count, unit) = text.split_once(' ')?;
    units.contains(&unit).then_some(())?;
    count.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_build_served_from_the_cache() {
        let s = ProcessSummary::parse_line("INFO: 7 processes: 4 remote cache hit, 3 internal.")
            .expect("a valid summary line");
        assert_eq!(s.total, 7);
        assert_eq!(s.remote_cache_hits(), 4);
        assert_eq!(s.non_internal(), 4);
        assert_eq!(s.executed(), 0);
    }

    #[test]
    fn parses_a_build_executed_locally() {
        let s = ProcessSummary::parse_line("INFO: 17 processes: 10 internal, 7 linux-sandbox.")
            .expect("a valid summary line");
        assert_eq!(s.count("linux-sandbox"), 7);
        assert_eq!(s.executed(), 7);
        assert_eq!(s.remote_cache_hits(), 0);
    }

    #[test]
    fn parses_a_build_executed_remotely() {
        let s = ProcessSummary::parse_line("INFO: 35 processes: 17 internal, 18 remote.")
            .expect("a valid summary line");
        assert_eq!(s.remotely_executed(), 18);
        assert_eq!(s.non_internal(), 18);
    }

    #[test]
    fn parses_singular_and_empty_builds() {
        let one = ProcessSummary::parse_line("INFO: 1 process: 1 internal.").expect("one process");
        assert_eq!((one.total, one.non_internal()), (1, 0));
        let none = ProcessSummary::parse_line("INFO: 0 processes.").expect("no process");
        assert_eq!((none.total, none.by_kind.len()), (0, 0));
    }

    #[test]
    fn rejects_other_lines() {
        for line in [
            "INFO: Build completed successfully, 17 total actions",
            "INFO: Elapsed time: 1.503s, Critical Path: 0.51s",
            "INFO: 7 processes: 4 remote cache hit, 2 internal.",
            "7 processes: 4 remote cache hit, 3 internal.",
        ] {
            assert_eq!(ProcessSummary::parse_line(line), None, "{line}");
        }
    }

    #[test]
    fn finds_the_last_summary_in_output() {
        let output = "INFO: 3 processes: 3 internal.\n\
                      INFO: 5 processes: 2 internal, 3 local.\n\
                      INFO: Build completed successfully, 5 total actions\n";
        let s = ProcessSummary::find_last(output).expect("a summary");
        assert_eq!(s.count("local"), 3);
    }
}
