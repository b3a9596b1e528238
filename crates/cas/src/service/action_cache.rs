//! The ActionCache service: results by action digest, never handing out a
//! result whose outputs are gone from the CAS.

use std::sync::Arc;

use bytes::Bytes;
use lazybarn_proto::reapi::{
    self, ActionResult, GetActionResultRequest, Tree, UpdateActionResultRequest,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::check_digest_function;
use crate::action_cache::ActionCache;
use crate::digest::Digest;
use crate::error::CasError;
use crate::store::BlobStore;

/// Serves GetActionResult and UpdateActionResult.
#[derive(Clone)]
pub struct ActionCacheService {
    cache: Arc<dyn ActionCache>,
    store: Arc<dyn BlobStore>,
    max_inline_bytes: usize,
}

impl ActionCacheService {
    /// A service over `cache` that checks results against `store`, inlining
    /// requested outputs up to `max_inline_bytes` in total.
    pub fn new(
        cache: Arc<dyn ActionCache>,
        store: Arc<dyn BlobStore>,
        max_inline_bytes: usize,
    ) -> Self {
        ActionCacheService {
            cache,
            store,
            max_inline_bytes,
        }
    }

    /// The first blob `result` refers to that the CAS lacks, if any. Output
    /// directories count with every file inside their trees.
    pub async fn first_missing_blob(
        &self,
        result: &ActionResult,
    ) -> Result<Option<Digest>, Status> {
        let mut digests = referenced_blobs(result)?;
        let trees: Vec<Digest> = result
            .output_directories
            .iter()
            .filter_map(|d| d.tree_digest.as_ref())
            .map(|d| Digest::from_proto(Some(d)))
            .collect::<Result<_, _>>()?;
        for tree in trees {
            match self.store.get(&tree).await {
                Ok(data) => digests.extend(files_in_tree(&tree, data)?),
                Err(CasError::NotFound(_)) => return Ok(Some(tree)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.store.find_missing(&digests).await?.into_iter().next())
    }

    /// Fills `stdout_raw`, `stderr_raw` and output file contents the client
    /// asked for, while they fit the inline budget.
    async fn inline(
        &self,
        result: &mut ActionResult,
        request: &GetActionResultRequest,
    ) -> Result<(), Status> {
        let mut budget = self.max_inline_bytes as u64;
        let mut take = |digest: Option<&reapi::Digest>| -> Option<Digest> {
            let d = Digest::from_proto(digest).ok()?;
            (d.size() <= budget).then(|| {
                budget -= d.size();
                d
            })
        };
        if request.inline_stdout
            && result.stdout_raw.is_empty()
            && let Some(d) = take(result.stdout_digest.as_ref())
        {
            result.stdout_raw = self.store.get(&d).await?;
        }
        if request.inline_stderr
            && result.stderr_raw.is_empty()
            && let Some(d) = take(result.stderr_digest.as_ref())
        {
            result.stderr_raw = self.store.get(&d).await?;
        }
        for file in &mut result.output_files {
            if request.inline_output_files.contains(&file.path)
                && file.contents.is_empty()
                && let Some(d) = take(file.digest.as_ref())
            {
                file.contents = self.store.get(&d).await?;
            }
        }
        Ok(())
    }
}

/// Blobs named directly by a result: output files, trees, stdout, stderr.
fn referenced_blobs(result: &ActionResult) -> Result<Vec<Digest>, Status> {
    let files = result.output_files.iter().map(|f| f.digest.as_ref());
    let logs = [result.stdout_digest.as_ref(), result.stderr_digest.as_ref()];
    files
        .chain(logs)
        .flatten()
        .map(|d| Digest::from_proto(Some(d)).map_err(Status::from))
        .collect()
}

fn files_in_tree(tree: &Digest, data: Bytes) -> Result<Vec<Digest>, Status> {
    let tree_message = Tree::decode(data)
        .map_err(|e| Status::internal(format!("blob {tree} is not a Tree: {e}")))?;
    let directories = tree_message.root.iter().chain(&tree_message.children);
    directories
        .flat_map(|d| &d.files)
        .map(|f| Digest::from_proto(f.digest.as_ref()).map_err(Status::from))
        .collect()
}

#[tonic::async_trait]
impl reapi::action_cache_server::ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let request = request.into_inner();
        check_digest_function(request.digest_function)?;
        let action = Digest::from_proto(request.action_digest.as_ref())?;
        let Some(mut result) = self.cache.get(&action).await? else {
            return Err(Status::not_found(format!(
                "no cached result for action {action}"
            )));
        };
        if let Some(missing) = self.first_missing_blob(&result).await? {
            return Err(Status::not_found(format!(
                "cached result for action {action} refers to blob {missing}, which is no longer stored"
            )));
        }
        self.inline(&mut result, &request).await?;
        Ok(Response::new(result))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let request = request.into_inner();
        check_digest_function(request.digest_function)?;
        let action = Digest::from_proto(request.action_digest.as_ref())?;
        let result = request.action_result.ok_or_else(|| {
            Status::invalid_argument(format!(
                "UpdateActionResult for action {action} carries no action_result"
            ))
        })?;
        referenced_blobs(&result)?;
        self.cache.put(&action, &result).await?;
        Ok(Response::new(result))
    }
}
