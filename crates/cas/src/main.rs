//! `lazybarn-storage`: the CAS, ByteStream and Action Cache on one port,
//! without execution. Bazel can use it with `--remote_cache`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lazybarn_cas::server::{self, Storage};
use lazybarn_cas::service::DEFAULT_MAX_BATCH_BYTES;

/// Serves Lazybarn's storage alone.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve gRPC on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8980")]
    listen: SocketAddr,
    /// Directory for blobs and Action Cache entries.
    #[arg(long)]
    data_dir: PathBuf,
    /// Most bytes of blobs kept; least recently used blobs are evicted above it.
    #[arg(long, default_value_t = 10 << 30)]
    max_size: u64,
    /// Largest sum of blob sizes in one batch call (advertised in Capabilities).
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_BYTES)]
    max_batch_size: usize,
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
    let storage = Storage::open(&args.data_dir, args.max_size, args.max_batch_size)
        .with_context(|| format!("opening storage in {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
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
