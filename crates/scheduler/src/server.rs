//! Wiring: the gRPC routes of the scheduler, and [`run`], which serves the
//! storage, the scheduler, the worker protocol and the status page as the
//! configuration says. `lazybarn up` uses the same pieces.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lazybarn_auth::{Gate, Tokens, TokensError};
use lazybarn_cas::CasError;
/// Serves routes with the storage server's HTTP/2 settings and TCP_NODELAY.
pub use lazybarn_cas::server::serve;
use lazybarn_cas::server::{Loopback, Storage};
use lazybarn_proto::longrunning::operations_server::OperationsServer;
use lazybarn_proto::reapi::execution_server::ExecutionServer;
use lazybarn_proto::worker::scheduler_server::SchedulerServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;

use crate::config::{AuthConfig, ServerConfig, StorageConfig};
use crate::execution_service::ExecutionService;
use crate::operations_service::OperationsService;
use crate::scheduler::Scheduler;
use crate::status;
use crate::worker_service::WorkerService;

/// The largest worker-protocol message: an ExecuteResponse may inline
/// stdout, stderr and small outputs.
const WORKER_MESSAGE_LIMIT: usize = 64 << 20;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage could not be opened, or the remote CAS reached.
    #[error("opening storage: {0}")]
    Storage(#[from] CasError),
    /// The tokens file could not be read or parsed.
    #[error("[auth] tokens_file: {0}")]
    Tokens(#[from] TokensError),
    /// A listening socket could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A gRPC server failed.
    #[error("serving gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("serving HTTP: {0}")]
    Http(std::io::Error),
}

/// Adds the client-facing Execution and Operations services to `routes`.
pub fn add_services(scheduler: &Scheduler, routes: &mut RoutesBuilder) {
    routes
        .add_service(ExecutionServer::new(ExecutionService::new(
            scheduler.clone(),
        )))
        .add_service(OperationsServer::new(OperationsService::new(
            scheduler.clone(),
        )));
}

/// What refusals call the right to use the worker protocol.
const WORKER_RIGHT: &str = "use the worker protocol";

/// Who may use the worker protocol under `config`: with a tokens file,
/// identities of its worker group only; without one, everyone, as before
/// there were credentials (see [`AuthConfig::tokens_file`]).
pub fn worker_gate(config: &AuthConfig) -> Result<Gate, ServerError> {
    let Some(path) = &config.tokens_file else {
        return Ok(Gate::Open);
    };
    let tokens = Tokens::load(path)?;
    if tokens.is_empty() {
        tracing::warn!(tokens_file = %path.display(), "the tokens file lists no token: no worker can register");
    }
    Ok(Gate::group(
        Arc::new(tokens),
        config.worker_group.clone(),
        WORKER_RIGHT,
    ))
}

/// Adds the worker protocol service to `routes`, every call of it behind
/// `gate`.
pub fn add_worker_service(scheduler: &Scheduler, gate: Gate, routes: &mut RoutesBuilder) {
    let service = SchedulerServer::new(WorkerService::new(scheduler.clone()))
        .max_decoding_message_size(WORKER_MESSAGE_LIMIT)
        .max_encoding_message_size(WORKER_MESSAGE_LIMIT);
    routes.add_service(InterceptedService::new(service, gate));
}

/// The bound sockets of a scheduler process.
pub struct Listeners {
    /// Clients' gRPC port.
    pub grpc: TcpListener,
    /// The worker protocol's own port, if configured.
    pub worker: Option<TcpListener>,
    /// The status page's port.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds every address the configuration names.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let worker = match config.worker_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners {
            grpc: bind(config.listen).await?,
            worker,
            http: bind(config.http_listen).await?,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// The storage `config` describes: another REAPI server's when `remote` is
/// set, else the embedded store on disk or in memory.
pub async fn open_storage(config: &StorageConfig) -> Result<Storage, ServerError> {
    if let Some(remote) = &config.remote {
        tracing::info!(remote = %remote, instance = %config.remote_instance_name, "using a remote CAS and Action Cache");
        return Ok(
            Storage::remote(remote, &config.remote_instance_name, config.max_batch_bytes).await?,
        );
    }
    Ok(match &config.data_dir {
        Some(dir) => Storage::open(dir, config.max_size_bytes, config.max_batch_bytes)?,
        None => Storage::in_memory(config.max_size_bytes, config.max_batch_bytes),
    })
}

/// Serves storage, scheduler, worker protocol and status page until
/// `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let gate = worker_gate(&config.auth)?;
    let storage = open_storage(&config.storage).await?;
    let scheduler = Scheduler::new(
        storage.store.clone(),
        storage.action_cache.clone(),
        config.scheduler.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let on_stop = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };

    let mut routes = RoutesBuilder::default();
    storage.add_services(&mut routes, true);
    add_services(&scheduler, &mut routes);
    let worker_server = match listeners.worker {
        Some(listener) => {
            let mut worker_routes = RoutesBuilder::default();
            add_worker_service(&scheduler, gate, &mut worker_routes);
            // The storage too, so that a worker's default CAS (the address
            // it was given for the scheduler) works on either port.
            storage.add_services(&mut worker_routes, true);
            Some(serve(listener, worker_routes.routes(), on_stop()))
        }
        None => {
            add_worker_service(&scheduler, gate, &mut routes);
            None
        }
    };
    let grpc = async {
        serve(listeners.grpc, routes.routes(), on_stop())
            .await
            .map_err(ServerError::Grpc)
    };
    let workers = async {
        match worker_server {
            Some(server) => server.await.map_err(ServerError::Grpc),
            None => Ok(()),
        }
    };
    let router = status::router(scheduler.clone(), metrics);
    let http = async {
        status::serve(listeners.http, router, on_stop())
            .await
            .map_err(ServerError::Http)
    };
    let servers = async { tokio::try_join!(grpc, workers, http).map(|_| ()) };
    tokio::pin!(servers);
    tokio::select! {
        result = &mut servers => return result,
        () = shutdown => {}
    }
    // Stop accepting; end streams and polls so the calls in progress finish.
    let _ = stop.send(true);
    scheduler.stop();
    servers.await
}

/// A scheduler and its storage served with every service (client, storage
/// and worker protocol) on one loopback port of its own, for tests,
/// benchmarks and tools that need a whole farm in one process. Serving
/// stops when it is dropped.
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The storage it serves.
    pub storage: Storage,
    /// The scheduler it serves.
    pub scheduler: Scheduler,
    _serving: Loopback,
}

impl InProcess {
    /// Starts serving a new scheduler with `config` over `storage`.
    pub async fn start(
        storage: Storage,
        config: crate::config::SchedulerConfig,
    ) -> Result<InProcess, ServerError> {
        let scheduler = Scheduler::new(storage.store.clone(), storage.action_cache.clone(), config);
        let mut routes = RoutesBuilder::default();
        storage.add_services(&mut routes, true);
        add_services(&scheduler, &mut routes);
        add_worker_service(&scheduler, Gate::Open, &mut routes);
        let serving =
            Loopback::serve(routes.routes())
                .await
                .map_err(|source| ServerError::Bind {
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    source,
                })?;
        Ok(InProcess {
            addr: serving.addr(),
            storage,
            scheduler,
            _serving: serving,
        })
    }

    /// A channel to it, connected on first use.
    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a socket address makes a valid URL")
            .connect_lazy()
    }
}
