//! Who may use a mount: the one place that decides. `fs` asks it before it
//! serves any request that names a node, so an action cannot reach into the
//! mount of another action running at the same time under another uid.

/// Which uids a mount answers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessPolicy {
    /// The only uid besides our own that is served; None serves everyone.
    allowed_uid: Option<u32>,
    /// This process's effective uid (the worker, which prepares the mount
    /// and creates output directories in it).
    own_uid: u32,
}

impl AccessPolicy {
    /// A policy serving `allowed_uid` (everyone if None) and this process.
    pub fn new(allowed_uid: Option<u32>) -> Self {
        AccessPolicy {
            allowed_uid,
            // SAFETY: geteuid has no preconditions and cannot fail.
            own_uid: unsafe { libc::geteuid() },
        }
    }

    /// Whether a request from `uid` is served.
    pub fn permits(&self, uid: u32) -> bool {
        match self.allowed_uid {
            None => true,
            Some(allowed) => uid == allowed || uid == self.own_uid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_allowed_uid_and_our_own_only() {
        let policy = AccessPolicy {
            allowed_uid: Some(1000),
            own_uid: 0,
        };
        assert!(policy.permits(1000));
        assert!(policy.permits(0));
        assert!(!policy.permits(1001));
        let open = AccessPolicy {
            allowed_uid: None,
            own_uid: 0,
        };
        assert!(open.permits(1001));
    }
}
