//! Locating the binaries this workspace builds.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for binaries of the package under
//! test, and the servers live in other packages. So `scripts/test` runs
//! `cargo build --workspace --bins` first, and the tests look for the
//! binaries in the target directory they were built into themselves.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Environment variable naming a directory to take binaries from instead of
/// the target directory.
pub const BIN_DIR_ENV: &str = "LAZYBARN_BIN_DIR";

/// Returns the path of the workspace binary `name` (for example
/// `lazybarn-storage`), or an error that says how to build it.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let dir = binary_dir()?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist; build the workspace's binaries first with \
             `cargo build --workspace --bins` (scripts/test does), or point \
             {BIN_DIR_ENV} at a directory that holds them",
            path.display()
        );
    }
    Ok(path)
}

/// The directory binaries are taken from: `$LAZYBARN_BIN_DIR` if set, else
/// the profile directory of the running test executable.
fn binary_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = env::current_exe().context("Failed to find the test executable's path")?;
    profile_dir_of(&exe).with_context(|| {
        format!(
            "Failed to find the target directory from the test executable {}; set {BIN_DIR_ENV}",
            exe.display()
        )
    })
}

/// Integration tests run from `target/<profile>/deps/<test>-<hash>`, and
/// cargo puts binaries in `target/<profile>/`.
fn profile_dir_of(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executable_in_deps_maps_to_profile_dir() {
        let exe = Path::new("/repo/target/debug/deps/bazel_remote_cache-0123abcd");
        assert_eq!(
            profile_dir_of(exe),
            Some(PathBuf::from("/repo/target/debug"))
        );
    }

    #[test]
    fn executable_outside_deps_maps_to_its_own_dir() {
        let exe = Path::new("/opt/lazybarn/bin/some-test");
        assert_eq!(
            profile_dir_of(exe),
            Some(PathBuf::from("/opt/lazybarn/bin"))
        );
    }
}
