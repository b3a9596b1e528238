//! A blob store on local disk: one file per blob, crash-safe, bounded in size.
//!
//! Layout under the store's directory:
//! - `blobs/{first two hex digits}/{hash}-{size}`: one file per blob;
//! - `tmp/`: blobs being written. A blob is written there, hashed as it is
//!   written, flushed to disk, and renamed into `blobs/` only when its hash
//!   and size match. A crash therefore never leaves a partial or corrupt blob
//!   under `blobs/`; whatever is left in `tmp/` is removed at start-up.
//!
//! The index (which blobs exist, in least-recently-used order) lives in
//! memory and is rebuilt from `blobs/` at start-up, oldest files first.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use lru::LruCache;

use super::{BlobStore, BlobWriter, check_write_fits, clamp_range};
use crate::digest::{Digest, DigestHasher, check_hashed, verify};
use crate::error::{CasError, Result};

/// Above this many blobs in one batch, one `syncfs` replaces per-file
/// fsyncs: measured here, it flushes a batch of three 1 MiB blobs faster
/// than three fsyncs, and a batch of a thousand 4 KiB blobs far faster.
const SYNCFS_BATCH: usize = 1;

/// Blobs as files under one directory.
#[derive(Clone)]
pub struct DiskStore {
    shared: Arc<Shared>,
}

struct Shared {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

struct Index {
    lru: LruCache<Digest, ()>,
    bytes: u64,
}

/// Creates `dir` if needed and makes it its owner's alone (0700). Build
/// commands run on the same hosts as unprivileged users; the store holds
/// every client's blobs, which no action may list or read from here.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).map_err(|e| CasError::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| CasError::io(format!("making {} private", dir.display()), e))
}

