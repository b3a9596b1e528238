//! `lazybarn scheduler`, `lazybarn storage` and `lazybarn runner`: the
//! pieces of a cluster one at a time, for deployments that run them on
//! different machines. Each takes the same configuration as its own binary.

use lazybarn_cas::config::{StorageOverrides, StorageServerConfig};
use lazybarn_cas::server::{self as storage_server, Storage};
use lazybarn_runner::{RunnerConfig, RunnerDaemon};
use lazybarn_scheduler::ServerConfig;
use lazybarn_scheduler::server::{self, Listeners};

use crate::cli::{RunnerArgs, SchedulerArgs, StorageArgs};
use crate::error::LazybarnError;
use crate::shutdown::ShutdownSignal;

/// Serves the scheduler, its storage services and its status page until
/// SIGINT or SIGTERM.
pub async fn scheduler(args: SchedulerArgs) -> Result<(), LazybarnError> {
    let mut signal = ShutdownSignal::install()?;
    let config = match &args.config {
        Some(path) => ServerConfig::load(path).map_err(LazybarnError::Config)?,
        None => ServerConfig::default(),
    };
    let metrics = lazybarn_scheduler::metrics::install_prometheus()?;
    let listeners = Listeners::bind(&config).await?;
    let grpc = local_addr(&listeners.grpc)?;
    if let Some(worker) = &listeners.worker {
        println!("lazybarn scheduler workers: grpc://{}", local_addr(worker)?);
    }
    println!("lazybarn status: http://{}", local_addr(&listeners.http)?);
    println!("lazybarn scheduler ready: grpc://{grpc}");
    server::run(config, listeners, Some(metrics), signal.recv()).await?;
    tracing::info!("lazybarn scheduler stopped");
    Ok(())
}

/// Serves the storage alone until SIGINT or SIGTERM.
pub async fn storage(args: StorageArgs) -> Result<(), LazybarnError> {
    let mut signal = ShutdownSignal::install()?;
    let overrides = StorageOverrides {
        listen: args.listen,
        data_dir: args.data_dir,
        max_size_bytes: args.max_size,
        max_batch_bytes: args.max_batch_size,
    };
    let config = StorageServerConfig::with_overrides(args.config.as_deref(), overrides)
        .map_err(LazybarnError::Config)?;
    let storage = Storage::open(
        config.data_dir(),
        config.max_size_bytes,
        config.max_batch_bytes,
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| LazybarnError::Startup(format!("listening on {}: {e}", config.listen)))?;
    println!("lazybarn storage ready: grpc://{}", local_addr(&listener)?);
    storage_server::serve(listener, storage.routes(), signal.recv()).await?;
    tracing::info!("lazybarn storage stopped");
    Ok(())
}

/// Serves the runner until SIGINT or SIGTERM; returning drops every
/// command still running, which kills it.
pub async fn runner(args: RunnerArgs) -> Result<(), LazybarnError> {
    let mut signal = ShutdownSignal::install()?;
    let config = runner_config(args)?;
    let daemon = RunnerDaemon::bind(&config)?;
    println!(
        "lazybarn runner ready: unix:{}",
        daemon.socket_path().display()
    );
    daemon.serve(signal.recv()).await?;
    tracing::info!("lazybarn runner stopped; running commands are killed");
    Ok(())
}

/// The runner's configuration: the file if given, then the flags over it.
fn runner_config(args: RunnerArgs) -> Result<RunnerConfig, LazybarnError> {
    let mut config = match (&args.config, &args.socket) {
        (Some(path), _) => RunnerConfig::from_file(path)?,
        (None, Some(socket)) => RunnerConfig::new(socket),
        (None, None) => {
            return Err(LazybarnError::Config(
                "lazybarn runner needs --config FILE or --socket PATH".to_string(),
            ));
        }
    };
    if let Some(socket) = args.socket {
        config.socket_path = socket;
    }
    if args.socket_group.is_some() {
        config.socket_group = args.socket_group;
    }
    if let Some(user) = args.user {
        config.user = user;
    }
    if args.group.is_some() {
        config.group = args.group;
    }
    config.chroot_into_input_root |= args.chroot_into_input_root;
    if let Some(range) = args.slot_ids {
        config.slot_ids = range;
    }
    Ok(config)
}

fn local_addr(listener: &tokio::net::TcpListener) -> Result<std::net::SocketAddr, LazybarnError> {
    listener
        .local_addr()
        .map_err(|e| LazybarnError::Startup(format!("reading the bound address: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(config: Option<PathBuf>, socket: Option<PathBuf>) -> RunnerArgs {
        RunnerArgs {
            config,
            socket,
            socket_group: None,
            user: Some("1234".to_string()),
            group: None,
            chroot_into_input_root: false,
            slot_ids: None,
        }
    }

    #[test]
    fn runner_flags_override_the_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("runner.toml");
        std::fs::write(&file, "socket_path = \"/run/a.sock\"\nuser = \"nobody\"\n").expect("write");
        let config =
            runner_config(args(Some(file.clone()), Some("/run/b.sock".into()))).expect("valid");
        assert_eq!(config.socket_path, PathBuf::from("/run/b.sock"));
        assert_eq!(config.user, "1234");

        std::fs::write(&file, "socket_path = \"/s\"\nsocket_grop = \"x\"\n").expect("write");
        let error = runner_config(args(Some(file), None)).expect_err("unknown key");
        assert!(error.to_string().contains("socket_grop"), "{error}");
        assert!(runner_config(args(None, None)).is_err());
    }
}
