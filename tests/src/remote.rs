//! REAPI calls made by hand against a running cluster: upload an input
//! tree, a Command and an Action, call Execute, follow the Operation to its
//! end and read what came back.
//!
//! Bazel only ever sends well-formed requests; the tests that play a
//! hostile client build their Directory messages, symlinks and platform
//! properties themselves and use [`Remote`] to send them. Calls block: the
//! client keeps a runtime of its own, so plain `#[test]` functions (and
//! threads of theirs, for concurrent actions) can use it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::longrunning::operation;
use lazybarn_proto::reapi::action_cache_client::ActionCacheClient;
use lazybarn_proto::reapi::command::EnvironmentVariable;
use lazybarn_proto::reapi::execution_client::ExecutionClient;
use lazybarn_proto::reapi::platform::Property;
use lazybarn_proto::reapi::{
    self, Action, ActionResult, Command, Directory, DirectoryNode, ExecuteRequest, ExecuteResponse,
    FileNode, GetActionResultRequest, Platform, SymlinkNode,
};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

/// The PATH actions get unless they set one.
pub const DEFAULT_PATH: &str = "/usr/bin:/bin";

/// How long an action may run unless its spec says otherwise.
const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// A blocking REAPI client of one cluster (empty instance name).
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    cas: CasClient,
    channel: Channel,
}

impl Remote {
    /// Connects to `url` (`grpc://HOST:PORT`), as `LazybarnUp::url` gives it.
    pub fn connect(url: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("Failed to start a tokio runtime")?;
        let cas = runtime
            .block_on(CasClient::connect(url, ""))
            .with_context(|| format!("Failed to connect to the CAS at {url}"))?;
        let channel = cas.channel();
        Ok(Self {
            runtime,
            cas,
            channel,
        })
    }

    /// Uploads one blob; its digest.
    pub fn put(&self, data: impl Into<Bytes>) -> Result<Digest> {
        let data = data.into();
        let digest = Digest::of(&data);
        self.runtime
            .block_on(self.cas.upload_missing(vec![(digest, data)]))
            .with_context(|| format!("Failed to upload blob {digest}"))?;
        Ok(digest)
    }

    /// Uploads an encoded message (a Directory, Command or Action); its digest.
    pub fn put_message(&self, message: &impl Message) -> Result<Digest> {
        self.put(message.encode_to_vec())
    }

    /// Uploads every file and Directory of `tree`; the root's digest.
    pub fn put_tree(&self, tree: &InputDirectory) -> Result<Digest> {
        let mut directory = Directory::default();
        for (name, (contents, executable)) in &tree.files {
            let digest = self.put(contents.clone())?;
            directory.files.push(file_node(name, digest, *executable));
        }
        for (name, child) in &tree.directories {
            let digest = self.put_tree(child)?;
            directory.directories.push(directory_node(name, digest));
        }
        for (name, target) in &tree.symlinks {
            directory.symlinks.push(symlink_node(name, target));
        }
        self.put_message(&directory)
    }

    /// Downloads a whole blob.
    pub fn download(&self, digest: Digest) -> Result<Bytes> {
        self.runtime
            .block_on(self.cas.download(digest))
            .with_context(|| format!("Failed to download blob {digest}"))
    }

    /// Whether the CAS holds `digest`.
    pub fn contains(&self, digest: Digest) -> Result<bool> {
        let missing = self
            .runtime
            .block_on(self.cas.find_missing(&[digest]))
            .with_context(|| format!("FindMissingBlobs of {digest} failed"))?;
        Ok(missing.is_empty())
    }

