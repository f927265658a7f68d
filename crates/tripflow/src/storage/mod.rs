//! Where the zones live. One bucket-like root, keys with `/`; a local folder here, Amazon S3 in
//! `tripflow-aws`. The stages only speak to [`ObjectStore`], so the local runner and the Lambdas
//! share every line of stage code.
//!
//! Writes are all-or-nothing: an [`ObjectSink`] publishes its object only on [`ObjectSink::finish`];
//! an aborted or dropped sink leaves no object behind. That is how a failed stage leaves no
//! half-written output.

pub mod layout;
pub(crate) mod local;

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use layout::Layout;
pub use local::LocalStore;

use crate::checksum::{Checksum, ChecksumCounter};
use crate::error::{Error, Result};

/// A stream of body chunks.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What a finished write produced: what a manifest pins an object with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size_bytes: u64,
    /// CRC64-NVME for what this version writes (`"crc64nvme": "..."`), MD5 in older manifests.
    #[serde(flatten)]
    pub checksum: Checksum,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// A URL-like description for logs and messages (`file:///data`, `s3://bucket`).
    fn describe(&self) -> String;

    /// The object's size, or `None` if it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>>;

    /// The whole object as a stream of chunks. `ObjectNotFound` if absent.
    async fn get(&self, key: &str) -> Result<ByteStream>;

    /// One byte range (end exclusive). Parquet reads go through here so only needed columns travel.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Starts an all-or-nothing write of `key`.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectSink>>;

    /// Every key under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Removes `key`; absent keys are not an error (reruns delete what may already be gone).
    async fn delete(&self, key: &str) -> Result<()>;

    /// Where the Delta table rooted at `prefix` lives, for delta-rs (which brings its own client).
    async fn lake_location(&self, prefix: &str) -> Result<crate::lake::LakeLocation>;

    /// A small object with its version tag (S3's ETag), for compare-and-swap; `None` if absent.
    async fn get_tagged(&self, key: &str) -> Result<Option<Tagged>>;

    /// Writes `body` only if `key` is as `expect`ed: absent, or still at a tag read before.
    /// `Ok(false)` when another writer got there first (S3's 412 and 409 on conditional writes).
    async fn put_if(&self, key: &str, body: Bytes, expect: Expect<'_>) -> Result<bool>;

    /// Removes `key` only if it is still at `tag`; `Ok(false)` if it changed or is already gone.
    async fn delete_if(&self, key: &str, tag: &str) -> Result<bool>;
}

/// An object read for a compare-and-swap: its bytes and the tag a conditional write names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub body: Bytes,
    pub tag: String,
}

/// What a conditional write expects to find under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    Absent,
    Tag(&'a str),
}

impl Expect<'_> {
    /// The tag this expects, `None` for absent: what a store compares its current tag with.
    pub fn owned(self) -> Option<String> {
        match self {
            Expect::Absent => None,
            Expect::Tag(tag) => Some(tag.to_string()),
        }
    }
}

/// An object being written. Nothing is visible under its key until `finish` returns.
#[async_trait]
pub trait ObjectSink: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Publishes the object and returns its size and CRC64-NVME, which every sink computes as the
    /// bytes go by.
    async fn finish(self: Box<Self>) -> Result<ObjectInfo>;

    /// Throws the partial object away.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Small whole-object helpers shared by every store.
pub async fn put_bytes(store: &dyn ObjectStore, key: &str, body: Bytes) -> Result<ObjectInfo> {
    let mut sink = store.create(key).await?;
    if let Err(err) = sink.write(body).await {
        let _ = sink.abort().await;
        return Err(err);
    }
    sink.finish().await
}

pub async fn put_json<T: Serialize>(store: &dyn ObjectStore, key: &str, value: &T) -> Result<ObjectInfo> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::InvalidInput(format!("serialising {key}: {e}")))?;
    put_bytes(store, key, Bytes::from(body)).await
}

pub async fn get_bytes(store: &dyn ObjectStore, key: &str) -> Result<Bytes> {
    use futures::TryStreamExt;
    let chunks: Vec<Bytes> = store.get(key).await?.try_collect().await?;
    Ok(Bytes::from(chunks.concat()))
}

