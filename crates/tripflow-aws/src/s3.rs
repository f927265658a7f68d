//! Amazon S3 as the pipeline's object store. The stages see only [`ObjectStore`]; this is the one
//! place that speaks S3.
//!
//! - Reads stream the body chunk by chunk; Parquet reads use ranged GETs so only the footer and the
//!   projected column chunks travel.
//! - Writes are all-or-nothing like the local store's: up to [`PART_BYTES`] are buffered and sent as
//!   one PutObject; a larger object goes up as a multipart upload that only becomes visible when it
//!   is completed in `finish`, and is aborted on `abort`, on any error, and when the sink is dropped.
//! - Every written object carries its MD5 as user metadata `md5` (`x-amz-meta-md5`), and every
//!   request body is sent with `Content-MD5`, so S3 itself refuses bytes damaged on the way.

use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use tracing::{debug, info, warn};
use tripflow::checksum::{ChecksumCounter, md5_hex};
use tripflow::error::{Error, Result};
use tripflow::storage::{ByteStream, Expect, ObjectInfo, ObjectSink, ObjectStore, Tagged};

use crate::sdk_error::{self, Class};

/// The single-PUT limit and the multipart part size. 8 MiB parts keep a Lambda's write buffer small
/// and allow objects of up to 80 GB (10,000 parts); S3's minimum part size is 5 MiB.
pub const PART_BYTES: usize = 8 << 20;
/// The user metadata key that records an object's MD5 (`x-amz-meta-md5`).
pub const MD5_METADATA_KEY: &str = "md5";
/// CopyObject, used to attach the MD5 to a multipart object, accepts sources up to 5 GiB.
const COPY_OBJECT_LIMIT: u64 = 5 << 30;

/// A bucket as the pipeline's store. Keys are the zone keys of [`tripflow::storage::Layout`].
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// The S3 endpoint when it is not AWS's (moto, LocalStack), for delta-rs's own client.
    endpoint: Option<String>,
    /// The SDK's credentials, resolved for delta-rs when it opens a table; without them (a store
    /// built from a bare client) delta-rs reads the environment, as a Lambda provides it.
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
    timeouts: S3Timeouts,
    /// Multipart uploads open right now (upload id → key), shared by every sink of this store, so
    /// a shutdown can abort them ([`S3Store::abort_in_flight`]).
    in_flight: InFlight,
    /// Registers delta-rs's `s3://` handlers before a Delta table is opened; `None` for a store
    /// built without [`S3Store::with_lake`].
    lake_schemes: Option<fn()>,
}

type InFlight = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

impl S3Store {
    /// A store over `client`; a custom endpoint is taken from `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL` if set. Prefer [`S3Store::from_sdk`], which knows the SDK's endpoint.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
        S3Store {
            client,
            bucket: bucket.into(),
            endpoint,
            credentials: None,
            timeouts: S3Timeouts::default(),
            in_flight: InFlight::default(),
            lake_schemes: None,
        }
    }

    /// The same store, able to open the Delta tables (`lake_location`). Only the functions that
    /// publish (load) need it: delta-rs's S3 handlers are most of a bootstrap's size, and a binary
    /// that never calls this does not link them.
    pub fn with_lake(mut self) -> Self {
        fn register_lake_schemes() {
            static SCHEMES: std::sync::Once = std::sync::Once::new();
            SCHEMES.call_once(|| deltalake_aws::register_handlers(None));
        }
        self.lake_schemes = Some(register_lake_schemes);
        self
    }

    /// A store with its S3 client built from `sdk` (see [`s3_client`]); the Delta tables are reached
    /// at the same endpoint, region and credentials.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, timeouts: &S3Timeouts, bucket: impl Into<String>) -> Self {
        let mut store = S3Store::new(s3_client(sdk, timeouts), bucket);
        if let Some(endpoint) = sdk.endpoint_url() {
            store.endpoint = Some(endpoint.to_string());
        }
        store.credentials = sdk.credentials_provider();
        store.timeouts = *timeouts;
        store
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Aborts every multipart upload a sink of this store has open: what a function being shut down
    /// (SIGTERM) does, so it leaves no billed, invisible parts behind. Returns how many it aborted.
    pub async fn abort_in_flight(&self) -> usize {
        let open: Vec<(String, String)> = match self.in_flight.lock() {
            Ok(mut open) => std::mem::take(&mut *open).into_iter().collect(),
            Err(_) => return 0,
        };
        let mut aborted = 0;
        for (upload_id, key) in open {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                Ok(_) => aborted += 1,
                Err(err) => warn!(%key, error = %sdk_error::describe(&err), "could not abort an upload at shutdown"),
            }
        }
        aborted
    }
}

