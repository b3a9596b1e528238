//! Wiring the runner daemon together: configuration to policy, socket and
//! gRPC server.

use std::future::Future;
use std::path::Path;

use lazybarn_proto::runner::runner_server::RunnerServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::{Credentials, IdRange, Limits, RunnerConfig};
use crate::error::ServeError;
use crate::request::CommandPolicy;
use crate::service::RunnerService;
use crate::socket::{SocketFile, bind};
use tokio::net::UnixListener;

/// A runner bound to its socket, ready to serve.
#[derive(Debug)]
pub struct RunnerDaemon {
    listener: UnixListener,
    socket: SocketFile,
    service: RunnerService,
}

impl RunnerDaemon {
    /// Checks the configuration and privileges and binds the socket (after
    /// removing a stale one). Once this returns, clients can connect. Must be
    /// called within a tokio runtime.
    pub fn bind(config: &RunnerConfig) -> Result<RunnerDaemon, ServeError> {
        let policy = command_policy(config)?;
        let (listener, socket) = bind(&config.socket_path, config.socket_gid()?)?;
        tracing::info!(
            socket = ?config.socket_path,
            uid = policy.credentials.uid,
            gid = policy.credentials.gid,
            chroot = policy.chroot_into_input_root,
            own_user_namespace = policy.own_user_namespace,
            slot_ids = %policy.slot_ids,
            mount_and_network_namespaces = policy.mount_and_network_namespaces,
            limits = ?policy.limits,
            "runner listening"
        );
        Ok(RunnerDaemon {
            listener,
            socket,
            service: RunnerService::new(policy),
        })
    }

    /// The path clients connect to.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Serves until `shutdown` completes, then stops accepting connections
    /// and removes the socket file. Runs still in flight go on as tasks of
    /// the runtime; shutting the runtime down drops them, which kills their
    /// commands.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let RunnerDaemon {
            listener,
            socket,
            service,
        } = self;
        let server = tonic::transport::Server::builder()
            .add_service(RunnerServer::new(service))
            .serve_with_incoming(UnixListenerStream::new(listener));
        let result = tokio::select! {
            result = server => result.map_err(ServeError::from),
            () = shutdown => Ok(()),
        };
        socket.remove_file();
        result
    }
}

/// The policy `config` asks for, if this process can carry it out: what
/// [`RunnerDaemon::bind`] serves with, public for benchmarks and embedders
/// that call [`run_command`](crate::execution::run_command) directly. Root can
/// run commands as any user; any other user only as itself (so it accepts
/// no `slot_ids`), each command in a user namespace of its own, and without
/// chroot.
pub fn command_policy(config: &RunnerConfig) -> Result<CommandPolicy, ServeError> {
    let credentials = config.credentials()?;
    config.slot_ids.validate()?;
    config.limits.validate()?;
    let root = nix::unistd::geteuid().is_root();
    let policy = CommandPolicy {
        credentials,
        chroot_into_input_root: config.chroot_into_input_root,
        own_user_namespace: false,
        slot_ids: config.slot_ids,
        mount_and_network_namespaces: config.mount_and_network_namespaces,
        limits: limits_within_reach(config.limits, may_raise_hard_limits()),
    };
    if root {
        return Ok(policy);
    }
    let own = Credentials {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    if credentials != own || config.chroot_into_input_root {
        return Err(ServeError::NotRoot {
            own,
            requested: credentials,
            chroot: config.chroot_into_input_root,
        });
    }
    if !user_namespaces_allowed() {
        return Err(ServeError::NoUserNamespaces);
    }
    Ok(CommandPolicy {
        chroot_into_input_root: false,
        own_user_namespace: true,
        slot_ids: IdRange::EMPTY,
        ..policy
    })
}

/// Whether this process may raise a hard resource limit above its own:
/// only with `CAP_SYS_RESOURCE` in effect. Root alone is not enough; a
/// container or a systemd unit commonly drops that capability.
fn may_raise_hard_limits() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|effective| effective & (1 << CAP_SYS_RESOURCE) != 0)
}

/// `limits`, each lowered to what this runner may set: without
/// `CAP_SYS_RESOURCE` it cannot raise a hard limit above its own (a user
/// namespace does not change that), and nobody can raise `RLIMIT_NOFILE`
/// above `fs.nr_open`.
fn limits_within_reach(limits: Limits, may_raise: bool) -> Limits {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let lower = |name: &str, resource: libc::__rlimit_resource_t, value: u64| {
        let own = if may_raise {
            None
        } else {
            own_hard_limit(resource)
        };
        let system = if resource == libc::RLIMIT_NOFILE {
            nr_open
        } else {
            None
        };
        let ceiling = [own, system].into_iter().flatten().min();
        match ceiling {
            Some(ceiling) if ceiling < value => {
                tracing::warn!(
                    limit = name,
                    configured = value,
                    used = ceiling,
                    "lowered a command limit to the most this runner may set"
                );
                ceiling
            }
            _ => value,
        }
    };
    Limits {
        max_processes: lower("max_processes", libc::RLIMIT_NPROC, limits.max_processes),
        max_open_files: lower("max_open_files", libc::RLIMIT_NOFILE, limits.max_open_files),
        max_file_size_bytes: lower(
            "max_file_size_bytes",
            libc::RLIMIT_FSIZE,
            limits.max_file_size_bytes,
        ),
        max_shared_memory_bytes: limits.max_shared_memory_bytes,
    }
}

/// This process's hard limit on `resource`; `None` if unlimited or unknown.
fn own_hard_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut limit = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit64 writes one rlimit64 to a valid pointer.
    let result = unsafe { libc::getrlimit64(resource, &mut limit) };
    (result == 0 && limit.rlim_max != libc::RLIM64_INFINITY).then_some(limit.rlim_max)
}

/// Whether this kernel lets an unprivileged user create user namespaces, as
/// far as its settings tell (a seccomp filter may still refuse).
fn user_namespaces_allowed() -> bool {
    let setting = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    // Debian's own switch, on kernels that have it; then the general limit.
    setting("/proc/sys/kernel/unprivileged_userns_clone") != Some(0)
        && setting("/proc/sys/user/max_user_namespaces") != Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stay_within_the_runners_own_unless_it_may_raise_them() {
        let own = own_hard_limit(libc::RLIMIT_NOFILE).expect("open files are limited");
        let asked = Limits {
            max_processes: 1,
            max_open_files: own + 1,
            max_file_size_bytes: 1,
            ..Limits::default()
        };
        let lowered = limits_within_reach(asked, false);
        assert_eq!(lowered.max_open_files, own, "without CAP_SYS_RESOURCE");
        assert_eq!((lowered.max_processes, lowered.max_file_size_bytes), (1, 1));
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .expect("nr_open")
            .trim()
            .parse()
            .expect("a number");
        if own < nr_open {
            let kept = limits_within_reach(asked, true);
            assert_eq!(kept.max_open_files, own + 1, "with CAP_SYS_RESOURCE");
        }
    }
}
