//! [`BearerToken`]: the caller's side, adding a token to every call.

use std::path::Path;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::tokens::TokensError;

/// An interceptor that sends `authorization: Bearer <token>` on every call
/// of the channel it wraps, or nothing when it holds no token.
#[derive(Clone, Debug, Default)]
pub struct BearerToken {
    header: Option<AsciiMetadataValue>,
}

impl BearerToken {
    /// No credential: calls go out as they are.
    pub fn none() -> BearerToken {
        BearerToken::default()
    }

    /// The token in clear in the file at `path` (surrounding whitespace,
    /// such as a final newline, is ignored). Keep the file mode 0600: it is
    /// the credential itself.
    pub fn from_file(path: &Path) -> Result<BearerToken, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token_error = |why: &str| TokensError::Token {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let token = text.trim();
        if token.is_empty() {
            return Err(token_error("the token file is empty"));
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(token_error(
                "the token holds whitespace or characters other than printable ASCII",
            ));
        }
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| token_error("the token cannot be sent in a header"))?;
        Ok(BearerToken {
            header: Some(header),
        })
    }

    /// Whether a token is sent.
    pub fn is_set(&self) -> bool {
        self.header.is_some()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Tokens, tokens_file_line};

    #[test]
    fn a_token_file_authenticates_its_calls() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("token");
        std::fs::write(&path, "worker-token\n").expect("write");
        let mut bearer = BearerToken::from_file(&path).expect("valid");
        let request = bearer.call(Request::new(())).expect("call");
        let tokens = Tokens::parse(&tokens_file_line("worker-token", "w", &[])).expect("valid");
        let identity = tokens.authenticate(request.metadata()).expect("known");
        assert_eq!(identity.name, "w");
    }

    #[test]
    fn bad_token_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, contents) in [("empty", "\n"), ("spaced", "two words\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write");
            let error = BearerToken::from_file(&path).expect_err(name).to_string();
            assert!(error.contains(name), "{error}");
        }
        assert!(BearerToken::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn without_a_token_nothing_is_sent() {
        let request = BearerToken::none().call(Request::new(())).expect("call");
        assert!(request.metadata().get("authorization").is_none());
    }
}
