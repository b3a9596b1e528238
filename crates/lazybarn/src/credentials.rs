//! The worker credential of `lazybarn up`: a token generated at each start,
//! so that its scheduler serves the worker protocol only to its own worker
//! (and to workers given the token), never to any client of its port, and
//! `up` still needs nothing configured.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::LazybarnError;

/// The tokens file the scheduler reads, in the data directory.
pub const TOKENS_FILE: &str = "worker-tokens";

/// The worker's token in clear, in the data directory: give it to
/// `lazybarn worker --scheduler-token-file` to join this cluster.
pub const TOKEN_FILE: &str = "worker-token";

/// The identity and group the token maps to.
const WORKER_NAME: &str = "worker";
const WORKER_GROUP: &str = "workers";

/// Where a freshly generated worker credential was written.
#[derive(Clone, Debug)]
pub struct WorkerCredentials {
    /// The scheduler's tokens file (the token's digest only).
    pub tokens_file: PathBuf,
    /// The token in clear, for the worker.
    pub token_file: PathBuf,
    /// The group the token belongs to.
    pub group: &'static str,
}

impl WorkerCredentials {
    /// Generates a new token (so a token from an earlier run stops working)
    /// and writes both files into `data_dir`, mode 0600.
    pub fn generate(data_dir: &Path) -> Result<WorkerCredentials, LazybarnError> {
        let token = lazybarn_auth::generate_token();
        let credentials = WorkerCredentials {
            tokens_file: data_dir.join(TOKENS_FILE),
            token_file: data_dir.join(TOKEN_FILE),
            group: WORKER_GROUP,
        };
        let line = lazybarn_auth::tokens_file_line(&token, WORKER_NAME, &[WORKER_GROUP]);
        write_private(&credentials.tokens_file, &line)?;
        write_private(&credentials.token_file, &format!("{token}\n"))?;
        Ok(credentials)
    }
}

/// Writes `contents` to a new file at `path` that only its owner may read:
/// an existing file is removed first, since opening it would keep its mode.
fn write_private(path: &Path, contents: &str) -> Result<(), LazybarnError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LazybarnError::io("removing", path)(e));
        }
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(LazybarnError::io("creating", path))?;
    file.write_all(contents.as_bytes())
        .map_err(LazybarnError::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_file_authenticates_against_the_tokens_file_and_both_are_private() {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::write(dir.path().join(TOKEN_FILE), "old").expect("an earlier run's file");
        fs::set_permissions(
            dir.path().join(TOKEN_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let credentials = WorkerCredentials::generate(dir.path()).expect("generate");
        for path in [&credentials.tokens_file, &credentials.token_file] {
            let mode = fs::metadata(path).expect("written").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let token = fs::read_to_string(&credentials.token_file).expect("read");
        let tokens = lazybarn_auth::Tokens::load(&credentials.tokens_file).expect("parse");
        let identity = tokens.identify(token.trim()).expect("known");
        assert!(identity.in_group(credentials.group));
        let listed = fs::read_to_string(&credentials.tokens_file).expect("read");
        assert!(
            !listed.contains(token.trim()),
            "the token is stored in clear"
        );
    }
}
