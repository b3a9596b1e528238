//! Running one request to its end: validate, start, wait with a timeout,
//! and describe how the command ended.

use std::time::Duration;

use lazybarn_proto::runner::{RunRequest, RunResponse};

use crate::child_linux::SetupStep;
use crate::error::RunError;
use crate::process_tree::{Outcome, ProcessTree, TreeExit};
use crate::request::{CommandPolicy, CommandSpec};
use crate::resource_usage::{StartTime, resource_usage};
use crate::spawn_linux::spawn;

/// Runs `request` under `policy` and returns how the command ended.
///
/// When this future is dropped before it completes (the client cancelled the
/// RPC or went away), the command's process tree is killed.
pub async fn run_command(
    request: RunRequest,
    policy: CommandPolicy,
) -> Result<RunResponse, RunError> {
    // Validation and the spawn touch the filesystem, possibly a FUSE mount
    // whose lookups fetch from the network: keep them off the executor. If
    // this future is dropped meanwhile, the tree returned by the abandoned
    // task is dropped too, which kills it.
    let (spec, mut tree, start) = tokio::task::spawn_blocking(move || {
        let spec = CommandSpec::from_request(&request, policy)?;
        let start = StartTime::now();
        let tree = spawn(&spec)?;
        Ok::<_, RunError>((spec, tree, start))
    })
    .await
    .map_err(|e| RunError::Process {
        action: "prepare the command",
        source: std::io::Error::other(e),
    })??;

    let (exit, timed_out) = wait_with_timeout(&mut tree, spec.timeout).await?;
    let (exit_code, signal) = match exit.outcome {
        Outcome::Command(status) | Outcome::Killed(status) => exit_code_and_signal(status),
        Outcome::SetupFailed { step, errno } => return Err(setup_error(&spec, step, errno)),
    };
    let response = RunResponse {
        exit_code,
        signal,
        timed_out,
        resource_usage: Some(resource_usage(&exit.rusage, start)),
    };
    tracing::debug!(
        program = spec.program_name,
        exit_code,
        signal,
        timed_out,
        "command finished"
    );
    Ok(response)
}

async fn wait_with_timeout(
    tree: &mut ProcessTree,
    timeout: Option<Duration>,
) -> Result<(TreeExit, bool), RunError> {
    let Some(timeout) = timeout else {
        return Ok((tree.wait().await?, false));
    };
    match tokio::time::timeout(timeout, tree.wait()).await {
        Ok(exit) => Ok((exit?, false)),
        Err(_elapsed) => {
            tree.kill().map_err(|source| RunError::Process {
                action: "kill the command on timeout",
                source,
            })?;
            let exit = tree.wait().await?;
            // The command may have finished on its own in the meantime.
            let timed_out = !matches!(exit.outcome, Outcome::Command(_));
            Ok((exit, timed_out))
        }
    }
}

/// The protocol's exit code and signal for a wait status: a signal `n`
/// gives exit code `128 + n`, as a shell reports it.
fn exit_code_and_signal(status: i32) -> (i32, i32) {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        (128 + signal, signal)
    } else {
        (libc::WEXITSTATUS(status), 0)
    }
}

fn setup_error(spec: &CommandSpec, step: SetupStep, errno: i32) -> RunError {
    let source = std::io::Error::from_raw_os_error(errno);
    match step {
        SetupStep::Exec => RunError::Exec {
            program: spec.program_name.clone(),
            hint: match errno {
                // The runner found the file before forking.
                libc::ENOENT => " (the file exists: its #! interpreter or ELF loader is missing)",
                libc::ENOEXEC => " (not a binary this machine runs, and no #! line)",
                _ => "",
            },
            source,
        },
        SetupStep::Chdir => RunError::WorkingDirectory {
            path: String::from_utf8_lossy(spec.working_directory.to_bytes())
                .into_owned()
                .into(),
            reason: source.to_string(),
        },
        SetupStep::Chroot => RunError::InputRoot {
            path: spec
                .chroot
                .as_ref()
                .map(|c| String::from_utf8_lossy(c.to_bytes()).into_owned())
                .unwrap_or_default()
                .into(),
            reason: source.to_string(),
        },
        SetupStep::MountTemporaryDirectory => RunError::TemporaryDirectory {
            path: spec
                .sandbox
                .as_ref()
                .and_then(|sandbox| sandbox.temporary_directory.as_ref())
                .map(|(source, _)| String::from_utf8_lossy(source.to_bytes()).into_owned())
                .unwrap_or_default()
                .into(),
            reason: format!("cannot bind-mount it on /tmp: {source}"),
        },
        SetupStep::Fork => RunError::Process {
            action: "create the command's process",
            source,
        },
        step => RunError::Setup {
            step: step.name(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_shell_exit_codes() {
        assert_eq!(exit_code_and_signal(3 << 8), (3, 0));
        assert_eq!(exit_code_and_signal(libc::SIGKILL), (137, 9));
        assert_eq!(exit_code_and_signal(libc::SIGSEGV | 0x80), (139, 11));
    }
}
