//! Running Bazel offline against a small C++ workspace.
//!
//! [`BazelWorkspace`] copies the workspace in `tests/bazel/workspace` into a
//! temporary directory and runs Bazel there with an output root of its own,
//! so tests running side by side never share a Bazel server or its caches.
//! Bazel 4 wants to download `rules_cc`, `rules_java` and
//! `remote_coverage_tools` even for a C++ build; the flags in
//! [`BazelWorkspace::offline_flags`] point those repositories at the small
//! stand-ins in `tests/bazel/overrides` instead (DEVELOPERS.md, "Bazel
//! offline", shows the same flags for use by hand).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

use crate::summary::ProcessSummary;

/// Environment variable naming the Bazel binary to run instead of `bazel`.
pub const BAZEL_ENV: &str = "LAZYBARN_BAZEL";

/// Where this crate keeps Bazel's inputs: the workspace and the overrides.
const BAZEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bazel");

/// The repositories Bazel would otherwise download, each overridden by the
/// directory of the same name under `tests/bazel/overrides`.
pub const OVERRIDDEN_REPOSITORIES: [&str; 3] = ["rules_cc", "rules_java", "remote_coverage_tools"];

/// Seconds an idle Bazel server lives: if a test dies before it can shut its
/// server down, the server still goes away on its own.
const MAX_IDLE_SECS: u32 = 300;

/// Bazel commands that accept build options, and so the offline flags.
const BUILD_COMMANDS: [&str; 6] = ["build", "test", "run", "info", "cquery", "aquery"];

/// The longest one Bazel command may take before it is killed, so a hung
/// server fails a test instead of stalling it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// How many bytes from the end of Bazel's stderr go into an error message.
const STDERR_TAIL_BYTES: usize = 6000;

/// A copy of a test workspace with a Bazel output root of its own. Dropping
/// it shuts the Bazel server down and removes both.
#[derive(Debug)]
pub struct BazelWorkspace {
    workspace: PathBuf,
    output_user_root: PathBuf,
    /// Holds both; removed on drop.
    _dir: TempDir,
}

/// What one Bazel command printed and how it exited.
#[derive(Debug)]
pub struct BazelOutput {
    /// The command line, for error messages.
    pub command: String,
    /// Bazel's exit status.
    pub status: ExitStatus,
    /// Standard output: program output for `bazel run`, values for `bazel info`.
    pub stdout: String,
    /// Standard error: Bazel's progress, its process summary and its errors.
    pub stderr: String,
}

impl BazelWorkspace {
    /// Copies the C++ workspace (a `cc_library`, a `cc_binary` using it and a
    /// `cc_test`) into a new temporary directory.
    pub fn cpp() -> Result<Self> {
        Self::copy_of("workspace")
    }

    /// Copies the workspace `tests/bazel/<name>` into a new temporary
    /// directory.
    pub fn copy_of(name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lazybarn-bazel-")
            .tempdir()
            .context("Failed to create a directory for Bazel")?;
        let workspace = dir.path().join("workspace");
        copy_tree(&Path::new(BAZEL_DIR).join(name), &workspace)?;
        let output_user_root = dir.path().join("output_user_root");
        Ok(Self {
            workspace,
            output_user_root,
            _dir: dir,
        })
    }

    /// The workspace directory (it holds `WORKSPACE`).
    pub fn workspace_dir(&self) -> &Path {
        &self.workspace
    }

    /// The directory Bazel keeps its server, outputs and caches in.
    pub fn output_user_root(&self) -> &Path {
        &self.output_user_root
    }

    /// Startup options: this workspace's output root, no rc files but the
    /// system one, and a server that does not outlive a crashed test for long.
    ///
    /// The system rc file stays: Debian's `/etc/bazel/bazelrc` sets the
    /// `--install_base` its `bazel` cannot start without.
    pub fn startup_options(&self) -> Vec<OsString> {
        let mut root = OsString::from("--output_user_root=");
        root.push(&self.output_user_root);
        vec![
            root,
            "--nohome_rc".into(),
            "--noworkspace_rc".into(),
            format!("--max_idle_secs={MAX_IDLE_SECS}").into(),
        ]
    }

    /// Build options every build, test and run gets: the local override
    /// repositories and plain, quiet output.
    pub fn offline_flags() -> Vec<String> {
        let overrides = Path::new(BAZEL_DIR).join("overrides");
        let mut flags: Vec<String> = OVERRIDDEN_REPOSITORIES
            .iter()
            .map(|name| {
                format!(
                    "--override_repository={name}={}",
                    overrides.join(name).display()
                )
            })
            .collect();
        flags.extend(
            [
                "--color=no",
                "--curses=no",
                // Debian's system rc turns sandbox debugging on, which floods
                // stderr with a page per action.
                "--nosandbox_debug",
                // No bazel-* convenience symlinks in the workspace.
                "--symlink_prefix=/",
            ]
            .map(String::from),
        );
        flags
    }

