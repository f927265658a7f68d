//! A store in front of a real one, for tests that need to see or bend what a stage does to it:
//! count the reads and the bytes they bring back, or refuse every write under one prefix (an S3
//! prefix the role may not write, a read-only folder). Everything else goes to the real store
//! unchanged.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use tripflow::Error;
use tripflow::lake::LakeLocation;
use tripflow::storage::{ByteStream, Expect, ObjectSink, ObjectStore, Tagged};

#[derive(Debug)]
pub struct Intercepted {
    inner: Arc<dyn ObjectStore>,
    refused_prefix: Option<&'static str>,
    bytes_read: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
}

impl Intercepted {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Intercepted {
            inner,
            refused_prefix: None,
            bytes_read: Arc::default(),
            reads: Arc::default(),
        }
    }

    /// Every write under `prefix` fails `StorageRefused`, as S3's `AccessDenied` would.
    pub fn refusing_writes_under(mut self, prefix: &'static str) -> Self {
        self.refused_prefix = Some(prefix);
        self
    }

    /// The bytes every read so far brought back.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    /// The read requests so far (a size, a GET, a ranged GET each count one).
    pub fn reads(&self) -> Arc<AtomicU64> {
        self.reads.clone()
    }

    fn check_write(&self, key: &str) -> tripflow::Result<()> {
        match self.refused_prefix {
            Some(prefix) if key.starts_with(prefix) => Err(Error::StorageRefused {
                action: "writing",
                key: key.to_string(),
                detail: "permission denied".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for Intercepted {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn size(&self, key: &str) -> tripflow::Result<Option<u64>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.size(key).await
    }
    async fn get(&self, key: &str) -> tripflow::Result<ByteStream> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let bytes = self.bytes_read.clone();
        let stream = self.inner.get(key).await?;
        Ok(Box::pin(stream.inspect_ok(move |chunk| {
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        })))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> tripflow::Result<Bytes> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let got = self.inner.get_range(key, range).await?;
        self.bytes_read.fetch_add(got.len() as u64, Ordering::Relaxed);
        Ok(got)
    }
    async fn create(&self, key: &str) -> tripflow::Result<Box<dyn ObjectSink>> {
        self.check_write(key)?;
        self.inner.create(key).await
    }
    async fn list(&self, prefix: &str) -> tripflow::Result<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> tripflow::Result<()> {
        self.inner.delete(key).await
    }
    async fn lake_location(&self, prefix: &str) -> tripflow::Result<LakeLocation> {
        self.inner.lake_location(prefix).await
    }
    async fn get_tagged(&self, key: &str) -> tripflow::Result<Option<Tagged>> {
        let got = self.inner.get_tagged(key).await?;
        if let Some(tagged) = &got {
            self.bytes_read.fetch_add(tagged.body.len() as u64, Ordering::Relaxed);
        }
        Ok(got)
    }
    async fn put_if(&self, key: &str, body: Bytes, expect: Expect<'_>) -> tripflow::Result<bool> {
        self.check_write(key)?;
        self.inner.put_if(key, body, expect).await
    }
    async fn delete_if(&self, key: &str, tag: &str) -> tripflow::Result<bool> {
        self.inner.delete_if(key, tag).await
    }
}