/// How long the S3 client waits, in seconds (`TRIPFLOW_S3_*_TIMEOUT_S`, read by [`crate::env`]).
/// Body streaming after the response has begun is guarded by the SDK's stalled-stream protection
/// (on by default), not by these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct S3Timeouts {
    /// Opening a connection (TCP and TLS).
    pub connect_s: f64,
    /// From sending a request to the first byte of its response (includes sending an 8 MiB part).
    pub read_s: f64,
    /// One attempt of an operation, start to response; the SDK retries a timed-out attempt.
    pub attempt_s: f64,
}

pub const DEFAULT_S3_CONNECT_TIMEOUT_S: f64 = 5.0;
pub const DEFAULT_S3_READ_TIMEOUT_S: f64 = 60.0;
pub const DEFAULT_S3_ATTEMPT_TIMEOUT_S: f64 = 120.0;

impl Default for S3Timeouts {
    fn default() -> Self {
        S3Timeouts {
            connect_s: DEFAULT_S3_CONNECT_TIMEOUT_S,
            read_s: DEFAULT_S3_READ_TIMEOUT_S,
            attempt_s: DEFAULT_S3_ATTEMPT_TIMEOUT_S,
        }
    }
}

impl S3Timeouts {
    pub fn config(&self) -> aws_smithy_types::timeout::TimeoutConfig {
        use std::time::Duration;
        aws_smithy_types::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs_f64(self.connect_s))
            .read_timeout(Duration::from_secs_f64(self.read_s))
            .operation_attempt_timeout(Duration::from_secs_f64(self.attempt_s))
            .build()
    }
}

/// An S3 client for `sdk`, with `timeouts`. Path-style addressing when an endpoint URL is set
/// (moto, LocalStack and other stand-ins do not serve `bucket.host` names). Checksums only where S3
/// requires them: we send `Content-MD5` ourselves, and the SDK's default CRC32 on every upload part
/// would make multipart completion demand per-part checksums that we do not track.
pub fn s3_client(sdk: &aws_config::SdkConfig, timeouts: &S3Timeouts) -> Client {
    use aws_sdk_s3::config::{Builder, RequestChecksumCalculation};
    let custom_endpoint = sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let config = Builder::from(sdk)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .force_path_style(custom_endpoint)
        .timeout_config(timeouts.config())
        .build();
    Client::from_conf(config)
}

/// Maps an S3 SDK error to the pipeline's error: a timeout is `Timeout` naming what timed out,
/// other transient failures `StorageUnavailable` (both retried by the state machine); a refusal
/// (access denied, 403, a missing bucket) `StorageRefused`, a missing key `ObjectNotFound`, any other
/// rejected request `InvalidInput`: no retry fixes those. `client` supplies the configured timeouts.
pub(crate) fn s3_error<E>(client: &Client, action: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = sdk_error::describe(&err);
    if let Some(kind) = sdk_error::timed_out(&err) {
        let (waiting, after_s) = kind.limit(client.config().timeout_config());
        return Error::Timeout {
            what: format!("{waiting} to S3 for {action} {key} ({detail})"),
            after_s,
        };
    }
    if sdk_error::refused(&err) {
        return Error::StorageRefused {
            action,
            key: key.to_string(),
            detail,
        };
    }
    match sdk_error::classify(&err) {
        Class::Transient => Error::StorageUnavailable {
            action,
            key: key.to_string(),
            detail,
        },
        Class::NotFound => Error::ObjectNotFound { key: key.to_string() },
        Class::Rejected => Error::InvalidInput(format!("{action} {key} refused by S3: {detail}")),
    }
}

fn md5_base64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(bytes))
}

