//! **clean.** Reads the raw object of one source (after checking it against the ingest manifest),
//! row group by row group and only the contract's columns, and applies the rules below. Kept rows go
//! to `clean/`, rejected rows with a `reject_reason` column to `quarantine/`: every input row is
//! accounted for (`rows_in = rows_kept + sum(rows_rejected)`). Returns counts per rule and a verdict:
//! `TooManyRejectedRows` when the rejected share passes the configured limit, in which case no clean
//! object is published (the quarantine file and the report still are, to show why).
//!
//! Rules, first match wins, each counted separately:
//! 1. `null_timestamp`: pickup or dropoff is null.
//! 2. `non_positive_duration`: dropoff - pickup is zero or negative.
//! 3. `outside_period`: pickup is not in the file's month.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{StageContext, Verdict, ingest};
use crate::contract::{self, col};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, ManifestObject};
use crate::parquet_io::{ParquetSink, decode_error, open_stream};
use crate::period::Period;
use crate::storage::Layout;

pub const STAGE: &str = "clean";
pub const REJECT_REASON: &str = "reject_reason";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanInput {
    pub dataset: String,
    pub period: Period,
    pub raw_key: String,
    /// The ingest manifest the raw object is checked against.
    pub manifest_key: String,
    /// Overrides the configured rejection limit for this run.
    #[serde(default)]
    pub max_rejected_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanOutput {
    pub verdict: Verdict,
    pub dataset: String,
    pub period: Period,
    pub clean_key: String,
    pub quarantine_key: String,
    pub manifest_key: String,
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_rejected: RejectCounts,
    pub rejected_ratio: f64,
    pub max_rejected_ratio: f64,
}

/// Why a row was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    NullTimestamp,
    NonPositiveDuration,
    OutsidePeriod,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NullTimestamp => "null_timestamp",
            RejectReason::NonPositiveDuration => "non_positive_duration",
            RejectReason::OutsidePeriod => "outside_period",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectCounts {
    pub null_timestamp: u64,
    pub non_positive_duration: u64,
    pub outside_period: u64,
}

impl RejectCounts {
    pub fn total(&self) -> u64 {
        self.null_timestamp + self.non_positive_duration + self.outside_period
    }

    fn add(&mut self, reason: RejectReason) {
        match reason {
            RejectReason::NullTimestamp => self.null_timestamp += 1,
            RejectReason::NonPositiveDuration => self.non_positive_duration += 1,
            RejectReason::OutsidePeriod => self.outside_period += 1,
        }
    }
}

/// The rule for one row. Timestamps are microseconds since the epoch, TLC local time.
pub fn classify_row(pickup: Option<i64>, dropoff: Option<i64>, period_bounds: (i64, i64)) -> Option<RejectReason> {
    let (Some(pickup), Some(dropoff)) = (pickup, dropoff) else {
        return Some(RejectReason::NullTimestamp);
    };
    if dropoff <= pickup {
        return Some(RejectReason::NonPositiveDuration);
    }
    if pickup < period_bounds.0 || pickup >= period_bounds.1 {
        return Some(RejectReason::OutsidePeriod);
    }
    None
}

fn timestamps<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a TimestampMicrosecondArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| Error::schema_drift(name, "not a canonical timestamp column"))
}

/// Splits a canonical batch into kept rows and rejected rows (with their reasons).
pub fn split_batch(
    batch: &RecordBatch,
    period: Period,
    counts: &mut RejectCounts,
) -> Result<(RecordBatch, RecordBatch)> {
    let pickup = timestamps(batch, col::PICKUP_AT)?;
    let dropoff = timestamps(batch, col::DROPOFF_AT)?;
    let bounds = period.bounds_micros();
    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut reasons = Vec::new();
    for row in 0..batch.num_rows() {
        let value = |a: &TimestampMicrosecondArray| a.is_valid(row).then(|| a.value(row));
        match classify_row(value(pickup), value(dropoff), bounds) {
            None => keep.push(true),
            Some(reason) => {
                keep.push(false);
                counts.add(reason);
                reasons.push(reason.as_str());
            }
        }
    }
    let keep = BooleanArray::from(keep);
    let kept = filter_record_batch(batch, &keep).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let rejected_mask = arrow::compute::not(&keep).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let rejected = filter_record_batch(batch, &rejected_mask).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let mut columns: Vec<ArrayRef> = rejected.columns().to_vec();
    columns.push(Arc::new(StringArray::from(reasons)));
    let rejected =
        RecordBatch::try_new(quarantine_schema(), columns).map_err(|e| Error::InvalidInput(e.to_string()))?;
    Ok((kept, rejected))
}

