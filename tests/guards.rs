//! Bad and absurd inputs against a month that is already loaded. A refused input fails with its
//! name and changes nothing a reader sees (every zone object, every current manifest, the rows and
//! the answers in PostgreSQL); an accepted one with absurd rows keeps the answers right, equal to an
//! independent computation with the rules written out again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, RecordBatchReader, TimestampMillisecondArray,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tripflow::checksum::md5_hex;
use tripflow::config::PipelineConfig;
use tripflow::stages::ingest::IngestInput;
use tripflow_tests::expected::expected_from_file;
use tripflow_tests::local::Setup;

const MONTH_ROWS: usize = 20_000;

/// A generated month in memory, as one batch, for making variants of it.
struct Month {
    schema: SchemaRef,
    batch: RecordBatch,
}

impl Month {
    /// Reads a month written by the generator (`Setup::generate`).
    fn read(path: &Path) -> Self {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let schema = reader.schema();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        Month {
            batch: concat_batches(&schema, &batches).unwrap(),
            schema,
        }
    }

    fn column(&self, name: &str) -> &ArrayRef {
        self.batch.column_by_name(name).unwrap()
    }

    fn head(&self, rows: usize) -> RecordBatch {
        self.batch.slice(0, rows)
    }

    /// The month with one column replaced.
    fn with(&self, name: &str, column: ArrayRef) -> RecordBatch {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == name {
                    column.clone()
                } else {
                    self.column(f.name()).clone()
                }
            })
            .collect();
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == name {
                    Field::new(name, column.data_type().clone(), true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    /// The month with the float column's first rows set to `values`.
    fn with_floats(&self, name: &str, values: &[f64]) -> RecordBatch {
        let mut all: Vec<Option<f64>> = self.column(name).as_primitive::<Float64Type>().iter().collect();
        for (slot, value) in all.iter_mut().zip(values) {
            *slot = Some(*value);
        }
        self.with(name, Arc::new(Float64Array::from(all)))
    }

    /// The month with the integer column's first rows set to `values`.
    fn with_ints(&self, name: &str, values: &[i64]) -> RecordBatch {
        let mut all: Vec<Option<i64>> = self.column(name).as_primitive::<Int64Type>().iter().collect();
        for (slot, value) in all.iter_mut().zip(values) {
            *slot = Some(*value);
        }
        self.with(name, Arc::new(Int64Array::from(all)))
    }

    /// The month's pickups, shifted so each dropoff comes before its pickup.
    fn reversed_times(&self) -> RecordBatch {
        let pickup = self.column("tpep_pickup_datetime").clone();
        let dropoff = self.column("tpep_dropoff_datetime").clone();
        let swapped = self.with("tpep_pickup_datetime", dropoff);
        let columns = swapped
            .schema()
            .fields()
            .iter()
            .map(|f| {
                if f.name() == "tpep_dropoff_datetime" {
                    pickup.clone()
                } else {
                    swapped.column_by_name(f.name()).unwrap().clone()
                }
            })
            .collect();
        RecordBatch::try_new(swapped.schema(), columns).unwrap()
    }
}

fn write(path: &Path, batch: &RecordBatch) -> PathBuf {
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    path.to_path_buf()
}

/// The month's file name, in a folder of its own so each case keeps its bytes.
fn march(dir: &Path, case: &str) -> PathBuf {
    let folder = dir.join(case);
    std::fs::create_dir_all(&folder).unwrap();
    folder.join("yellow_tripdata_2021-03.parquet")
}

fn input(source: &Path) -> IngestInput {
    IngestInput {
        source: source.display().to_string(),
        ..IngestInput::default()
    }
}

#[tokio::test]
async fn every_refused_input_fails_by_name_and_changes_nothing_readers_see() {
    let setup = Setup::new().await;
    let good = setup.generate("2021-03", MONTH_ROWS, 21);
    setup.run(&good, None).await.unwrap();
    let before = setup.snapshot().await;
    assert_eq!(before.trips.len(), 1);

    let work = setup.dir.path().join("cases");
    let month = Month::read(&good);
    let april = Month::read(&setup.generate("2021-04", 5_000, 22));
    let schema = month.schema.clone();
    let null_timestamps: ArrayRef = Arc::new(arrow::array::new_null_array(
        month.column("tpep_pickup_datetime").data_type(),
        MONTH_ROWS,
    ));
    let far_future: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![i64::MAX / 10; MONTH_ROWS]));
    let far_future_dropoff = month.with("tpep_dropoff_datetime", far_future);
    let duplicate_distance = {
        let copy =
            arrow::compute::kernels::numeric::mul(month.column("trip_distance"), &Float64Array::new_scalar(1000.0))
                .unwrap();
        let mut fields = vec![Field::new("trip_distance", DataType::Float64, true)];
        fields.extend(schema.fields().iter().map(|f| f.as_ref().clone()));
        let mut columns = vec![copy];
        columns.extend(month.batch.columns().iter().cloned());
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    };
    let both_airport_fees = {
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("Airport_fee", DataType::Float64, true));
        let mut columns = month.batch.columns().to_vec();
        columns.push(month.column("airport_fee").clone());
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    };
    let without_distance = month.batch.project(
        &(0..schema.fields().len())
            .filter(|&i| schema.field(i).name() != "trip_distance")
            .collect::<Vec<_>>(),
    );
    let text_locations = month.with(
        "PULocationID",
        cast(month.column("PULocationID"), &DataType::Utf8).unwrap(),
    );
    let green = {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name().replace("tpep_", "lpep_"), f.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), month.batch.columns().to_vec()).unwrap()
    };

    // (case, the file's bytes, what the run must fail with)
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut add = |case: &'static str, batch: &RecordBatch, error: &'static str| {
        let path = write(&march(&work, case), batch);
        cases.push((case, std::fs::read(path).unwrap(), error));
    };
    add("zero rows", &month.head(0), "EmptySource");
    add("one row", &month.head(1), "SuspiciousShrink");
    add("the first thousand rows", &month.head(1_000), "SuspiciousShrink");
    add("April's trips named March", &april.batch, "TooManyRejectedRows");
    add(
        "every dropoff before its pickup",
        &month.reversed_times(),
        "TooManyRejectedRows",
    );
    add(
        "every pickup null",
        &month.with("tpep_pickup_datetime", null_timestamps),
        "TooManyRejectedRows",
    );
    add(
        "every dropoff beyond timestamp[us]",
        &far_future_dropoff,
        "TooManyRejectedRows",
    );
    add(
        "every distance NaN",
        &month.with_floats("trip_distance", &vec![f64::NAN; MONTH_ROWS]),
        "TooManyRejectedRows",
    );
    add(
        "every distance negative",
        &month.with_floats("trip_distance", &vec![-1.0; MONTH_ROWS]),
        "TooManyRejectedRows",
    );
    add(
        "every pickup zone 0",
        &month.with_ints("PULocationID", &vec![0; MONTH_ROWS]),
        "TooManyRejectedRows",
    );
    add(
        "every trip three days long",
        &{
            let pickup = month
                .column("tpep_pickup_datetime")
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            let late: ArrayRef = Arc::new(arrow::array::TimestampMicrosecondArray::from(
                pickup
                    .iter()
                    .map(|p| p.map(|p| p + 72 * 3_600_000_000))
                    .collect::<Vec<_>>(),
            ));
            month.with("tpep_dropoff_datetime", late)
        },
        "TooManyRejectedRows",
    );
    add(
        "every trip at 5000 miles",
        &month.with_floats("trip_distance", &vec![5_000.0; MONTH_ROWS]),
        "TooManyRejectedRows",
    );
    add(
        "every fare infinite",
        &month.with_floats("fare_amount", &vec![f64::INFINITY; MONTH_ROWS]),
        "TooManyRejectedRows",
    );
    add(
        "trip_distance twice, a 1000x copy first",
        &duplicate_distance,
        "SchemaDrift",
    );
    add("airport_fee and Airport_fee both", &both_airport_fees, "SchemaDrift");
    add(
        "a pickup zone of 2^40",
        &month.with_ints("PULocationID", &[1 << 40]),
        "SchemaDrift",
    );
    add(
        "a pickup zone of 2^31+5",
        &month.with_ints("PULocationID", &[(1 << 31) + 5]),
        "SchemaDrift",
    );
    add(
        "a dropoff zone of -2^35",
        &month.with_ints("DOLocationID", &[-(1 << 35)]),
        "SchemaDrift",
    );
    add("no trip_distance column", &without_distance.unwrap(), "SchemaDrift");
    add("pickup zones as text", &text_locations, "SchemaDrift");
    add("a green-taxi file", &green, "SchemaDrift");
    add(
        "distances as text",
        &month.with(
            "trip_distance",
            cast(month.column("trip_distance"), &DataType::Utf8).unwrap(),
        ),
        "SchemaDrift",
    );
    add(
        "pickup times as text",
        &month.with(
            "tpep_pickup_datetime",
            cast(month.column("tpep_pickup_datetime"), &DataType::Utf8).unwrap(),
        ),
        "SchemaDrift",
    );
    add(
        "some other table",
        &RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap(),
        "SchemaDrift",
    );
    add(
        "every dropoff zone null",
        &month.with(
            "DOLocationID",
            Arc::new(arrow::array::new_null_array(&DataType::Int64, MONTH_ROWS)),
        ),
        "TooManyRejectedRows",
    );
    let valid = std::fs::read(&good).unwrap();
    cases.push(("an empty file", Vec::new(), "NotParquet"));
    cases.push((
        "an HTML error page",
        b"<html><body>503</body></html>".to_vec(),
        "NotParquet",
    ));
    cases.push((
        "the first half of the file",
        valid[..valid.len() / 2].to_vec(),
        "TruncatedParquet",
    ));
    cases.push((
        "the file without its last byte",
        valid[..valid.len() - 1].to_vec(),
        "TruncatedParquet",
    ));
    cases.push((
        "PAR1 at both ends and nothing between",
        b"PAR1\0\0\0\0PAR1".to_vec(),
        "TruncatedParquet",
    ));

    let mut failures = Vec::new();
    for (case, bytes, expected) in &cases {
        let path = march(&work, &case.replace(' ', "_"));
        std::fs::write(&path, bytes).unwrap();
        match setup.run_input(input(&path)).await {
            Ok(summary) => failures.push(format!("{case}: accepted, {} rows loaded", summary.rows_loaded)),
            Err(err) if err.name() != *expected => {
                failures.push(format!("{case}: {} instead of {expected}: {err}", err.name()))
            }
            Err(_) => {}
        }
        if setup.snapshot().await != before {
            failures.push(format!("{case}: changed what readers see"));
        }
    }

    // Inputs refused for what the run was told, not for the file's bytes.
    let mismatch = setup
        .run_input(IngestInput {
            expected_md5: Some("0123456789abcdef0123456789abcdef".into()),
            ..input(&good)
        })
        .await;
    check(
        &mut failures,
        "a checksum that does not match",
        mismatch,
        "ChecksumMismatch",
    );
    let wrong_month = setup
        .run_input(IngestInput {
            period: Some("2021-04".parse().unwrap()),
            ..input(&good)
        })
        .await;
    check(&mut failures, "March run as April", wrong_month, "TooManyRejectedRows");
    let nameless = work.join("trips.parquet");
    std::fs::copy(&good, &nameless).unwrap();
    check(
        &mut failures,
        "a file without a month in its name",
        setup.run_input(input(&nameless)).await,
        "UnknownPeriod",
    );
    if setup.snapshot().await != before {
        failures.push("the refused runs together changed what readers see".into());
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() + 3,
        failures.join("\n")
    );
    assert!(cases.len() + 3 >= 30, "the corpus has {} cases", cases.len() + 3);
}