pub async fn get_json<T: for<'de> Deserialize<'de>>(store: &dyn ObjectStore, key: &str) -> Result<T> {
    let body = get_bytes(store, key).await?;
    serde_json::from_slice(&body).map_err(|e| Error::IntegrityError {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// Streams the object through a checksum like `recorded`'s, without keeping it.
pub async fn checksum_of(store: &dyn ObjectStore, key: &str, recorded: &Checksum) -> Result<ObjectInfo> {
    use futures::TryStreamExt;
    let mut stream = store.get(key).await?;
    let mut counter = ChecksumCounter::like(recorded);
    while let Some(chunk) = stream.try_next().await? {
        counter.update(&chunk);
    }
    Ok(ObjectInfo {
        key: key.to_string(),
        size_bytes: counter.bytes(),
        checksum: counter.finish(),
    })
}

/// Fails with `IntegrityError` unless `key` still has the size and checksum a manifest recorded.
pub async fn verify_object(store: &dyn ObjectStore, expected: &ObjectInfo) -> Result<()> {
    let actual = match checksum_of(store, &expected.key, &expected.checksum).await {
        Err(Error::ObjectNotFound { key }) => return Err(missing_from_store(key)),
        other => other?,
    };
    check_against(expected, &actual)
}

/// A stage's input object being checked against the size and checksum its manifest recorded
/// ([`verify_object`]), by a read of its own on a task of its own, beside the stage's decoding of
/// the same object instead of before it. The stage keeps nothing it wrote from that object unless
/// the check passes, and the check's error wins over any the decoding met on a damaged object.
pub struct InputCheck {
    key: String,
    task: tokio::task::JoinHandle<Result<()>>,
    passed: Arc<AtomicBool>,
}

impl InputCheck {
    pub fn start(store: Arc<dyn ObjectStore>, expected: ObjectInfo) -> Self {
        let passed = Arc::new(AtomicBool::new(false));
        let key = expected.key.clone();
        let task = tokio::spawn({
            let passed = passed.clone();
            async move {
                verify_object(store.as_ref(), &expected).await?;
                passed.store(true, Ordering::Release);
                Ok(())
            }
        });
        InputCheck { key, task, passed }
    }

    /// Set once the check has passed, for work that may go ahead only then.
    pub fn passed(&self) -> Arc<AtomicBool> {
        self.passed.clone()
    }

    /// Waits for the check.
    pub async fn outcome(self) -> Result<()> {
        self.task.await.unwrap_or_else(|err| {
            Err(Error::IntegrityError {
                key: self.key,
                detail: format!("the check against its manifest stopped: {err}"),
            })
        })
    }

    /// What a stage that failed with `err` fails with: the check's error, should it fail too.
    pub async fn error_over(self, err: Error) -> Error {
        self.outcome().await.err().unwrap_or(err)
    }
}

/// Reads a whole object, checking it against the size and checksum a manifest recorded on the way
/// (`IntegrityError` otherwise): verified and read in one GET. For objects small enough to hold.
pub async fn read_verified(store: &dyn ObjectStore, expected: &ObjectInfo) -> Result<Bytes> {
    use futures::TryStreamExt;
    let mut stream = match store.get(&expected.key).await {
        Err(Error::ObjectNotFound { key }) => return Err(missing_from_store(key)),
        other => other?,
    };
    let mut counter = ChecksumCounter::like(&expected.checksum);
    let mut whole = bytes::BytesMut::with_capacity(usize::try_from(expected.size_bytes).unwrap_or(0));
    while let Some(chunk) = stream.try_next().await? {
        counter.update(&chunk);
        whole.extend_from_slice(&chunk);
    }
    let actual = ObjectInfo {
        key: expected.key.clone(),
        size_bytes: counter.bytes(),
        checksum: counter.finish(),
    };
    check_against(expected, &actual)?;
    Ok(whole.freeze())
}

fn missing_from_store(key: String) -> Error {
    Error::IntegrityError {
        key,
        detail: "listed in the manifest but missing from the store".into(),
    }
}

fn check_against(expected: &ObjectInfo, actual: &ObjectInfo) -> Result<()> {
    if actual.checksum != expected.checksum || actual.size_bytes != expected.size_bytes {
        return Err(Error::IntegrityError {
            key: expected.key.clone(),
            detail: format!(
                "manifest says {} bytes with {}, store has {} bytes with {}",
                expected.size_bytes, expected.checksum, actual.size_bytes, actual.checksum
            ),
        });
    }
    Ok(())
}

/// Deletes every key under `prefix` that is not in `keep`: what a rerun leaves of a previous, larger output.
pub async fn delete_stale(store: &dyn ObjectStore, prefix: &str, keep: &[String]) -> Result<usize> {
    let mut deleted = 0;
    for key in store.list(prefix).await? {
        if !keep.contains(&key) {
            store.delete(&key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
