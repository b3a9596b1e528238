//! Checking a `RunRequest` and turning it into a [`CommandSpec`]: everything
//! the child process needs, already converted to C strings, so that the
//! child does nothing but system calls.
//!
//! This is also where the request's sandbox inputs meet the runner's
//! policy: which uid and gid it may run as ([`command_credentials`]), and
//! where its /proc and /tmp are mounted ([`SandboxSpec`]).

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use lazybarn_proto::runner::RunRequest;

use crate::config::{Credentials, IdRange, Limits};
use crate::error::RunError;
use crate::program::{CommandView, resolve_program};

/// What every command is subject to, from the runner's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandPolicy {
    /// The user and group commands run as.
    pub credentials: Credentials,
    /// Whether commands are chrooted into their input root.
    pub chroot_into_input_root: bool,
    /// Whether each command also gets a user namespace of its own that maps
    /// only the runner's uid and gid: how a runner that is not root can still
    /// give every command a PID namespace. `credentials` are then the
    /// runner's own.
    pub own_user_namespace: bool,
    /// The ids a request may ask for besides `credentials`; empty for a
    /// runner that is not root.
    pub slot_ids: IdRange,
    /// Whether commands get mount and network namespaces of their own.
    pub mount_and_network_namespaces: bool,
    /// The resource limits of every command, already lowered to what this
    /// runner may set.
    pub limits: Limits,
}

/// The mount and network half of a command's sandbox: what init sets up in
/// the command's new namespaces before it starts the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Where a fresh proc is mounted: `/proc`, or with chroot the input
    /// root's `proc` directory. `None`: a chroot without one, where the
    /// command then has no /proc at all.
    pub proc_target: Option<CString>,
    /// The request's `temporary_directory` and where it is bind-mounted
    /// (`/tmp`, or the input root's `tmp` with chroot).
    pub temporary_directory: Option<(CString, CString)>,
    /// When the input root (or, without one, the working directory) lies
    /// under the /tmp that the temporary directory covers: the entry of /tmp
    /// that holds it, and the directory in the temporary directory where it
    /// is bind-mounted first, so that the command still finds it at its
    /// path.
    pub kept_under_tmp: Option<(CString, CString)>,
    /// Where an empty tmpfs is mounted for the command's POSIX shared
    /// memory: `/dev/shm` when the host has it; `None` with chroot.
    pub shm_target: Option<CString>,
    /// That tmpfs's mount options, from `max_shared_memory_bytes`.
    pub shm_options: CString,
    /// Where a fresh mqueue is mounted: `/dev/mqueue` when the host has it;
    /// `None` with chroot.
    pub mqueue_target: Option<CString>,
    /// Whether the command gets a network namespace with only loopback.
    pub private_network: bool,
}

/// A validated command, ready to be started.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// `arguments[0]` as the request gave it, for messages.
    pub program_name: String,
    /// The file to execute, as the command sees it.
    pub program: CString,
    /// The command line; `arguments[0]` is passed unchanged.
    pub arguments: Vec<CString>,
    /// The environment, as `NAME=value` strings.
    pub environment: Vec<CString>,
    /// The directory to chroot into, if the policy says so.
    pub chroot: Option<CString>,
    /// The working directory, as the command sees it.
    pub working_directory: CString,
    /// Where standard output goes; `None` discards it.
    pub stdout_path: Option<PathBuf>,
    /// Where standard error goes; `None` discards it.
    pub stderr_path: Option<PathBuf>,
    /// How long the command may run; `None` is no limit.
    pub timeout: Option<Duration>,
    /// The user and group the command runs as.
    pub credentials: Credentials,
    /// Whether the command's process tree gets a user namespace of its own
    /// (see [`CommandPolicy::own_user_namespace`]).
    pub own_user_namespace: bool,
    /// Its mount and network namespaces; `None` when the runner is
    /// configured without them.
    pub sandbox: Option<SandboxSpec>,
    /// Its resource limits.
    pub limits: Limits,
}

fn invalid(message: impl Into<String>) -> RunError {
    RunError::InvalidArgument(message.into())
}

fn c_string(what: &str, value: impl Into<Vec<u8>>) -> Result<CString, RunError> {
    CString::new(value).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

/// A path from the request that must be absolute and free of `..`, so that
/// "inside the input root" can be decided from the text alone.
fn absolute_path(what: &str, value: &str) -> Result<PathBuf, RunError> {
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(format!("{what} {value:?} is not an absolute path")));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!("{what} {value:?} contains \"..\"")));
    }
    c_string(what, value)?;
    Ok(path.to_path_buf())
}

