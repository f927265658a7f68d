//! From "an object was created" to one pipeline execution per uploaded file.
//!
//! The trigger accepts both S3 event notifications (`Records[].s3`, keys URL-encoded) and EventBridge
//! "Object Created" events (`detail.bucket.name`, `detail.object.key`, keys as stored). It skips,
//! with a log line and no error, objects outside `landing/`, objects not named like a TLC file
//! (`yellow_tripdata_2021-03.parquet`), MD5 sidecars, and other buckets' objects.
//!
//! The execution name is derived from bucket, key and version id (or ETag), so the duplicate
//! deliveries S3 and EventBridge are allowed to make start nothing new: while the first run is
//! running, Step Functions answers a StartExecution of the same name and input with that run; after
//! it, with `ExecutionAlreadyExists`, which counts as done. A new upload of the same key is a new
//! version (or a new ETag) and gets a new execution.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};
use tripflow::checksum::parse_md5_hex;
use tripflow::error::Error;
use tripflow::period::{TlcFileName, file_name_of};
use tripflow::stages::ingest::IngestInput;
use tripflow::storage::layout::LANDING;

use crate::s3::MD5_METADATA_KEY;
use crate::sdk_error::{self, Class};

/// Step Functions' limit on execution names.
pub const MAX_EXECUTION_NAME: usize = 80;
/// Hex digits of the bucket+key+version hash in the execution name (64 bits).
const NAME_HASH_HEX: usize = 16;

/// What the trigger function receives: an S3 notification or an EventBridge event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TriggerEvent {
    S3(S3Event),
    EventBridge(EventBridgeEvent<Value>),
}

/// One created object, whatever the notification looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedObject {
    pub bucket: String,
    /// The key as stored (URL-decoded).
    pub key: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
}

/// An event record that is not an object creation: ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub what: String,
    pub reason: String,
}

/// Decodes a key of an S3 event notification: `+` is a space, `%XX` a byte (UTF-8 as a whole).
pub fn decode_s3_key(raw: &str) -> Result<String, Error> {
    let plus_decoded = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_decoded)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| Error::InvalidInput(format!("event key {raw:?} does not decode to UTF-8")))
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

/// The objects an event reports as created, and the records it carries that are something else.
pub fn created_objects(event: &TriggerEvent) -> Result<(Vec<CreatedObject>, Vec<Ignored>), Error> {
    let mut created = Vec::new();
    let mut ignored = Vec::new();
    match event {
        TriggerEvent::S3(s3) => {
            for record in &s3.records {
                let event_name = record.event_name.as_deref().unwrap_or("");
                let bucket = non_empty(record.s3.bucket.name.as_deref());
                let raw_key = non_empty(record.s3.object.key.as_deref());
                let (Some(bucket), Some(raw_key)) = (bucket, raw_key) else {
                    return Err(Error::InvalidInput(format!(
                        "S3 record {event_name:?} names no bucket or key"
                    )));
                };
                // `ObjectCreated:Put` from notifications, `s3:ObjectCreated:Put` from some relays.
                if !event_name.trim_start_matches("s3:").starts_with("ObjectCreated:") {
                    ignored.push(Ignored {
                        what: format!("s3://{bucket}/{raw_key}"),
                        reason: format!("{event_name} is not an object creation"),
                    });
                    continue;
                }
                created.push(CreatedObject {
                    key: decode_s3_key(&raw_key)?,
                    bucket,
                    version_id: non_empty(record.s3.object.version_id.as_deref()),
                    etag: non_empty(record.s3.object.e_tag.as_deref()),
                });
            }
        }
        TriggerEvent::EventBridge(event) => {
            if event.source != "aws.s3" || event.detail_type != "Object Created" {
                ignored.push(Ignored {
                    what: format!("{} event from {}", event.detail_type, event.source),
                    reason: "not an S3 Object Created event".into(),
                });
                return Ok((created, ignored));
            }
            let text = |path: &[&str]| {
                let value = path.iter().try_fold(&event.detail, |v, step| v.get(step));
                non_empty(value.and_then(Value::as_str))
            };
            let (Some(bucket), Some(key)) = (text(&["bucket", "name"]), text(&["object", "key"])) else {
                return Err(Error::InvalidInput(
                    "Object Created event without detail.bucket.name or detail.object.key".into(),
                ));
            };
            // EventBridge carries keys as stored: no URL decoding here.
            created.push(CreatedObject {
                bucket,
                key,
                version_id: text(&["object", "version-id"]),
                etag: text(&["object", "etag"]),
            });
        }
    }
    Ok((created, ignored))
}

