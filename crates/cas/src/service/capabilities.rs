//! The Capabilities service: tells clients what this server supports.

use lazybarn_proto::reapi::{
    self, ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities,
    GetCapabilitiesRequest, PriorityCapabilities, ServerCapabilities, digest_function,
    priority_capabilities::PriorityRange, symlink_absolute_path_strategy,
};
use lazybarn_proto::semver::SemVer;
use tonic::{Request, Response, Status};

/// Answers GetCapabilities for the storage and, when enabled, execution.
#[derive(Clone)]
pub struct CapabilitiesService {
    max_batch_bytes: usize,
    execution_enabled: bool,
}

impl CapabilitiesService {
    /// Capabilities of a server with the given batch limit; `execution_enabled`
    /// is true where the Execution service is served on the same port.
    pub fn new(max_batch_bytes: usize, execution_enabled: bool) -> Self {
        CapabilitiesService {
            max_batch_bytes,
            execution_enabled,
        }
    }

    /// The capabilities document itself.
    pub fn capabilities(&self) -> ServerCapabilities {
        let sha256 = digest_function::Value::Sha256 as i32;
        let any_priority = PriorityCapabilities {
            priorities: vec![PriorityRange {
                min_priority: i32::MIN,
                max_priority: i32::MAX,
            }],
        };
        ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: vec![sha256],
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                cache_priority_capabilities: None,
                max_batch_total_size_bytes: self.max_batch_bytes as i64,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed
                    as i32,
                ..Default::default()
            }),
            execution_capabilities: Some(ExecutionCapabilities {
                digest_function: sha256,
                exec_enabled: self.execution_enabled,
                execution_priority_capabilities: self.execution_enabled.then_some(any_priority),
                supported_node_properties: vec![],
                digest_functions: vec![sha256],
            }),
            deprecated_api_version: None,
            low_api_version: Some(version(0)),
            high_api_version: Some(version(3)),
        }
    }
}

fn version(minor: i32) -> SemVer {
    SemVer {
        major: 2,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

#[tonic::async_trait]
impl reapi::capabilities_server::Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        Ok(Response::new(self.capabilities()))
    }
}
