//! **clean.** Reads the raw object of one source (after checking it against the ingest manifest),
//! row group by row group and only the contract's columns, and applies the rules below. Kept rows go
//! to a file of the run in the `clean/` table, rejected rows with a `reject_reason` column to one in
//! `quarantine/`: every input row is accounted for (`rows_in = rows_kept + sum(rows_rejected)`).
//! Readers see neither file until the run is published ([`crate::handoff`]); the run's manifest
//! (`reports/<dataset>/<period>/runs/<run_id>/clean.json`) lists them for transform. Returns counts
//! per rule and a verdict.
//!
//! Two guards decide before anything is published, so a refused file changes nothing readers see:
//! - `TooManyRejectedRows` (a verdict, for the state machine's Choice) when the rejected share
//!   passes the limit; the counts go to the run's own report,
//!   `reports/<dataset>/<period>/runs/<run_id>/clean-refused.json`.
//! - `SuspiciousShrink` (an error) when the file keeps fewer rows than `min_kept_share` of the
//!   month's current clean version, unless the run allows it.
//!
//! Rules, first match wins, each counted under its name (thresholds from [`RuleLimits`]):
//! 1. `null_timestamp`: pickup or dropoff is null.
//! 2. `timestamp_out_of_range`: a timestamp `timestamp[us]` cannot hold (never counted as null).
//! 3. `non_positive_duration`: dropoff <= pickup.
//! 4. `outside_period`: pickup is not in the file's month.
//! 5. `non_finite`: NaN or infinite trip_distance or money column.
//! 6. `negative_distance`: trip_distance < 0.
//! 7. `location_out_of_range`: pickup or dropoff location null or outside 1..=265.
//! 8. `implausible_duration`: longer than `max_trip_hours` (24).
//! 9. `implausible_speed`: trip_distance > 0 at more than `max_speed_mph` (100).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tracing::info;

use super::{StageContext, Verdict};
use crate::config::RuleLimits;
use crate::contract::{self, CanonicalBatch, col, typed_column};
use crate::error::{Error, Result};
use crate::handoff::manifest::{Manifest, ManifestObject};
use crate::handoff::{INGEST, IngestOutput};
use crate::lake::Zone;
use crate::parquet_io::{ColumnParallelSink, ParquetObject, ParquetSink, ReadAhead};
use crate::period::Period;
use crate::progress::{StageProgress, Unit};
use crate::storage::{InputCheck, Layout, ObjectStore, get_json, put_json};

pub const STAGE: &str = crate::handoff::CLEAN;

pub use crate::handoff::{CleanInput, CleanOutput, RejectCounts, RejectReason};
pub const REJECT_REASON: &str = "reject_reason";

/// TLC's taxi zones are 1..=263; 264 and 265 are its "unknown" zones, kept as TLC publishes them.
pub const LOCATION_IDS: std::ops::RangeInclusive<i32> = 1..=265;
const MICROS_PER_HOUR: f64 = 3_600_000_000.0;

/// The limits one run's rules check against: the file's month and the plausibility thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// `[start, end)` of the month, microseconds since the epoch (TLC local time).
    pub period_bounds: (i64, i64),
    pub limits: RuleLimits,
}

impl Rules {
    pub fn new(period: Period, limits: RuleLimits) -> Self {
        Rules {
            period_bounds: period.bounds_micros(),
            limits,
        }
    }
}

/// What the rules look at in one row, in canonical units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Trip {
    /// Microseconds since the epoch; `None` when null in the source.
    pub pickup: Option<i64>,
    pub dropoff: Option<i64>,
    /// A timestamp was present in the source but beyond what `timestamp[us]` holds.
    pub timestamp_out_of_range: bool,
    pub distance: Option<f64>,
    /// Every money column is null or finite.
    pub money_finite: bool,
    pub pu_location: Option<i32>,
    pub do_location: Option<i32>,
}