/// Why an object starts no execution, or `None` when it should start one.
pub fn skip_reason(object: &CreatedObject, expected_bucket: Option<&str>) -> Option<String> {
    if expected_bucket.is_some_and(|b| b != object.bucket) {
        return Some(format!("bucket {} is not the pipeline's bucket", object.bucket));
    }
    if !object.key.starts_with(LANDING) {
        return Some(format!("outside {LANDING}"));
    }
    let name = file_name_of(&object.key);
    // TlcFileName reads only the stem, so the `.md5` sidecar of a file would pass it too.
    if !name.ends_with(".parquet") || TlcFileName::parse(name).is_none() {
        return Some("not a TLC Parquet file name (like yellow_tripdata_2021-03.parquet)".into());
    }
    None
}

/// A readable, deterministic execution name: the file name's stem, then 16 hex digits of the MD5 of
/// bucket, key and version (version id, else ETag), all within Step Functions' 80 characters of
/// `[A-Za-z0-9_-]`.
pub fn execution_name(object: &CreatedObject) -> String {
    let version = object
        .version_id
        .as_deref()
        .or(object.etag.as_deref().map(|e| e.trim_matches('"')))
        .unwrap_or("");
    let mut hasher = Md5::new();
    for part in [object.bucket.as_str(), object.key.as_str(), version] {
        hasher.update(part.as_bytes());
        // A separator that cannot occur in a bucket name keeps `a`+`bc` apart from `ab`+`c`.
        hasher.update(b"\n");
    }
    let hash = hex::encode(hasher.finalize());
    let stem = file_name_of(&object.key).trim_end_matches(".parquet");
    let readable: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_EXECUTION_NAME - NAME_HASH_HEX - 1)
        .collect();
    format!("{readable}-{}", &hash[..NAME_HASH_HEX])
}

/// What HeadObject told about an object, as far as its MD5 is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectFacts {
    pub metadata_md5: Option<String>,
    pub etag: Option<String>,
    /// `AES256`, `aws:kms`, `aws:kms:dsse`: with KMS the ETag is not the MD5 of the content.
    pub server_side_encryption: Option<String>,
    /// Customer-provided keys (SSE-C): the ETag is not the MD5 either.
    pub customer_key: bool,
}

/// The MD5 ingest must verify: the uploader's `x-amz-meta-md5` if any, else the ETag when it is a
/// plain MD5 (single-part upload, no KMS or customer key), else none (ingest then looks for a
/// `.md5` sidecar).
pub fn expected_md5(facts: &ObjectFacts) -> Option<String> {
    if let Some(md5) = facts.metadata_md5.as_deref().and_then(parse_md5_hex) {
        return Some(md5);
    }
    let kms = facts
        .server_side_encryption
        .as_deref()
        .is_some_and(|s| s.starts_with("aws:kms"));
    if kms || facts.customer_key {
        return None;
    }
    // A multipart ETag ends in `-<parts>`, which parse_md5_hex refuses.
    facts.etag.as_deref().and_then(parse_md5_hex)
}

/// The state machine's input for one object: exactly [`IngestInput`]'s JSON.
pub fn execution_input(object: &CreatedObject, expected_md5: Option<String>) -> Result<String, Error> {
    let input = IngestInput {
        source: format!("s3://{}/{}", object.bucket, object.key),
        expected_md5,
        ..IngestInput::default()
    };
    serde_json::to_string(&input).map_err(|e| Error::InvalidInput(format!("serialising execution input: {e}")))
}

