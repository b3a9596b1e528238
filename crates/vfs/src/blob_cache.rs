//! `BlobCache`: one on-disk, content-addressed cache of file blobs per
//! worker, shared by every mount (and by the worker's native mode, which
//! hardlinks from it).
//!
//! Each blob is a read-only file named by its digest. The cache is bounded in
//! bytes and evicts the least recently used blob first, but never a pinned
//! one: a mount pins every blob it has opened until it is unmounted, so a
//! file an action holds open never disappears under it. Pinned blobs are
//! kept out of the LRU list altogether, which makes eviction a plain
//! `pop_lru`. Concurrent requests for one blob share one fetch, and every
//! fetched blob is hashed and compared with its digest before it is renamed
//! into place: a corrupt blob is an error, never served.
//!
//! The cache also holds the worker's [`DirectoryCache`], so everything a
//! worker keeps of its inputs travels together to every mount.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lazybarn_cas::Digest;
use lazybarn_cas::digest::DigestHasher;
use lru::LruCache;
use parking_lot::Mutex;

use crate::directory_cache::{DEFAULT_DIRECTORY_CACHE_BYTES, DirectoryCache};
use crate::error::{Result, VfsError};
use crate::source::BlobSource;

/// How many times a waiter tries again when the blob it waited for was
/// evicted before it could pin it (only when nearly everything is pinned).
const PIN_ATTEMPTS: usize = 3;
/// Bytes hashed per read when verifying a fetched blob.
const HASH_CHUNK: usize = 1 << 20;

type FetchResult = std::result::Result<Duration, Arc<VfsError>>;
type SharedFetch = Shared<BoxFuture<'static, FetchResult>>;

/// How a pinned blob was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obtained {
    /// It was already in the cache.
    Hit,
    /// This call fetched it from the source, taking this long.
    Fetched(Duration),
    /// Another caller was fetching it; this one waited for that fetch.
    Joined,
}

/// The on-disk blob cache. See the module documentation.
pub struct BlobCache {
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    next_tmp: AtomicU64,
    state: Mutex<CacheState>,
    directories: DirectoryCache,
}

struct CacheState {
    /// Blobs no one pins, least recently used first out.
    unpinned: LruCache<Digest, ()>,
    /// Blobs in use, with their pin counts.
    pinned: HashMap<Digest, u32>,
    /// Bytes of every blob present, pinned or not, and of their
    /// executable copies.
    bytes: u64,
    /// Blobs that also have an executable copy (see `executable_path`).
    executable: HashSet<Digest>,
    inflight: HashMap<Digest, SharedFetch>,
}

impl CacheState {
    fn contains(&self, digest: &Digest) -> bool {
        self.pinned.contains_key(digest) || self.unpinned.contains(digest)
    }

    fn try_pin(&mut self, digest: &Digest) -> bool {
        if let Some(count) = self.pinned.get_mut(digest) {
            *count += 1;
            return true;
        }
        if self.unpinned.pop(digest).is_some() {
            self.pinned.insert(*digest, 1);
            return true;
        }
        false
    }
}

impl BlobCache {
    /// Opens (creating if needed) the cache under `root`, holding at most
    /// `max_bytes` of unpinned blobs. Blobs left by a previous run are kept,
    /// oldest first out; half-written temporary files are removed. `root`
    /// is made 0700: actions reach the blobs they were given through their
    /// mount or their hardlinks, and may not list or read the others.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Arc<Self>> {
        fs::create_dir_all(root)
            .map_err(|e| VfsError::io(format!("creating {}", root.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(|e| VfsError::io(format!("making {} private", root.display()), e))?;
        }
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(|e| VfsError::io(format!("clearing {}", tmp.display()), e))?;
        }
        for dir in [&blobs, &tmp] {
            fs::create_dir_all(dir)
                .map_err(|e| VfsError::io(format!("creating {}", dir.display()), e))?;
        }
        for prefix in 0..=255u8 {
            let dir = blobs.join(format!("{prefix:02x}"));
            fs::create_dir_all(&dir)
                .map_err(|e| VfsError::io(format!("creating {}", dir.display()), e))?;
        }
        let cache = BlobCache {
            blobs,
            tmp,
            max_bytes,
            next_tmp: AtomicU64::new(0),
            state: Mutex::new(CacheState {
                unpinned: LruCache::unbounded(),
                pinned: HashMap::new(),
                bytes: 0,
                executable: HashSet::new(),
                inflight: HashMap::new(),
            }),
            directories: DirectoryCache::new(DEFAULT_DIRECTORY_CACHE_BYTES),
        };
        cache.load_existing()?;
        cache.evict();
        Ok(Arc::new(cache))
    }

