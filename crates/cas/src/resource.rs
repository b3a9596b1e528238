//! ByteStream resource names, as REAPI defines them:
//! - reads: `{instance}/blobs/{hash}/{size}`
//! - writes: `{instance}/uploads/{uuid}/blobs/{hash}/{size}[/{anything}]`
//!
//! The instance name may be empty or contain slashes. `compressed-blobs`
//! names are recognised and refused, since Lazybarn advertises no compressor.

use crate::digest::Digest;
use crate::error::{CasError, Result};

/// A parsed resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    /// The instance name in front of the blob part; may be empty.
    pub instance: String,
    /// The blob the resource is about.
    pub digest: Digest,
    /// For uploads, the client's upload id (the uuid segment).
    pub upload_id: Option<String>,
}

impl ResourceName {
    /// Parses the name of a blob to read.
    pub fn parse_read(name: &str) -> Result<Self> {
        let segments: Vec<&str> = name.split('/').collect();
        let at = find_blobs(name, &segments)?;
        Ok(ResourceName {
            instance: segments[..at].join("/"),
            digest: parse_digest(name, &segments[at + 1..])?,
            upload_id: None,
        })
    }

    /// Parses the name of a blob to write.
    pub fn parse_write(name: &str) -> Result<Self> {
        let segments: Vec<&str> = name.split('/').collect();
        let at = find_blobs(name, &segments)?;
        if at < 2 || segments[at - 2] != "uploads" || segments[at - 1].is_empty() {
            return Err(invalid(
                name,
                "expected {instance}/uploads/{uuid}/blobs/{hash}/{size}",
            ));
        }
        Ok(ResourceName {
            instance: segments[..at - 2].join("/"),
            digest: parse_digest(name, &segments[at + 1..])?,
            upload_id: Some(segments[at - 1].to_string()),
        })
    }
}

fn invalid(name: &str, why: &str) -> CasError {
    CasError::InvalidArgument(format!("invalid resource name {name:?}: {why}"))
}

fn find_blobs(name: &str, segments: &[&str]) -> Result<usize> {
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "blobs" => return Ok(i),
            "compressed-blobs" => {
                return Err(CasError::Unimplemented(format!(
                    "resource {name:?} asks for compressed blobs; this server stores them uncompressed only"
                )));
            }
            _ => {}
        }
    }
    Err(invalid(name, "no blobs/{hash}/{size} part"))
}

/// Reads `{hash}/{size}` (optionally preceded by a digest function name)
/// from the segments after `blobs`; anything after them is ignored.
fn parse_digest(name: &str, rest: &[&str]) -> Result<Digest> {
    let rest = match rest.first() {
        Some(&"sha256") => &rest[1..],
        Some(f)
            if f.len() < 64
                && f.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && rest.len() >= 3 =>
        {
            return Err(invalid(
                name,
                &format!("digest function {f:?} is not supported; this server uses sha256"),
            ));
        }
        _ => rest,
    };
    let [hash, size, ..] = rest else {
        return Err(invalid(name, "expected blobs/{hash}/{size}"));
    };
    let size = size
        .parse::<i64>()
        .map_err(|_| invalid(name, &format!("size {size:?} is not a number")))?;
    Digest::from_parts(hash, size).map_err(|e| invalid(name, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        Digest::of(b"x").hash_hex()
    }

    #[test]
    fn read_names() {
        let h = hash();
        let r = ResourceName::parse_read(&format!("blobs/{h}/1")).expect("plain");
        assert_eq!((r.instance.as_str(), r.digest), ("", Digest::of(b"x")));
        let r = ResourceName::parse_read(&format!("a/b/c/blobs/{h}/1")).expect("nested");
        assert_eq!(r.instance, "a/b/c");
        let r = ResourceName::parse_read(&format!("main/blobs/sha256/{h}/1")).expect("fn");
        assert_eq!(r.digest, Digest::of(b"x"));
    }

    #[test]
    fn write_names() {
        let h = hash();
        let w = ResourceName::parse_write(&format!("inst/uploads/u-1/blobs/{h}/1/extra/meta"))
            .expect("write");
        assert_eq!(w.instance, "inst");
        assert_eq!(w.upload_id.as_deref(), Some("u-1"));
        let w = ResourceName::parse_write(&format!("uploads/u/blobs/{h}/1")).expect("no instance");
        assert_eq!(w.instance, "");
    }

    #[test]
    fn bad_names_are_named() {
        let h = hash();
        for bad in [
            "nothing/here".to_string(),
            format!("blobs/{h}"),
            format!("blobs/{h}/big"),
            format!("blobs/{}/1", &h[..10]),
            format!("blobs/md5/{h}/1"),
        ] {
            let err = ResourceName::parse_read(&bad).expect_err(&bad);
            assert!(err.to_string().contains(&bad[..10]), "{err}");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        let err = ResourceName::parse_write(&format!("inst/blobs/{h}/1")).expect_err("no uuid");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = ResourceName::parse_read(&format!("compressed-blobs/zstd/{h}/1"))
            .expect_err("compressed");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
}