/// Why the trigger failed. Named like the pipeline's errors, for the function's logs and alarms.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error(transparent)]
    Pipeline(#[from] Error),
    /// Throttling, 5xx, network: the asynchronous invocation's retry may succeed.
    #[error("Step Functions unavailable while starting {name}: {detail}")]
    StateMachineUnavailable { name: String, detail: String },
    /// Access denied, no such state machine, invalid input: no retry helps.
    #[error("Step Functions refused to start {name}: {detail}")]
    StartExecutionRejected { name: String, detail: String },
}

impl TriggerError {
    pub fn name(&self) -> &'static str {
        match self {
            TriggerError::Pipeline(err) => err.name(),
            TriggerError::StateMachineUnavailable { .. } => "StateMachineUnavailable",
            TriggerError::StartExecutionRejected { .. } => "StartExecutionRejected",
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            TriggerError::Pipeline(err) => err.is_retryable(),
            TriggerError::StateMachineUnavailable { .. } => true,
            TriggerError::StartExecutionRejected { .. } => false,
        }
    }
}

/// What the trigger did with each object of an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerOutput {
    /// Execution names started. A repeated notification that arrives while the first run is still
    /// running lands here too: Step Functions answers a StartExecution with the same name and input
    /// with the running execution instead of a second one.
    pub started: Vec<String>,
    /// Execution names refused as `ExecutionAlreadyExists`: a duplicate notification after the first
    /// run finished. Nothing new was started.
    pub already_exists: Vec<String>,
    /// `s3://bucket/key: reason` for every object or record that starts nothing.
    pub skipped: Vec<String>,
}

/// The AWS side of the trigger: reading object facts and starting executions.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub s3: aws_sdk_s3::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub state_machine_arn: String,
    pub bucket: Option<String>,
}

/// The outcome of one StartExecution.
enum Started {
    New,
    AlreadyExists,
}

impl Trigger {
    /// HeadObject of the notified version. `None` when it is already gone (deleted or overwritten
    /// before the notification arrived): nothing to ingest.
    async fn object_facts(&self, object: &CreatedObject) -> Result<Option<ObjectFacts>, TriggerError> {
        let head = self
            .s3
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .set_version_id(object.version_id.clone())
            .send()
            .await;
        match head {
            Ok(head) => Ok(Some(ObjectFacts {
                metadata_md5: head.metadata().and_then(|m| m.get(MD5_METADATA_KEY)).cloned(),
                etag: head.e_tag().map(str::to_string).or_else(|| object.etag.clone()),
                server_side_encryption: head.server_side_encryption().map(|s| s.as_str().to_string()),
                customer_key: head.sse_customer_algorithm().is_some(),
            })),
            Err(err) => match crate::s3::s3_error(&self.s3, "inspecting", &object.key, err) {
                Error::ObjectNotFound { .. } => Ok(None),
                other => Err(other.into()),
            },
        }
    }

