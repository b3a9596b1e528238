//! An Action Cache that is another REAPI server's, over its ActionCache
//! service: GetActionResult answers a lookup (NOT_FOUND is a miss) and
//! UpdateActionResult stores a result. Calls failing with UNAVAILABLE are
//! retried with the same backoff as the CAS client's.

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use lazybarn_proto::reapi::action_cache_client::ActionCacheClient;
use lazybarn_proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::ActionCache;
use crate::client::CasClient;
use crate::digest::Digest;
use crate::error::{CasError, Result};
use crate::service::message_size_limit;

/// The Action Cache of a remote REAPI instance.
#[derive(Clone)]
pub struct RemoteActionCache {
    client: ActionCacheClient<Channel>,
    instance: String,
    retry: ExponentialBuilder,
}

impl RemoteActionCache {
    /// The Action Cache of the server and instance `cas` talks to, over
    /// the same connection.
    pub fn new(cas: &CasClient) -> Self {
        let limit = message_size_limit(cas.max_batch_bytes());
        RemoteActionCache {
            client: ActionCacheClient::new(cas.channel())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            instance: cas.instance().to_string(),
            retry: cas.retry_policy(),
        }
    }
}

fn is_transient(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

fn remote_error(status: &Status, what: String) -> CasError {
    let with_context = Status::new(status.code(), format!("{what}: {}", status.message()));
    CasError::from_remote(&with_context, None)
}

#[async_trait]
impl ActionCache for RemoteActionCache {
    async fn get(&self, action: &Digest) -> Result<Option<ActionResult>> {
        let request = GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: vec![],
            digest_function: 0,
        };
        let call = || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move { client.get_action_result(request).await }
        };
        match call.retry(self.retry).when(is_transient).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(remote_error(
                &status,
                format!("GetActionResult of action {action}"),
            )),
        }
    }

    async fn put(&self, action: &Digest, result: &ActionResult) -> Result<()> {
        let request = UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            results_cache_policy: None,
            digest_function: 0,
        };
        let call = || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move { client.update_action_result(request).await }
        };
        call.retry(self.retry)
            .when(is_transient)
            .await
            .map(|_| ())
            .map_err(|status| {
                remote_error(&status, format!("UpdateActionResult of action {action}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lazybarn_proto::reapi::OutputFile;

    use super::*;
    use crate::server::{Loopback, Storage};
    use crate::service::DEFAULT_MAX_BATCH_BYTES;

    #[tokio::test]
    async fn round_trip_and_misses() {
        let storage = Storage::in_memory(1 << 20, DEFAULT_MAX_BATCH_BYTES);
        let server = Loopback::serve(storage.routes())
            .await
            .expect("serve on loopback");
        let cas = CasClient::connect(&server.url(), "")
            .await
            .expect("connect");
        let cache = RemoteActionCache::new(&cas);

        let action = Digest::of(b"an action");
        assert_eq!(cache.get(&action).await.expect("get"), None);

        let output = Bytes::from_static(b"compiled");
        let output_digest = Digest::of(&output);
        let result = ActionResult {
            exit_code: 0,
            output_files: vec![OutputFile {
                path: "out.o".to_string(),
                digest: Some(output_digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        cache.put(&action, &result).await.expect("put");
        // The remote checks that a result's outputs are still stored and
        // answers NOT_FOUND when they are not: a miss, not an error.
        assert_eq!(cache.get(&action).await.expect("get"), None);

        cas.upload(vec![(output_digest, output)])
            .await
            .expect("upload");
        assert_eq!(cache.get(&action).await.expect("get"), Some(result.clone()));

        let replaced = ActionResult {
            exit_code: 3,
            ..result
        };
        cache.put(&action, &replaced).await.expect("replace");
        assert_eq!(cache.get(&action).await.expect("get"), Some(replaced));
    }
}
