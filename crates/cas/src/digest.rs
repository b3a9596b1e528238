//! Content digests: a SHA-256 hash and a size, as REAPI names blobs.

use std::fmt;

use lazybarn_proto::reapi;
use sha2::{Digest as _, Sha256};

use crate::error::CasError;

/// The address of a blob: its SHA-256 hash and its size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: [u8; 32],
    size: u64,
}

/// SHA-256 of the empty string: the empty blob is always present.
const EMPTY_HASH: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl Digest {
    /// The digest of the empty blob.
    pub const EMPTY: Digest = Digest {
        hash: EMPTY_HASH,
        size: 0,
    };

    /// A digest from its parts.
    pub fn new(hash: [u8; 32], size: u64) -> Self {
        Digest { hash, size }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest {
            hash: Sha256::digest(data).into(),
            size: data.len() as u64,
        }
    }

    /// Parses a hash in hex and a size, as found in a proto or a resource name.
    pub fn from_parts(hash: &str, size: i64) -> Result<Self, CasError> {
        let invalid = |why: &str| CasError::InvalidDigest {
            digest: format!("{hash}/{size}"),
            reason: why.to_string(),
        };
        if hash.len() != 64 {
            return Err(invalid(&format!(
                "hash has {} characters, SHA-256 needs 64",
                hash.len()
            )));
        }
        if !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("hash must be lowercase hexadecimal"));
        }
        if size < 0 {
            return Err(invalid("size is negative"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).map_err(|e| invalid(&e.to_string()))?;
        Ok(Digest::new(bytes, size as u64))
    }

    /// Parses the `hash/size` form.
    pub fn parse(text: &str) -> Result<Self, CasError> {
        let (hash, size) = text
            .split_once('/')
            .ok_or_else(|| CasError::InvalidDigest {
                digest: text.to_string(),
                reason: "expected hash/size".to_string(),
            })?;
        let size = size.parse::<i64>().map_err(|_| CasError::InvalidDigest {
            digest: text.to_string(),
            reason: "size is not a number".to_string(),
        })?;
        Digest::from_parts(hash, size)
    }

    /// Validates a digest received on the wire; a missing one is an error too.
    pub fn from_proto(digest: Option<&reapi::Digest>) -> Result<Self, CasError> {
        let digest = digest.ok_or_else(|| CasError::InvalidDigest {
            digest: String::new(),
            reason: "digest is missing".to_string(),
        })?;
        Digest::from_parts(&digest.hash, digest.size_bytes)
    }

    /// The wire form.
    pub fn to_proto(self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }

    /// The raw hash bytes.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The hash as 64 lowercase hex characters.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this is the empty blob, which every store holds implicitly.
    pub fn is_empty(&self) -> bool {
        self.size == 0 && self.hash == EMPTY_HASH
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Digest> for reapi::Digest {
    fn from(digest: Digest) -> Self {
        digest.to_proto()
    }
}

/// Hashes data as it streams past, and tells at the end whether it matches.
#[derive(Clone, Default)]
pub struct DigestHasher {
    hasher: Sha256,
    size: u64,
}

impl DigestHasher {
    /// A hasher that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.size += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest::new(self.hasher.finalize().into(), self.size)
    }
}

/// Checks that `data` has exactly the digest it claims.
pub fn verify(expected: &Digest, data: &[u8]) -> Result<(), CasError> {
    if data.len() as u64 != expected.size() {
        return Err(CasError::SizeMismatch {
            digest: *expected,
            actual: data.len() as u64,
        });
    }
    check_hashed(expected, &Digest::of(data))
}

/// Checks that `actual`, the digest of bytes hashed as they streamed by,
/// is `expected`: the size first, since a wrong size says more.
pub fn check_hashed(expected: &Digest, actual: &Digest) -> Result<(), CasError> {
    if actual.size() != expected.size() {
        return Err(CasError::SizeMismatch {
            digest: *expected,
            actual: actual.size(),
        });
    }
    if actual != expected {
        return Err(CasError::HashMismatch {
            digest: *expected,
            actual: actual.hash_hex(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn digest_of_known_data() {
        assert_eq!(Digest::of(b"hello").to_string(), format!("{HELLO}/5"));
        assert_eq!(Digest::of(b""), Digest::EMPTY);
        assert!(Digest::EMPTY.is_empty());
        assert!(!Digest::of(b"x").is_empty());
    }

    #[test]
    fn parse_round_trips() {
        let d = Digest::parse(&format!("{HELLO}/5")).expect("valid");
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(Digest::parse(&d.to_string()).expect("valid"), d);
        assert_eq!(Digest::from_proto(Some(&d.to_proto())).expect("valid"), d);
    }

    #[test]
    fn malformed_digests_name_the_value() {
        let upper = HELLO.to_uppercase();
        for (bad, why) in [
            (format!("{upper}/5"), "lowercase"),
            (format!("{}/5", &HELLO[..63]), "63 characters"),
            (format!("{HELLO}0/5"), "65 characters"),
            (format!("{HELLO}/-1"), "negative"),
            (format!("{HELLO}/five"), "not a number"),
            ("zz".repeat(32) + "/1", "hexadecimal"),
            (HELLO.to_string(), "hash/size"),
        ] {
            let err = Digest::parse(&bad).expect_err(&bad).to_string();
            assert!(err.contains(&bad), "{err} should name {bad}");
            assert!(err.contains(why), "{err} should say {why}");
        }
        assert!(Digest::from_proto(None).is_err());
    }

    #[test]
    fn verify_catches_size_and_hash() {
        let d = Digest::of(b"hello");
        assert!(verify(&d, b"hello").is_ok());
        assert!(matches!(
            verify(&d, b"hell"),
            Err(CasError::SizeMismatch { actual: 4, .. })
        ));
        assert!(matches!(
            verify(&d, b"jello"),
            Err(CasError::HashMismatch { .. })
        ));
    }

    #[test]
    fn streaming_hasher_matches_one_shot() {
        let mut h = DigestHasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.size(), 5);
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }
}
