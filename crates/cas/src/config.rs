//! [`StorageServerConfig`]: the TOML document `lazybarn-storage --config`
//! and `lazybarn storage --config` read. The doc comments are its
//! documentation; an unknown key is an error that names it. Flags given on
//! the command line override the file. A complete example:
//!
//! ```toml
//! listen = "0.0.0.0:8980"
//! data_dir = "/var/lib/lazybarn/storage"
//! max_size_bytes = 107374182400       # 100 GiB
//! max_batch_bytes = 4194304
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::service::DEFAULT_MAX_BATCH_BYTES;

/// Most bytes of blobs a storage keeps unless told otherwise: 10 GiB.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 10 << 30;

/// How a standalone storage serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageServerConfig {
    /// Address to serve gRPC on (CAS, ByteStream, Action Cache,
    /// Capabilities). Default `127.0.0.1:8980`; `0.0.0.0:8980` to serve
    /// other hosts.
    pub listen: SocketAddr,
    /// Directory for blobs and Action Cache entries; required (here or as
    /// `--data-dir`). Put it on a local disk: every write is fsynced.
    pub data_dir: Option<PathBuf>,
    /// Most bytes of blobs kept; least recently used blobs are evicted above
    /// it. Leave a tenth of the disk free for blobs being written.
    pub max_size_bytes: u64,
    /// Largest sum of blob sizes in one batch call, advertised in
    /// Capabilities. Recommended: the default, 4 MiB, which every gRPC
    /// client accepts without raising its message limit.
    pub max_batch_bytes: usize,
}

impl Default for StorageServerConfig {
    fn default() -> Self {
        StorageServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8980)),
            data_dir: None,
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

impl StorageServerConfig {
    /// Parses a TOML document; an unknown key is an error that names it.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("in {}: {e}", path.display()))
    }

    /// The configuration in `path` (or the defaults), with each flag given
    /// on the command line in place of the file's value.
    pub fn with_overrides(
        path: Option<&Path>,
        overrides: StorageOverrides,
    ) -> Result<Self, String> {
        let mut config = match path {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = overrides.data_dir {
            config.data_dir = Some(dir);
        }
        if let Some(size) = overrides.max_size_bytes {
            config.max_size_bytes = size;
        }
        if let Some(size) = overrides.max_batch_bytes {
            config.max_batch_bytes = size;
        }
        if config.data_dir.is_none() {
            return Err(
                "no data directory: give --data-dir or data_dir in the configuration".into(),
            );
        }
        Ok(config)
    }

    /// The data directory; [`Self::with_overrides`] made sure there is one.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.as_deref().unwrap_or(Path::new("."))
    }
}

/// Values given as flags, which win over the configuration file's.
#[derive(Debug, Clone, Default)]
pub struct StorageOverrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--max-size`.
    pub max_size_bytes: Option<u64>,
    /// `--max-batch-size`.
    pub max_batch_bytes: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let example = include_str!("config.rs")
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("//! ```").next())
            .expect("the module doc has a TOML example")
            .lines()
            .map(|line| line.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let config = StorageServerConfig::parse(&example).expect("example parses");
        assert_eq!(config.listen.port(), 8980);
        assert_eq!(config.max_size_bytes, 100 << 30);
        assert_eq!(config.data_dir(), Path::new("/var/lib/lazybarn/storage"));
    }

    #[test]
    fn an_unknown_key_is_named() {
        let error = StorageServerConfig::parse("max_size = 5\n").expect_err("typo");
        assert!(error.contains("max_size"), "{error}");
    }

    #[test]
    fn flags_override_the_file_and_a_data_dir_is_required() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("storage.toml");
        std::fs::write(&path, "data_dir = \"/srv/cas\"\nmax_size_bytes = 1000\n").expect("write");
        let overrides = StorageOverrides {
            max_size_bytes: Some(2000),
            ..StorageOverrides::default()
        };
        let config = StorageServerConfig::with_overrides(Some(&path), overrides).expect("valid");
        assert_eq!(config.max_size_bytes, 2000);
        assert_eq!(config.data_dir(), Path::new("/srv/cas"));

        let error = StorageServerConfig::with_overrides(None, StorageOverrides::default())
            .expect_err("no data dir");
        assert!(error.contains("--data-dir"), "{error}");
    }
}
