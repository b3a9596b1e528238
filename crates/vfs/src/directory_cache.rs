//! `DirectoryCache`: the Directory messages a worker has fetched, decoded,
//! kept in memory and shared by every mount (and by native mode).
//!
//! A Directory is named by the digest of its bytes, so an entry can never
//! be stale: whichever action asks for that digest next gets exactly what
//! the CAS would send. Actions of one build declare the same trees again
//! and again (every compile of a Boost user lists the same 1,269 Boost
//! directories), so without this cache each mount fetched each directory
//! it looked into once more, one gRPC round trip at a time.
//!
//! Bytes are checked against the digest before an entry is made; entries
//! are bounded by the total size of their encoded messages and evicted
//! least recently used first. A mount that has loaded a directory keeps its
//! own node table, so eviction never affects a live mount.

use std::sync::Arc;

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::Directory;
use lru::LruCache;
use parking_lot::Mutex;

use crate::error::Result;
use crate::input_tree::decode_directory;

/// Encoded Directory bytes a worker keeps by default: 64 MiB, which holds
/// the trees of many large toolchains and libraries (all of Boost's
/// Directory messages take about 1 MiB).
pub const DEFAULT_DIRECTORY_CACHE_BYTES: u64 = 64 << 20;

/// The largest Directory message a worker reads: 32 MiB, room for hundreds
/// of thousands of entries (more than `max_input_entries` lets an action
/// have). A Directory is read whole before it is decoded, so its size, the
/// client's word until then, is checked first.
pub const MAX_DIRECTORY_BYTES: u64 = 32 << 20;

/// Refuses a Directory digest larger than [`MAX_DIRECTORY_BYTES`], before
/// anything is read (INVALID_ARGUMENT).
pub fn check_directory_size(digest: Digest) -> Result<()> {
    if digest.size() > MAX_DIRECTORY_BYTES {
        return Err(crate::VfsError::InvalidInputRoot(format!(
            "Directory {digest} is {} bytes, more than the {MAX_DIRECTORY_BYTES} a worker reads",
            digest.size()
        )));
    }
    Ok(())
}

/// Decoded Directory messages by digest. See the module documentation.
pub struct DirectoryCache {
    max_bytes: u64,
    state: Mutex<State>,
}

struct State {
    entries: LruCache<Digest, Arc<Directory>>,
    bytes: u64,
}

impl DirectoryCache {
    /// An empty cache holding at most `max_bytes` of encoded messages.
    pub fn new(max_bytes: u64) -> Self {
        DirectoryCache {
            max_bytes,
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The Directory named `digest`, if cached (and marks it recently used).
    pub fn get(&self, digest: &Digest) -> Option<Arc<Directory>> {
        self.state.lock().entries.get(digest).cloned()
    }

    /// Checks `bytes` against `digest`, decodes them, and keeps the result
    /// (unless it alone is larger than the whole cache). Bytes that do not
    /// match their digest are [`VfsError::Corrupt`]
    /// (`FailureKind::Unavailable`: the CAS served bad bytes, a retry may
    /// get good ones); bytes that do not decode are an invalid input root
    /// (`FailureKind::InvalidInput`).
    ///
    /// [`VfsError::Corrupt`]: crate::VfsError::Corrupt
    pub fn insert(&self, digest: Digest, bytes: &Bytes) -> Result<Arc<Directory>> {
        let directory = Arc::new(decode_directory(digest, bytes)?);
        let size = digest.size();
        if size > self.max_bytes {
            return Ok(directory);
        }
        let mut state = self.state.lock();
        // Another mount may have inserted it meanwhile: count it once.
        if state.entries.put(digest, directory.clone()).is_none() {
            state.bytes += size;
        }
        while state.bytes > self.max_bytes {
            match state.entries.pop_lru() {
                Some((evicted, _)) => state.bytes -= evicted.size(),
                None => break,
            }
        }
        Ok(directory)
    }

    /// How many Directory messages are cached.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoded bytes of the cached messages.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::VfsError;
    use lazybarn_proto::reapi::FileNode;
    use prost::Message;

    fn directory(name: &str) -> (Digest, Bytes) {
        let message = Directory {
            files: vec![FileNode {
                name: name.into(),
                digest: Some(Digest::of(name.as_bytes()).to_proto()),
                is_executable: false,
                node_properties: None,
            }],
            ..Default::default()
        };
        let bytes = Bytes::from(message.encode_to_vec());
        (Digest::of(&bytes), bytes)
    }

    #[test]
    fn keeps_what_it_was_given_and_refuses_bytes_of_another_digest() {
        let cache = DirectoryCache::new(1 << 20);
        let (digest, bytes) = directory("a.h");
        assert!(cache.get(&digest).is_none());
        cache.insert(digest, &bytes).expect("valid");
        let cached = cache.get(&digest).expect("cached");
        assert_eq!(cached.files[0].name, "a.h");
        assert_eq!(cache.bytes(), digest.size());

        // The CAS served another blob's bytes: its fault, worth a retry.
        let (other, _) = directory("b.h");
        let err = cache.insert(other, &bytes).expect_err("wrong digest");
        assert!(
            matches!(err, VfsError::Corrupt { digest: d, actual } if d == other && actual == digest),
            "{err}"
        );
        assert_eq!(err.kind(), crate::FailureKind::Unavailable);
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.to_string().contains(&other.to_string()), "{err}");
        assert!(cache.get(&other).is_none());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn bytes_that_match_but_do_not_decode_are_an_invalid_input_root() {
        let cache = DirectoryCache::new(1 << 20);
        // A field tag with wire type 7, which protobuf does not have.
        let bytes = Bytes::from_static(&[0x0f]);
        let digest = Digest::of(&bytes);
        let err = cache.insert(digest, &bytes).expect_err("not a Directory");
        assert!(matches!(err, VfsError::InvalidInputRoot(_)), "{err}");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("does not decode"), "{err}");
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_within_its_bound_evicting_the_least_recently_used() {
        let entries: Vec<_> = (0..10).map(|i| directory(&format!("f{i}.h"))).collect();
        let each = entries[0].0.size();
        assert!(entries.iter().all(|(d, _)| d.size() == each));
        let cache = DirectoryCache::new(each * 4);
        for (digest, bytes) in &entries[..4] {
            cache.insert(*digest, bytes).expect("valid");
        }
        // Touch the first, so the second is the least recently used.
        assert!(cache.get(&entries[0].0).is_some());
        cache.insert(entries[4].0, &entries[4].1).expect("valid");
        assert_eq!(cache.len(), 4);
        assert!(cache.bytes() <= each * 4);
        assert!(cache.get(&entries[0].0).is_some());
        assert!(cache.get(&entries[1].0).is_none());
        for (digest, bytes) in &entries {
            cache.insert(*digest, bytes).expect("valid");
            assert!(cache.bytes() <= each * 4);
        }
        assert_eq!(cache.len(), 4);
        // Inserting the same digest twice counts it once.
        cache.insert(entries[9].0, &entries[9].1).expect("valid");
        assert_eq!(cache.bytes(), each * 4);
    }

    #[test]
    fn a_message_larger_than_the_cache_is_decoded_but_not_kept() {
        let (digest, bytes) = directory("big.h");
        let cache = DirectoryCache::new(digest.size() - 1);
        let decoded = cache.insert(digest, &bytes).expect("valid");
        assert_eq!(decoded.files.len(), 1);
        assert!(cache.is_empty());
    }
}