fn check(
    failures: &mut Vec<String>,
    case: &str,
    result: tripflow::Result<tripflow::pipeline::RunSummary>,
    expected: &str,
) {
    match result {
        Ok(_) => failures.push(format!("{case}: accepted")),
        Err(err) if err.name() != expected => failures.push(format!("{case}: {} instead of {expected}", err.name())),
        Err(_) => {}
    }
}

#[tokio::test]
async fn absurd_rows_are_rejected_by_rule_and_the_answers_stay_right() {
    let setup = Setup::new().await;
    let work = setup.dir.path().join("cases");
    let month = Month::read(&setup.generate("2021-03", MONTH_ROWS, 23));
    // One NaN distance, one 1e9-mile trip, ten 300,000-mile trips, 100 miles in a millisecond,
    // zones 0, 999 and -5: each of which alone used to poison the average or the load.
    let mut distances = vec![f64::NAN, 1e9];
    distances.extend([300_000.0; 10]);
    let batch = month.with_floats("trip_distance", &distances);
    let mut absurd = Month {
        schema: batch.schema(),
        batch,
    };
    let pickup = absurd
        .column("tpep_pickup_datetime")
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
        .clone();
    let mut dropoffs: Vec<Option<i64>> = absurd
        .column("tpep_dropoff_datetime")
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
        .iter()
        .collect();
    let millisecond_trip = 12;
    dropoffs[millisecond_trip] = Some(pickup.value(millisecond_trip) + 1_000);
    absurd.batch = absurd.with(
        "tpep_dropoff_datetime",
        Arc::new(arrow::array::TimestampMicrosecondArray::from(dropoffs)),
    );
    let mut distances: Vec<Option<f64>> = absurd
        .column("trip_distance")
        .as_primitive::<Float64Type>()
        .iter()
        .collect();
    distances[millisecond_trip] = Some(100.0);
    absurd.batch = absurd.with("trip_distance", Arc::new(Float64Array::from(distances)));
    let mut zones: Vec<Option<i64>> = absurd
        .column("PULocationID")
        .as_primitive::<Int64Type>()
        .iter()
        .collect();
    for (row, zone) in [(13, 0), (14, 999), (15, -5)] {
        zones[row] = Some(zone);
    }
    absurd.batch = absurd.with("PULocationID", Arc::new(Int64Array::from(zones)));
    let source = write(&march(&work, "absurd"), &absurd.batch);

    let expected = expected_from_file(&source, "2021-03".parse().unwrap());
    let summary = setup.run(&source, None).await.unwrap();
    assert!(summary.rows_rejected.non_finite >= 1);
    assert!(
        summary.rows_rejected.implausible_speed >= 12,
        "{:?}",
        summary.rows_rejected
    );
    assert!(summary.rows_rejected.location_out_of_range >= 3);
    let avg = summary.avg_speed_mph.unwrap();
    assert!(avg.is_finite() && (5.0..30.0).contains(&avg), "average {avg} mph");
    assert!((avg - expected.avg_speed_mph).abs() < 1e-9 * expected.avg_speed_mph);
    assert_eq!(summary.weekly_top5, expected.weekly_top5);
    assert_eq!(summary.rows_loaded, expected.kept);
}

