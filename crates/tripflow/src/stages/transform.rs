//! **transform.** Reads the clean object of one source (after checking it against the clean manifest),
//! swaps the location IDs the source system is known to swap (161 <-> 237 by default, pickup and
//! dropoff alike), derives `duration_s`, `speed_mph` (null where distance <= 0) and the ISO
//! `pickup_week`, and writes analyst-ready Parquet into the curated Delta table, one file of the run
//! per day (`curated/<dataset>/pickup_date=YYYY-MM-DD/part-<run_id>.parquet`; a day of more than
//! [`ROW_GROUPS_PER_FILE`] row groups goes on in `part-<run_id>.1.parquet` and so on). `pickup_date` lives
//! in the partition path only, as Delta, Glue and Athena expect. The files stay invisible until the
//! run is published; the run's manifest lists them for load. The clean file decodes on one task
//! while the days encode on [`ENCODERS`] others, each owning a share of the days and of the memory
//! budget: its writers flush row groups early when their buffers together pass its share, so
//! memory does not grow with the file.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use chrono::{DateTime, Datelike, NaiveDate};
use tracing::info;

use super::{StageContext, Verdict};
use crate::answers::TotalsTally;
use crate::config::LocationSwaps;
use crate::contract::{self, col, typed_column};
use crate::error::{Error, Result};
use crate::handoff::manifest::{Manifest, ManifestObject};
use crate::lake::Zone;
use crate::parquet_io::{ParquetSink, ReadAhead, open_stream};
use crate::progress::{StageProgress, Unit};
use crate::storage::{InputCheck, Layout, ObjectStore};

pub const STAGE: &str = crate::handoff::TRANSFORM;

pub use crate::handoff::curated::{DURATION_S, PICKUP_DATE, PICKUP_WEEK, SPEED_MPH, curated_schema};
pub use crate::handoff::{TransformInput, TransformOutput};

/// Speed in miles per hour; `None` where it means nothing (no distance, no time).
pub fn speed_mph(distance_miles: Option<f64>, duration_s: f64) -> Option<f64> {
    match distance_miles {
        Some(d) if d > 0.0 && duration_s > 0.0 => Some(d / (duration_s / 3600.0)),
        _ => None,
    }
}

/// The date and ISO week of a timestamp, remembered per day: a month's rows fall on some 31 days,
/// and working the calendar out for each of two million rows was a tenth of transform's own work.
struct Calendar {
    /// Direct-mapped by day number: (day since 1970-01-01, its date, its ISO week).
    days: [(i64, NaiveDate, i32); 64],
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            days: [(i64::MIN, NaiveDate::MIN, 0); 64],
        }
    }
}

impl Calendar {
    const MICROS_PER_DAY: i64 = 86_400_000_000;

    /// The date and ISO week of `micros` since the Unix epoch; `None` outside chrono's range.
    fn day_of(&mut self, micros: i64) -> Option<(NaiveDate, i32)> {
        let day = micros.div_euclid(Self::MICROS_PER_DAY);
        let slot = &mut self.days[day.rem_euclid(64) as usize];
        if slot.0 != day {
            let date = DateTime::from_timestamp(day.checked_mul(86_400)?, 0)?.date_naive();
            *slot = (day, date, date.iso_week().week() as i32);
        }
        Some((slot.1, slot.2))
    }
}

