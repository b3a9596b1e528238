//! The tokens file, and turning a call's `authorization` header into an
//! [`Identity`].
//!
//! ```text
//! # SHA-256 of the token, in hex     name    groups (optional)
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 worker-7 workers
//! 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752 ci       builders,admins
//! ```
//!
//! Tokens are never stored in clear: a stolen tokens file gives no one a
//! credential. A presented token is hashed and its digest looked up, so
//! what the lookup's timing could reveal is a digest, never the token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::identity::Identity;

/// The metadata key that carries credentials.
const AUTHORIZATION: &str = "authorization";

/// The scheme of a bearer token, compared without case (RFC 7235).
const BEARER: &str = "bearer ";

/// Why a tokens file or a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// A line of a tokens file is wrong.
    #[error("{path}: line {line}: {why}")]
    Line {
        /// The file (empty when parsed from text).
        path: String,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A token file holds no usable token.
    #[error("{path}: {why}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// The identities of a tokens file, by the SHA-256 digest of their token.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Identity>,
}

impl Tokens {
    /// Reads and parses the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parses the text of a tokens file; errors name the line.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        Self::parse_named(text, "tokens")
    }

    fn parse_named(text: &str, path: &str) -> Result<Tokens, TokensError> {
        let mut tokens = Tokens::default();
        for (index, line) in text.lines().enumerate() {
            let line_error = |why: String| TokensError::Line {
                path: path.to_string(),
                line: index + 1,
                why,
            };
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let (digest, identity) = parse_line(content).map_err(line_error)?;
            if tokens.by_digest.insert(digest, identity).is_some() {
                return Err(line_error(
                    "this token's digest is already listed on an earlier line".to_string(),
                ));
            }
        }
        Ok(tokens)
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The identity `token` belongs to, if any.
    pub fn identify(&self, token: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&digest)
    }

    /// The caller of a call with `metadata`: the owner of its bearer token,
    /// or [`Identity::anonymous`] without an `authorization` header. A
    /// malformed header or an unknown token is UNAUTHENTICATED saying which;
    /// the token is never repeated.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        let mut values = metadata.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Ok(Identity::anonymous());
        };
        if values.next().is_some() {
            return Err(Status::unauthenticated(
                "more than one authorization header: send one, `authorization: Bearer <token>`",
            ));
        }
        let value = value.to_str().map_err(|_| {
            Status::unauthenticated("the authorization header is not printable ASCII text")
        })?;
        let token = bearer_token(value).ok_or_else(|| {
            Status::unauthenticated(
                "the authorization header is not `Bearer <token>` (the only scheme accepted)",
            )
        })?;
        self.identify(token).cloned().ok_or_else(|| {
            Status::unauthenticated(
                "the bearer token is unknown to this server (not in its tokens file)",
            )
        })
    }
}

