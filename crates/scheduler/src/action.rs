//! Loading an action for execution: its Action and Command from the CAS,
//! checked before anything is queued.
//!
//! Missing blobs (the Action, its Command, its input root Directory) are all
//! reported together, so the client re-uploads them in one go. Malformed
//! messages and out-of-range timeouts are INVALID_ARGUMENT.

use std::time::Duration;

use bytes::Bytes;
use lazybarn_cas::{BlobStore, CasError, Digest};
use lazybarn_proto::reapi::{Action, Command, Platform};
use prost::Message;

use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::platform::requested_platform;

/// An action ready to be queued.
#[derive(Clone, Debug)]
pub struct LoadedAction {
    /// The Action's digest.
    pub digest: Digest,
    /// The Action.
    pub action: Action,
    /// The Command it names.
    pub command: Command,
    /// The platform it asks for (Action's, else Command's).
    pub platform: Platform,
    /// How long it may run.
    pub timeout: Duration,
}

/// Fetches and checks the Action `digest` and everything it names that a
/// worker needs to start.
pub async fn load(
    store: &dyn BlobStore,
    digest: Digest,
    config: &SchedulerConfig,
) -> Result<LoadedAction> {
    let cap = config.max_message_bytes;
    let Some(action_blob) = fetch(store, &digest, "action", cap).await? else {
        return Err(missing(digest, vec![digest]));
    };
    let action = Action::decode(action_blob).map_err(|e| {
        SchedulerError::InvalidArgument(format!("blob {digest} is not a valid Action: {e}"))
    })?;
    let command_digest = Digest::from_proto(action.command_digest.as_ref()).map_err(|e| {
        SchedulerError::InvalidArgument(format!("action {digest}: command_digest: {e}"))
    })?;
    let input_root = Digest::from_proto(action.input_root_digest.as_ref()).map_err(|e| {
        SchedulerError::InvalidArgument(format!("action {digest}: input_root_digest: {e}"))
    })?;
    let (command_blob, missing_root) = tokio::join!(
        fetch(store, &command_digest, "command", cap),
        store.find_missing(std::slice::from_ref(&input_root)),
    );
    let missing_root = missing_root.map_err(|e| {
        SchedulerError::storage(
            format!("checking input root {input_root} of action {digest}"),
            e,
        )
    })?;
    let command_blob = command_blob?;
    let mut absent = missing_root;
    if command_blob.is_none() {
        absent.insert(0, command_digest);
    }
    let Some(command_blob) = command_blob.filter(|_| absent.is_empty()) else {
        return Err(missing(digest, absent));
    };
    let command = Command::decode(command_blob).map_err(|e| {
        SchedulerError::InvalidArgument(format!(
            "action {digest}: blob {command_digest} is not a valid Command: {e}"
        ))
    })?;
    let timeout = timeout_of(&action, config)
        .map_err(|why| SchedulerError::InvalidArgument(format!("action {digest}: {why}")))?;
    let platform = requested_platform(&action, &command);
    Ok(LoadedAction {
        digest,
        action,
        command,
        platform,
        timeout,
    })
}

/// A blob of at most `cap` bytes, or `None` when the CAS lacks it. The size
/// is the client's word until the blob is read, so it is checked first.
async fn fetch(
    store: &dyn BlobStore,
    digest: &Digest,
    what: &str,
    cap: u64,
) -> Result<Option<Bytes>> {
    if digest.size() > cap {
        return Err(SchedulerError::InvalidArgument(format!(
            "the {what} {digest} is {} bytes, more than this scheduler's max_message_bytes of \
             {cap}",
            digest.size()
        )));
    }
    match store.get(digest).await {
        Ok(data) => Ok(Some(data)),
        Err(CasError::NotFound(_)) => Ok(None),
        Err(e) => Err(SchedulerError::storage(
            format!("fetching {what} {digest}"),
            e,
        )),
    }
}

fn missing(action: Digest, blobs: Vec<Digest>) -> SchedulerError {
    let list: Vec<String> = blobs.iter().map(|d| d.to_string()).collect();
    SchedulerError::MissingBlobs {
        message: format!(
            "cannot execute action {action}: the CAS lacks {} blob(s) it needs: {}",
            blobs.len(),
            list.join(", ")
        ),
        missing: blobs,
    }
}

/// The action's timeout: its own when set, else the default; never above
/// the maximum (REAPI requires rejecting a longer one).
pub fn timeout_of(action: &Action, config: &SchedulerConfig) -> Result<Duration, String> {
    let Some(requested) = &action.timeout else {
        return Ok(config.default_timeout);
    };
    if requested.seconds < 0 || requested.nanos < 0 {
        return Err(format!("timeout {requested:?} is negative"));
    }
    let requested = Duration::new(requested.seconds as u64, requested.nanos as u32);
    if requested.is_zero() {
        return Ok(config.default_timeout);
    }
    if requested > config.max_timeout {
        return Err(format!(
            "timeout {requested:?} is above this scheduler's maximum of {:?}",
            config.max_timeout
        ));
    }
    Ok(requested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazybarn_cas::MemoryStore;

    fn action_with_timeout(seconds: i64) -> Action {
        Action {
            timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn timeouts_default_and_are_bounded() {
        let config = SchedulerConfig::default();
        assert_eq!(
            timeout_of(&Action::default(), &config),
            Ok(config.default_timeout)
        );
        assert_eq!(
            timeout_of(&action_with_timeout(0), &config),
            Ok(config.default_timeout)
        );
        assert_eq!(
            timeout_of(&action_with_timeout(60), &config),
            Ok(Duration::from_secs(60))
        );
        assert!(timeout_of(&action_with_timeout(-1), &config).is_err());
        assert!(timeout_of(&action_with_timeout(1 << 40), &config).is_err());
    }

    #[tokio::test]
    async fn lists_every_missing_blob() {
        let store = MemoryStore::new(1 << 20);
        let command = Command {
            arguments: vec!["true".to_string()],
            ..Default::default()
        }
        .encode_to_vec();
        let command_digest = Digest::of(&command);
        let root = Digest::of(b"not a directory");
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        }
        .encode_to_vec();
        let action_digest = Digest::of(&action);
        let config = SchedulerConfig::default();

        let err = load(&store, action_digest, &config)
            .await
            .expect_err("absent");
        assert!(
            matches!(&err, SchedulerError::MissingBlobs { missing, .. } if missing == &[action_digest])
        );

        store.put(action_digest, action.into()).await.expect("put");
        let err = load(&store, action_digest, &config)
            .await
            .expect_err("absent");
        assert!(
            matches!(&err, SchedulerError::MissingBlobs { missing, .. } if missing == &[command_digest, root]),
            "{err}"
        );

        store
            .put(command_digest, command.into())
            .await
            .expect("put");
        store
            .put(root, Bytes::from_static(b"not a directory"))
            .await
            .expect("put");
        let loaded = load(&store, action_digest, &config)
            .await
            .expect("complete");
        assert_eq!(loaded.timeout, config.default_timeout);
    }
}
