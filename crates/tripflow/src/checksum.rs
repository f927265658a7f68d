//! MD5 computed on the way through, so no stage reads a file twice to check it.

use md5::{Digest, Md5};

/// Feeds chunks into an MD5 and counts bytes.
#[derive(Default, Clone)]
pub struct Md5Counter {
    hasher: Md5,
    bytes: u64,
}

impl Md5Counter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Lower-case hex, the form S3 ETags and `md5sum` use.
    pub fn finish_hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
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

    #[test]
    fn md5_matches_the_reference_digest_whatever_the_chunking() {
        let mut whole = Md5Counter::new();
        whole.update(b"The quick brown fox jumps over the lazy dog");
        let mut chunked = Md5Counter::new();
        for chunk in b"The quick brown fox jumps over the lazy dog".chunks(5) {
            chunked.update(chunk);
        }
        assert_eq!(chunked.bytes(), 43);
        assert_eq!(whole.finish_hex(), "9e107d9d372bb6826bd81d3542a419d6");
        assert_eq!(chunked.finish_hex(), "9e107d9d372bb6826bd81d3542a419d6");
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