/// The transform of one clean batch, and the pickup date of each of its rows.
pub fn transform_batch(batch: &RecordBatch, swaps: &LocationSwaps) -> Result<(RecordBatch, Vec<NaiveDate>, u64)> {
    let pickup = typed_column::<TimestampMicrosecondArray>(batch, col::PICKUP_AT)?;
    let dropoff = typed_column::<TimestampMicrosecondArray>(batch, col::DROPOFF_AT)?;
    let distance = typed_column::<Float64Array>(batch, col::TRIP_DISTANCE)?;

    let mut swapped = 0u64;
    let mut swap_column = |name: &str| -> Result<ArrayRef> {
        let ids = typed_column::<Int32Array>(batch, name)?;
        let out: Int32Array = ids
            .iter()
            .map(|id| {
                id.map(|id| {
                    let new = swaps.apply(id);
                    swapped += u64::from(new != id);
                    new
                })
            })
            .collect();
        Ok(Arc::new(out))
    };
    let pu = swap_column(col::PU_LOCATION_ID)?;
    let dropoff_ids = swap_column(col::DO_LOCATION_ID)?;

    let rows = batch.num_rows();
    let mut durations = Vec::with_capacity(rows);
    let mut speeds = Vec::with_capacity(rows);
    let mut weeks = Vec::with_capacity(rows);
    let mut dates = Vec::with_capacity(rows);
    let mut calendar = Calendar::default();
    for row in 0..rows {
        // Clean guarantees both timestamps are present and dropoff > pickup.
        if pickup.is_null(row) || dropoff.is_null(row) {
            return Err(Error::IntegrityError {
                key: "clean batch".into(),
                detail: "null timestamp after clean".into(),
            });
        }
        let duration_s = (dropoff.value(row) - pickup.value(row)) as f64 / 1_000_000.0;
        let (date, week) = calendar
            .day_of(pickup.value(row))
            .ok_or_else(|| Error::IntegrityError {
                key: "clean batch".into(),
                detail: "pickup out of range".into(),
            })?;
        durations.push(duration_s);
        speeds.push(speed_mph(
            distance.is_valid(row).then(|| distance.value(row)),
            duration_s,
        ));
        weeks.push(week);
        dates.push(date);
    }

    let mut columns: Vec<ArrayRef> = Vec::with_capacity(curated_schema().fields().len());
    for field in contract::canonical_schema().fields() {
        let column = match field.name().as_str() {
            col::PU_LOCATION_ID => pu.clone(),
            col::DO_LOCATION_ID => dropoff_ids.clone(),
            name => batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| Error::schema_drift(name, "missing"))?,
        };
        columns.push(column);
    }
    columns.push(Arc::new(Float64Array::from(durations)));
    columns.push(Arc::new(Float64Array::from(speeds)));
    columns.push(Arc::new(Int32Array::from(weeks)));
    let out = RecordBatch::try_new(curated_schema(), columns).map_err(|e| Error::InvalidInput(e.to_string()))?;
    Ok((out, dates, swapped))
}

/// Rows per batch decoded from the clean object. Each batch is cut into 31 days, so a day's writer
/// gets about a thirty-first of it per write: 16 K-row batches made those writes so small that
/// transform took twice as long, and 32 K, 128 K or 256 K measured within the noise of 64 K
/// (2026-12-05; 256 K took the peak RSS to 190 MiB).
const CLEAN_BATCH_ROWS: usize = 64 * 1024;

/// Tasks that encode curated files, each owning a share of the days: with the decoder on its own
/// task too, both cores stay busy.
const ENCODERS: usize = 2;
/// Day batches queued per encoder: enough to keep it busy, little enough memory.
const ENCODER_QUEUE: usize = 8;

fn encoder_of(date: NaiveDate) -> usize {
    date.ordinal0() as usize % ENCODERS
}

enum ToEncoder {
    Rows(NaiveDate, RecordBatch),
    /// All rows were handed out: finish the files (true) or throw them away (false).
    End {
        finish: bool,
    },
}

/// Row groups a curated file holds before its day goes on in a new part. A writer keeps every
/// closed row group's metadata (some 12 KB of 17 columns) until the footer, and with 31 days open
/// the write budget closes row groups at 4-5 K rows: a 10x month's day files reached some 130 row
/// groups each, 48 MB of metadata at transform's peak (heaptrack). 32 leaves a 1x month's days in
/// one file each (about 14 row groups) and bounds the metadata by 12 MB at any size.
///
/// A part is finished, and so appears in the store, before the stage ends; only once the clean
/// object has passed its check, so a part never holds rows of a damaged input. (A rerun of a run's
/// transform writes the keys its first attempt wrote, maybe the live ones: from a checked input,
/// the same bytes.) Parts of an attempt that fails later stay, invisible to readers, until the
/// next run of the month deletes the files of runs that never published.
const ROW_GROUPS_PER_FILE: usize = 32;