    fn load_existing(&self) -> Result<()> {
        let mut found = Vec::new();
        let read = |dir: &Path| {
            fs::read_dir(dir).map_err(|e| VfsError::io(format!("listing {}", dir.display()), e))
        };
        for prefix in read(&self.blobs)? {
            let prefix = prefix.map_err(|e| VfsError::io("listing the blob cache", e))?;
            for entry in read(&prefix.path())? {
                let entry = entry.map_err(|e| VfsError::io("listing the blob cache", e))?;
                let Ok(meta) = entry.metadata() else { continue };
                let name = entry.file_name();
                match parse_blob_name(&name.to_string_lossy()) {
                    Some(digest) if digest.size() == meta.len() => {
                        let when = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((when, digest));
                    }
                    // A stray or truncated file can never be served.
                    _ => {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        found.sort();
        let mut state = self.state.lock();
        for (_, digest) in found {
            state.bytes += digest.size();
            state.unpinned.put(digest, ());
        }
        Ok(())
    }

    /// The worker's Directory messages, shared by every mount like the blobs.
    pub fn directories(&self) -> &DirectoryCache {
        &self.directories
    }

    /// Where the blob lives (or will live) in the cache.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hash = digest.hash_hex();
        self.blobs
            .join(&hash[..2])
            .join(format!("{hash}-{}", digest.size()))
    }

    /// A read-only executable (0555) copy of a pinned blob, made on first
    /// use and kept, counted and evicted with the blob.
    ///
    /// The native build directory hardlinks inputs from the cache, and one
    /// inode cannot be 0444 under one name and 0555 under another; without
    /// this copy every executable input was copied into every action.
    /// Bazel marks every input file executable, so that was every input.
    /// Blocking; call it off the async runtime.
    pub fn executable_path(&self, digest: &Digest) -> Result<PathBuf> {
        let path = self.path(digest);
        let executable = executable_name(&path);
        // An eviction deletes the copy after it forgets it, outside the
        // lock; a copy made again in between may be that deletion's victim,
        // so a known copy is trusted only while its file is there.
        if self.state.lock().executable.contains(digest) && executable.exists() {
            return Ok(executable);
        }
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}.x", digest.hash_hex()));
        let made = fs::copy(&path, &tmp)
            .and_then(|_| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555)))
            .and_then(|()| fs::rename(&tmp, &executable));
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            return Err(VfsError::io(
                format!("making an executable copy of blob {digest}"),
                e,
            ));
        }
        let counted = {
            let mut state = self.state.lock();
            if !state.contains(digest) {
                false
            } else {
                if state.executable.insert(*digest) {
                    state.bytes += digest.size();
                }
                true
            }
        };
        if !counted {
            // The blob went meanwhile (it was not pinned): so does its copy.
            let _ = fs::remove_file(&executable);
            return Err(VfsError::io(
                format!("making an executable copy of blob {digest}"),
                std::io::Error::other("the blob left the cache; pin it first"),
            ));
        }
        self.evict();
        Ok(executable)
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.state.lock().contains(digest)
    }

    /// Pins the blob if it is present, without any I/O.
    pub fn try_pin(&self, digest: &Digest) -> bool {
        self.state.lock().try_pin(digest)
    }

    /// Makes the blob present and pins it, fetching it from `source` if
    /// needed (once, however many callers ask at the same time).
    pub async fn pin(
        self: &Arc<Self>,
        digest: Digest,
        source: &Arc<dyn BlobSource>,
    ) -> std::result::Result<Obtained, Arc<VfsError>> {
        for _ in 0..PIN_ATTEMPTS {
            let (fetch, started) = {
                let mut state = self.state.lock();
                if state.try_pin(&digest) {
                    return Ok(Obtained::Hit);
                }
                match state.inflight.get(&digest) {
                    Some(fetch) => (fetch.clone(), false),
                    None => {
                        let fetch = self.start_fetch(digest, source.clone());
                        state.inflight.insert(digest, fetch.clone());
                        (fetch, true)
                    }
                }
            };
            let took = fetch.await?;
            if self.try_pin(&digest) {
                self.evict();
                return Ok(if started {
                    Obtained::Fetched(took)
                } else {
                    Obtained::Joined
                });
            }
        }
        Err(Arc::new(VfsError::io(
            format!("keeping blob {digest} in the cache"),
            std::io::Error::other("the cache is too small for the blobs pinned at once"),
        )))
    }

    /// Releases one pin; an unpinned blob becomes the most recently used.
    pub fn unpin(&self, digest: &Digest) {
        {
            let mut state = self.state.lock();
            let Some(count) = state.pinned.get_mut(digest) else {
                return;
            };
            *count -= 1;
            if *count > 0 {
                return;
            }
            state.pinned.remove(digest);
            state.unpinned.put(*digest, ());
        }
        self.evict();
    }

    /// Bytes held, pinned or not.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    fn start_fetch(self: &Arc<Self>, digest: Digest, source: Arc<dyn BlobSource>) -> SharedFetch {
        let cache = self.clone();
        // A task of its own, so the fetch completes and is cached even if the
        // caller that started it goes away.
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = cache.fetch(digest, source).await;
            let mut state = cache.state.lock();
            state.inflight.remove(&digest);
            match result {
                Ok(()) => {
                    // No eviction here: the waiters pin the blob first, or
                    // a full cache would evict it before anyone could use it.
                    if !state.contains(&digest) {
                        state.bytes += digest.size();
                        state.unpinned.put(digest, ());
                    }
                    Ok(started.elapsed())
                }
                Err(e) => Err(Arc::new(e)),
            }
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(VfsError::io(
                    format!("fetching blob {digest}"),
                    std::io::Error::other(e.to_string()),
                )))
            })
        }
        .boxed()
        .shared()
    }

    async fn fetch(&self, digest: Digest, source: Arc<dyn BlobSource>) -> Result<()> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", digest.hash_hex()));
        let result = self.fetch_into(digest, &source, &tmp).await;
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    async fn fetch_into(
        &self,
        digest: Digest,
        source: &Arc<dyn BlobSource>,
        tmp: &Path,
    ) -> Result<()> {
        if digest.is_empty() {
            fs::File::create(tmp)
                .map_err(|e| VfsError::io(format!("creating {}", tmp.display()), e))?;
        } else {
            source
                .fetch_to_file(digest, tmp)
                .await
                .map_err(|status| VfsError::Fetch {
                    what: "file",
                    digest,
                    message: format!("{:?}: {}", status.code(), status.message()),
                    code: status.code(),
                })?;
        }
        let path = self.path(&digest);
        let tmp = tmp.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let actual = hash_file(&tmp)?;
            if actual != digest {
                return Err(VfsError::Corrupt { digest, actual });
            }
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))
                .map_err(|e| VfsError::io(format!("making {} read-only", tmp.display()), e))?;
            fs::rename(&tmp, &path)
                .map_err(|e| VfsError::io(format!("moving blob {digest} into the cache"), e))
        })
        .await
        .map_err(|e| VfsError::io("verifying a blob", std::io::Error::other(e.to_string())))?
    }

    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut state = self.state.lock();
            while state.bytes > self.max_bytes {
                let Some((digest, ())) = state.unpinned.pop_lru() else {
                    break;
                };
                state.bytes -= digest.size();
                let executable = state.executable.remove(&digest);
                if executable {
                    state.bytes -= digest.size();
                }
                victims.push((digest, executable));
            }
        }
        for (digest, executable) in victims {
            // Processes that hold the file open keep reading it; hardlinks
            // made by the native mode keep their bytes.
            let path = self.path(&digest);
            if executable {
                let _ = fs::remove_file(executable_name(&path));
            }
            let _ = fs::remove_file(path);
        }
    }
}

