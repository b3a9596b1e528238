//! Shared helpers: an in-process storage server on a free loopback port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use lazybarn_cas::server::{self, Storage};
use lazybarn_cas::{CasClient, Digest};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A storage server that stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub storage: Storage,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Disk-backed storage under `dir` with the given limits.
    pub async fn disk(dir: &Path, max_bytes: u64, max_batch: usize) -> Self {
        let storage = Storage::open(dir, max_bytes, max_batch).expect("open storage");
        Self::start(storage).await
    }

    pub async fn start(storage: Storage) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        let routes = storage.routes();
        tokio::spawn(async move {
            server::serve(listener, routes, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        TestServer {
            addr,
            storage,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> CasClient {
        CasClient::connect(&self.url(), "test-instance")
            .await
            .expect("client")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn blob(seed: u64, len: usize) -> (Digest, bytes::Bytes) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    (Digest::of(&data), bytes::Bytes::from(data))
}