/// The token of a `Bearer <token>` header value.
fn bearer_token(value: &str) -> Option<&str> {
    let scheme = value.get(..BEARER.len())?;
    if !scheme.eq_ignore_ascii_case(BEARER) {
        return None;
    }
    let token = value[BEARER.len()..].trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// One line without its comment: `DIGEST NAME [GROUP,GROUP...]`.
fn parse_line(content: &str) -> Result<([u8; 32], Identity), String> {
    let fields: Vec<&str> = content.split_whitespace().collect();
    let (digest, name, groups) = match fields[..] {
        [digest, name] => (digest, name, None),
        [digest, name, groups] => (digest, name, Some(groups)),
        _ => {
            return Err(format!(
                "expected `SHA256-HEX NAME [GROUP,GROUP...]`, found {} fields",
                fields.len()
            ));
        }
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digest, &mut bytes).map_err(|_| {
        "the first field is not a SHA-256 digest in hex (64 hex digits); \
         tokens are listed by their digest, never in clear"
            .to_string()
    })?;
    if name == Identity::ANONYMOUS {
        return Err(format!(
            "{:?} is the name of callers without credentials; give this token another",
            Identity::ANONYMOUS
        ));
    }
    let groups = match groups {
        None => Vec::new(),
        Some(list) => list.split(',').map(str::to_string).collect(),
    };
    if groups.iter().any(String::is_empty) {
        return Err("an empty group name in the group list".to_string());
    }
    Ok((
        bytes,
        Identity {
            name: name.to_string(),
            groups,
        },
    ))
}

/// The SHA-256 digest of `token` in hex, as a tokens file lists it.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The tokens-file line admitting `token` as `name` in `groups`.
pub fn tokens_file_line(token: &str, name: &str, groups: &[&str]) -> String {
    let digest = token_digest(token);
    if groups.is_empty() {
        format!("{digest} {name}\n")
    } else {
        format!("{digest} {name} {}\n", groups.join(","))
    }
}

/// A new random token: 32 bytes from the operating system's generator
/// (through `rand`'s thread generator, which it seeds), in hex.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    const TOKEN: &str = "s3cret-token";

    fn tokens() -> Tokens {
        let text = format!(
            "# the farm's credentials\n\n{}{}  # trailing comment\n",
            tokens_file_line(TOKEN, "worker-1", &["workers"]),
            tokens_file_line("other", "ci", &["builders", "admins"]).trim_end(),
        );
        Tokens::parse(&text).expect("valid")
    }

    fn with_header(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            AUTHORIZATION,
            MetadataValue::try_from(value).expect("ascii"),
        );
        metadata
    }

    #[test]
    fn parses_digests_names_groups_and_comments() {
        let tokens = tokens();
        assert_eq!(tokens.len(), 2);
        let worker = tokens.identify(TOKEN).expect("known");
        assert_eq!(worker.name, "worker-1");
        assert_eq!(worker.groups, ["workers"]);
        let ci = tokens.identify("other").expect("known");
        assert!(ci.in_group("admins") && ci.in_group("builders") && !ci.in_group("workers"));
        let bare = Tokens::parse(&tokens_file_line("t", "alice", &[])).expect("valid");
        assert!(bare.identify("t").expect("known").groups.is_empty());
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let digest = token_digest("x");
        let cases = [
            (format!("# ok\n{TOKEN} name\n"), 2, "digest"),
            (format!("{digest}\n"), 1, "fields"),
            (format!("{digest} a b c\n"), 1, "fields"),
            (format!("{digest} anonymous\n"), 1, "anonymous"),
            (format!("{digest} a workers,,x\n"), 1, "empty group"),
            (format!("{digest} a\n\n{digest} b\n"), 3, "already listed"),
        ];
        for (text, line, why) in cases {
            let error = Tokens::parse(&text).expect_err(&text).to_string();
            assert!(
                error.contains(&format!("line {line}:")) && error.contains(why),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let error = Tokens::load(Path::new("/nonexistent/tokens")).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/tokens"), "{error}");
    }

    #[test]
    fn a_known_bearer_token_is_its_identity() {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let identity = tokens()
                .authenticate(&with_header(&format!("{scheme} {TOKEN}")))
                .expect("known");
            assert_eq!(identity.name, "worker-1");
        }
    }

    #[test]
    fn no_header_is_anonymous() {
        let identity = tokens()
            .authenticate(&MetadataMap::new())
            .expect("anonymous");
        assert!(identity.is_anonymous());
        assert_eq!(identity, Identity::anonymous());
    }

    #[test]
    fn an_unknown_token_is_unauthenticated_without_echoing_it() {
        let made_up = "made-up-token-1234";
        let status = tokens()
            .authenticate(&with_header(&format!("Bearer {made_up}")))
            .expect_err("unknown");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("unknown"), "{status:?}");
        assert!(!status.message().contains(made_up), "{status:?}");
    }

    #[test]
    fn a_malformed_header_is_unauthenticated_saying_so() {
        for value in [
            format!("Basic {TOKEN}"),
            TOKEN.to_string(),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {TOKEN} extra"),
        ] {
            let status = tokens()
                .authenticate(&with_header(&value))
                .expect_err(&value);
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value}");
            assert!(
                status.message().contains("Bearer <token>"),
                "{value}: {status:?}"
            );
            assert!(!status.message().contains(TOKEN), "{status:?}");
        }
        let mut twice = with_header(&format!("Bearer {TOKEN}"));
        twice.append(AUTHORIZATION, MetadataValue::from_static("Bearer other"));
        let status = tokens().authenticate(&twice).expect_err("two headers");
        assert!(status.message().contains("more than one"), "{status:?}");
    }

    #[test]
    fn generated_tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