/// The digest of a file's contents.
pub(crate) fn hash_file(path: &Path) -> Result<Digest> {
    let mut file =
        fs::File::open(path).map_err(|e| VfsError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = DigestHasher::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| VfsError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Where a blob's executable copy lives: beside it, under a name that
/// `load_existing` does not take for a blob (so a restart removes it, and
/// it is made again when needed).
fn executable_name(blob: &Path) -> PathBuf {
    let mut name = blob.as_os_str().to_owned();
    name.push(".x");
    PathBuf::from(name)
}

fn parse_blob_name(name: &str) -> Option<Digest> {
    let (hash, size) = name.split_once('-')?;
    Digest::from_parts(hash, size.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MapSource;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn fetches_once_verifies_and_evicts_only_unpinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Arc::new(MapSource::default());
        let blobs: Vec<_> = (0..4u8).map(|i| source.add(vec![i; 100])).collect();
        let source: Arc<dyn BlobSource> = source.clone();
        let cache = BlobCache::open(dir.path(), 250).expect("open");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path())
            .expect("cache")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "no action may list the cache");
        runtime().block_on(async {
            let results =
                futures::future::join_all((0..8).map(|_| cache.pin(blobs[0], &source))).await;
            let fetched = results
                .iter()
                .filter(|r| matches!(r, Ok(Obtained::Fetched(_))))
                .count();
            assert_eq!(fetched, 1, "{results:?}");
            for _ in 0..8 {
                cache.unpin(&blobs[0]);
            }
            cache.pin(blobs[1], &source).await.expect("pin 1");
            cache.pin(blobs[2], &source).await.expect("pin 2");
            cache.pin(blobs[3], &source).await.expect("pin 3");
        });
        assert!(!cache.contains(&blobs[0]), "the unpinned blob is evicted");
        assert!(cache.contains(&blobs[1]) && cache.contains(&blobs[3]));
        assert_eq!(cache.bytes(), 300, "pinned blobs stay even over budget");
        let reopened = BlobCache::open(dir.path(), 1000).expect("reopen");
        assert!(reopened.contains(&blobs[2]));
    }

    #[test]
    fn an_executable_copy_is_made_once_counted_and_evicted_with_its_blob() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Arc::new(MapSource::default());
        let tool = source.add(vec![7; 100]);
        let other = source.add(vec![8; 100]);
        let source: Arc<dyn BlobSource> = source;
        let cache = BlobCache::open(dir.path(), 250).expect("open");
        let rt = runtime();
        rt.block_on(cache.pin(tool, &source)).expect("pin");
        let first = cache.executable_path(&tool).expect("executable copy");
        let second = cache.executable_path(&tool).expect("again");
        assert_eq!(first, second);
        let meta = fs::metadata(&first).expect("stat");
        assert_eq!(meta.mode() & 0o7777, 0o555);
        assert_eq!(fs::read(&first).expect("read"), vec![7; 100]);
        assert_ne!(
            meta.ino(),
            fs::metadata(cache.path(&tool)).expect("stat").ino(),
            "the blob itself stays 0444"
        );
        assert_eq!(cache.bytes(), 200, "the copy counts against the bound");
        // A copy whose file went (an eviction racing a new pin deletes it
        // late) is made again, and not counted twice.
        fs::remove_file(&first).expect("remove the copy");
        let again = cache.executable_path(&tool).expect("made again");
        assert_eq!(fs::read(&again).expect("read"), vec![7; 100]);
        assert_eq!(cache.bytes(), 200);

        // Over budget once unpinned: the blob and its copy go together.
        cache.unpin(&tool);
        rt.block_on(cache.pin(other, &source)).expect("pin other");
        assert!(!cache.contains(&tool));
        assert!(!first.exists() && !cache.path(&tool).exists());
        assert_eq!(cache.bytes(), 100);
        // A restart forgets copies; they are made again when needed.
        fs::write(dir.path().join("blobs/00/stray.x"), b"x").expect("write");
        let reopened = BlobCache::open(dir.path(), 1000).expect("reopen");
        assert!(!dir.path().join("blobs/00/stray.x").exists());
        assert_eq!(reopened.bytes(), 100);
    }

    #[test]
    fn corrupt_blob_is_an_error_and_never_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Arc::new(MapSource::default());
        let digest = source.add(b"good bytes".to_vec());
        source.corrupt(digest);
        let source: Arc<dyn BlobSource> = source;
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let err = runtime()
            .block_on(cache.pin(digest, &source))
            .expect_err("corrupt");
        assert!(matches!(*err, VfsError::Corrupt { .. }), "{err}");
        assert!(!cache.path(&digest).exists());
        assert!(!cache.contains(&digest));
    }
}