/// The rules for one row; `None` keeps it.
pub fn classify(trip: &Trip, rules: &Rules) -> Option<RejectReason> {
    let (Some(pickup), Some(dropoff)) = (trip.pickup, trip.dropoff) else {
        // A value nulled only because it could not be represented is not a null in the source.
        return Some(if trip.timestamp_out_of_range {
            RejectReason::TimestampOutOfRange
        } else {
            RejectReason::NullTimestamp
        });
    };
    if dropoff <= pickup {
        return Some(RejectReason::NonPositiveDuration);
    }
    let (start, end) = rules.period_bounds;
    if pickup < start || pickup >= end {
        return Some(RejectReason::OutsidePeriod);
    }
    if !trip.money_finite || trip.distance.is_some_and(|d| !d.is_finite()) {
        return Some(RejectReason::NonFinite);
    }
    if trip.distance.is_some_and(|d| d < 0.0) {
        return Some(RejectReason::NegativeDistance);
    }
    let zone_ok = |id: Option<i32>| id.is_some_and(|id| LOCATION_IDS.contains(&id));
    if !zone_ok(trip.pu_location) || !zone_ok(trip.do_location) {
        return Some(RejectReason::LocationOutOfRange);
    }
    // pickup is inside the month, so the difference cannot overflow.
    let hours = (dropoff - pickup) as f64 / MICROS_PER_HOUR;
    if hours > rules.limits.max_trip_hours {
        return Some(RejectReason::ImplausibleDuration);
    }
    if let Some(distance) = trip.distance
        && distance > 0.0
        && distance / hours > rules.limits.max_speed_mph
    {
        return Some(RejectReason::ImplausibleSpeed);
    }
    None
}

/// The money columns whose non-finite values poison sums (`non_finite`).
const MONEY: [&str; 5] = [
    col::FARE_AMOUNT,
    col::TIP_AMOUNT,
    col::TOTAL_AMOUNT,
    col::CONGESTION_SURCHARGE,
    col::AIRPORT_FEE,
];

/// Rows per quarantine row group. The rejects trickle in a few per batch, so a quarantine writer
/// holds its row group's rows (as 64-bit dictionary indices and plain values) for most of the
/// stage: with the kept rows' 256 K, a 10x month's 46 K rejects were all held until the end, and
/// what clean holds grew with the month. A 1x month's 4.6 K rejects still make one row group.
const QUARANTINE_ROW_GROUP_ROWS: usize = 16 * 1024;

/// Rows per batch decoded from the raw object. Clean holds a few batches decoded at once (the
/// decoder's read-ahead, the one the rules split, the kept rows queued for each encoding lane), so
/// its memory follows this figure, and the kept rows' row groups are cut at 256 K rows whatever it
/// is. Against 64 K (2026-12-05, eight interleaved runs of a 1.93 M-row month, medians): clean
/// 0.457 to 0.451 s, clean + transform 1.114 to 1.086 s, the run's peak RSS 131.5 to 126.5 MiB;
/// clean's own peak 141 to 113 MiB at 10x (one run each).
const RAW_BATCH_ROWS: usize = 32 * 1024;