/// The file a day's rows are going into now.
struct DayFile {
    sink: ParquetSink,
    part: u32,
}

/// One encoder task: the files of its days, each written as its rows arrive; their buffers
/// together stay within its share of the write budget by flushing the largest early.
struct DayEncoder {
    queue: tokio::sync::mpsc::Sender<ToEncoder>,
    task: tokio::task::JoinHandle<Result<Vec<ManifestObject>>>,
    /// Where its files go, for the error should the task itself die.
    prefix: String,
}

impl DayEncoder {
    fn spawn(
        store: Arc<dyn ObjectStore>,
        layout: Layout,
        run_id: String,
        row_group_rows: usize,
        buffer_budget: usize,
        input_checked: Arc<AtomicBool>,
    ) -> Self {
        let (queue, mut received) = tokio::sync::mpsc::channel(ENCODER_QUEUE);
        let prefix = layout.curated_prefix();
        let task = tokio::spawn(async move {
            let mut writers: BTreeMap<NaiveDate, DayFile> = BTreeMap::new();
            // The days' full parts, finished while their days went on in new ones.
            let mut finished: Vec<ManifestObject> = Vec::new();
            let create = |date: NaiveDate, part: u32| {
                let (store, key) = (store.clone(), layout.curated_key(date, &run_id, part));
                async move {
                    let sink =
                        ParquetSink::create(store.as_ref(), &key, curated_schema(), Zone::Curated, row_group_rows)
                            .await?;
                    Ok::<_, Error>(DayFile { sink, part })
                }
            };
            let written = async {
                loop {
                    let (date, rows) = match received.recv().await {
                        Some(ToEncoder::Rows(date, rows)) => (date, rows),
                        Some(ToEncoder::End { finish }) => return Ok(finish),
                        // The stage went away without a last word: throw the files away.
                        None => return Ok(false),
                    };
                    let writer = match writers.entry(date) {
                        Entry::Occupied(open) => open.into_mut(),
                        Entry::Vacant(slot) => slot.insert(create(date, 0).await?),
                    };
                    writer.sink.write(&rows).await?;
                    while writers.values().map(|w| w.sink.buffered_bytes()).sum::<usize>() > buffer_budget {
                        let Some(largest) = writers.values_mut().max_by_key(|w| w.sink.buffered_bytes()) else {
                            break;
                        };
                        largest.sink.flush().await?;
                    }
                    if !input_checked.load(Ordering::Acquire) {
                        continue;
                    }
                    for (date, writer) in writers.iter_mut() {
                        if writer.sink.row_groups() >= ROW_GROUPS_PER_FILE {
                            let next = create(*date, writer.part + 1).await?;
                            let (object, rows) = std::mem::replace(writer, next).sink.finish().await?;
                            finished.push(ManifestObject { object, rows });
                        }
                    }
                }
            }
            .await;
            if !matches!(written, Ok(true)) {
                for (_, writer) in writers {
                    let _ = writer.sink.abort().await;
                }
                return written.map(|_| Vec::new());
            }
            // The days' last files finish together, each on a task of its own: what they still
            // have to encode spreads over both cores, and their fsyncs overlap instead of queueing
            // one behind the other (one by one they were the stage's last 80 ms, on an idle core).
            // Should one fail, the others still finish, invisible to readers like any part of an
            // attempt that fails.
            let finishing: Vec<_> = writers
                .into_values()
                .map(|writer| tokio::spawn(writer.sink.finish()))
                .collect();
            let mut failure = None;
            for task in finishing {
                match task.await {
                    Ok(Ok((object, rows))) => finished.push(ManifestObject { object, rows }),
                    Ok(Err(err)) => {
                        failure.get_or_insert(err);
                    }
                    Err(err) => {
                        failure.get_or_insert(Error::ParquetWriteFailed {
                            key: layout.curated_prefix(),
                            detail: format!("a day file's finishing task stopped: {err}"),
                        });
                    }
                }
            }
            failure.map_or(Ok(finished), Err)
        });
        DayEncoder { queue, task, prefix }
    }

