//! The `google.longrunning.Operation` messages clients see: names, stage
//! metadata and final responses, packed as REAPI specifies.
//!
//! Every update carries an `ExecuteOperationMetadata`; the last one is done
//! and carries an `ExecuteResponse` as its response. Failures travel inside
//! `ExecuteResponse.status`, never in `Operation.error`, as REAPI requires.

use lazybarn_cas::Digest;
use lazybarn_proto::longrunning::{Operation, operation};
use lazybarn_proto::reapi::{
    ExecuteOperationMetadata, ExecuteResponse, ExecutedActionMetadata, digest_function,
    execution_stage,
};
use lazybarn_proto::rpc;
use prost::Message;

const TYPE_PREFIX: &str = "type.googleapis.com/";
const METADATA_TYPE: &str = "build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_TYPE: &str = "build.bazel.remote.execution.v2.ExecuteResponse";

/// Packs `message` of the protobuf type `type_name` into an `Any`.
pub fn any<M: Message>(type_name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{TYPE_PREFIX}{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// A fresh, unguessable operation name.
pub fn new_name() -> String {
    format!("operations/{}", uuid::Uuid::new_v4())
}

/// The state of an operation at `stage`, with the response once it is done.
pub fn build(
    name: &str,
    action: &Digest,
    stage: execution_stage::Value,
    partial: Option<ExecutedActionMetadata>,
    response: Option<&ExecuteResponse>,
) -> Operation {
    let metadata = ExecuteOperationMetadata {
        stage: stage as i32,
        action_digest: Some(action.to_proto()),
        partial_execution_metadata: partial,
        digest_function: digest_function::Value::Sha256 as i32,
        ..Default::default()
    };
    Operation {
        name: name.to_string(),
        metadata: Some(any(METADATA_TYPE, &metadata)),
        done: response.is_some(),
        result: response.map(|r| operation::Result::Response(any(RESPONSE_TYPE, r))),
    }
}

/// A response that reports a failure to execute, with no result.
pub fn failure(code: tonic::Code, message: impl Into<String>) -> ExecuteResponse {
    failure_with_status(rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    })
}

/// A response that reports `status`, with no result.
pub fn failure_with_status(status: rpc::Status) -> ExecuteResponse {
    ExecuteResponse {
        status: Some(status),
        ..Default::default()
    }
}

/// Whether a response's status is OK (an unset status is).
pub fn status_is_ok(response: &ExecuteResponse) -> bool {
    response.status.as_ref().is_none_or(|s| s.code == 0)
}

/// Decodes the ExecuteResponse of a done operation, if it has one.
pub fn response_of(operation: &Operation) -> Option<ExecuteResponse> {
    match &operation.result {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).ok()
        }
        _ => None,
    }
}

/// Decodes the ExecuteOperationMetadata of an operation, if it has one.
pub fn metadata_of(operation: &Operation) -> Option<ExecuteOperationMetadata> {
    let any = operation.metadata.as_ref()?;
    ExecuteOperationMetadata::decode(any.value.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_operation_round_trips() {
        let digest = Digest::of(b"action");
        let response = failure(tonic::Code::Unavailable, "lost");
        let op = build(
            "operations/x",
            &digest,
            execution_stage::Value::Completed,
            None,
            Some(&response),
        );
        assert!(op.done);
        assert_eq!(response_of(&op), Some(response));
        let meta = metadata_of(&op).expect("metadata");
        assert_eq!(meta.stage, execution_stage::Value::Completed as i32);
        assert_eq!(meta.action_digest, Some(digest.to_proto()));
    }
}
