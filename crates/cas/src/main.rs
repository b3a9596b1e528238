//! `lazybarn-storage`: the CAS, ByteStream and Action Cache on one port,
//! without execution. Bazel can use it with `--remote_cache`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lazybarn_cas::config::{StorageOverrides, StorageServerConfig};
use lazybarn_cas::server::{self, Storage};

/// Serves Lazybarn's storage alone.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file (see `lazybarn_cas::config`); flags given
    /// as well override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve gRPC on; port 0 picks a free port [default: 127.0.0.1:8980].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for blobs and Action Cache entries.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Most bytes of blobs kept; least recently used blobs are evicted above
    /// it [default: 10 GiB].
    #[arg(long)]
    max_size: Option<u64>,
    /// Largest sum of blob sizes in one batch call (advertised in
    /// Capabilities) [default: 4 MiB].
    #[arg(long)]
    max_batch_size: Option<usize>,
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
    let overrides = StorageOverrides {
        listen: args.listen,
        data_dir: args.data_dir,
        max_size_bytes: args.max_size,
        max_batch_bytes: args.max_batch_size,
    };
    let config = StorageServerConfig::with_overrides(args.config.as_deref(), overrides)
        .map_err(anyhow::Error::msg)?;
    let data_dir = config.data_dir();
    let storage = Storage::open(data_dir, config.max_size_bytes, config.max_batch_bytes)
        .with_context(|| format!("opening storage in {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("lazybarn-storage ready: grpc://{addr}");
    server::serve(
        listener,
        storage.routes(),
        lazybarn_cas::server::shutdown_signal(),
    )
    .await
    .context("serving gRPC")?;
    tracing::info!("lazybarn-storage stopped");
    Ok(())
}