    /// Queues a day's rows; false when the encoder has stopped (it failed).
    async fn send(&self, date: NaiveDate, rows: RecordBatch) -> bool {
        self.queue.send(ToEncoder::Rows(date, rows)).await.is_ok()
    }

    /// Ends the encoder: its files finished and published (`finish`), or thrown away.
    async fn end(self, finish: bool) -> Result<Vec<ManifestObject>> {
        let _ = self.queue.send(ToEncoder::End { finish }).await;
        drop(self.queue);
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(Error::ParquetWriteFailed {
                key: self.prefix,
                detail: format!("an encoder task stopped: {err}"),
            }),
        }
    }
}

/// Row indices of a batch grouped by pickup date, in date order: one slot per day between the
/// batch's first and last date (a month's rows span at most 31), a map only for a wider batch.
fn group_by_date(dates: &[NaiveDate]) -> Vec<(NaiveDate, Vec<u32>)> {
    const MAX_SPAN_DAYS: usize = 366;
    let (Some(first), Some(last)) = (dates.iter().min(), dates.iter().max()) else {
        return Vec::new();
    };
    let span = usize::try_from((*last - *first).num_days()).unwrap_or(usize::MAX);
    if span >= MAX_SPAN_DAYS {
        let mut groups: BTreeMap<NaiveDate, Vec<u32>> = BTreeMap::new();
        for (row, date) in dates.iter().enumerate() {
            groups.entry(*date).or_default().push(row as u32);
        }
        return groups.into_iter().collect();
    }
    let first_day = first.num_days_from_ce();
    let mut slots: Vec<Vec<u32>> = vec![Vec::new(); span + 1];
    for (row, date) in dates.iter().enumerate() {
        slots[(date.num_days_from_ce() - first_day) as usize].push(row as u32);
    }
    slots
        .into_iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .filter_map(|(offset, rows)| Some((first.checked_add_days(chrono::Days::new(offset as u64))?, rows)))
        .collect()
}

