//! `lazybarn-runner`: the runner daemon's command line. Reads the
//! configuration (a TOML file, flags, or both: flags win) and serves until
//! SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lazybarn_runner::{RunnerConfig, RunnerDaemon};
use tokio::signal::unix::{SignalKind, signal};

/// Runs build commands for a Lazybarn worker, as an unprivileged user.
#[derive(Debug, Parser)]
#[command(name = "lazybarn-runner", version)]
struct Args {
    /// TOML configuration file (see `RunnerConfig`).
    #[arg(long)]
    config: Option<PathBuf>,

    /// Unix socket to listen on.
    #[arg(long)]
    socket: Option<PathBuf>,

    /// Group whose members may connect besides root.
    #[arg(long)]
    socket_group: Option<String>,

    /// User (name or number) that commands run as [default: nobody].
    #[arg(long)]
    user: Option<String>,

    /// Group (name or number) that commands run as [default: the user's primary group].
    #[arg(long)]
    group: Option<String>,

    /// Chroot every command into its request's input root.
    #[arg(long)]
    chroot_into_input_root: bool,
}

impl Args {
    fn into_config(self) -> Result<RunnerConfig> {
        let mut config = match (&self.config, &self.socket) {
            (Some(path), _) => RunnerConfig::from_file(path)?,
            (None, Some(socket)) => RunnerConfig::new(socket),
            (None, None) => anyhow::bail!("give --config or --socket"),
        };
        if let Some(socket) = self.socket {
            config.socket_path = socket;
        }
        if self.socket_group.is_some() {
            config.socket_group = self.socket_group;
        }
        if let Some(user) = self.user {
            config.user = user;
        }
        if self.group.is_some() {
            config.group = self.group;
        }
        config.chroot_into_input_root |= self.chroot_into_input_root;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Args::parse().into_config()?;
    let daemon = RunnerDaemon::bind(&config).context("Failed to start the runner")?;
    let mut terminate = signal(SignalKind::terminate()).context("Failed to handle SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down; running commands are killed");
    };
    daemon.serve(shutdown).await.context("Runner failed")?;
    // Returning shuts the runtime down, which drops every in-flight Run and
    // kills its command.
    Ok(())
}
