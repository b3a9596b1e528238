//! `lazybarn-scheduler`: the scheduler with its embedded storage, the worker
//! protocol and the status page, configured by one TOML file (see
//! `lazybarn_scheduler::config` for every key).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lazybarn_scheduler::ServerConfig;
use lazybarn_scheduler::server::{self, Listeners};

/// Serves Lazybarn's scheduler.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file; without it, defaults are used.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => ServerConfig::load(path).map_err(anyhow::Error::msg)?,
        None => ServerConfig::default(),
    };
    let metrics = lazybarn_scheduler::metrics::install_prometheus()
        .context("installing the Prometheus recorder")?;
    let listeners = Listeners::bind(&config).await?;
    let grpc = listeners.grpc.local_addr()?;
    let http = listeners.http.local_addr()?;
    if let Some(worker) = &listeners.worker {
        println!(
            "lazybarn-scheduler workers: grpc://{}",
            worker.local_addr()?
        );
    }
    println!("lazybarn-scheduler status: http://{http}");
    println!("lazybarn-scheduler ready: grpc://{grpc}");
    server::run(
        config,
        listeners,
        Some(metrics),
        lazybarn_cas::server::shutdown_signal(),
    )
    .await
    .context("serving")?;
    tracing::info!("lazybarn-scheduler stopped");
    Ok(())
}
