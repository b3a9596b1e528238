//! The storage services on one gRPC port.
//!
//! [`Storage`] bundles a blob store and an Action Cache; `routes` turns it
//! into tonic services with message limits that match what Capabilities
//! advertises. The scheduler adds its Execution service to the same routes.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lazybarn_proto::bytestream::byte_stream_server::ByteStreamServer;
use lazybarn_proto::reapi::action_cache_server::ActionCacheServer;
use lazybarn_proto::reapi::capabilities_server::CapabilitiesServer;
use lazybarn_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio::net::TcpListener;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::action_cache::{ActionCache, DiskActionCache, MemoryActionCache, RemoteActionCache};
use crate::error::Result;
use crate::service::{
    ActionCacheService, ByteStreamService, CapabilitiesService, CasService, message_size_limit,
};
use crate::store::{BlobStore, DiskStore, MemoryStore, RemoteStore};

/// HTTP/2 flow-control windows: large enough that a loopback or LAN stream
/// of big blobs is not throttled by acknowledgements.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest HTTP/2 frame accepted (the protocol's maximum is 16 MiB - 1):
/// fewer, larger frames cost less per byte of blob.
pub const MAX_FRAME: u32 = 1 << 20;

/// A blob store and an Action Cache, served together.
#[derive(Clone)]
pub struct Storage {
    /// The CAS.
    pub store: Arc<dyn BlobStore>,
    /// The Action Cache.
    pub action_cache: Arc<dyn ActionCache>,
    /// The disk store, when the CAS is one; co-located readers use its files.
    pub disk: Option<DiskStore>,
    /// The batch limit advertised and enforced.
    pub max_batch_bytes: usize,
}

impl Storage {
    /// Storage under `data_dir`: blobs in `cas/` (at most `max_bytes`), the
    /// Action Cache in `ac/`.
    pub fn open(data_dir: &Path, max_bytes: u64, max_batch_bytes: usize) -> Result<Self> {
        let disk = DiskStore::open(&data_dir.join("cas"), max_bytes)?;
        let action_cache = DiskActionCache::open(&data_dir.join("ac"))?;
        Ok(Storage {
            store: Arc::new(disk.clone()),
            action_cache: Arc::new(action_cache),
            disk: Some(disk),
            max_batch_bytes,
        })
    }

    /// Storage in memory, for tests and small setups.
    pub fn in_memory(max_bytes: u64, max_batch_bytes: usize) -> Self {
        Storage {
            store: Arc::new(MemoryStore::new(max_bytes)),
            action_cache: Arc::new(MemoryActionCache::new()),
            disk: None,
            max_batch_bytes,
        }
    }

    /// The CAS and Action Cache of another REAPI server (bb-storage,
    /// bazel-remote, NativeLink, a `lazybarn storage`) at `endpoint`
    /// (`grpc://host:port`), instance `instance`. The services built from
    /// it proxy every call there, so clients may use this server's port or
    /// the remote's alike. `max_batch_bytes` is what this server advertises
    /// and accepts; calls to the remote follow the remote's own limit.
    pub async fn remote(endpoint: &str, instance: &str, max_batch_bytes: usize) -> Result<Self> {
        let store = RemoteStore::connect(endpoint, instance).await?;
        let action_cache = RemoteActionCache::new(store.client());
        Ok(Storage {
            store: Arc::new(store),
            action_cache: Arc::new(action_cache),
            disk: None,
            max_batch_bytes,
        })
    }

    /// Adds Capabilities, ContentAddressableStorage, ByteStream and
    /// ActionCache to `routes`. `execution_enabled` is what Capabilities says
    /// about the Execution service.
    pub fn add_services(&self, routes: &mut RoutesBuilder, execution_enabled: bool) {
        let limit = message_size_limit(self.max_batch_bytes);
        let capabilities = CapabilitiesService::new(self.max_batch_bytes, execution_enabled);
        let cas = CasService::new(self.store.clone(), self.max_batch_bytes);
        let bytestream = ByteStreamService::new(self.store.clone());
        let action_cache = ActionCacheService::new(
            self.action_cache.clone(),
            self.store.clone(),
            self.max_batch_bytes,
        );
        routes
            .add_service(CapabilitiesServer::new(capabilities))
            .add_service(
                ContentAddressableStorageServer::new(cas)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                ByteStreamServer::new(bytestream)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                ActionCacheServer::new(action_cache)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            );
    }

    /// The storage services alone, ready to serve.
    pub fn routes(&self) -> Routes {
        let mut routes = RoutesBuilder::default();
        self.add_services(&mut routes, false);
        routes.routes()
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves. The scheduler
/// and `lazybarn up` serve their services through this too.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> std::result::Result<(), tonic::transport::Error> {
    // tonic applies `Server::tcp_nodelay` only to listeners it binds
    // itself; without TCP_NODELAY on each accepted socket, every small
    // response waits for the peer's delayed ACK (about 40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Routes served on a free loopback port until dropped: a real gRPC server
/// in-process, for tests, benchmarks and tools.
pub struct Loopback {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Loopback {
    /// Binds 127.0.0.1 on a free port and serves `routes` there.
    pub async fn serve(routes: Routes) -> std::io::Result<Loopback> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(e) = serve(listener, routes, stopped).await {
                tracing::error!(error = %e, "serving on loopback");
            }
        });
        Ok(Loopback {
            addr,
            stop: Some(stop),
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `grpc://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: how the binaries stop cleanly.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