#[tokio::test]
async fn a_small_file_replaces_the_month_only_when_the_run_allows_it() {
    let setup = Setup::new().await;
    let good = setup.generate("2021-03", MONTH_ROWS, 24);
    setup.run(&good, None).await.unwrap();
    let work = setup.dir.path().join("cases");
    let month = Month::read(&good);
    let small = write(&march(&work, "small"), &month.head(2_000));

    let refused = setup.run(&small, None).await.unwrap_err();
    assert_eq!(refused.name(), "SuspiciousShrink");
    let message = refused.to_string();
    assert!(message.contains("--allow-shrink"), "{message}");

    let allowed = setup
        .run_input(IngestInput {
            allow_shrink: true,
            ..input(&small)
        })
        .await
        .unwrap();
    assert!(allowed.rows_loaded < 2_000);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, allowed.rows_loaded);

    // A share of 0 turns the guard off.
    let relaxed = Setup::with_config(PipelineConfig {
        min_kept_share: 0.0,
        ..PipelineConfig::default()
    })
    .await;
    relaxed.run(&good, None).await.unwrap();
    relaxed.run(&small, None).await.unwrap();
}

#[tokio::test]
async fn a_refused_file_keeps_the_accepted_raw_copy_and_leaves_no_copy_of_its_own() {
    let setup = Setup::new().await;
    let good = setup.generate("2021-03", MONTH_ROWS, 25);
    let accepted = setup.run(&good, None).await.unwrap();
    let work = setup.dir.path().join("cases");
    let month = Month::read(&good);
    let tiny = write(&march(&work, "tiny"), &month.head(10));
    assert_eq!(setup.run(&tiny, None).await.unwrap_err().name(), "SuspiciousShrink");
    assert_eq!(setup.keys("raw/").await, vec![accepted.ingest.raw_key.clone()]);
    let raw = tripflow::storage::get_bytes(setup.ctx.store.as_ref(), &accepted.ingest.raw_key)
        .await
        .unwrap();
    assert_eq!(md5_hex(&raw), accepted.md5, "the accepted copy is byte-exact");
    // The refusal is reported under the refused run, beside the month's current reports.
    let reports = setup.keys("reports/yellow/2021-03/runs/").await;
    assert!(reports.len() >= 2, "{reports:?}");
}
