//! Checksums computed on the way through, so no stage reads a file twice to check it.
//!
//! Two algorithms, for two jobs:
//! - **MD5** is what TLC publishes beside its files and what S3's ETag of a single-part upload is:
//!   ingest checks a source against it.
//! - **CRC64-NVME** pins the objects of our own zones in the manifests, and the next stage checks
//!   its inputs against it. It runs on the CPU's carry-less multiply: in `perf` of a whole run it
//!   is 0.3% of the samples for some 280 MB checked or written, where MD5 is 2.3% for the source's
//!   47 MB (and was a tenth of clean's and transform's CPU before). It is also the checksum S3
//!   itself computes and keeps for every object it stores.

use base64::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// A checksum as a manifest records it: one field named for its algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// Base64 of the CRC's 8 big-endian bytes, the form S3 reports (`x-amz-checksum-crc64nvme`).
    Crc64nvme(String),
    /// Lower-case hex. Manifests written before 2026-12-04 pinned objects with MD5; those are still
    /// checked with it.
    Md5(String),
}

impl Checksum {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Crc64nvme(_) => "CRC64-NVME",
            Checksum::Md5(_) => "MD5",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Checksum::Crc64nvme(value) | Checksum::Md5(value) => value,
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.algorithm(), self.value())
    }
}

/// Feeds chunks into one checksum and counts bytes.
#[derive(Clone)]
pub struct ChecksumCounter {
    state: State,
    bytes: u64,
}

#[derive(Clone)]
enum State {
    // Boxed: the CRC's state carries its folding constants (near 300 bytes).
    Crc64nvme(Box<crc_fast::Digest>),
    Md5(Md5),
}

impl ChecksumCounter {
    /// The checksum our zones' objects are recorded with.
    pub fn crc64nvme() -> Self {
        let digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        Self::with(State::Crc64nvme(Box::new(digest)))
    }

    pub fn md5() -> Self {
        Self::with(State::Md5(Md5::new()))
    }

    /// A counter of the algorithm `recorded` was computed with, to check an object against it.
    pub fn like(recorded: &Checksum) -> Self {
        match recorded {
            Checksum::Crc64nvme(_) => Self::crc64nvme(),
            Checksum::Md5(_) => Self::md5(),
        }
    }

    fn with(state: State) -> Self {
        ChecksumCounter { state, bytes: 0 }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        match &mut self.state {
            State::Crc64nvme(digest) => digest.update(chunk),
            State::Md5(hasher) => hasher.update(chunk),
        }
        self.bytes += chunk.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> Checksum {
        match self.state {
            State::Crc64nvme(digest) => {
                Checksum::Crc64nvme(base64::engine::general_purpose::STANDARD.encode(digest.finalize().to_be_bytes()))
            }
            State::Md5(hasher) => Checksum::Md5(hex::encode(hasher.finalize())),
        }
    }
}

/// The lower-case hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// Normalises a caller-given MD5 (hex, any case, optionally quoted like an ETag) or rejects it.
pub fn parse_md5_hex(given: &str) -> Option<String> {
    let trimmed = given.trim().trim_matches('"').to_ascii_lowercase();
    let first_word = trimmed.split_whitespace().next()?.to_string();
    (first_word.len() == 32 && first_word.chars().all(|c| c.is_ascii_hexdigit())).then_some(first_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";

    fn chunked(mut counter: ChecksumCounter, bytes: &[u8], chunk: usize) -> ChecksumCounter {
        for piece in bytes.chunks(chunk) {
            counter.update(piece);
        }
        counter
    }

    #[test]
    fn md5_matches_the_reference_digest_whatever_the_chunking() {
        let whole = chunked(ChecksumCounter::md5(), FOX, FOX.len());
        let in_fives = chunked(ChecksumCounter::md5(), FOX, 5);
        assert_eq!(in_fives.bytes(), 43);
        let expected = Checksum::Md5("9e107d9d372bb6826bd81d3542a419d6".into());
        assert_eq!(whole.finish(), expected);
        assert_eq!(in_fives.finish(), expected);
    }

    #[test]
    fn crc64nvme_matches_the_check_value_in_the_form_s3_reports() {
        // The catalogue's check value for "123456789" is 0xAE8B14860A799888.
        let expected = base64::engine::general_purpose::STANDARD.encode(0xAE8B_1486_0A79_9888u64.to_be_bytes());
        for chunk in [1, 4, 9] {
            let counter = chunked(ChecksumCounter::crc64nvme(), b"123456789", chunk);
            assert_eq!(counter.bytes(), 9);
            assert_eq!(counter.finish(), Checksum::Crc64nvme(expected.clone()));
        }
        // S3's own value for an empty object.
        assert_eq!(
            ChecksumCounter::crc64nvme().finish(),
            Checksum::Crc64nvme("AAAAAAAAAAA=".into())
        );
    }

    #[test]
    fn a_counter_like_a_recorded_checksum_reproduces_it() {
        for recorded in [
            chunked(ChecksumCounter::crc64nvme(), FOX, 7).finish(),
            chunked(ChecksumCounter::md5(), FOX, 7).finish(),
        ] {
            assert_eq!(chunked(ChecksumCounter::like(&recorded), FOX, 11).finish(), recorded);
            assert_ne!(
                chunked(ChecksumCounter::like(&recorded), &FOX[1..], 11).finish(),
                recorded
            );
        }
    }

    #[test]
    fn a_checksum_is_recorded_as_one_field_named_for_its_algorithm() {
        let crc = Checksum::Crc64nvme("AAAAAAAAAAA=".into());
        assert_eq!(
            serde_json::to_value(&crc).unwrap(),
            serde_json::json!({"crc64nvme": "AAAAAAAAAAA="})
        );
        let md5: Checksum = serde_json::from_value(serde_json::json!({"md5": "ab"})).unwrap();
        assert_eq!(md5, Checksum::Md5("ab".into()));
    }

    #[test]
    fn md5_sidecar_and_etag_forms_are_accepted() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        assert_eq!(
            parse_md5_hex(&format!("{}  yellow.parquet\n", md5.to_uppercase())).as_deref(),
            Some(md5)
        );
        assert_eq!(parse_md5_hex(&format!("\"{md5}\"")).as_deref(), Some(md5));
        assert_eq!(parse_md5_hex("abc"), None);
        assert_eq!(parse_md5_hex("9e107d9d372bb6826bd81d3542a419d6-2"), None);
    }
}