/// `CopySource` is `bucket/key` with the key URL-encoded (our keys carry `=`).
fn copy_source(bucket: &str, key: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{bucket}/{}", utf8_percent_encode(key, KEEP))
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// delta-rs speaks to S3 through object_store, not this SDK client: hand it the same endpoint,
    /// region, credentials (resolved now: a Lambda's role credentials come from its environment) and
    /// timeouts. Commits use conditional puts (`If-None-Match`), so no lock table is needed.
    async fn lake_location(&self, prefix: &str) -> Result<tripflow::lake::LakeLocation> {
        use aws_sdk_s3::config::ProvideCredentials;
        let Some(register_lake_schemes) = self.lake_schemes else {
            return Err(Error::InvalidInput(format!(
                "s3://{}/{prefix}: this store was built without the lake (S3Store::with_lake)",
                self.bucket
            )));
        };
        register_lake_schemes();

        let url = url::Url::parse(&format!("s3://{}/{prefix}", self.bucket))
            .map_err(|e| Error::InvalidInput(format!("s3://{}/{prefix} is not a URL: {e}", self.bucket)))?;
        let config = self.client.config();
        let mut options = std::collections::HashMap::new();
        if let Some(region) = config.region() {
            options.insert("AWS_REGION".to_string(), region.to_string());
        }
        if let Some(endpoint) = &self.endpoint {
            options.insert("AWS_ENDPOINT_URL".to_string(), endpoint.clone());
            if endpoint.starts_with("http://") {
                options.insert("AWS_ALLOW_HTTP".to_string(), "true".to_string());
            }
        }
        if let Some(provider) = &self.credentials {
            let credentials = provider
                .provide_credentials()
                .await
                .map_err(|e| Error::StorageRefused {
                    action: "finding credentials for",
                    key: url.to_string(),
                    detail: e.to_string(),
                })?;
            options.insert("AWS_ACCESS_KEY_ID".to_string(), credentials.access_key_id().to_string());
            options.insert(
                "AWS_SECRET_ACCESS_KEY".to_string(),
                credentials.secret_access_key().to_string(),
            );
            if let Some(token) = credentials.session_token() {
                options.insert("AWS_SESSION_TOKEN".to_string(), token.to_string());
            }
        }
        options.insert("connect_timeout".to_string(), format!("{}s", self.timeouts.connect_s));
        options.insert("timeout".to_string(), format!("{}s", self.timeouts.attempt_s));
        Ok(tripflow::lake::LakeLocation { url, options })
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(head) => Ok(Some(
                head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            )),
            Err(err) => match s3_error(&self.client, "inspecting", key, err) {
                Error::ObjectNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error(&self.client, "reading", key, e))?;
        let stream = futures::stream::try_unfold((object.body, key.to_string()), |(mut body, key)| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, (body, key)))),
                Ok(None) => Ok(None),
                Err(e) => Err(Error::StorageUnavailable {
                    action: "reading",
                    key,
                    detail: e.to_string(),
                }),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.end <= range.start {
            return Ok(Bytes::new());
        }
        let wanted = range.end - range.start;
        let short = |got: u64| Error::IntegrityError {
            key: key.to_string(),
            detail: format!(
                "asked for bytes {}..{} and got {got}: the object is shorter than its reader was told",
                range.start, range.end
            ),
        };
        // HTTP ranges are inclusive at both ends.
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(header)
            .send()
            .await
        {
            Ok(object) => object,
            Err(err) if sdk_error::status(&err) == Some(416) => return Err(short(0)),
            Err(err) => return Err(s3_error(&self.client, "reading a range of", key, err)),
        };
        let body = object.body.collect().await.map_err(|e| Error::StorageUnavailable {
            action: "reading a range of",
            key: key.to_string(),
            detail: e.to_string(),
        })?;
        let bytes = body.into_bytes();
        if bytes.len() as u64 != wanted {
            return Err(short(bytes.len() as u64));
        }
        Ok(bytes)
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectSink>> {
        Ok(Box::new(S3Sink {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            buffer: BytesMut::new(),
            md5: ChecksumCounter::md5(),
            crc: ChecksumCounter::crc64nvme(),
            upload: None,
            in_flight: self.in_flight.clone(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(&self.client, "listing", prefix, e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(err) => match s3_error(&self.client, "deleting", key, err) {
                Error::ObjectNotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn get_tagged(&self, key: &str) -> Result<Option<Tagged>> {
        let object = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(object) => object,
            Err(err) => {
                return match s3_error(&self.client, "reading", key, err) {
                    Error::ObjectNotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let tag = object.e_tag().unwrap_or_default().to_string();
        let body = object.body.collect().await.map_err(|e| Error::StorageUnavailable {
            action: "reading",
            key: key.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Some(Tagged {
            body: body.into_bytes(),
            tag,
        }))
    }

    async fn put_if(&self, key: &str, body: Bytes, expect: Expect<'_>) -> Result<bool> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_md5(md5_base64(&body))
            .metadata(MD5_METADATA_KEY, md5_hex(&body))
            .body(SdkByteStream::from(body));
        let request = match expect {
            Expect::Absent => request.if_none_match("*"),
            Expect::Tag(tag) => request.if_match(tag),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(err) if lost_the_race(&err) => Ok(false),
            Err(err) => Err(s3_error(&self.client, "writing", key, err)),
        }
    }

    async fn delete_if(&self, key: &str, tag: &str) -> Result<bool> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(tag)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if lost_the_race(&err) => Ok(false),
            Err(err) => Err(s3_error(&self.client, "deleting", key, err)),
        }
    }
}

/// A conditional request that found the object other than expected: 412 Precondition Failed, 409
/// when another conditional write to the key was in flight, 404 when an `If-Match` object is gone.
fn lost_the_race<E>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(sdk_error::status(err), Some(412 | 409 | 404))
}

/// A multipart upload in progress.
#[derive(Debug)]
struct Multipart {
    upload_id: String,
    parts: Vec<CompletedPart>,
}

/// A write to S3: one PutObject for small objects, a multipart upload for large ones.
struct S3Sink {
    client: Client,
    bucket: String,
    key: String,
    /// Bytes not yet sent. Never more than `PART_BYTES` plus one written chunk.
    buffer: BytesMut,
    /// For the object's `x-amz-meta-md5`.
    md5: ChecksumCounter,
    /// For the manifests, which pin our zones' objects by CRC64-NVME.
    crc: ChecksumCounter,
    /// Set once the object outgrows one part. Taken (left `None`) when completed or aborted, so
    /// `Drop` knows whether an upload is still open.
    upload: Option<Multipart>,
    in_flight: InFlight,
}

impl S3Sink {
    async fn start_upload(&self) -> Result<Multipart> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| s3_error(&self.client, "starting the upload of", &self.key, e))?;
        let upload_id = created
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| Error::StorageUnavailable {
                action: "starting the upload of",
                key: self.key.clone(),
                detail: "CreateMultipartUpload returned no upload id".into(),
            })?;
        debug!(key = %self.key, %upload_id, "multipart upload started");
        if let Ok(mut open) = self.in_flight.lock() {
            open.insert(upload_id.clone(), self.key.clone());
        }
        Ok(Multipart {
            upload_id,
            parts: Vec::new(),
        })
    }

    async fn upload_part(&mut self, body: Bytes) -> Result<()> {
        if self.upload.is_none() {
            self.upload = Some(self.start_upload().await?);
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(Error::InvalidInput(format!(
                "no multipart upload open for {}",
                self.key
            )));
        };
        let part_number = i32::try_from(upload.parts.len() + 1)
            .map_err(|_| Error::InvalidInput(format!("{} has too many parts", self.key)))?;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload.upload_id)
            .part_number(part_number)
            .content_md5(md5_base64(&body))
            .content_length(body.len() as i64)
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error(&self.client, "uploading a part of", &self.key, e))?;
        upload.parts.push(
            CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    /// Sends every full part the buffer holds beyond the single-PUT limit.
    async fn drain_full_parts(&mut self) -> Result<()> {
        while self.buffer.len() > PART_BYTES {
            let part = self.buffer.split_to(PART_BYTES).freeze();
            self.upload_part(part).await?;
        }
        Ok(())
    }

    async fn abort_upload(&mut self) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        self.forget(&upload.upload_id);
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload.upload_id)
            .send()
            .await
            .map_err(|e| s3_error(&self.client, "aborting the upload of", &self.key, e))?;
        debug!(key = %self.key, upload_id = %upload.upload_id, "multipart upload aborted");
        Ok(())
    }

    /// The upload is no longer open (completed or aborted).
    fn forget(&self, upload_id: &str) {
        if let Ok(mut open) = self.in_flight.lock() {
            open.remove(upload_id);
        }
    }

    async fn put_whole(&mut self, md5_hex: &str) -> Result<()> {
        let body = std::mem::take(&mut self.buffer).freeze();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_md5(md5_base64(&body))
            .content_length(body.len() as i64)
            .metadata(MD5_METADATA_KEY, md5_hex)
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error(&self.client, "writing", &self.key, e))?;
        Ok(())
    }

    async fn complete_upload(&mut self, size: u64, md5_hex: &str) -> Result<()> {
        let last = std::mem::take(&mut self.buffer).freeze();
        if !last.is_empty() {
            self.upload_part(last).await?;
        }
        let Some(upload) = self.upload.as_ref() else {
            return Err(Error::InvalidInput(format!(
                "no multipart upload open for {}",
                self.key
            )));
        };
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(upload.parts.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error(&self.client, "completing the upload of", &self.key, e))?;
        // Completed: nothing left to abort, and the object is now visible.
        if let Some(upload) = self.upload.take() {
            self.forget(&upload.upload_id);
        }
        if size > COPY_OBJECT_LIMIT {
            warn!(key = %self.key, size, "object too large to copy onto itself; its MD5 is only in the manifest");
            return Ok(());
        }
        // A multipart ETag is not an MD5 and metadata cannot be set after the fact: copying the
        // object onto itself with new metadata records it (and leaves a plain-MD5 ETag).
        let copied = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .copy_source(copy_source(&self.bucket, &self.key))
            .metadata_directive(MetadataDirective::Replace)
            .metadata(MD5_METADATA_KEY, md5_hex)
            .send()
            .await;
        if let Err(err) = copied {
            // All-or-nothing: an object without its MD5 is not what `finish` promises.
            let err = s3_error(&self.client, "recording the MD5 of", &self.key, err);
            if let Err(cleanup) = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .send()
                .await
            {
                warn!(key = %self.key, error = %sdk_error::describe(&cleanup), "could not remove object after failed copy");
            }
            return Err(err);
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectSink for S3Sink {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.md5.update(&chunk);
        self.crc.update(&chunk);
        self.buffer.extend_from_slice(&chunk);
        if let Err(err) = self.drain_full_parts().await {
            if let Err(abort_err) = self.abort_upload().await {
                warn!(key = %self.key, error = %abort_err, "could not abort multipart upload after a failed part");
            }
            return Err(err);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo> {
        let size = self.md5.bytes();
        let md5 = self.md5.clone().finish().value().to_string();
        let multipart = self.upload.is_some();
        let written = if multipart {
            self.complete_upload(size, &md5).await
        } else {
            self.put_whole(&md5).await
        };
        if let Err(err) = written {
            if let Err(abort_err) = self.abort_upload().await {
                warn!(key = %self.key, error = %abort_err, "could not abort multipart upload after a failed finish");
            }
            return Err(err);
        }
        let checksum = self.crc.clone().finish();
        info!(key = %self.key, size, %md5, %checksum, multipart, "object written");
        Ok(ObjectInfo {
            key: self.key.clone(),
            size_bytes: size,
            checksum,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.buffer.clear();
        self.abort_upload().await
    }
}

impl Drop for S3Sink {
    /// A sink dropped mid-write (a stage that returned early, a cancelled future) would leave an
    /// invisible but billed upload behind: abort it in the background when a runtime is there.
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else { return };
        self.forget(&upload.upload_id);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(key = %self.key, upload_id = %upload.upload_id, "sink dropped outside a runtime; upload left open");
            return;
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload.upload_id);
        let key = self.key.clone();
        runtime.spawn(async move {
            if let Err(err) = request.send().await {
                warn!(%key, error = %sdk_error::describe(&err), "could not abort the upload of a dropped sink");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_encodes_the_key_but_keeps_its_slashes() {
        assert_eq!(
            copy_source("b", "curated/yellow/pickup_date=2021-03-01/y t.parquet"),
            "b/curated/yellow/pickup_date%3D2021-03-01/y%20t.parquet"
        );
    }

    #[test]
    fn content_md5_is_the_base64_of_the_raw_digest() {
        // RFC 1864's header form: base64 of the 16 digest bytes, not of the hex string.
        assert_eq!(md5_base64(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
