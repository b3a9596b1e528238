//! [`Identity`]: who a caller is.

/// A caller: the name its credential maps to, and the groups it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The identity's name, as the tokens file gives it.
    pub name: String,
    /// The groups it belongs to; rights are given to groups.
    pub groups: Vec<String>,
}

impl Identity {
    /// The name of the identity of callers without credentials.
    pub const ANONYMOUS: &str = "anonymous";

    /// The identity of a caller that presented no credential: no groups.
    pub fn anonymous() -> Identity {
        Identity {
            name: Self::ANONYMOUS.to_string(),
            groups: Vec::new(),
        }
    }

    /// Whether this is the caller without credentials.
    pub fn is_anonymous(&self) -> bool {
        self.name == Self::ANONYMOUS && self.groups.is_empty()
    }

    /// Whether the identity belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