pub fn quarantine_schema() -> SchemaRef {
    let mut fields: Vec<Field> = contract::canonical_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(REJECT_REASON, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

pub async fn run(ctx: &StageContext, input: CleanInput) -> Result<CleanOutput> {
    let max_rejected_ratio = match input.max_rejected_ratio {
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            return Err(Error::InvalidInput(format!(
                "max_rejected_ratio {r} is not between 0 and 1"
            )));
        }
        None => ctx.config.max_rejected_ratio,
    };
    let layout = Layout::new(input.dataset.clone(), input.period);
    let store = &ctx.store;
    let manifest = ingest::verified_manifest(store, &layout, &input.manifest_key).await?;
    if !manifest.objects.iter().any(|o| o.object.key == input.raw_key) {
        return Err(Error::IntegrityError {
            key: input.raw_key.clone(),
            detail: format!("not listed in the ingest manifest {}", input.manifest_key),
        });
    }

    let (clean_key, quarantine_key) = (layout.clean_key(), layout.quarantine_key());
    info!(raw_key = %input.raw_key, %clean_key, "clean started");
    let (schema, stream) = open_projected(store, &input.raw_key).await?;
    let source = contract::check(&schema)?;
    let row_group_rows = ctx.config.row_group_rows;
    let mut kept_sink =
        ParquetSink::create(store.as_ref(), &clean_key, contract::canonical_schema(), row_group_rows).await?;
    let mut rejected_sink =
        ParquetSink::create(store.as_ref(), &quarantine_key, quarantine_schema(), row_group_rows).await?;

    let mut counts = RejectCounts::default();
    let mut rows_in = 0u64;
    let copied = async {
        let mut stream = stream;
        while let Some(batch) = stream.try_next().await.map_err(|e| decode_error(&input.raw_key, e))? {
            rows_in += batch.num_rows() as u64;
            let canonical = source.canonicalize(&batch)?;
            let (kept, rejected) = split_batch(&canonical, input.period, &mut counts)?;
            kept_sink.write(&kept).await?;
            rejected_sink.write(&rejected).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(err) = copied {
        let _ = kept_sink.abort().await;
        let _ = rejected_sink.abort().await;
        return Err(err);
    }

    let rows_kept = kept_sink.rows();
    if rows_in != manifest.output.rows || rows_kept + counts.total() != rows_in {
        let _ = kept_sink.abort().await;
        let _ = rejected_sink.abort().await;
        return Err(Error::IntegrityError {
            key: input.raw_key.clone(),
            detail: format!(
                "read {rows_in} rows (manifest: {}), kept {rows_kept} + rejected {}",
                manifest.output.rows,
                counts.total()
            ),
        });
    }
    let rejected_ratio = if rows_in == 0 {
        0.0
    } else {
        counts.total() as f64 / rows_in as f64
    };
    let verdict = if rejected_ratio > max_rejected_ratio {
        Verdict::TooManyRejectedRows
    } else {
        Verdict::Ok
    };

    let quarantine = rejected_sink.finish().await?;
    let mut objects = vec![ManifestObject {
        object: quarantine.0,
        rows: quarantine.1,
    }];
    if verdict == Verdict::Ok {
        let kept = kept_sink.finish().await?;
        objects.insert(
            0,
            ManifestObject {
                object: kept.0,
                rows: kept.1,
            },
        );
    } else {
        // The new file failed its verdict: leave no clean object of this period for transform to pick up.
        kept_sink.abort().await?;
        store.delete(&clean_key).await?;
    }
    let output = CleanOutput {
        verdict,
        dataset: input.dataset,
        period: input.period,
        clean_key,
        quarantine_key,
        manifest_key: layout.report_key(STAGE),
        rows_in,
        rows_kept,
        rows_rejected: counts,
        rejected_ratio,
        max_rejected_ratio,
    };
    Manifest::new(STAGE, layout.source_id(), objects, output.clone())
        .write(store.as_ref(), &output.manifest_key)
        .await?;
    info!(
        rows_in,
        rows_kept,
        null_timestamp = counts.null_timestamp,
        non_positive_duration = counts.non_positive_duration,
        outside_period = counts.outside_period,
        rejected_ratio,
        verdict = ?verdict,
        "clean done"
    );
    Ok(output)
}

async fn open_projected(
    store: &Arc<dyn crate::storage::ObjectStore>,
    key: &str,
) -> Result<(
    SchemaRef,
    parquet::arrow::async_reader::ParquetRecordBatchStream<crate::parquet_io::StoreFileReader>,
)> {
    // The footer's schema decides the projection; reading it twice costs one small ranged GET.
    let (full_schema, _) = open_stream(store, key, None).await?;
    let columns = contract::check(&full_schema)?;
    let names = columns.source_columns();
    open_stream(store, key, Some(&names)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::new_null_array;

    const MARCH_2021: (i64, i64) = (1_614_556_800_000_000, 1_617_235_200_000_000);

    #[test]
    fn each_rule_rejects_with_its_reason() {
        let (start, _) = MARCH_2021;
        let minute = 60_000_000;
        assert_eq!(
            classify_row(None, Some(start), MARCH_2021),
            Some(RejectReason::NullTimestamp)
        );
        assert_eq!(
            classify_row(Some(start), None, MARCH_2021),
            Some(RejectReason::NullTimestamp)
        );
        assert_eq!(
            classify_row(Some(start), Some(start), MARCH_2021),
            Some(RejectReason::NonPositiveDuration)
        );
        assert_eq!(
            classify_row(Some(start + minute), Some(start), MARCH_2021),
            Some(RejectReason::NonPositiveDuration)
        );
        assert_eq!(
            classify_row(Some(start - minute), Some(start + minute), MARCH_2021),
            Some(RejectReason::OutsidePeriod)
        );
        assert_eq!(
            classify_row(Some(MARCH_2021.1), Some(MARCH_2021.1 + minute), MARCH_2021),
            Some(RejectReason::OutsidePeriod)
        );
        assert_eq!(classify_row(Some(start), Some(start + minute), MARCH_2021), None);
        // A trip starting in the last second of the month and ending in the next is the month's trip.
        assert_eq!(
            classify_row(Some(MARCH_2021.1 - 1), Some(MARCH_2021.1 + minute), MARCH_2021),
            None
        );
    }

    #[test]
    fn split_accounts_for_every_row() {
        let schema = contract::canonical_schema();
        let (start, _) = MARCH_2021;
        let pickups = TimestampMicrosecondArray::from(vec![Some(start), None, Some(start), Some(start - 10)]);
        let dropoffs = TimestampMicrosecondArray::from(vec![Some(start + 10), Some(start), Some(start), Some(start)]);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                col::PICKUP_AT => Arc::new(pickups.clone()) as ArrayRef,
                col::DROPOFF_AT => Arc::new(dropoffs.clone()) as ArrayRef,
                _ => new_null_array(f.data_type(), 4),
            })
            .collect();
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        let mut counts = RejectCounts::default();
        let (kept, rejected) = split_batch(&batch, "2021-03".parse().unwrap(), &mut counts).unwrap();
        assert_eq!(kept.num_rows(), 1);
        assert_eq!(rejected.num_rows(), 3);
        assert_eq!(
            counts,
            RejectCounts {
                null_timestamp: 1,
                non_positive_duration: 1,
                outside_period: 1
            }
        );
        let reasons = rejected
            .column_by_name(REJECT_REASON)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            reasons.iter().flatten().collect::<Vec<_>>(),
            ["null_timestamp", "non_positive_duration", "outside_period"]
        );
    }
}