pub async fn run(ctx: &StageContext, input: TransformInput) -> Result<TransformOutput> {
    let started_at = chrono::Utc::now();
    let layout = Layout::new(input.dataset.clone(), input.period);
    let store = &ctx.store;
    let manifest = Manifest::<crate::handoff::CleanOutput>::read(
        store.as_ref(),
        &input.manifest_key,
        crate::handoff::CLEAN,
        &layout.source_id(),
    )
    .await?;
    if manifest.output.verdict != Verdict::Ok {
        return Err(Error::InvalidInput(format!(
            "clean's verdict for {} is {:?}: nothing to transform",
            layout.source_id(),
            manifest.output.verdict
        )));
    }
    let Some(clean_entry) = manifest.objects.iter().find(|o| o.object.key == input.clean_key) else {
        return Err(Error::IntegrityError {
            key: input.clean_key.clone(),
            detail: format!("not listed in the clean manifest {}", input.manifest_key),
        });
    };
    let run_id = manifest.output.run_id.clone();
    if run_id.is_empty() {
        return Err(Error::IntegrityError {
            key: input.manifest_key.clone(),
            detail: "the clean manifest names no run".into(),
        });
    }
    if let Some(reported) =
        crate::handoff::report_of_accepted_run::<TransformOutput>(store.as_ref(), &layout, &run_id, STAGE).await?
    {
        info!(%run_id, "this run is published: transform answers with its report and writes nothing");
        return Ok(reported);
    }
    // Checked against the clean manifest beside the decoding (`InputCheck`): nothing this stage
    // writes is kept unless the check passes.
    let check = InputCheck::start(store.clone(), clean_entry.object.clone());

    info!(clean_key = %input.clean_key, "transform started");
    let stream = match open_stream(store, &input.clean_key, None, CLEAN_BATCH_ROWS).await {
        Ok((_, stream)) => stream,
        Err(err) => return Err(check.error_over(err).await),
    };
    let mut batches = ReadAhead::stream(&input.clean_key, stream);
    let encoders: Vec<DayEncoder> = (0..ENCODERS)
        .map(|_| {
            DayEncoder::spawn(
                store.clone(),
                layout.clone(),
                run_id.clone(),
                ctx.config.row_group_rows,
                ctx.config.write_buffer_bytes / ENCODERS,
                check.passed(),
            )
        })
        .collect();
    let mut swapped = 0u64;
    let mut speed_totals = TotalsTally::counting_speeds();
    let progress = StageProgress::begin(
        ctx.progress.as_ref(),
        STAGE,
        Unit::Rows,
        Some(manifest.output.rows_kept),
    );
    let handed_out = async {
        while let Some((_, batch)) = batches.next_batch().await? {
            progress.advance(batch.num_rows() as u64);
            let (curated, dates, swapped_here) = transform_batch(&batch, &ctx.config.location_swaps)?;
            swapped += swapped_here;
            speed_totals.add_batch(&curated)?;
            // One gather puts the batch in date order and each day's rows are a slice of it: a
            // gather per day allocated 31 sets of small buffers per batch.
            let days = group_by_date(&dates);
            let order: UInt32Array = days.iter().flat_map(|(_, rows)| rows.iter().copied()).collect();
            let in_date_order = take_record_batch(&curated, &order).map_err(|e| Error::InvalidInput(e.to_string()))?;
            let mut offset = 0;
            for (date, rows) in days {
                let part = in_date_order.slice(offset, rows.len());
                offset += rows.len();
                if !encoders[encoder_of(date)].send(date, part).await {
                    // That encoder failed; what it failed with comes back from `end`.
                    return Ok(false);
                }
            }
        }
        Ok::<_, Error>(true)
    }
    .await;
    // Every encoder is told how the reading ended: all finish their files, or all throw theirs
    // away; the check's error first, then the first other.
    let check = check.outcome().await;
    let finish = check.is_ok() && matches!(handed_out, Ok(true));
    let mut objects = Vec::new();
    let mut failure = check.err().or(handed_out.err());
    for encoder in encoders {
        match encoder.end(finish).await {
            Ok(written) => objects.extend(written),
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    // Load streams the days in date order (the keys sort by their pickup_date= segment).
    objects.sort_by(|a, b| a.object.key.cmp(&b.object.key));

    let rows_curated: u64 = objects.iter().map(|o| o.rows).sum();
    if rows_curated != manifest.output.rows_kept {
        return Err(Error::IntegrityError {
            key: input.clean_key.clone(),
            detail: format!("curated {rows_curated} rows, clean kept {}", manifest.output.rows_kept),
        });
    }
    let output = TransformOutput {
        verdict: Verdict::Ok,
        dataset: input.dataset,
        period: input.period,
        curated_prefix: layout.curated_prefix(),
        manifest_key: layout.run_report_key(&run_id, STAGE),
        rows_curated,
        partitions: objects
            .iter()
            .map(|o| o.object.key.rsplit_once('/').map_or("", |(day, _)| day))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        location_ids_swapped: swapped,
        source_md5: manifest.output.source_md5.clone(),
        run_id,
        speed_buckets: speed_totals.speed_buckets(),
        speed_totals: Some(speed_totals.totals()),
    };
    Manifest::new(STAGE, layout.source_id(), objects, output.clone())
        .started(started_at)
        .write(store.as_ref(), &output.manifest_key)
        .await?;
    info!(
        rows_curated,
        partitions = output.partitions,
        location_ids_swapped = swapped,
        "transform done"
    );
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::new_null_array;

    #[test]
    fn speed_is_distance_over_hours_and_null_without_distance() {
        assert_eq!(speed_mph(Some(3.0), 1800.0), Some(6.0));
        assert_eq!(speed_mph(Some(0.0), 1800.0), None);
        assert_eq!(speed_mph(Some(-1.0), 1800.0), None);
        assert_eq!(speed_mph(None, 1800.0), None);
        assert_eq!(speed_mph(Some(1.0), 0.0), None);
        // Microsecond precision: a 1 ms trip lasts 0.001 s, not 0.
        let millisecond_trip = speed_mph(Some(0.001), 0.001).unwrap();
        assert!((millisecond_trip - 3600.0).abs() < 1e-9, "{millisecond_trip}");
    }

    #[test]
    fn the_calendar_gives_chrono_s_date_and_iso_week_for_any_timestamp() {
        let mut calendar = Calendar::default();
        let day = Calendar::MICROS_PER_DAY;
        // Around the epoch, both sides of midnight, a leap day, days 64 apart (one slot), and a
        // year end where the ISO week belongs to the next year.
        let mut instants = vec![-1, 0, 1, day - 1, day, -day, -day - 1];
        let leap_day_2024 = 19_782 * day;
        instants.extend([leap_day_2024, leap_day_2024 + 64 * day, leap_day_2024 - 64 * day]);
        let december_30_2024 = 20_087 * day + 3_600_000_000;
        instants.extend((0..5).map(|d| december_30_2024 + d * day));
        for micros in instants.iter().chain(instants.iter()) {
            let date = DateTime::from_timestamp_micros(*micros).unwrap().date_naive();
            assert_eq!(
                calendar.day_of(*micros),
                Some((date, date.iso_week().week() as i32)),
                "{micros}"
            );
        }
        assert_eq!(calendar.day_of(i64::MAX), None);
    }

    #[test]
    fn rows_are_grouped_by_date_in_date_order() {
        let date = |d: u32| NaiveDate::from_ymd_opt(2021, 3, d).unwrap();
        let dates = [date(9), date(1), date(9), date(31), date(1)];
        assert_eq!(
            group_by_date(&dates),
            vec![(date(1), vec![1, 4]), (date(9), vec![0, 2]), (date(31), vec![3])]
        );
        assert!(group_by_date(&[]).is_empty());
        // Dates years apart (never a month's) still group, by the map.
        let far = NaiveDate::from_ymd_opt(1999, 1, 1).unwrap();
        assert_eq!(
            group_by_date(&[date(2), far, date(2)]),
            vec![(far, vec![1]), (date(2), vec![0, 2])]
        );
    }

    #[test]
    fn swaps_both_location_columns_and_derives_week_and_duration() {
        let schema = contract::canonical_schema();
        // 2021-03-07 23:30 (Sunday, ISO week 9) and 2021-03-08 00:10 (Monday, week 10).
        let pickups = vec![1_615_159_800_000_000i64, 1_615_162_200_000_000];
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    col::PICKUP_AT => Arc::new(TimestampMicrosecondArray::from(pickups.clone())),
                    col::DROPOFF_AT => Arc::new(TimestampMicrosecondArray::from(
                        pickups.iter().map(|p| p + 600_000_000).collect::<Vec<_>>(),
                    )),
                    col::PU_LOCATION_ID => Arc::new(Int32Array::from(vec![161, 100])),
                    col::DO_LOCATION_ID => Arc::new(Int32Array::from(vec![237, 161])),
                    col::TRIP_DISTANCE => Arc::new(Float64Array::from(vec![Some(2.0), Some(0.0)])),
                    _ => new_null_array(f.data_type(), 2),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        let (out, dates, swapped) = transform_batch(&batch, &LocationSwaps::default()).unwrap();
        assert_eq!(swapped, 3);
        assert_eq!(
            typed_column::<Int32Array>(&out, col::PU_LOCATION_ID)
                .unwrap()
                .values()
                .to_vec(),
            vec![237, 100]
        );
        assert_eq!(
            typed_column::<Int32Array>(&out, col::DO_LOCATION_ID)
                .unwrap()
                .values()
                .to_vec(),
            vec![161, 237]
        );
        assert_eq!(
            typed_column::<Int32Array>(&out, PICKUP_WEEK).unwrap().values().to_vec(),
            vec![9, 10]
        );
        let speed = typed_column::<Float64Array>(&out, SPEED_MPH).unwrap();
        assert_eq!(speed.value(0), 12.0);
        assert!(speed.is_null(1));
        assert_eq!(
            dates.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["2021-03-07", "2021-03-08"]
        );
        assert_eq!(group_by_date(&dates).len(), 2);
    }
}
