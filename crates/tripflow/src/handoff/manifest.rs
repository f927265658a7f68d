//! Manifests: what each stage wrote (key, size, CRC64-NVME, rows), stored under `reports/`. The next stage
//! checks its input objects against the manifest (load as it reads them, clean and transform beside
//! their decoding) and publishes nothing before they pass, so a file replaced or damaged between
//! stages is caught (`IntegrityError`) instead of silently processed.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{ObjectInfo, ObjectStore, get_json, put_json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest<T> {
    pub stage: String,
    pub source_id: String,
    pub created_at: String,
    /// When the stage began (absent in manifests from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Every object the stage wrote that a later stage reads.
    pub objects: Vec<ManifestObject>,
    /// The stage's output, as returned to the caller.
    pub output: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    #[serde(flatten)]
    pub object: ObjectInfo,
    pub rows: u64,
}

impl<T: Serialize + for<'de> Deserialize<'de>> Manifest<T> {
    pub fn new(stage: &str, source_id: String, objects: Vec<ManifestObject>, output: T) -> Self {
        Manifest {
            stage: stage.to_string(),
            source_id,
            created_at: timestamp(chrono::Utc::now()),
            started_at: None,
            objects,
            output,
        }
    }

    /// Records when the stage began, for the stage timings of the quality report.
    pub fn started(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
        self.started_at = Some(timestamp(at));
        self
    }

    pub async fn write(&self, store: &dyn ObjectStore, key: &str) -> Result<()> {
        put_json(store, key, self).await.map(|_| ())
    }

    /// Reads a manifest written by `stage` for `source_id`, refusing one that belongs to something else.
    pub async fn read(store: &dyn ObjectStore, key: &str, stage: &str, source_id: &str) -> Result<Self> {
        let manifest: Self = match get_json(store, key).await {
            Err(Error::ObjectNotFound { key }) => {
                return Err(Error::IntegrityError {
                    key,
                    detail: format!("no {stage} manifest: run {stage} first"),
                });
            }
            other => other?,
        };
        if manifest.stage != stage || manifest.source_id != source_id {
            return Err(Error::IntegrityError {
                key: key.to_string(),
                detail: format!(
                    "manifest is {}'s for {}, expected {stage}'s for {source_id}",
                    manifest.stage, manifest.source_id
                ),
            });
        }
        Ok(manifest)
    }

    pub fn total_rows(&self) -> u64 {
        self.objects.iter().map(|o| o.rows).sum()
    }
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
