//! Workers are principals (issue 13, first slice): `lazybarn up` serves
//! the worker protocol on its client port only to holders of the worker
//! token it generates at each start. A client of that port, without a
//! token or with a made-up one, cannot register as a worker (and so receive
//! other clients' actions and forge their results) nor drain the real
//! worker by its id, while the real worker, which presents the token, still
//! runs actions.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lazybarn_proto::worker::scheduler_client::SchedulerClient;
use lazybarn_proto::worker::{DrainRequest, RegisterRequest};
use lazybarn_tests::LazybarnUp;
use lazybarn_tests::remote::{ActionSpec, Remote, status_of};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// How long the plain action may take.
const WAIT: Duration = Duration::from_secs(180);

/// A token no one issued.
const MADE_UP_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn a_client_without_the_worker_token_cannot_register_or_drain_the_worker() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("lazybarn-worker-credentials-")
        .tempdir_in("/tmp")?;
    // Searchable by the uid actions run as, which must reach the build directory.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let data_dir = dir.path().join("data");
    let up = LazybarnUp::start(&data_dir, "native", &[], &dir.path().join("up.log"))?;
    let remote = Remote::connect(up.url())?;

    // The real worker authenticates: an action runs, and names its worker.
    let worker_id = run_plain_action(&remote)?;
    ensure_credentials_are_private(&data_dir)?;

    // Multi-threaded, so the connection answers the server's GOAWAY between
    // calls and does not hold up its shutdown.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _context = runtime.enter();
    let channel = Endpoint::from_shared(up.url().replacen("grpc://", "http://", 1))?.connect_lazy();
    let register = |token: Option<&str>| {
        let request = with_token(
            RegisterRequest {
                worker_id: "impostor".to_string(),
                session_id: "impostor-session".to_string(),
                slots: 1,
                ..Default::default()
            },
            token,
        );
        runtime
            .block_on(client(&channel).register(request))
            .map(drop)
    };
    ensure_unauthenticated(register(None), "Register without a token", &["\"workers\""])?;
    ensure_unauthenticated(
        register(Some(MADE_UP_TOKEN)),
        "Register with a made-up token",
        &["unknown"],
    )?;

    let drain = |token: Option<&str>| {
        let request = with_token(
            DrainRequest {
                worker_id: worker_id.clone(),
            },
            token,
        );
        runtime.block_on(client(&channel).drain(request)).map(drop)
    };
    ensure_unauthenticated(drain(None), "Drain of the real worker without a token", &[])?;
    ensure_unauthenticated(
        drain(Some(MADE_UP_TOKEN)),
        "Drain of the real worker with a made-up token",
        &[],
    )?;

    // Not drained: the worker still takes work.
    let again = run_plain_action(&remote).context("after the refused Drain calls")?;
    ensure!(again == worker_id, "ran on {again:?}, not on {worker_id:?}");
    up.stop()
}

/// Runs `echo` and returns the id of the worker that ran it.
fn run_plain_action(remote: &Remote) -> Result<String> {
    let response = remote.execute(&ActionSpec::shell("echo authenticated worker"), WAIT)?;
    let stdout = remote.stdout(&response)?;
    ensure!(
        status_of(&response).0 == Code::Ok && stdout == "authenticated worker\n",
        "a plain action failed: {}",
        remote.describe(&response)
    );
    let worker = response
        .result
        .as_ref()
        .and_then(|result| result.execution_metadata.as_ref())
        .map(|metadata| metadata.worker.clone())
        .filter(|worker| !worker.is_empty())
        .with_context(|| format!("no worker named in {}", remote.describe(&response)))?;
    Ok(worker)
}

/// The token (in clear) and the tokens file are the owner's alone.
fn ensure_credentials_are_private(data_dir: &Path) -> Result<()> {
    for name in ["worker-token", "worker-tokens"] {
        let path = data_dir.join(name);
        let mode = fs::metadata(&path)
            .with_context(|| format!("lazybarn up wrote no {}", path.display()))?
            .permissions()
            .mode();
        ensure!(
            mode & 0o077 == 0,
            "{} has mode {:o}",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

fn client(channel: &Channel) -> SchedulerClient<Channel> {
    SchedulerClient::new(channel.clone())
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value =
            MetadataValue::try_from(format!("Bearer {token}")).expect("a hex token is ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// `result` is UNAUTHENTICATED, its message naming each of `words` and
/// never the made-up token.
fn ensure_unauthenticated(result: Result<(), Status>, call: &str, words: &[&str]) -> Result<()> {
    let status = match result {
        Ok(()) => anyhow::bail!("{call} was accepted"),
        Err(status) => status,
    };
    ensure!(
        status.code() == Code::Unauthenticated,
        "{call}: {:?} ({}), not UNAUTHENTICATED",
        status.code(),
        status.message()
    );
    let message = status.message();
    ensure!(
        words.iter().all(|word| message.contains(word)) && !message.contains(MADE_UP_TOKEN),
        "{call}: the message {message:?} should name {words:?} and never the token"
    );
    Ok(())
}
