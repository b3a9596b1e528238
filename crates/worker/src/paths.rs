//! Relative paths named by an action: output paths and the working
//! directory. They come from the client, so each is checked before it is
//! joined to a directory on the worker's disk.

use std::path::{Component, Path, PathBuf};

/// A path an action named that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path:?} {reason}")]
pub struct BadPath {
    /// Which field the path came from, e.g. "output path".
    pub what: &'static str,
    /// The path as the client sent it.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a path relative to the input root: not absolute, no `..`, no
/// empty or `.` components except an empty path meaning the root itself.
pub fn check_relative(what: &'static str, path: &str) -> Result<PathBuf, BadPath> {
    let bad = |reason| BadPath {
        what,
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Ok(PathBuf::new());
    }
    if path.starts_with('/') {
        return Err(bad("is absolute; REAPI paths are relative"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut clean = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => clean.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad("is absolute; REAPI paths are relative"));
            }
        }
    }
    Ok(clean)
}

/// Joins an output path (relative to the working directory) to the working
/// directory (relative to the input root), as a path relative to the root.
pub fn output_path(working_directory: &str, output: &str) -> Result<PathBuf, BadPath> {
    let base = check_relative("working directory", working_directory)?;
    let relative = check_relative("output path", output)?;
    if relative.as_os_str().is_empty() {
        return Err(BadPath {
            what: "output path",
            path: output.to_string(),
            reason: "is empty",
        });
    }
    Ok(base.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(
            check_relative("p", "a/./b/c").expect("ok"),
            PathBuf::from("a/b/c")
        );
        assert_eq!(check_relative("p", "").expect("root"), PathBuf::new());
        assert_eq!(
            output_path("sub/dir", "out/x.o").expect("ok"),
            PathBuf::from("sub/dir/out/x.o")
        );
    }

    #[test]
    fn refuses_escapes_and_absolute_paths() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "a/\0b"] {
            let err = check_relative("output path", bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(output_path("..", "x").is_err());
        assert!(output_path("", "").is_err());
    }
}