fn output_path(what: &str, value: &str) -> Result<Option<PathBuf>, RunError> {
    if value.is_empty() {
        return Ok(None);
    }
    absolute_path(what, value).map(Some)
}

fn timeout(value: Option<prost_types::Duration>) -> Result<Option<Duration>, RunError> {
    let Some(value) = value else { return Ok(None) };
    if value.seconds < 0 || value.nanos < 0 || value.nanos >= 1_000_000_000 {
        return Err(invalid(format!(
            "timeout {value:?} is negative or malformed"
        )));
    }
    let duration = Duration::new(value.seconds as u64, value.nanos as u32);
    Ok((!duration.is_zero()).then_some(duration))
}

fn environment(request: &RunRequest) -> Result<Vec<CString>, RunError> {
    request
        .environment_variables
        .iter()
        .map(|var| {
            if var.name.is_empty() || var.name.contains('=') {
                return Err(invalid(format!(
                    "environment variable name {:?} is empty or contains '='",
                    var.name
                )));
            }
            c_string(
                &format!("environment variable {:?}", var.name),
                format!("{}={}", var.name, var.value),
            )
        })
        .collect()
}

/// The request's `PATH`. If it is defined twice, the first wins, as with
/// glibc's `getenv` in the command itself.
fn path_variable(request: &RunRequest) -> Option<&str> {
    request
        .environment_variables
        .iter()
        .find(|var| var.name == "PATH")
        .map(|var| var.value.as_str())
}