/// Splits a canonical batch into kept rows and rejected rows (with their reasons).
pub fn split_batch(
    canonical: &CanonicalBatch,
    rules: &Rules,
    counts: &mut RejectCounts,
) -> Result<(RecordBatch, RecordBatch)> {
    let batch = &canonical.batch;
    let pickup = typed_column::<TimestampMicrosecondArray>(batch, col::PICKUP_AT)?;
    let dropoff = typed_column::<TimestampMicrosecondArray>(batch, col::DROPOFF_AT)?;
    let distance = typed_column::<Float64Array>(batch, col::TRIP_DISTANCE)?;
    let pu = typed_column::<Int32Array>(batch, col::PU_LOCATION_ID)?;
    let do_ = typed_column::<Int32Array>(batch, col::DO_LOCATION_ID)?;
    let money = MONEY
        .iter()
        .map(|name| typed_column::<Float64Array>(batch, name))
        .collect::<Result<Vec<_>>>()?;
    let out_of_range = |mask: &Option<BooleanArray>, row: usize| mask.as_ref().is_some_and(|m| m.value(row));

    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut reasons = Vec::new();
    for row in 0..batch.num_rows() {
        let trip = Trip {
            pickup: pickup.is_valid(row).then(|| pickup.value(row)),
            dropoff: dropoff.is_valid(row).then(|| dropoff.value(row)),
            timestamp_out_of_range: out_of_range(&canonical.pickup_out_of_range, row)
                || out_of_range(&canonical.dropoff_out_of_range, row),
            distance: distance.is_valid(row).then(|| distance.value(row)),
            money_finite: money.iter().all(|m| m.is_null(row) || m.value(row).is_finite()),
            pu_location: pu.is_valid(row).then(|| pu.value(row)),
            do_location: do_.is_valid(row).then(|| do_.value(row)),
        };
        match classify(&trip, rules) {
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
    let raw_key = input.raw_key.clone();
    let result = clean(ctx, input).await;
    // A file this run refused is no accepted source: its raw copy goes, the accepted one stays. A
    // retryable failure keeps it, for the retry.
    let refused = match &result {
        Ok(output) => output.verdict != Verdict::Ok,
        Err(err) => !err.is_retryable(),
    };
    if refused && Layout::is_run_scoped(&raw_key) {
        ctx.store.delete(&raw_key).await?;
    }
    result
}

async fn clean(ctx: &StageContext, input: CleanInput) -> Result<CleanOutput> {
    let started_at = chrono::Utc::now();
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
    let manifest =
        Manifest::<IngestOutput>::read(store.as_ref(), &input.manifest_key, INGEST, &layout.source_id()).await?;
    let Some(raw_entry) = manifest.objects.iter().find(|o| o.object.key == input.raw_key) else {
        return Err(Error::IntegrityError {
            key: input.raw_key.clone(),
            detail: format!("not listed in the ingest manifest {}", input.manifest_key),
        });
    };

    // Files are named for the run so they sit beside the live ones until the publish; an input
    // without a run id (an event from before run ids) gets one here.
    let run_id = if input.run_id.is_empty() {
        crate::handoff::new_run_id()
    } else {
        input.run_id.clone()
    };
    if let Some(reported) =
        crate::handoff::report_of_accepted_run::<CleanOutput>(store.as_ref(), &layout, &run_id, STAGE).await?
    {
        info!(%run_id, "this run is published: clean answers with its report and writes nothing");
        return Ok(reported);
    }
    let (clean_key, quarantine_key) = (layout.clean_key(&run_id), layout.quarantine_key(&run_id));
    info!(raw_key = %input.raw_key, %clean_key, "clean started");
    // Checked against the ingest manifest beside the decoding, as transform checks its input:
    // nothing is published or refused until the check has passed.
    let check = InputCheck::start(store.clone(), raw_entry.object.clone());
    let (schema, stream) = match open_projected(store, &input.raw_key).await {
        Ok(opened) => opened,
        Err(err) => return Err(check.error_over(err).await),
    };
    let source = match contract::check(&schema) {
        Ok(source) => source,
        Err(err) => return Err(check.error_over(err).await),
    };
    let row_group_rows = ctx.config.row_group_rows;
    // The kept rows, nearly all of them, encode on both cores, beside the rules.
    let mut kept_sink = ColumnParallelSink::create(
        store.as_ref(),
        &clean_key,
        contract::canonical_schema(),
        Zone::Clean,
        row_group_rows,
    )
    .await?;
    let mut rejected_sink = ParquetSink::create(
        store.as_ref(),
        &quarantine_key,
        quarantine_schema(),
        Zone::Quarantine,
        row_group_rows.min(QUARANTINE_ROW_GROUP_ROWS),
    )
    .await?;

    let rules = Rules::new(input.period, ctx.config.rules);
    let mut counts = RejectCounts::default();
    let mut rows_in = 0u64;
    let progress = StageProgress::begin(ctx.progress.as_ref(), STAGE, Unit::Rows, Some(manifest.output.rows));
    let copied = async {
        let mut batches = ReadAhead::stream(&input.raw_key, stream);
        while let Some((_, batch)) = batches.next_batch().await? {
            rows_in += batch.num_rows() as u64;
            progress.advance(batch.num_rows() as u64);
            let canonical = source.canonicalize(&batch)?;
            let (kept, rejected) = split_batch(&canonical, &rules, &mut counts)?;
            kept_sink.write(&kept).await?;
            rejected_sink.write(&rejected).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(err) = check.outcome().await.and(copied) {
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
    let current_kept = if verdict == Verdict::Ok && !input.allow_shrink {
        current_rows_kept(store.as_ref(), &layout).await?
    } else {
        None
    };
    if let Some(current_kept) = current_kept
        && shrinks_suspiciously(rows_kept, current_kept, ctx.config.min_kept_share)
    {
        let _ = kept_sink.abort().await;
        let _ = rejected_sink.abort().await;
        return Err(Error::SuspiciousShrink {
            source_id: layout.source_id(),
            kept: rows_kept,
            current_kept,
            min_share: ctx.config.min_kept_share,
        });
    }

    let mut output = CleanOutput {
        verdict,
        dataset: input.dataset,
        period: input.period,
        clean_key,
        quarantine_key,
        manifest_key: layout.run_report_key(&run_id, STAGE),
        rows_in,
        rows_kept,
        rows_rejected: counts,
        rejected_ratio,
        max_rejected_ratio,
        source_md5: manifest.output.md5.clone(),
        run_id: run_id.clone(),
    };
    if verdict != Verdict::Ok {
        // A refused file changes nothing readers see: the current clean and quarantine objects and
        // their manifest stay. The counts go to a report of their own, for the operator.
        kept_sink.abort().await?;
        rejected_sink.abort().await?;
        output.manifest_key = layout.run_report_key(&run_id, REFUSED_REPORT);
        put_json(store.as_ref(), &output.manifest_key, &output).await?;
        info!(rows_in, rows_kept, rejected = ?counts, rejected_ratio, verdict = ?verdict, "clean refused the file");
        return Ok(output);
    }

    // Both files finish together: their fsyncs overlap instead of queueing.
    let (kept, quarantine) = tokio::join!(kept_sink.finish(), rejected_sink.finish());
    let (kept, quarantine) = (kept?, quarantine?);
    let objects = vec![
        ManifestObject {
            object: kept.0,
            rows: kept.1,
        },
        ManifestObject {
            object: quarantine.0,
            rows: quarantine.1,
        },
    ];
    Manifest::new(STAGE, layout.source_id(), objects, output.clone())
        .started(started_at)
        .write(store.as_ref(), &output.manifest_key)
        .await?;
    info!(rows_in, rows_kept, rejected = ?counts, rejected_ratio, verdict = ?verdict, "clean done");
    Ok(output)
}

/// Where a refused clean run's counts go, beside (not over) the current version's manifest.
pub const REFUSED_REPORT: &str = "clean-refused";

/// Whether `kept` rows replacing `current_kept` is the kind of shrink a partial file causes.
pub fn shrinks_suspiciously(kept: u64, current_kept: u64, min_share: f64) -> bool {
    (kept as f64) < min_share * current_kept as f64
}

/// The kept rows of the month's current clean version, if there is one.
async fn current_rows_kept(store: &dyn ObjectStore, layout: &Layout) -> Result<Option<u64>> {
    match get_json::<Manifest<CleanOutput>>(store, &layout.report_key(STAGE)).await {
        Ok(current) if current.output.verdict == Verdict::Ok => Ok(Some(current.output.rows_kept)),
        Ok(_) | Err(Error::ObjectNotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

async fn open_projected(
    store: &Arc<dyn crate::storage::ObjectStore>,
    key: &str,
) -> Result<(
    SchemaRef,
    parquet::arrow::async_reader::ParquetRecordBatchStream<crate::parquet_io::StoreFileReader>,
)> {
    // The footer, read once, gives the schema the projection is chosen from.
    let object = ParquetObject::open(store, key).await?;
    let columns = contract::check(object.schema())?;
    let names = columns.source_columns();
    object.stream(Some(&names), RAW_BATCH_ROWS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::new_null_array;

    const MARCH_2021: (i64, i64) = (1_614_556_800_000_000, 1_617_235_200_000_000);
    const MINUTE: i64 = 60_000_000;

    fn rules() -> Rules {
        Rules::new("2021-03".parse().unwrap(), RuleLimits::default())
    }

    /// A plausible trip: 2 miles in ten minutes from zone 161 to 237.
    fn trip() -> Trip {
        let start = MARCH_2021.0;
        Trip {
            pickup: Some(start),
            dropoff: Some(start + 10 * MINUTE),
            timestamp_out_of_range: false,
            distance: Some(2.0),
            money_finite: true,
            pu_location: Some(161),
            do_location: Some(237),
        }
    }

    fn reason(change: impl FnOnce(&mut Trip)) -> Option<&'static str> {
        let mut t = trip();
        change(&mut t);
        classify(&t, &rules()).map(RejectReason::as_str)
    }

    #[test]
    fn each_rule_rejects_with_its_reason() {
        let (start, end) = MARCH_2021;
        assert_eq!(reason(|_| {}), None);
        assert_eq!(reason(|t| t.pickup = None), Some("null_timestamp"));
        assert_eq!(reason(|t| t.dropoff = None), Some("null_timestamp"));
        assert_eq!(
            reason(|t| {
                t.dropoff = None;
                t.timestamp_out_of_range = true
            }),
            Some("timestamp_out_of_range")
        );
        assert_eq!(reason(|t| t.dropoff = t.pickup), Some("non_positive_duration"));
        assert_eq!(
            reason(|t| t.dropoff = Some(start - MINUTE)),
            Some("non_positive_duration")
        );
        assert_eq!(
            reason(|t| {
                t.pickup = Some(start - MINUTE);
                t.dropoff = Some(start + MINUTE)
            }),
            Some("outside_period")
        );
        assert_eq!(
            reason(|t| {
                t.pickup = Some(end);
                t.dropoff = Some(end + MINUTE)
            }),
            Some("outside_period")
        );
        assert_eq!(reason(|t| t.distance = Some(f64::NAN)), Some("non_finite"));
        assert_eq!(reason(|t| t.distance = Some(f64::INFINITY)), Some("non_finite"));
        assert_eq!(reason(|t| t.money_finite = false), Some("non_finite"));
        assert_eq!(reason(|t| t.distance = Some(-0.5)), Some("negative_distance"));
        for bad in [None, Some(0), Some(266), Some(999), Some(-5)] {
            assert_eq!(
                reason(|t| t.pu_location = bad),
                Some("location_out_of_range"),
                "{bad:?}"
            );
            assert_eq!(
                reason(|t| t.do_location = bad),
                Some("location_out_of_range"),
                "{bad:?}"
            );
        }
        assert_eq!(
            reason(|t| t.pu_location = Some(264)),
            None,
            "TLC's unknown zones are kept"
        );
        assert_eq!(reason(|t| t.do_location = Some(265)), None);
        assert_eq!(
            reason(|t| t.dropoff = Some(start + 25 * 60 * MINUTE)),
            Some("implausible_duration")
        );
        // 100 miles in 0.001 s, and 300 miles in an hour.
        assert_eq!(
            reason(|t| {
                t.dropoff = Some(start + 1_000);
                t.distance = Some(100.0)
            }),
            Some("implausible_speed")
        );
        assert_eq!(
            reason(|t| {
                t.dropoff = Some(start + 60 * MINUTE);
                t.distance = Some(300.0)
            }),
            Some("implausible_speed")
        );
        // A null or zero distance is kept (it simply does not count towards the average).
        assert_eq!(reason(|t| t.distance = None), None);
        assert_eq!(reason(|t| t.distance = Some(0.0)), None);
        // A trip starting in the last microsecond of the month and ending in the next is the month's trip.
        assert_eq!(
            reason(|t| {
                t.pickup = Some(end - 1);
                t.dropoff = Some(end + 10 * MINUTE)
            }),
            None
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        // Outside the month and NaN: the earlier rule names it.
        assert_eq!(
            reason(|t| {
                t.pickup = Some(MARCH_2021.0 - MINUTE);
                t.distance = Some(f64::NAN)
            }),
            Some("outside_period")
        );
        // Negative distance and a bad zone: negative_distance comes first.
        assert_eq!(
            reason(|t| {
                t.distance = Some(-1.0);
                t.pu_location = Some(0)
            }),
            Some("negative_distance")
        );
    }

    #[test]
    fn thresholds_come_from_the_limits() {
        let strict = Rules::new(
            "2021-03".parse().unwrap(),
            RuleLimits {
                max_trip_hours: 0.1,
                max_speed_mph: 5.0,
            },
        );
        // 2 miles in 10 minutes is 12 mph: too fast for a 5 mph limit; 10 minutes is over 6.
        assert_eq!(classify(&trip(), &strict), Some(RejectReason::ImplausibleDuration));
        let mut slow = trip();
        slow.dropoff = Some(MARCH_2021.0 + 5 * MINUTE);
        assert_eq!(classify(&slow, &strict), Some(RejectReason::ImplausibleSpeed));
    }

    #[test]
    fn shrink_is_measured_against_the_current_version() {
        assert!(shrinks_suspiciously(990, 1_900_000, 0.5));
        assert!(!shrinks_suspiciously(950_000, 1_900_000, 0.5));
        assert!(!shrinks_suspiciously(0, 1, 0.0), "a share of 0 turns the guard off");
    }

    #[test]
    fn split_accounts_for_every_row() {
        let schema = contract::canonical_schema();
        let (start, _) = MARCH_2021;
        let pickups =
            TimestampMicrosecondArray::from(vec![Some(start), None, Some(start), Some(start - 10), Some(start)]);
        let dropoffs = TimestampMicrosecondArray::from(vec![
            Some(start + MINUTE),
            Some(start),
            Some(start),
            Some(start),
            Some(start + MINUTE),
        ]);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                col::PICKUP_AT => Arc::new(pickups.clone()) as ArrayRef,
                col::DROPOFF_AT => Arc::new(dropoffs.clone()) as ArrayRef,
                col::PU_LOCATION_ID | col::DO_LOCATION_ID => Arc::new(Int32Array::from(vec![100; 5])) as ArrayRef,
                col::TRIP_DISTANCE => Arc::new(Float64Array::from(vec![1.0, 1.0, 1.0, 1.0, f64::NAN])) as ArrayRef,
                _ => new_null_array(f.data_type(), 5),
            })
            .collect();
        let batch = CanonicalBatch::in_range(RecordBatch::try_new(schema, columns).unwrap());
        let mut counts = RejectCounts::default();
        let (kept, rejected) = split_batch(&batch, &rules(), &mut counts).unwrap();
        assert_eq!(kept.num_rows(), 1);
        assert_eq!(rejected.num_rows(), 4);
        assert_eq!(
            counts,
            RejectCounts {
                null_timestamp: 1,
                non_positive_duration: 1,
                outside_period: 1,
                non_finite: 1,
                ..RejectCounts::default()
            }
        );
        assert_eq!(counts.total(), 4);
        let reasons = rejected
            .column_by_name(REJECT_REASON)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            reasons.iter().flatten().collect::<Vec<_>>(),
            [
                "null_timestamp",
                "non_positive_duration",
                "outside_period",
                "non_finite"
            ]
        );
    }

    #[test]
    fn reject_counts_serialise_under_the_reason_names() {
        let json = serde_json::to_value(RejectCounts::default()).unwrap();
        for reason in RejectReason::ALL {
            assert!(json.get(reason.as_str()).is_some(), "{}", reason.as_str());
        }
    }
}