    /// Uploads the Command and the Action `spec` describes; the Action's digest.
    pub fn put_action(&self, spec: &ActionSpec) -> Result<Digest> {
        let (command, action) = spec.messages();
        let command_digest = self.put_message(&command)?;
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            ..action
        };
        self.put_message(&action)
    }

    /// Uploads `spec` and executes it (skipping the cache lookup unless the
    /// spec is cacheable), waiting at most `wait` for the answer.
    pub fn execute(&self, spec: &ActionSpec, wait: Duration) -> Result<ExecuteResponse> {
        let action = self.put_action(spec)?;
        self.execute_action(action, spec.do_not_cache, wait)
    }

    /// Executes the Action stored under `action` and follows the Operation
    /// to its end; its ExecuteResponse. An Operation that ends with an
    /// error, a stream that breaks and a wait longer than `wait` are errors.
    pub fn execute_action(
        &self,
        action: Digest,
        skip_cache_lookup: bool,
        wait: Duration,
    ) -> Result<ExecuteResponse> {
        let request = ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup,
            ..Default::default()
        };
        let mut client = ExecutionClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let finished = self.runtime.block_on(async {
            tokio::time::timeout(wait, async {
                let mut stream = client
                    .execute(request)
                    .await
                    .with_context(|| format!("Execute of action {action} was refused"))?
                    .into_inner();
                while let Some(operation) = stream
                    .message()
                    .await
                    .with_context(|| format!("the Operation stream of action {action} broke"))?
                {
                    if operation.done {
                        return Ok(operation);
                    }
                }
                bail!("the Operation stream of action {action} ended before it was done")
            })
            .await
        });
        let operation = match finished {
            Ok(operation) => operation?,
            Err(_) => bail!("action {action} did not finish within {wait:?}"),
        };
        match operation.result {
            Some(operation::Result::Response(any)) => ExecuteResponse::decode(any.value.as_ref())
                .with_context(|| format!("action {action}'s Operation holds no ExecuteResponse")),
            Some(operation::Result::Error(status)) => bail!(
                "action {action}'s Operation ended with error {:?}: {}",
                Code::from(status.code),
                status.message
            ),
            None => bail!("action {action}'s Operation is done without a result"),
        }
    }

    /// The Action Cache's entry for `action`, if it has one.
    pub fn action_result(&self, action: Digest) -> Result<Option<ActionResult>> {
        let mut client = ActionCacheClient::new(self.channel.clone());
        let request = GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        };
        match self.runtime.block_on(client.get_action_result(request)) {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status).context(format!("GetActionResult of {action} failed")),
        }
    }

    /// The action's standard output (empty without a result).
    pub fn stdout(&self, response: &ExecuteResponse) -> Result<String> {
        self.log(response, |result| {
            (&result.stdout_raw, &result.stdout_digest)
        })
    }

    /// The action's standard error (empty without a result).
    pub fn stderr(&self, response: &ExecuteResponse) -> Result<String> {
        self.log(response, |result| {
            (&result.stderr_raw, &result.stderr_digest)
        })
    }

    fn log(
        &self,
        response: &ExecuteResponse,
        which: impl Fn(&ActionResult) -> (&Bytes, &Option<reapi::Digest>),
    ) -> Result<String> {
        let Some(result) = &response.result else {
            return Ok(String::new());
        };
        let (raw, digest) = which(result);
        if !raw.is_empty() {
            return Ok(String::from_utf8_lossy(raw).into_owned());
        }
        match digest {
            Some(digest) => {
                let digest = Digest::from_proto(Some(digest)).context("a bad log digest")?;
                Ok(String::from_utf8_lossy(&self.download(digest)?).into_owned())
            }
            None => Ok(String::new()),
        }
    }

    /// The contents of the output file at `path` in `result`, if there is one.
    pub fn output_file(&self, result: &ActionResult, path: &str) -> Result<Option<Bytes>> {
        let Some(file) = result.output_files.iter().find(|f| f.path == path) else {
            return Ok(None);
        };
        let digest = Digest::from_proto(file.digest.as_ref())
            .with_context(|| format!("output {path} has a bad digest"))?;
        Ok(Some(self.download(digest)?))
    }

    /// A one-paragraph account of `response` for failure messages: status,
    /// exit code, outputs, and the ends of stdout and stderr.
    pub fn describe(&self, response: &ExecuteResponse) -> String {
        let (code, message) = status_of(response);
        let mut text = format!("status {code:?} {message:?}");
        if let Some(result) = &response.result {
            let files: Vec<_> = result.output_files.iter().map(|f| &f.path).collect();
            let dirs: Vec<_> = result.output_directories.iter().map(|d| &d.path).collect();
            text += &format!(
                ", exit code {}, cached {}, output files {files:?}, output directories {dirs:?}",
                result.exit_code, response.cached_result
            );
            for (name, log) in [
                ("stdout", self.stdout(response)),
                ("stderr", self.stderr(response)),
            ] {
                let log = log.unwrap_or_else(|e| format!("(unreadable: {e:#})"));
                text += &format!(", {name} {:?}", tail(&log, 600));
            }
        } else {
            text += ", no ActionResult";
        }
        text
    }
}

/// What to run: the Command and Action fields a test sets.
#[derive(Clone, Debug)]
pub struct ActionSpec {
    /// argv.
    pub arguments: Vec<String>,
    /// Environment variables, by name.
    pub environment: BTreeMap<String, String>,
    /// Declared outputs (REAPI 2.1 `output_paths`).
    pub output_paths: Vec<String>,
    /// Platform properties, by name (on both Action and Command).
    pub platform: BTreeMap<String, String>,
    /// The input root; None is the empty directory.
    pub input_root: Option<Digest>,
    /// The command's timeout.
    pub timeout: Duration,
    /// Whether the result may not be cached (and the cache is not asked).
    pub do_not_cache: bool,
}

impl ActionSpec {
    /// `/bin/sh -c script` with PATH set, not cached.
    pub fn shell(script: &str) -> Self {
        Self {
            arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
            environment: BTreeMap::from([("PATH".to_string(), DEFAULT_PATH.to_string())]),
            output_paths: Vec::new(),
            platform: BTreeMap::new(),
            input_root: None,
            timeout: DEFAULT_ACTION_TIMEOUT,
            do_not_cache: true,
        }
    }

    /// The same, over `root`.
    pub fn in_root(mut self, root: Digest) -> Self {
        self.input_root = Some(root);
        self
    }

    /// The same, declaring `paths` as outputs.
    pub fn outputs(mut self, paths: &[&str]) -> Self {
        self.output_paths = paths.iter().map(|p| p.to_string()).collect();
        self
    }