fn check_directory(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err("not a directory".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The input root, checked; `None` when the request names none.
fn input_root(
    request: &RunRequest,
    working_directory: &Path,
    policy: CommandPolicy,
) -> Result<Option<PathBuf>, RunError> {
    if request.input_root_directory.is_empty() {
        if policy.chroot_into_input_root {
            return Err(invalid(
                "input_root_directory is required: this runner chroots commands into it",
            ));
        }
        return Ok(None);
    }
    let root = absolute_path("input_root_directory", &request.input_root_directory)?;
    if !working_directory.starts_with(&root) {
        return Err(invalid(format!(
            "working_directory {working_directory:?} is not inside input_root_directory {root:?}"
        )));
    }
    check_directory(&root).map_err(|reason| RunError::InputRoot {
        path: root.clone(),
        reason,
    })?;
    Ok(Some(root))
}

/// The uid and gid `request` runs as: the configured ones unless it asks
/// for others, which must then be the configured ones again or lie in the
/// policy's `slot_ids`. Never 0, unless root is the configured user.
pub fn command_credentials(
    request: &RunRequest,
    policy: CommandPolicy,
) -> Result<Credentials, RunError> {
    let check = |kind: &'static str, asked: Option<u32>, configured: u32| match asked {
        None => Ok(configured),
        Some(id) if id == configured => Ok(id),
        Some(id) if id != 0 && policy.slot_ids.contains(id) => Ok(id),
        Some(id) => Err(RunError::IdNotAllowed {
            kind,
            id,
            allowed: match policy.slot_ids.count {
                0 => format!("only {kind} {configured}, its own"),
                _ => format!(
                    "{kind} {configured} (its configured {}) or slot_ids {}",
                    if kind == "uid" { "user" } else { "group" },
                    policy.slot_ids
                ),
            },
        }),
    };
    Ok(Credentials {
        uid: check("uid", request.uid, policy.credentials.uid)?,
        gid: check("gid", request.gid, policy.credentials.gid)?,
    })
}

/// Whether `path` is a directory itself, not a symlink to one: a mount
/// target inside an input root, which the client controls.
fn is_real_directory(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
}

fn path_c_string(what: &str, path: &Path) -> Result<CString, RunError> {
    c_string(what, path.as_os_str().as_encoded_bytes())
}

/// Where the command's fresh /proc and its temporary directory go, checked.
/// With a chroot they go inside the input root, and only onto directories
/// that are there already: the runner never creates anything in a root the
/// client built, and a missing `proc` there just means no /proc.
fn sandbox(
    request: &RunRequest,
    chroot: Option<&Path>,
    policy: CommandPolicy,
) -> Result<Option<SandboxSpec>, RunError> {
    let temporary_directory = match request.temporary_directory.as_str() {
        "" => None,
        value => {
            let path = absolute_path("temporary_directory", value)?;
            check_directory(&path).map_err(|reason| RunError::TemporaryDirectory {
                path: path.clone(),
                reason,
            })?;
            Some(path)
        }
    };
    if !policy.mount_and_network_namespaces {
        return match temporary_directory {
            Some(path) => Err(RunError::TemporaryDirectory {
                path,
                reason: "this runner gives commands no mount namespace \
                         (mount_and_network_namespaces = false), so it cannot give them a \
                         /tmp of their own"
                    .to_string(),
            }),
            None => Ok(None),
        };
    }
    let proc_target = match chroot {
        None => Some(PathBuf::from("/proc")),
        Some(root) => Some(root.join("proc")).filter(|path| is_real_directory(path)),
    };
    let kept_under_tmp = match (&temporary_directory, chroot) {
        (Some(source), None) => {
            let inside = request_root(request);
            entry_of_tmp(&inside)
                .map(|name| {
                    Ok::<_, RunError>((
                        path_c_string("input root", &Path::new("/tmp").join(name))?,
                        path_c_string("temporary_directory", &source.join(name))?,
                    ))
                })
                .transpose()?
        }
        _ => None,
    };
    let temporary_directory = match temporary_directory {
        None => None,
        Some(source) => {
            let target = match chroot {
                None => PathBuf::from("/tmp"),
                Some(root) => root.join("tmp"),
            };
            if chroot.is_some() && !is_real_directory(&target) {
                return Err(RunError::TemporaryDirectory {
                    path: source,
                    reason: format!("the input root has no directory {target:?} to mount it on"),
                });
            }
            Some((
                path_c_string("temporary_directory", &source)?,
                path_c_string("temporary directory target", &target)?,
            ))
        }
    };
    Ok(Some(SandboxSpec {
        proc_target: proc_target
            .map(|path| path_c_string("proc target", &path))
            .transpose()?,
        temporary_directory,
        kept_under_tmp,
        shm_target: (chroot.is_none() && is_real_directory(Path::new("/dev/shm")))
            .then(|| c"/dev/shm".to_owned()),
        shm_options: shm_options(policy.limits.max_shared_memory_bytes),
        mqueue_target: (chroot.is_none() && is_real_directory(Path::new("/dev/mqueue")))
            .then(|| c"/dev/mqueue".to_owned()),
        private_network: !request.host_network,
    }))
}

/// The tmpfs options of a command's /dev/shm: at most `bytes` of memory,
/// and as many files as 4 KiB pages of it (at least 1,024).
fn shm_options(bytes: u64) -> CString {
    let inodes = (bytes / 4096).max(1024);
    CString::new(format!("size={bytes},nr_inodes={inodes},mode=1777"))
        .expect("digits and letters hold no NUL")
}

/// The directory the command works in: its input root, or its working
/// directory when it has none.
fn request_root(request: &RunRequest) -> PathBuf {
    match request.input_root_directory.as_str() {
        "" => PathBuf::from(&request.working_directory),
        root => PathBuf::from(root),
    }
}

/// The name of the entry of /tmp that `path` lies in, if it lies below
/// /tmp (the worker's build directory may be there).
fn entry_of_tmp(path: &Path) -> Option<&std::ffi::OsStr> {
    match path.strip_prefix("/tmp").ok()?.components().next()? {
        Component::Normal(name) => Some(name),
        _ => None,
    }
}

impl CommandSpec {
    /// Validates `request` against the filesystem and `policy`. Touches the
    /// filesystem (which may be a FUSE mount), so call it off the async
    /// executor.
    pub fn from_request(request: &RunRequest, policy: CommandPolicy) -> Result<Self, RunError> {
        let Some(program_name) = request.arguments.first() else {
            return Err(invalid("arguments is empty: there is no program to run"));
        };
        if program_name.is_empty() {
            return Err(invalid("arguments[0] is empty"));
        }
        let arguments = request
            .arguments
            .iter()
            .enumerate()
            .map(|(i, arg)| c_string(&format!("arguments[{i}]"), arg.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let environment = environment(request)?;
        let working_directory = absolute_path("working_directory", &request.working_directory)?;
        let root = input_root(request, &working_directory, policy)?;
        check_directory(&working_directory).map_err(|reason| RunError::WorkingDirectory {
            path: working_directory.clone(),
            reason,
        })?;

        let chroot = root.as_deref().filter(|_| policy.chroot_into_input_root);
        let inner_working_directory = match chroot {
            Some(root) => Path::new("/").join(
                working_directory
                    .strip_prefix(root)
                    .expect("checked to lie inside the input root"),
            ),
            None => working_directory.clone(),
        };
        let view = CommandView {
            root: chroot,
            working_directory: &inner_working_directory,
        };
        let credentials = command_credentials(request, policy)?;
        let sandbox = sandbox(request, chroot, policy)?;
        let program = resolve_program(program_name, path_variable(request), view, credentials)?;

        Ok(CommandSpec {
            program_name: program_name.clone(),
            program: c_string(
                "program path",
                program.into_os_string().into_encoded_bytes(),
            )?,
            arguments,
            environment,
            chroot: chroot
                .map(|root| c_string("input_root_directory", root.as_os_str().as_encoded_bytes()))
                .transpose()?,
            working_directory: c_string(
                "working_directory",
                inner_working_directory
                    .into_os_string()
                    .into_encoded_bytes(),
            )?,
            stdout_path: output_path("stdout_path", &request.stdout_path)?,
            stderr_path: output_path("stderr_path", &request.stderr_path)?,
            timeout: timeout(request.timeout)?,
            credentials,
            own_user_namespace: policy.own_user_namespace,
            sandbox,
            limits: policy.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazybarn_proto::runner::EnvironmentVariable;

    const POLICY: CommandPolicy = CommandPolicy {
        credentials: Credentials {
            uid: 65534,
            gid: 65534,
        },
        chroot_into_input_root: false,
        own_user_namespace: false,
        slot_ids: IdRange {
            first: 60000,
            count: 10,
        },
        mount_and_network_namespaces: true,
        limits: Limits {
            max_processes: 10,
            max_open_files: 10,
            max_file_size_bytes: 10,
            max_shared_memory_bytes: 10,
        },
    };

    fn request(arguments: &[&str]) -> RunRequest {
        RunRequest {
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
            working_directory: "/tmp".to_string(),
            ..Default::default()
        }
    }

    fn code(request: &RunRequest, policy: CommandPolicy) -> tonic::Code {
        CommandSpec::from_request(request, policy)
            .expect_err("request must be refused")
            .code()
    }

    #[test]
    fn malformed_requests_are_invalid_arguments() {
        use tonic::Code::InvalidArgument;
        assert_eq!(code(&request(&[]), POLICY), InvalidArgument);
        assert_eq!(code(&request(&[""]), POLICY), InvalidArgument);
        assert_eq!(code(&request(&["sh", "a\0b"]), POLICY), InvalidArgument);
        let mut req = request(&["sh"]);
        req.working_directory = "tmp".to_string();
        assert_eq!(code(&req, POLICY), InvalidArgument);
        let mut req = request(&["sh"]);
        req.working_directory = "/tmp/../etc".to_string();
        assert_eq!(code(&req, POLICY), InvalidArgument);
        let mut req = request(&["sh"]);
        req.input_root_directory = "/usr".to_string();
        assert_eq!(code(&req, POLICY), InvalidArgument);
        let mut req = request(&["sh"]);
        req.environment_variables.push(EnvironmentVariable {
            name: "A=B".to_string(),
            value: String::new(),
        });
        assert_eq!(code(&req, POLICY), InvalidArgument);
        let mut req = request(&["sh"]);
        req.timeout = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        assert_eq!(code(&req, POLICY), InvalidArgument);
        let chroot = CommandPolicy {
            chroot_into_input_root: true,
            ..POLICY
        };
        assert_eq!(code(&request(&["sh"]), chroot), InvalidArgument);
    }

    #[test]
    fn chroot_maps_the_working_directory_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("work/sub")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("bin")).expect("mkdir");
        std::fs::copy("/bin/true", root.path().join("bin/true")).expect("copy true");
        let mut req = request(&["true"]);
        req.input_root_directory = root.path().display().to_string();
        req.working_directory = root.path().join("work/sub").display().to_string();
        req.environment_variables.push(EnvironmentVariable {
            name: "PATH".to_string(),
            value: "/bin".to_string(),
        });
        let policy = CommandPolicy {
            chroot_into_input_root: true,
            ..POLICY
        };
        let spec = CommandSpec::from_request(&req, policy).expect("valid");
        assert_eq!(spec.working_directory.to_bytes(), b"/work/sub");
        assert_eq!(spec.program.to_bytes(), b"/bin/true");
        assert_eq!(
            spec.chroot.as_ref().map(|c| c.to_bytes()),
            Some(root.path().as_os_str().as_encoded_bytes())
        );
        assert_eq!(spec.timeout, None);
        // No /proc in the root: none is mounted. A symlink is not one.
        let sandbox = spec.sandbox.expect("namespaces on");
        assert_eq!(sandbox.proc_target, None);
        std::os::unix::fs::symlink("/proc", root.path().join("proc")).expect("symlink");
        let spec = CommandSpec::from_request(&req, policy).expect("valid");
        assert_eq!(spec.sandbox.expect("on").proc_target, None);
        req.temporary_directory = "/tmp".to_string();
        assert_eq!(
            code(&req, policy),
            tonic::Code::FailedPrecondition,
            "no /tmp"
        );
        std::fs::remove_file(root.path().join("proc")).expect("rm");
        std::fs::create_dir(root.path().join("proc")).expect("mkdir");
        std::fs::create_dir(root.path().join("tmp")).expect("mkdir");
        let sandbox = CommandSpec::from_request(&req, policy)
            .expect("valid")
            .sandbox
            .expect("on");
        let inside = |name: &str| path_c_string("", &root.path().join(name)).expect("C string");
        assert_eq!(sandbox.proc_target, Some(inside("proc")));
        assert_eq!(
            sandbox.temporary_directory,
            Some((c"/tmp".to_owned(), inside("tmp")))
        );
    }

    fn with_ids(uid: Option<u32>, gid: Option<u32>) -> RunRequest {
        RunRequest {
            uid,
            gid,
            ..request(&["sh"])
        }
    }

    #[test]
    fn requested_ids_must_be_configured_or_in_the_slot_range() {
        let ids = |uid, gid| command_credentials(&with_ids(uid, gid), POLICY);
        assert_eq!(ids(None, None).expect("defaults"), POLICY.credentials);
        assert_eq!(
            ids(Some(60009), Some(65534)).expect("in range, configured"),
            Credentials {
                uid: 60009,
                gid: 65534
            }
        );
        for (uid, gid, named) in [
            (Some(0), None, "uid 0"),
            (None, Some(0), "gid 0"),
            (Some(60010), None, "uid 60010"),
            (Some(59999), None, "uid 59999"),
        ] {
            let err = ids(uid, gid).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            let message = err.to_string();
            assert!(message.contains(named), "{message}");
            assert!(message.contains("60000..=60009"), "{message}");
        }
        let root = CommandPolicy {
            credentials: Credentials { uid: 0, gid: 0 },
            ..POLICY
        };
        assert!(command_credentials(&with_ids(Some(0), Some(0)), root).is_ok());
        let own_only = CommandPolicy {
            slot_ids: IdRange::EMPTY,
            ..POLICY
        };
        let err = command_credentials(&with_ids(Some(60001), None), own_only).expect_err("own");
        assert!(err.to_string().contains("only uid 65534"), "{err}");
    }

    #[test]
    fn temporary_directory_is_checked() {
        let mut req = request(&["sh"]);
        req.temporary_directory = "tmp".to_string();
        assert_eq!(code(&req, POLICY), tonic::Code::InvalidArgument);
        req.temporary_directory = "/tmp/../etc".to_string();
        assert_eq!(code(&req, POLICY), tonic::Code::InvalidArgument);
        req.temporary_directory = "/nonexistent-lazybarn-tmp".to_string();
        assert_eq!(code(&req, POLICY), tonic::Code::FailedPrecondition);
        req.temporary_directory = "/tmp".to_string();
        let spec = CommandSpec::from_request(&req, POLICY).expect("valid");
        let sandbox = spec.sandbox.expect("namespaces on");
        assert_eq!(
            sandbox.temporary_directory,
            Some((c"/tmp".to_owned(), c"/tmp".to_owned()))
        );
        assert_eq!(sandbox.proc_target, Some(c"/proc".to_owned()));
        assert_eq!(
            sandbox.kept_under_tmp, None,
            "the working directory is /tmp"
        );
        assert!(sandbox.private_network);
        let work = tempfile::tempdir_in("/tmp").expect("tempdir");
        std::fs::create_dir(work.path().join("tmp")).expect("mkdir");
        req.working_directory = work.path().display().to_string();
        req.temporary_directory = work.path().join("tmp").display().to_string();
        let spec = CommandSpec::from_request(&req, POLICY).expect("valid");
        let name = work.path().file_name().expect("a name");
        let (kept, mountpoint) = spec
            .sandbox
            .expect("on")
            .kept_under_tmp
            .expect("under /tmp");
        assert_eq!(kept.to_bytes(), work.path().as_os_str().as_encoded_bytes());
        let inside = work.path().join("tmp").join(name);
        assert_eq!(mountpoint.to_bytes(), inside.as_os_str().as_encoded_bytes());
        let off = CommandPolicy {
            mount_and_network_namespaces: false,
            ..POLICY
        };
        let err = CommandSpec::from_request(&req, off).expect_err("no mount namespace");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.to_string().contains("mount_and_network_namespaces"),
            "{err}"
        );
    }
}
