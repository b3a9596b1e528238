//! The runner's error types, each of which maps to the gRPC status code the
//! runner protocol documents for it.

use std::io;
use std::path::PathBuf;

use tonic::{Code, Status};

use crate::config::Credentials;

/// Why a `Run` request could not be carried out.
///
/// A command that ran and failed is not an error: it is a `RunResponse`
/// with a non-zero exit code. These are the cases where no command ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request is malformed, whatever the filesystem holds.
    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// The working directory is missing or not a directory.
    #[error("working directory {path:?} is not usable: {reason}")]
    WorkingDirectory {
        /// The directory as the request named it.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The input root is missing, not a directory, or cannot be entered.
    #[error("input root {path:?} is not usable: {reason}")]
    InputRoot {
        /// The input root as the request named it.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The request's `temporary_directory` cannot be used.
    #[error("temporary directory {path:?} is not usable: {reason}")]
    TemporaryDirectory {
        /// The directory as the request named it.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The request asks for a uid or gid this runner does not allow.
    #[error("{kind} {id} is not allowed: this runner runs commands as {allowed}")]
    IdNotAllowed {
        /// "uid" or "gid".
        kind: &'static str,
        /// The id the request asked for.
        id: u32,
        /// What the runner allows, for the message.
        allowed: String,
    },

    /// The file for standard output or standard error cannot be created.
    #[error("cannot create output file {path:?}: {source}")]
    OutputFile {
        /// The file as the request named it.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },

    /// `arguments[0]` names no existing file.
    #[error("program {program:?} not found ({looked_in})")]
    ProgramNotFound {
        /// `arguments[0]` as the request gave it.
        program: String,
        /// Where the runner looked, for the message.
        looked_in: String,
    },

    /// `arguments[0]` exists but the command's user may not execute it.
    #[error("program {program:?} ({path:?}) is not executable by uid {uid}: {reason}")]
    ProgramNotExecutable {
        /// `arguments[0]` as the request gave it.
        program: String,
        /// The file it resolved to.
        path: PathBuf,
        /// The uid commands run as.
        uid: u32,
        /// What is wrong with it.
        reason: String,
    },

    /// The kernel refused to execute the program (`execve` failed).
    #[error("cannot execute program {program:?}: {source}{hint}")]
    Exec {
        /// `arguments[0]` as the request gave it.
        program: String,
        /// The error `execve` returned.
        source: io::Error,
        /// What the error likely means here, or empty.
        hint: &'static str,
    },

    /// Setting up the command's process failed before `execve`.
    #[error("cannot set up the command's process ({step}): {source}")]
    Setup {
        /// The step that failed, e.g. "chroot" or "setuid".
        step: &'static str,
        /// The error the step returned.
        source: io::Error,
    },

    /// The runner could not create or wait for the command's processes.
    #[error("cannot {action}: {source}")]
    Process {
        /// What the runner was doing, e.g. "create the process".
        action: &'static str,
        /// The error from the kernel.
        source: io::Error,
    },
}

impl RunError {
    /// The gRPC status code the runner protocol assigns to this error.
    pub fn code(&self) -> Code {
        match self {
            RunError::InvalidArgument(_) => Code::InvalidArgument,
            RunError::WorkingDirectory { .. }
            | RunError::InputRoot { .. }
            | RunError::TemporaryDirectory { .. }
            | RunError::OutputFile { .. } => Code::FailedPrecondition,
            RunError::ProgramNotFound { .. } => Code::NotFound,
            RunError::ProgramNotExecutable { .. } | RunError::IdNotAllowed { .. } => {
                Code::PermissionDenied
            }
            RunError::Exec { source, .. } => exec_error_code(source),
            RunError::Setup { .. } => Code::Internal,
            RunError::Process { source, .. } => match source.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOMEM) => Code::ResourceExhausted,
                _ => Code::Internal,
            },
        }
    }
}

fn exec_error_code(error: &io::Error) -> Code {
    match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => Code::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) => Code::PermissionDenied,
        Some(libc::ENOEXEC) | Some(libc::ELIBBAD) | Some(libc::ETXTBSY) => Code::FailedPrecondition,
        Some(libc::E2BIG) => Code::InvalidArgument,
        Some(libc::EAGAIN) | Some(libc::ENOMEM) => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

impl From<RunError> for Status {
    fn from(error: RunError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}

/// Why `CheckReadiness` reports the runner as not ready.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    /// The path in the request is not absolute.
    #[error("readiness path {0:?} is not absolute")]
    RelativePath(PathBuf),

    /// The path cannot be reached, is not a directory, or cannot be written.
    #[error("cannot {action} {path:?}: {source}")]
    Unreachable {
        /// What the runner tried, e.g. "create a file in".
        action: &'static str,
        /// The path from the request.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
}

impl From<ReadinessError> for Status {
    fn from(error: ReadinessError) -> Status {
        let code = match error {
            ReadinessError::RelativePath(_) => Code::InvalidArgument,
            ReadinessError::Unreachable { .. } => Code::FailedPrecondition,
        };
        Status::new(code, format!("Runner not ready: {error}"))
    }
}

/// Why the runner could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration names a user or group that does not exist, or is
    /// otherwise unusable.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The runner is not root and was asked for what only root can do.
    #[error(
        "the runner is not root, so it can only run commands as its own user (uid {}, gid {}) \
         and without chroot; it was configured for uid {}, gid {}{}. Run it as root, or set \
         user and group to its own",
        own.uid, own.gid, requested.uid, requested.gid,
        if *chroot { " with chroot_into_input_root" } else { "" }
    )]
    NotRoot {
        /// The runner's own user and group.
        own: Credentials,
        /// What the configuration asked for.
        requested: Credentials,
        /// Whether the configuration asked for chroot.
        chroot: bool,
    },

    /// The runner is not root and this kernel refuses it user namespaces.
    #[error(
        "the runner is not root and this kernel does not let other users create user \
         namespaces (kernel.unprivileged_userns_clone or user.max_user_namespaces is 0), so \
         it cannot give each command a PID namespace of its own; run it as root"
    )]
    NoUserNamespaces,

    /// Another runner is already listening on the socket path.
    #[error("socket {0:?} is in use by a live process")]
    SocketInUse(PathBuf),

    /// Something other than a socket is at the socket path.
    #[error("{0:?} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),

    /// A filesystem operation on the socket failed.
    #[error("cannot {action} socket {path:?}: {source}")]
    Socket {
        /// What the runner was doing, e.g. "bind".
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error from the kernel.
        source: io::Error,
    },

    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}
