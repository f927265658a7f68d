//! **load.** Puts the curated rows of one source into PostgreSQL (Aurora in AWS, a local cluster for
//! `tripflow run`) as a new version, never deleting the old one, then publishes the run. Applies
//! pending schema migrations, builds the new version as its own table (binary COPY, count check
//! against the curated count, indexes, `ANALYZE`, answers; see [`crate::db::versions`]), checking
//! every curated object against the run's transform manifest in the same GET that reads it for the
//! COPY, then hands the run to [`crate::handoff::publish`]: the lake tables' commits and the database
//! swap. A damaged object, a `LoadCountMismatch`, a timeout or any other failure before the publish
//! leaves every zone and the database as they were; readers see the old version or the new one,
//! never both, never none.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::NaiveDate;
use tokio_postgres::Client;
use tracing::info;

use super::StageContext;
use crate::answers::SlowTally;
use crate::checksum::md5_hex;
use crate::db;
use crate::db::versions::{self, CopyOut, DateShare, StageRequest, TripRows, VersionAnswers};
use crate::error::{Error, Result};
use crate::handoff::manifest::Manifest;
use crate::handoff::{self, IntentState, PublishIntent};
use crate::handoff::{CLEAN, TRANSFORM, TransformOutput};
use crate::parquet_io::ReadAhead;
use crate::progress::{StageProgress, Unit};
use crate::storage::{Layout, get_bytes, get_json, put_json};

pub const STAGE: &str = crate::handoff::LOAD;

pub use crate::handoff::{LoadInput, LoadOutput};

/// The pickup date a curated key's partition names (`…/pickup_date=2021-03-01/…`).
pub fn partition_date(key: &str) -> Result<NaiveDate> {
    key.split('/')
        .find_map(|segment| segment.strip_prefix("pickup_date="))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| Error::IntegrityError {
            key: key.to_string(),
            detail: "no pickup_date=YYYY-MM-DD partition".into(),
        })
}

/// Rows per decoded batch: a share's decoder runs a few batches ahead of its COPY, and two shares
/// copy at once, so a batch of the other stages' 64 K rows (some 9 MB) held that much four times
/// per share (10x load peak RSS 180 MiB).
const COPY_BATCH_ROWS: usize = 16 * 1024;

/// The curated objects of a manifest, streamed into a new version's COPYs, a share of the days each.
struct CuratedRows<'a> {
    ctx: &'a StageContext,
    manifest: &'a Manifest<TransformOutput>,
    progress: &'a StageProgress<'a>,
    /// A fresh count of slow trips against the average transform handed on, when it did: each
    /// share counts its own rows, and the counts are merged as the shares finish.
    slow: Option<SlowTally>,
    counted: Mutex<Option<SlowTally>>,
}

#[async_trait::async_trait]
impl TripRows for CuratedRows<'_> {
    fn rows_per_date(&self) -> Vec<(NaiveDate, u64)> {
        let mut per_date: BTreeMap<NaiveDate, u64> = BTreeMap::new();
        for o in &self.manifest.objects {
            // A key without a date fails the copy itself, with the key named.
            if let Ok(date) = partition_date(&o.object.key) {
                *per_date.entry(date).or_default() += o.rows;
            }
        }
        per_date.into_iter().collect()
    }

    async fn copy_into(&self, share: DateShare, out: &mut CopyOut<'_>) -> Result<()> {
        let mut objects = Vec::new();
        let mut dates = Vec::new();
        for o in &self.manifest.objects {
            let date = partition_date(&o.object.key)?;
            if share.contains(date) {
                objects.push(o.object.clone());
                dates.push(date);
            }
        }
        let mut slow = self.slow.clone();
        // Each file is checked against the manifest in the same GET that reads it: a damaged one
        // fails the COPY, and with it the version, before anything is published.
        let mut batches = ReadAhead::verified_objects(self.ctx.store.clone(), objects, COPY_BATCH_ROWS);
        while let Some((object, batch)) = batches.next_batch().await? {
            out.write_rows(&batch, dates[object]).await?;
            if let Some(slow) = slow.as_mut() {
                slow.add_batch(&batch)?;
            }
            self.progress.advance(batch.num_rows() as u64);
        }
        if let Some(slow) = slow {
            let mut counted = self.counted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match counted.as_mut() {
                Some(total) => total.merge(slow),
                None => *counted = Some(slow),
            }
        }
        Ok(())
    }

    fn streamed_answers(&self, rows_loaded: i64) -> Result<Option<VersionAnswers>> {
        let counted = self
            .counted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        counted
            .map(|slow| slow.finish(rows_loaded, &self.manifest.output.manifest_key))
            .transpose()
    }
}

