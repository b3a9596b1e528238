//! [`Gate`]: the interceptor that decides whether a call may reach a
//! service. Every permission decision is made here.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::identity::Identity;
use crate::tokens::Tokens;

/// Who may call the service it wraps.
#[derive(Clone, Debug)]
pub enum Gate {
    /// Everyone, as the anonymous identity: no credentials are read.
    Open,
    /// Only identities of `group`, authenticated by `tokens`.
    Group {
        /// The known tokens.
        tokens: Arc<Tokens>,
        /// The group that holds the right.
        group: String,
        /// The right, as refusals name it (e.g. "use the worker protocol").
        right: &'static str,
    },
}

impl Gate {
    /// A gate letting through identities of `group` only, which gives them
    /// `right`.
    pub fn group(tokens: Arc<Tokens>, group: impl Into<String>, right: &'static str) -> Gate {
        Gate::Group {
            tokens,
            group: group.into(),
            right,
        }
    }

    /// The caller's identity, if it may pass: UNAUTHENTICATED for a bad
    /// credential, and for no credential where one is needed;
    /// PERMISSION_DENIED naming the identity and the right for an identity
    /// outside the group.
    pub fn admit(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Identity, Status> {
        let Gate::Group {
            tokens,
            group,
            right,
        } = self
        else {
            return Ok(Identity::anonymous());
        };
        let identity = tokens.authenticate(metadata)?;
        if identity.in_group(group) {
            return Ok(identity);
        }
        if identity.is_anonymous() {
            return Err(Status::unauthenticated(format!(
                "no credentials: to {right}, send `authorization: Bearer <token>` \
                 with a token of group {group:?}"
            )));
        }
        Err(Status::permission_denied(format!(
            "identity {:?} may not {right}: it is not in group {group:?}",
            identity.name
        )))
    }
}

impl Interceptor for Gate {
    /// Admits the call and leaves its [`Identity`] in its extensions.
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let identity = self.admit(request.metadata())?;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::tokens_file_line;
    use tonic::Code;
    use tonic::metadata::MetadataValue;

    fn gate() -> Gate {
        let text = format!(
            "{}{}",
            tokens_file_line("worker-token", "worker-1", &["workers"]),
            tokens_file_line("client-token", "alice", &["builders"]),
        );
        let tokens = Tokens::parse(&text).expect("valid");
        Gate::group(Arc::new(tokens), "workers", "use the worker protocol")
    }

    fn call(gate: &mut Gate, token: Option<&str>) -> Result<Request<()>, Status> {
        let mut request = Request::new(());
        if let Some(token) = token {
            let value = MetadataValue::try_from(format!("Bearer {token}")).expect("ascii");
            request.metadata_mut().insert("authorization", value);
        }
        gate.call(request)
    }

    #[test]
    fn a_member_passes_with_its_identity() {
        let request = call(&mut gate(), Some("worker-token")).expect("member");
        let identity = request.extensions().get::<Identity>().expect("identity");
        assert_eq!(identity.name, "worker-1");
    }

    #[test]
    fn another_identity_is_permission_denied_naming_it_and_the_right() {
        let status = call(&mut gate(), Some("client-token")).expect_err("not a worker");
        assert_eq!(status.code(), Code::PermissionDenied);
        let message = status.message();
        assert!(
            message.contains("\"alice\"")
                && message.contains("use the worker protocol")
                && message.contains("\"workers\""),
            "{message}"
        );
    }

    #[test]
    fn no_credentials_are_unauthenticated_naming_the_group() {
        let status = call(&mut gate(), None).expect_err("anonymous");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("\"workers\""), "{status:?}");
    }

    #[test]
    fn an_unknown_token_is_unauthenticated() {
        let status = call(&mut gate(), Some("made-up")).expect_err("unknown");
        assert_eq!(status.code(), Code::Unauthenticated);
    }

    #[test]
    fn an_open_gate_admits_everyone_as_anonymous() {
        let request = call(&mut Gate::Open, Some("anything")).expect("open");
        assert!(
            request
                .extensions()
                .get::<Identity>()
                .expect("identity")
                .is_anonymous()
        );
    }
}