    async fn start(&self, name: &str, input: String) -> Result<Started, TriggerError> {
        let answer = self
            .sfn
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input)
            .send()
            .await;
        let err = match answer {
            Ok(_) => return Ok(Started::New),
            Err(err) => err,
        };
        if err.as_service_error().is_some_and(|e| e.is_execution_already_exists()) {
            return Ok(Started::AlreadyExists);
        }
        let detail = sdk_error::describe(&err);
        Err(match sdk_error::classify(&err) {
            Class::Transient => TriggerError::StateMachineUnavailable {
                name: name.to_string(),
                detail,
            },
            Class::NotFound | Class::Rejected => TriggerError::StartExecutionRejected {
                name: name.to_string(),
                detail,
            },
        })
    }

    /// Starts one execution per new TLC file of the event. Every object is tried; the first failure
    /// is returned after the others have had their turn (a retried invocation restarts nothing that
    /// already started, thanks to the deterministic names).
    pub async fn handle(&self, event: &TriggerEvent) -> Result<TriggerOutput, TriggerError> {
        let (created, ignored) = created_objects(event)?;
        let mut output = TriggerOutput::default();
        for ignored in ignored {
            info!(what = %ignored.what, reason = %ignored.reason, "event record skipped");
            output.skipped.push(format!("{}: {}", ignored.what, ignored.reason));
        }
        let mut first_error = None;
        for object in created {
            match self.handle_object(&object, &mut output).await {
                Ok(()) => {}
                Err(err) => {
                    warn!(bucket = %object.bucket, key = %object.key, error_type = err.name(), error = %err, "could not start the pipeline");
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(output),
        }
    }

    async fn handle_object(&self, object: &CreatedObject, output: &mut TriggerOutput) -> Result<(), TriggerError> {
        let uri = format!("s3://{}/{}", object.bucket, object.key);
        if let Some(reason) = skip_reason(object, self.bucket.as_deref()) {
            info!(object = %uri, %reason, "object skipped");
            output.skipped.push(format!("{uri}: {reason}"));
            return Ok(());
        }
        let Some(facts) = self.object_facts(object).await? else {
            info!(object = %uri, "object gone before the pipeline could start; skipped");
            output.skipped.push(format!("{uri}: no longer exists"));
            return Ok(());
        };
        let md5 = expected_md5(&facts);
        let name = execution_name(object);
        match self.start(&name, execution_input(object, md5.clone())?).await? {
            Started::New => {
                info!(object = %uri, execution = %name, expected_md5 = md5.as_deref().unwrap_or("-"), "pipeline started");
                output.started.push(name);
            }
            Started::AlreadyExists => {
                info!(object = %uri, execution = %name, "execution already exists: duplicate notification");
                output.already_exists.push(name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str, version: Option<&str>) -> CreatedObject {
        CreatedObject {
            bucket: "tripflow-data".into(),
            key: key.into(),
            version_id: version.map(Into::into),
            etag: None,
        }
    }

    #[test]
    fn s3_event_keys_are_url_decoded() {
        assert_eq!(
            decode_s3_key("landing/yellow+tripdata%282%29.parquet").unwrap(),
            "landing/yellow tripdata(2).parquet"
        );
        assert_eq!(
            decode_s3_key("landing/a%2Bb%3D1.parquet").unwrap(),
            "landing/a+b=1.parquet"
        );
        assert_eq!(decode_s3_key("landing/caf%C3%A9").unwrap(), "landing/café");
        assert_eq!(decode_s3_key("landing/%FF").unwrap_err().name(), "InvalidInput");
    }

    #[test]
    fn objects_outside_landing_or_not_tlc_files_are_skipped() {
        let landing = object("landing/yellow_tripdata_2021-03.parquet", None);
        assert_eq!(skip_reason(&landing, Some("tripflow-data")), None);
        assert!(skip_reason(&landing, Some("other-bucket")).is_some());
        assert!(
            skip_reason(
                &object("raw/yellow/2021-03/yellow_tripdata_2021-03.parquet", None),
                None
            )
            .is_some()
        );
        assert!(skip_reason(&object("landing/notes.txt", None), None).is_some());
        assert!(skip_reason(&object("landing/yellow_tripdata_2021-03.parquet.md5", None), None).is_some());
        assert!(skip_reason(&object("landing/sub/yellow_tripdata_2021-13.parquet", None), None).is_some());
    }

    #[test]
    fn execution_names_are_readable_deterministic_and_version_specific() {
        let v1 = object("landing/yellow_tripdata_2021-03.parquet", Some("v1"));
        let name = execution_name(&v1);
        assert!(name.starts_with("yellow_tripdata_2021-03-"), "{name}");
        assert_eq!(name.len(), "yellow_tripdata_2021-03-".len() + 16);
        assert_eq!(name, execution_name(&v1.clone()));
        assert_ne!(
            name,
            execution_name(&object("landing/yellow_tripdata_2021-03.parquet", Some("v2")))
        );
        let mut other_bucket = v1.clone();
        other_bucket.bucket = "elsewhere".into();
        assert_ne!(name, execution_name(&other_bucket));
        // Without a version id the ETag tells uploads apart, quoted or not.
        let mut etag = object("landing/yellow_tripdata_2021-03.parquet", None);
        etag.etag = Some("\"0123\"".into());
        let mut bare = etag.clone();
        bare.etag = Some("0123".into());
        assert_eq!(execution_name(&etag), execution_name(&bare));
    }

    #[test]
    fn execution_names_keep_to_step_functions_rules_whatever_the_key() {
        let long = format!("landing/yellow_tripdata_2021-03 {} é+&.parquet", "x".repeat(200));
        let name = execution_name(&object(&long, Some("v")));
        assert!(name.len() <= MAX_EXECUTION_NAME, "{} chars", name.len());
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{name}"
        );
        assert!(name.starts_with("yellow_tripdata_2021-03_xxx"), "{name}");
    }

    #[test]
    fn expected_md5_prefers_metadata_and_trusts_only_plain_etags() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        let plain = ObjectFacts {
            etag: Some(format!("\"{md5}\"")),
            ..Default::default()
        };
        assert_eq!(expected_md5(&plain).as_deref(), Some(md5));
        let multipart = ObjectFacts {
            etag: Some(format!("\"{md5}-3\"")),
            ..Default::default()
        };
        assert_eq!(expected_md5(&multipart), None);
        let kms = ObjectFacts {
            server_side_encryption: Some("aws:kms".into()),
            ..plain.clone()
        };
        assert_eq!(expected_md5(&kms), None);
        let sse_c = ObjectFacts {
            customer_key: true,
            ..plain.clone()
        };
        assert_eq!(expected_md5(&sse_c), None);
        let metadata = "d41d8cd98f00b204e9800998ecf8427e";
        let with_metadata = ObjectFacts {
            metadata_md5: Some(metadata.to_uppercase()),
            ..multipart
        };
        assert_eq!(expected_md5(&with_metadata).as_deref(), Some(metadata));
    }

    #[test]
    fn execution_input_is_the_ingest_input_json() {
        let input = execution_input(&object("landing/yellow_tripdata_2021-03.parquet", None), None).unwrap();
        let value: Value = serde_json::from_str(&input).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"source": "s3://tripflow-data/landing/yellow_tripdata_2021-03.parquet", "expected_md5": null,
                "period": null, "allow_shrink": false})
        );
    }

    #[test]
    fn s3_and_eventbridge_events_yield_the_same_object() {
        let s3: TriggerEvent = serde_json::from_value(serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2024-05-01T12:00:00.000Z", "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:X"}, "requestParameters": {"sourceIPAddress": "10.0.0.1"},
            "responseElements": {}, "s3": {"s3SchemaVersion": "1.0", "configurationId": "tripflow",
            "bucket": {"name": "tripflow-data", "ownerIdentity": {"principalId": "X"}, "arn": "arn:aws:s3:::tripflow-data"},
            "object": {"key": "landing/yellow_tripdata_2021-03.parquet", "size": 1, "eTag": "abc", "versionId": "v1", "sequencer": "01"}}
        }]}))
        .unwrap();
        let bridge: TriggerEvent = serde_json::from_value(serde_json::json!({
            "version": "0", "id": "1", "detail-type": "Object Created", "source": "aws.s3", "account": "1",
            "time": "2024-05-01T12:00:00Z", "region": "us-east-1", "resources": ["arn:aws:s3:::tripflow-data"],
            "detail": {"version": "0", "bucket": {"name": "tripflow-data"},
                "object": {"key": "landing/yellow_tripdata_2021-03.parquet", "size": 1, "etag": "abc", "version-id": "v1"}}
        }))
        .unwrap();
        assert!(matches!(s3, TriggerEvent::S3(_)) && matches!(bridge, TriggerEvent::EventBridge(_)));
        let (from_s3, _) = created_objects(&s3).unwrap();
        let (from_bridge, _) = created_objects(&bridge).unwrap();
        assert_eq!(from_s3, from_bridge);
        assert_eq!(from_s3[0].version_id.as_deref(), Some("v1"));
    }

    #[test]
    fn deletions_and_other_events_are_ignored_not_errors() {
        let scheduled: TriggerEvent = serde_json::from_value(serde_json::json!({
            "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}
        }))
        .unwrap();
        let (created, ignored) = created_objects(&scheduled).unwrap();
        assert!(created.is_empty());
        assert_eq!(ignored.len(), 1);
    }
}
