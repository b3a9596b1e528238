//! Resolving `arguments[0]` to the file the kernel will execute, as REAPI
//! specifies: a name with a slash is a path (relative ones against the
//! working directory), a bare name is looked up in the action's own `PATH`.
//!
//! The runner resolves before it forks so that a missing or non-executable
//! program gets a clear error naming it. The `execve` in the child stays the
//! authority: if it disagrees (an ACL, a `noexec` mount), its error is
//! reported instead.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Credentials;
use crate::error::RunError;

/// The search path used when the request's environment has no `PATH`
/// (REAPI leaves this to the implementation).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Where the command's paths point: the host's root, or a chroot.
#[derive(Debug, Clone, Copy)]
pub struct CommandView<'a> {
    /// The directory the command is chrooted into, if any.
    pub root: Option<&'a Path>,
    /// The command's working directory as the command sees it (absolute).
    pub working_directory: &'a Path,
}

impl CommandView<'_> {
    /// The runner's path for `path`, an absolute path as the command sees it.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        match self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }
}

enum Candidate {
    Missing,
    NotExecutable(String),
    Executable,
}

/// Resolves `program` (the request's `arguments[0]`) to the path, as the
/// command sees it, that the child will pass to `execve`: `program` itself
/// if it contains a slash, else the directory from `PATH` joined with it.
///
/// `path_variable` is the value of `PATH` in the request's environment.
pub fn resolve_program(
    program: &str,
    path_variable: Option<&str>,
    view: CommandView<'_>,
    credentials: Credentials,
) -> Result<PathBuf, RunError> {
    if program.contains('/') {
        let path = view.working_directory.join(program);
        return match classify(&view.host_path(&path), credentials) {
            // Executed as given (the child is in the working directory), so
            // that a script's interpreter sees the same name as with execvp.
            Candidate::Executable => Ok(PathBuf::from(program)),
            Candidate::Missing => Err(RunError::ProgramNotFound {
                program: program.to_string(),
                looked_in: format!("resolved to {path:?}"),
            }),
            Candidate::NotExecutable(reason) => {
                Err(not_executable(program, path, credentials, reason))
            }
        };
    }
    let search = path_variable.unwrap_or(DEFAULT_PATH);
    let mut refused = None;
    for dir in search.split(':') {
        // An empty entry means the current directory, as in execvp.
        let dir = if dir.is_empty() { "." } else { dir };
        let path = view.working_directory.join(dir).join(program);
        match classify(&view.host_path(&path), credentials) {
            Candidate::Executable => return Ok(path),
            Candidate::Missing => {}
            Candidate::NotExecutable(reason) => {
                refused.get_or_insert((path, reason));
            }
        }
    }
    match refused {
        Some((path, reason)) => Err(not_executable(program, path, credentials, reason)),
        None => Err(RunError::ProgramNotFound {
            program: program.to_string(),
            looked_in: match path_variable {
                Some(_) => format!("searched the request's PATH={search}"),
                None => format!("no PATH in the request's environment; searched {search}"),
            },
        }),
    }
}

fn not_executable(
    program: &str,
    path: PathBuf,
    credentials: Credentials,
    reason: String,
) -> RunError {
    RunError::ProgramNotExecutable {
        program: program.to_string(),
        path,
        uid: credentials.uid,
        reason,
    }
}

fn classify(host_path: &Path, credentials: Credentials) -> Candidate {
    match std::fs::metadata(host_path) {
        Ok(meta) if meta.is_dir() => Candidate::NotExecutable("it is a directory".to_string()),
        Ok(meta) if !meta.is_file() => {
            Candidate::NotExecutable("it is not a regular file".to_string())
        }
        Ok(meta) if executable_by(&meta, credentials) => Candidate::Executable,
        Ok(meta) => Candidate::NotExecutable(format!(
            "mode {:o}, owner {}:{}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        )),
        Err(e) if is_missing(&e) => Candidate::Missing,
        Err(e) => Candidate::NotExecutable(e.to_string()),
    }
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// Whether the mode bits let `credentials` execute the file. The command
/// has no supplementary groups, so owner, group and other are the only cases.
fn executable_by(meta: &Metadata, credentials: Credentials) -> bool {
    let mode = meta.mode();
    if credentials.uid == 0 {
        mode & 0o111 != 0
    } else if meta.uid() == credentials.uid {
        mode & 0o100 != 0
    } else if meta.gid() == credentials.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOBODY: Credentials = Credentials {
        uid: 65534,
        gid: 65534,
    };

    fn write_file(path: &Path, mode: u32) {
        std::fs::write(path, "#!/bin/sh\n").expect("write test file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("chmod test file");
    }

    #[test]
    fn bare_name_uses_the_requests_path_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        write_file(&a.join("tool"), 0o644);
        write_file(&b.join("tool"), 0o755);
        let view = CommandView {
            root: None,
            working_directory: dir.path(),
        };
        let path_var = format!("{}:{}", a.display(), b.display());
        let found = resolve_program("tool", Some(&path_var), view, NOBODY).expect("found in b");
        assert_eq!(found, b.join("tool"));
        // Relative PATH entries are relative to the working directory.
        let found = resolve_program("tool", Some("a:b"), view, NOBODY).expect("found in b");
        assert_eq!(found, dir.path().join("b").join("tool"));
        let err = resolve_program("tool", Some(&a.display().to_string()), view, NOBODY)
            .expect_err("only a non-executable one");
        assert!(
            matches!(err, RunError::ProgramNotExecutable { .. }),
            "{err}"
        );
        let err = resolve_program("nope", Some(&path_var), view, NOBODY).expect_err("missing");
        assert!(matches!(err, RunError::ProgramNotFound { .. }), "{err}");
    }

    #[test]
    fn slash_means_relative_to_working_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        write_file(&dir.path().join("bin/tool"), 0o700);
        let view = CommandView {
            root: None,
            working_directory: dir.path(),
        };
        // Owned by root with only the owner bit: nobody may not run it.
        let err = resolve_program("bin/tool", None, view, NOBODY).expect_err("owner-only");
        assert!(
            matches!(err, RunError::ProgramNotExecutable { .. }),
            "{err}"
        );
        let root = Credentials { uid: 0, gid: 0 };
        let found = resolve_program("./bin/tool", None, view, root).expect("root may");
        assert_eq!(found, Path::new("./bin/tool"));
    }

    #[test]
    fn chroot_paths_are_looked_up_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("usr/bin")).expect("mkdir");
        write_file(&root.path().join("usr/bin/cc"), 0o755);
        let view = CommandView {
            root: Some(root.path()),
            working_directory: Path::new("/"),
        };
        let found = resolve_program("cc", Some("/usr/bin"), view, NOBODY).expect("inside root");
        assert_eq!(found, Path::new("/usr/bin/cc"));
        assert!(resolve_program("sh", Some("/bin:/usr/bin"), view, NOBODY).is_err());
    }
}
