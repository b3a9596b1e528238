//! Uploading what an action produced: asks the CAS which blobs it lacks
//! (one FindMissingBlobs for the whole action), reads the small missing
//! files together in one blocking task and sends them in batches, and
//! streams the large ones from disk.

use bytes::Bytes;
use lazybarn_cas::{CasClient, Digest};
use tonic::Status;

use crate::outputs::BlobData;

/// Files up to this size are read into memory and sent in batches; larger
/// ones are streamed from disk.
const SMALL_FILE: u64 = 1 << 20;

/// What an upload did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    /// Blobs the CAS lacked and received.
    pub blobs_uploaded: usize,
    /// Their total size.
    pub bytes_uploaded: u64,
    /// Blobs the CAS already had.
    pub blobs_present: usize,
}

/// Uploads the blobs the CAS lacks.
pub async fn upload_blobs(
    cas: &CasClient,
    blobs: Vec<(Digest, BlobData)>,
) -> Result<UploadStats, Status> {
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let missing: std::collections::HashSet<Digest> =
        cas.find_missing(&digests).await?.into_iter().collect();
    let mut stats = UploadStats {
        blobs_present: blobs.len() - missing.len(),
        ..Default::default()
    };
    let mut in_memory = Vec::new();
    let mut small_files = Vec::new();
    let mut large_files = Vec::new();
    for (digest, data) in blobs {
        if !missing.contains(&digest) {
            continue;
        }
        stats.blobs_uploaded += 1;
        stats.bytes_uploaded += digest.size();
        match data {
            BlobData::Bytes(bytes) => in_memory.push((digest, bytes)),
            BlobData::File(path) if digest.size() <= SMALL_FILE => small_files.push((digest, path)),
            BlobData::File(path) => large_files.push((digest, path)),
        }
    }
    in_memory.extend(read_small_files(small_files).await?);
    cas.upload(in_memory).await?;
    for (digest, path) in large_files {
        cas.upload_file(digest, &path).await?;
    }
    Ok(stats)
}

async fn read_small_files(
    files: Vec<(Digest, std::path::PathBuf)>,
) -> Result<Vec<(Digest, Bytes)>, Status> {
    tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(digest, path)| {
                let data = std::fs::read(&path).map_err(|e| {
                    Status::internal(format!("reading output {}: {e}", path.display()))
                })?;
                if data.len() as u64 != digest.size() {
                    return Err(Status::internal(format!(
                        "output {} changed after it was hashed",
                        path.display()
                    )));
                }
                Ok((digest, Bytes::from(data)))
            })
            .collect()
    })
    .await
    .map_err(|e| Status::internal(format!("reading outputs: {e}")))?
}