pub async fn run(ctx: &StageContext, client: &mut Client, input: LoadInput) -> Result<LoadOutput> {
    let layout = Layout::new(input.dataset.clone(), input.period);
    let source_id = layout.source_id();
    let store = &ctx.store;
    let manifest =
        Manifest::<TransformOutput>::read(store.as_ref(), &input.manifest_key, TRANSFORM, &source_id).await?;
    let run_id = manifest.output.run_id.clone();
    if run_id.is_empty() {
        return Err(Error::IntegrityError {
            key: input.manifest_key.clone(),
            detail: "the transform manifest names no run".into(),
        });
    }
    db::migrate(client).await?;
    // A run of this month that died mid-publish is finished first, so versions stay in order.
    handoff::roll_forward(ctx, client, &layout, Some(&run_id)).await?;

    // A retried load of a run that already reached its publish resumes it instead of loading again.
    if let Some(intent) = handoff::accepted_intent(store.as_ref(), &layout, &run_id).await? {
        if intent.state == IntentState::Pending {
            return handoff::publish(ctx, client, intent).await;
        }
        let record: handoff::VersionRecord =
            get_json(store.as_ref(), &layout.version_key(intent.staged.version)).await?;
        return Ok(record.load);
    }
    let intent_key = layout.run_report_key(&run_id, handoff::INTENT_REPORT);

    let manifest_md5 = md5_hex(&get_bytes(store.as_ref(), &input.manifest_key).await?);
    let rows_curated = manifest.output.rows_curated;
    let request = StageRequest {
        source_id: source_id.clone(),
        expected_rows: rows_curated,
        // Recorded by ingest and carried through the clean and transform manifests.
        source_md5: Some(manifest.output.source_md5.clone()).filter(|md5| !md5.is_empty()),
        manifest_key: Some(input.manifest_key.clone()),
        manifest_md5: Some(manifest_md5),
    };
    let progress = StageProgress::begin(ctx.progress.as_ref(), STAGE, Unit::Rows, Some(rows_curated));
    let rows = CuratedRows {
        ctx,
        manifest: &manifest,
        progress: &progress,
        slow: manifest.output.speed_totals.and_then(SlowTally::new),
        counted: Mutex::new(None),
    };
    let staged = versions::stage_version(client, ctx.sessions.as_deref(), &request, &rows).await?;
    let intent = PublishIntent {
        dataset: input.dataset.clone(),
        period: input.period,
        run_id: run_id.clone(),
        clean_manifest_key: layout.run_report_key(&run_id, CLEAN),
        transform_manifest_key: input.manifest_key.clone(),
        staged,
        state: IntentState::Pending,
        created_at: chrono::Utc::now(),
    };
    // Until the intent is stored, the run is not accepted: a failure drops the staged version.
    if let Err(err) = put_json(store.as_ref(), &intent_key, &intent).await {
        versions::discard(client, &intent.staged).await;
        return Err(err);
    }
    let published = handoff::publish(ctx, client, intent).await?;
    info!(
        %source_id,
        version = published.version,
        rows_loaded = published.rows_loaded,
        rows_replaced = published.rows_replaced,
        "load done"
    );
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_date_comes_from_the_key() {
        let key = "curated/yellow/pickup_date=2021-03-07/yellow_tripdata_2021-03.parquet";
        assert_eq!(partition_date(key).unwrap().to_string(), "2021-03-07");
        assert_eq!(
            partition_date("curated/yellow/x.parquet").unwrap_err().name(),
            "IntegrityError"
        );
    }
}