    /// The same, with environment variable `name` set to `value`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.environment.insert(name.into(), value.into());
        self
    }

    /// The same, asking for platform property `name` = `value`.
    pub fn platform(mut self, name: &str, value: &str) -> Self {
        self.platform.insert(name.into(), value.into());
        self
    }

    /// The same, with a timeout of `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same, with its result cached and the cache asked first.
    pub fn cacheable(mut self) -> Self {
        self.do_not_cache = false;
        self
    }

    /// The Command, and the Action without its command digest.
    #[allow(deprecated)]
    fn messages(&self) -> (Command, Action) {
        let platform = Platform {
            properties: self
                .platform
                .iter()
                .map(|(name, value)| Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        };
        let mut output_paths = self.output_paths.clone();
        output_paths.sort();
        let command = Command {
            arguments: self.arguments.clone(),
            environment_variables: self
                .environment
                .iter()
                .map(|(name, value)| EnvironmentVariable {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            output_paths,
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let action = Action {
            input_root_digest: Some(
                self.input_root
                    .unwrap_or_else(|| Digest::of(&Directory::default().encode_to_vec()))
                    .to_proto(),
            ),
            timeout: Some(prost_types::Duration {
                seconds: self.timeout.as_secs() as i64,
                nanos: self.timeout.subsec_nanos() as i32,
            }),
            do_not_cache: self.do_not_cache,
            platform: Some(platform),
            ..Default::default()
        };
        (command, action)
    }
}

/// An input tree to upload with [`Remote::put_tree`]: files, directories
/// and symlinks by name (sorted, as REAPI wants).
#[derive(Clone, Debug, Default)]
pub struct InputDirectory {
    files: BTreeMap<String, (Bytes, bool)>,
    directories: BTreeMap<String, InputDirectory>,
    symlinks: BTreeMap<String, String>,
}

impl InputDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a regular file `name` holding `contents`.
    pub fn file(mut self, name: &str, contents: impl Into<Bytes>) -> Self {
        self.files.insert(name.into(), (contents.into(), false));
        self
    }

    /// With an executable file `name` holding `contents`.
    pub fn executable(mut self, name: &str, contents: impl Into<Bytes>) -> Self {
        self.files.insert(name.into(), (contents.into(), true));
        self
    }

    /// With a subdirectory `name`.
    pub fn directory(mut self, name: &str, child: InputDirectory) -> Self {
        self.directories.insert(name.into(), child);
        self
    }

    /// With a symlink `name` pointing at `target`.
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.symlinks.insert(name.into(), target.into());
        self
    }
}

/// A FileNode.
pub fn file_node(name: &str, digest: Digest, executable: bool) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        is_executable: executable,
        node_properties: None,
    }
}

/// A DirectoryNode.
pub fn directory_node(name: &str, digest: Digest) -> DirectoryNode {
    DirectoryNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
    }
}

/// A SymlinkNode.
pub fn symlink_node(name: &str, target: &str) -> SymlinkNode {
    SymlinkNode {
        name: name.into(),
        target: target.into(),
        node_properties: None,
    }
}

/// The code and message of the response's status (OK if it has none).
pub fn status_of(response: &ExecuteResponse) -> (Code, &str) {
    match &response.status {
        Some(status) => (Code::from(status.code), status.message.as_str()),
        None => (Code::Ok, ""),
    }
}

/// Checks that the action was refused with `code` and a message that
/// contains every one of `named`.
pub fn ensure_refused(
    remote: &Remote,
    response: &ExecuteResponse,
    code: Code,
    named: &[&str],
) -> Result<()> {
    let (actual, message) = status_of(response);
    ensure!(
        actual == code,
        "expected {code:?} naming {named:?}, got {}",
        remote.describe(response)
    );
    let missing: Vec<_> = named.iter().filter(|n| !message.contains(*n)).collect();
    ensure!(
        missing.is_empty(),
        "the {code:?} message {message:?} does not name {missing:?}"
    );
    Ok(())
}

/// Whether `message` holds `figure` as a number, written plainly or with
/// `,`, `_` or spaces between digit groups.
pub fn names_figure(message: &str, figure: u64) -> bool {
    let chars: Vec<char> = message.chars().collect();
    let mut plain = String::with_capacity(message.len());
    for (i, c) in chars.iter().enumerate() {
        let between_digits = i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if matches!(c, ',' | '_' | ' ') && between_digits {
            continue;
        }
        plain.push(*c);
    }
    plain
        .split(|c: char| !c.is_ascii_digit())
        .any(|number| number == figure.to_string())
}

/// The last `max` bytes of `text` (at a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_found_however_they_are_grouped() {
        let message = "input tree has 335,922 entries, over max_input_entries (200_000)";
        assert!(names_figure(message, 335_922));
        assert!(names_figure(message, 200_000));
        assert!(!names_figure(message, 33_592));
        assert!(names_figure("cap 268435456 bytes", 268_435_456));
        assert!(!names_figure("cap 2684354560 bytes", 268_435_456));
    }
}