impl DiskStore {
    /// Opens (creating if needed) a store under `dir` holding at most
    /// `max_bytes`: removes unfinished writes and rebuilds the index. `dir`
    /// is made 0700.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        create_private_dir(dir)?;
        let blobs_dir = dir.join("blobs");
        let tmp_dir = dir.join("tmp");
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)
                .map_err(|e| CasError::io(format!("removing {}", tmp_dir.display()), e))?;
        }
        for d in [&blobs_dir, &tmp_dir] {
            fs::create_dir_all(d)
                .map_err(|e| CasError::io(format!("creating {}", d.display()), e))?;
        }
        for shard in 0..=255u8 {
            let d = blobs_dir.join(hex::encode([shard]));
            fs::create_dir_all(&d)
                .map_err(|e| CasError::io(format!("creating {}", d.display()), e))?;
        }
        let shared = Shared {
            blobs_dir,
            tmp_dir,
            max_bytes,
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
        };
        shared.load_index()?;
        let evicted = shared.evict_over_limit(None);
        shared.remove_files(&evicted);
        Ok(DiskStore {
            shared: Arc::new(shared),
        })
    }

    /// The file holding a blob, when the store has it. Readers on the same
    /// machine may open it directly instead of copying through gRPC; the file
    /// is never modified, but may be unlinked by eviction.
    pub fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.shared
            .touch(digest)
            .then(|| self.shared.path_of(digest))
    }

    /// Bytes of blobs currently stored.
    pub fn stored_bytes(&self) -> u64 {
        self.shared.lock().bytes
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("disk store index lock poisoned")
    }

    fn path_of(&self, digest: &Digest) -> PathBuf {
        let hash = digest.hash_hex();
        self.blobs_dir
            .join(&hash[..2])
            .join(format!("{hash}-{}", digest.size()))
    }

    fn temp_path(&self) -> PathBuf {
        self.tmp_dir.join(uuid::Uuid::new_v4().to_string())
    }

    /// Marks a blob as just used; false when the store does not have it.
    fn touch(&self, digest: &Digest) -> bool {
        digest.is_empty() || self.lock().lru.get(digest).is_some()
    }

    fn forget(&self, digest: &Digest) {
        let mut index = self.lock();
        if index.lru.pop(digest).is_some() {
            index.bytes -= digest.size();
        }
    }

    fn load_index(&self) -> Result<()> {
        let mut found = Vec::new();
        for shard in fs::read_dir(&self.blobs_dir)
            .map_err(|e| CasError::io(format!("listing {}", self.blobs_dir.display()), e))?
        {
            let shard = shard.map_err(|e| CasError::io("listing blob shards", e))?;
            let entries = fs::read_dir(shard.path())
                .map_err(|e| CasError::io(format!("listing {}", shard.path().display()), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| CasError::io("listing blobs", e))?;
                let path = entry.path();
                let meta = entry
                    .metadata()
                    .map_err(|e| CasError::io(format!("stat {}", path.display()), e))?;
                match parse_blob_name(&path) {
                    Some(d) if d.size() == meta.len() => {
                        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((mtime, d));
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "removing stray file from the blob store");
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        found.sort();
        let mut index = self.lock();
        for (_, digest) in found {
            index.bytes += digest.size();
            index.lru.push(digest, ());
        }
        tracing::info!(
            blobs = index.lru.len(),
            bytes = index.bytes,
            "blob store index rebuilt"
        );
        Ok(())
    }

    /// Records new blobs and picks what to evict to stay within the bound;
    /// the blobs just added are never picked.
    fn admit(&self, digests: &[Digest]) -> Vec<Digest> {
        {
            let mut index = self.lock();
            for d in digests {
                if index.lru.push(*d, ()).is_none() {
                    index.bytes += d.size();
                }
            }
        }
        self.evict_over_limit(Some(digests))
    }

    fn evict_over_limit(&self, keep: Option<&[Digest]>) -> Vec<Digest> {
        let mut index = self.lock();
        let mut evicted = Vec::new();
        let mut kept = Vec::new();
        while index.bytes > self.max_bytes {
            let Some((d, ())) = index.lru.pop_lru() else {
                break;
            };
            if keep.is_some_and(|k| k.contains(&d)) {
                kept.push(d);
                continue;
            }
            index.bytes -= d.size();
            evicted.push(d);
        }
        for d in kept {
            index.lru.push(d, ());
        }
        evicted
    }

    fn remove_files(&self, digests: &[Digest]) {
        for d in digests {
            if let Err(e) = fs::remove_file(self.path_of(d)) {
                tracing::warn!(digest = %d, error = %e, "could not remove evicted blob");
            }
        }
    }

    fn check_fits(&self, digest: &Digest) -> Result<()> {
        if digest.size() > self.max_bytes {
            return Err(CasError::ResourceExhausted(format!(
                "blob {digest} is larger than the store's limit of {} bytes",
                self.max_bytes
            )));
        }
        Ok(())
    }

    fn read_range(&self, digest: &Digest, start: u64, len: u64) -> Result<Bytes> {
        let path = self.path_of(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(digest);
                return Err(CasError::NotFound(*digest));
            }
            Err(e) => return Err(CasError::io(format!("opening blob {digest}"), e)),
        };
        file.seek(SeekFrom::Start(start))
            .map_err(|e| CasError::io(format!("seeking in blob {digest}"), e))?;
        let mut buf = BytesMut::zeroed(len as usize);
        file.read_exact(&mut buf)
            .map_err(|e| CasError::io(format!("reading blob {digest}"), e))?;
        Ok(buf.freeze())
    }

    /// Writes verified blobs to temporary files, makes them durable, and
    /// renames them into place. Durability costs one fsync per file for
    /// small batches and one syncfs for large ones.
    fn store_verified(&self, blobs: &[(Digest, Bytes)]) -> Vec<Result<()>> {
        let mut results: Vec<Result<PathBuf>> = blobs
            .iter()
            .map(|(digest, data)| {
                let temp = self.temp_path();
                write_temp(&temp, data, blobs.len() <= SYNCFS_BATCH)
                    .map(|()| temp)
                    .map_err(|e| CasError::io(format!("writing blob {digest}"), e))
            })
            .collect();
        if blobs.len() > SYNCFS_BATCH
            && let Err(e) = syncfs(&self.tmp_dir)
        {
            let err = format!("flushing {} blobs to disk: {e}", blobs.len());
            for r in results.iter_mut() {
                if let Ok(temp) = r {
                    let _ = fs::remove_file(temp);
                }
                *r = Err(CasError::Io {
                    context: err.clone(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                });
            }
        }
        let mut admitted = Vec::new();
        let outcome = blobs
            .iter()
            .zip(results)
            .map(|((digest, _), temp)| {
                let temp = temp?;
                fs::rename(&temp, self.path_of(digest)).map_err(|e| {
                    let _ = fs::remove_file(&temp);
                    CasError::io(format!("renaming blob {digest} into place"), e)
                })?;
                admitted.push(*digest);
                Ok(())
            })
            .collect();
        let evicted = self.admit(&admitted);
        self.remove_files(&evicted);
        outcome
    }
}

fn write_temp(path: &Path, data: &[u8], fsync: bool) -> std::io::Result<()> {
    let result = (|| {
        let mut file = File::create_new(path)?;
        file.write_all(data)?;
        if fsync {
            file.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

fn syncfs(dir: &Path) -> std::io::Result<()> {
    let d = File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn parse_blob_name(path: &Path) -> Option<Digest> {
    let name = path.file_name()?.to_str()?;
    let (hash, size) = name.split_once('-')?;
    Digest::from_parts(hash, size.parse().ok()?).ok()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking store task panicked")
}

#[async_trait]
impl BlobStore for DiskStore {
    async fn get_range(&self, digest: &Digest, offset: u64, length: Option<u64>) -> Result<Bytes> {
        let (start, len) = clamp_range(digest, offset, length)?;
        if !self.shared.touch(digest) {
            return Err(CasError::NotFound(*digest));
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let shared = self.shared.clone();
        let digest = *digest;
        blocking(move || shared.read_range(&digest, start, len)).await
    }

    async fn get_batch(&self, digests: &[Digest]) -> Vec<Result<Bytes>> {
        // One blocking task for the whole batch: thousands of small blobs
        // would otherwise spend their time in task dispatch.
        let shared = self.shared.clone();
        let digests = digests.to_vec();
        blocking(move || {
            digests
                .iter()
                .map(|d| {
                    if !shared.touch(d) {
                        return Err(CasError::NotFound(*d));
                    }
                    if d.size() == 0 {
                        return Ok(Bytes::new());
                    }
                    shared.read_range(d, 0, d.size())
                })
                .collect()
        })
        .await
    }

    async fn put_batch(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(blobs.len());
            let mut to_write = Vec::new();
            for (digest, data) in blobs {
                let checked = verify(&digest, &data).and_then(|()| shared.check_fits(&digest));
                match checked {
                    Err(e) => results.push(Some(Err(e))),
                    Ok(()) if shared.touch(&digest) => results.push(Some(Ok(()))),
                    Ok(()) if to_write.iter().any(|(d, _)| *d == digest) => {
                        results.push(Some(Ok(())))
                    }
                    Ok(()) => {
                        results.push(None);
                        to_write.push((digest, data));
                    }
                }
            }
            let mut written = shared.store_verified(&to_write).into_iter();
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| written.next().expect("one result per written blob")))
                .collect()
        })
        .await
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut index = self.shared.lock();
        Ok(digests
            .iter()
            .filter(|d| !d.is_empty() && index.lru.get(*d).is_none())
            .copied()
            .collect())
    }

    async fn begin_write(&self, digest: Digest) -> Result<Box<dyn BlobWriter>> {
        self.shared.check_fits(&digest)?;
        let shared = self.shared.clone();
        let temp = shared.temp_path();
        let file = {
            let temp = temp.clone();
            blocking(move || File::create_new(&temp)).await
        }
        .map_err(|e| CasError::io(format!("creating a temporary file for blob {digest}"), e))?;
        Ok(Box::new(DiskWriter {
            shared,
            digest,
            temp,
            file: Some(file),
            hasher: DigestHasher::new(),
        }))
    }
}

/// A blob being streamed into a temporary file.
struct DiskWriter {
    shared: Arc<Shared>,
    digest: Digest,
    temp: PathBuf,
    /// Lent to a blocking task while a write is under way.
    file: Option<File>,
    hasher: DigestHasher,
}

impl DiskWriter {
    fn take_file(&mut self) -> Result<File> {
        self.file.take().ok_or_else(|| CasError::Io {
            context: format!("writing blob {}", self.digest),
            source: std::io::Error::other("an earlier write to this blob failed"),
        })
    }
}

#[async_trait]
impl BlobWriter for DiskWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        check_write_fits(&self.digest, self.hasher.size(), data.len())?;
        let mut file = self.take_file()?;
        let mut hasher = self.hasher.clone();
        let (file, hasher, result) = blocking(move || {
            hasher.update(&data);
            let result = file.write_all(&data);
            (file, hasher, result)
        })
        .await;
        result.map_err(|e| CasError::io(format!("writing blob {}", self.digest), e))?;
        self.file = Some(file);
        self.hasher = hasher;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.hasher.size()
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let file = self.take_file()?;
        let actual = std::mem::take(&mut self.hasher).finish();
        let digest = self.digest;
        check_hashed(&digest, &actual)?;
        if self.shared.touch(&digest) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let temp = self.temp.clone();
        blocking(move || {
            file.sync_all()
                .map_err(|e| CasError::io(format!("flushing blob {digest}"), e))?;
            fs::rename(&temp, shared.path_of(&digest))
                .map_err(|e| CasError::io(format!("renaming blob {digest} into place"), e))?;
            let evicted = shared.admit(&[digest]);
            shared.remove_files(&evicted);
            Ok(())
        })
        .await
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        // After a successful commit the file was renamed away and this fails
        // harmlessly; otherwise it discards the unfinished blob.
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn open(dir: &Path, max: u64) -> DiskStore {
        let store = DiskStore::open(dir, max).expect("open store");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir).expect("store dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "no other user may read the blobs");
        store
    }

    #[tokio::test]
    async fn conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 30);
        conformance::round_trip(&store).await;
        conformance::empty_blob_always_present(&store).await;
        conformance::missing_blob_is_not_found(&store).await;
        conformance::rejects_bad_data(&store).await;
        conformance::streamed_write(&store).await;
        conformance::concurrent_writers_of_one_blob(Arc::new(store.clone())).await;
        let leftovers = fs::read_dir(dir.path().join("tmp")).expect("tmp").count();
        assert_eq!(leftovers, 0, "no temporary file outlives its write");
    }

    #[tokio::test]
    async fn index_survives_restart_and_drops_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs: Vec<_> = (0..40)
            .map(|i| Bytes::from(format!("blob number {i}")))
            .collect();
        let digests: Vec<_> = blobs.iter().map(|b| Digest::of(b)).collect();
        {
            let store = open(dir.path(), 1 << 30);
            let results = store
                .put_batch(digests.iter().copied().zip(blobs.iter().cloned()).collect())
                .await;
            assert!(results.iter().all(|r| r.is_ok()));
            fs::write(dir.path().join("tmp/half-written"), b"partial").expect("leftover");
            let truncated = store.shared.path_of(&Digest::of(b"truncated blob!"));
            fs::write(truncated, b"trunc").expect("stray");
        }
        let store = open(dir.path(), 1 << 30);
        assert!(store.find_missing(&digests).await.expect("find").is_empty());
        for (d, b) in digests.iter().zip(&blobs) {
            assert_eq!(&store.get(d).await.expect("get"), b);
        }
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
        let stray = Digest::of(b"truncated blob!");
        assert_eq!(
            store.find_missing(&[stray]).await.expect("find"),
            vec![stray]
        );
        assert_eq!(
            store.stored_bytes(),
            blobs.iter().map(|b| b.len() as u64).sum::<u64>()
        );
    }

    #[tokio::test]
    async fn evicts_least_recently_used_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 3000);
        let blob = |i: u8| Bytes::from(vec![i; 1000]);
        let d: Vec<_> = (0..4).map(|i| Digest::of(&blob(i))).collect();
        for (i, digest) in d.iter().take(3).enumerate() {
            store.put(*digest, blob(i as u8)).await.expect("put");
        }
        store.get(&d[0]).await.expect("touch the oldest");
        store.put(d[3], blob(3)).await.expect("put");
        assert_eq!(store.find_missing(&d).await.expect("find"), vec![d[1]]);
        assert!(
            !store.shared.path_of(&d[1]).exists(),
            "evicted file removed"
        );
        assert!(store.stored_bytes() <= 3000);
        let err = store
            .put(Digest::of(&[0u8; 3001]), Bytes::from(vec![0u8; 3001]))
            .await
            .expect_err("larger than the store");
        assert!(matches!(err, CasError::ResourceExhausted(_)));

        // A smaller bound at restart evicts the oldest blobs.
        drop(store);
        let store = open(dir.path(), 2000);
        assert_eq!(store.find_missing(&d).await.expect("find").len(), 2);
    }

    #[tokio::test]
    async fn large_batches_are_durable_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 30);
        let blobs: Vec<_> = (0..100u32)
            .map(|i| {
                let b = Bytes::from(i.to_le_bytes().repeat(1000));
                (Digest::of(&b), b)
            })
            .collect();
        let results = store.put_batch(blobs.clone()).await;
        assert!(results.iter().all(|r| r.is_ok()));
        for (d, b) in &blobs {
            assert_eq!(&store.get(d).await.expect("get"), b);
        }
    }

    #[tokio::test]
    async fn a_blob_deleted_behind_our_back_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let d = Digest::of(b"fragile");
        store
            .put(d, Bytes::from_static(b"fragile"))
            .await
            .expect("put");
        fs::remove_file(store.shared.path_of(&d)).expect("rm");
        assert!(matches!(store.get(&d).await, Err(CasError::NotFound(_))));
        assert_eq!(store.find_missing(&[d]).await.expect("find"), vec![d]);
    }
}