    /// Runs `bazel <command> <args>` in the workspace. Build-like commands
    /// get [`Self::offline_flags`] before `args`. A failing Bazel is not an
    /// error here; see [`BazelOutput::ensure_success`].
    pub fn run(&self, command: &str, args: &[&str]) -> Result<BazelOutput> {
        let mut process = Command::new(bazel_binary());
        process
            .current_dir(&self.workspace)
            .args(self.startup_options())
            .arg(command);
        if BUILD_COMMANDS.contains(&command) {
            process.args(Self::offline_flags());
        }
        process.args(args);
        let line = format!("{process:?}");
        let child = process
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("Failed to run {line}; is Bazel installed (scripts/install-deps)?")
            })?;
        let (status, stdout, stderr) = wait_with_timeout(child, COMMAND_TIMEOUT)
            .with_context(|| format!("Failed to run {line}"))?;
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let Some(status) = status else {
            let start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
            bail!(
                "{line} did not finish within {COMMAND_TIMEOUT:?}; killed it. End of its stderr:\n{}",
                String::from_utf8_lossy(&stderr.as_bytes()[start..])
            );
        };
        let output = BazelOutput {
            command: line,
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        };
        Ok(output)
    }

    /// The directory Bazel writes this workspace's outputs to (`bazel info
    /// bazel-bin`; there is no `bazel-bin` symlink).
    pub fn bazel_bin(&self) -> Result<PathBuf> {
        let info = self.run("info", &["bazel-bin"])?;
        Ok(PathBuf::from(info.ensure_success()?.stdout.trim()))
    }

    /// Stops this workspace's Bazel server.
    pub fn shutdown(&self) -> Result<()> {
        self.run("shutdown", &[])?.ensure_success().map(|_| ())
    }
}

impl Drop for BazelWorkspace {
    fn drop(&mut self) {
        if self.output_user_root.exists() {
            let _ = self.shutdown();
            // Bazel leaves parts of its output tree read-only, which would
            // stop a user other than root from removing it.
            let _ = Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(&self.output_user_root)
                .status();
        }
    }
}

impl BazelOutput {
    /// Returns `self` if Bazel succeeded, else an error with the command and
    /// the end of its stderr.
    pub fn ensure_success(&self) -> Result<&Self> {
        if !self.status.success() {
            bail!(
                "{} failed with {}; end of its stderr:\n{}",
                self.command,
                self.status,
                self.stderr_tail()
            );
        }
        Ok(self)
    }

    /// The process summary Bazel printed last, or an error if it printed none.
    pub fn summary(&self) -> Result<ProcessSummary> {
        ProcessSummary::find_last(&self.stderr).with_context(|| {
            format!(
                "{} printed no \"N processes: ...\" line; end of its stderr:\n{}",
                self.command,
                self.stderr_tail()
            )
        })
    }

    /// Checks that Bazel succeeded and that every action but internal ones,
    /// at least `at_least` of them, was a remote cache hit; `when` says which
    /// build this was, for the error message.
    pub fn ensure_all_remote_cache_hits(&self, at_least: u64, when: &str) -> Result<()> {
        let summary = self.ensure_success()?.summary()?;
        ensure!(
            summary.executed() == 0
                && summary.remote_cache_hits() == summary.non_internal()
                && summary.remote_cache_hits() >= at_least,
            "{when}, every action should be a remote cache hit: {summary:?}\n\
             end of Bazel's stderr:\n{}",
            self.stderr_tail()
        );
        Ok(())
    }

    /// The end of Bazel's stderr, for error messages.
    pub fn stderr_tail(&self) -> &str {
        let mut start = self.stderr.len().saturating_sub(STDERR_TAIL_BYTES);
        while !self.stderr.is_char_boundary(start) {
            start += 1;
        }
        &self.stderr[start..]
    }
}

/// Waits for `child` while threads collect its stdout and stderr; kills it
/// after `timeout` (the status is then None). Killing the client makes the
/// Bazel server cancel the command.
fn wait_with_timeout(
    mut child: Child,
    timeout: Duration,
) -> std::io::Result<(Option<ExitStatus>, Vec<u8>, Vec<u8>)> {
    let stdout = collect(child.stdout.take().expect("stdout was configured as piped"));
    let stderr = collect(child.stderr.take().expect("stderr was configured as piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let joined = |reader: thread::JoinHandle<Vec<u8>>| reader.join().unwrap_or_default();
    Ok((status, joined(stdout), joined(stderr)))
}

/// Reads `stream` to its end on a thread of its own.
fn collect(mut stream: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        bytes
    })
}

/// The Bazel binary: `$LAZYBARN_BAZEL` if set, else `bazel` on the PATH.
fn bazel_binary() -> OsString {
    env::var_os(BAZEL_ENV).unwrap_or_else(|| "bazel".into())
}

/// Copies the directory tree at `from` to `to`, which must not exist yet.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir(to).with_context(|| format!("Failed to create {}", to.display()))?;
    let entries =
        fs::read_dir(from).with_context(|| format!("Failed to list {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("Failed to list {}", from.display()))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            fs::copy(&source, &target).with_context(|| {
                format!(
                    "Failed to copy {} to {}",
                    source.display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}
