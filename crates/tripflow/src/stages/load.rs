//! **load.** Puts the curated rows of one source into PostgreSQL (Aurora in AWS, a local cluster for
//! `tripflow run`). Checks every curated object against the transform manifest, applies `table.sql`,
//! then in one transaction: takes an advisory lock on the source (two loads of it serialise), deletes
//! the source's previous rows, binary-`COPY`s the new ones, compares the table's count with the
//! curated count (`LoadCountMismatch` and rollback on disagreement), records the run, commits. Readers
//! see the old set or the new one, never both, never none; a rerun leaves exactly one copy.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMicrosecondType};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use futures::{TryStreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tracing::info;

use super::StageContext;
use super::Verdict;
use super::transform::{self, DURATION_S, PICKUP_WEEK, SPEED_MPH, TransformOutput};
use crate::contract::col;
use crate::db::{self, TRIPS_TABLE, classify};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::parquet_io::{decode_error, open_stream};
use crate::period::Period;
use crate::storage::{Layout, md5_of, put_json};

pub const STAGE: &str = "load";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadInput {
    pub dataset: String,
    pub period: Period,
    /// The transform manifest listing the curated objects to load.
    pub manifest_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadOutput {
    pub verdict: Verdict,
    pub dataset: String,
    pub period: Period,
    pub source_id: String,
    pub rows_curated: u64,
    pub rows_loaded: u64,
    /// Rows of the same source that the load replaced (0 on a first load).
    pub rows_replaced: u64,
    pub table: String,
}

const COLUMNS: &[(&str, Type)] = &[
    ("source_id", Type::TEXT),
    (col::VENDOR_ID, Type::INT4),
    (col::PICKUP_AT, Type::TIMESTAMP),
    (col::DROPOFF_AT, Type::TIMESTAMP),
    (col::PASSENGER_COUNT, Type::INT4),
    (col::TRIP_DISTANCE, Type::FLOAT8),
    (col::RATECODE_ID, Type::INT4),
    (col::PU_LOCATION_ID, Type::INT4),
    (col::DO_LOCATION_ID, Type::INT4),
    (col::PAYMENT_TYPE, Type::INT4),
    (col::FARE_AMOUNT, Type::FLOAT8),
    (col::TIP_AMOUNT, Type::FLOAT8),
    (col::TOTAL_AMOUNT, Type::FLOAT8),
    (col::CONGESTION_SURCHARGE, Type::FLOAT8),
    (col::AIRPORT_FEE, Type::FLOAT8),
    (DURATION_S, Type::FLOAT8),
    (SPEED_MPH, Type::FLOAT8),
    (transform::PICKUP_DATE, Type::DATE),
    (PICKUP_WEEK, Type::INT4),
];

/// One row's values in COPY column order.
struct Row {
    ints: [Option<i32>; 7],
    floats: [Option<f64>; 7],
    pickup: Option<NaiveDateTime>,
    dropoff: Option<NaiveDateTime>,
    duration_s: Option<f64>,
    week: Option<i32>,
}

fn int_col<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::PrimitiveArray<Int32Type>> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .ok_or_else(|| Error::schema_drift(name, "expected int32"))
}

fn float_col<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::PrimitiveArray<Float64Type>> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| Error::schema_drift(name, "expected float64"))
}

async fn copy_batch(
    writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    batch: &RecordBatch,
    source_id: &str,
    date: NaiveDate,
) -> Result<()> {
    let ints = [
        int_col(batch, col::VENDOR_ID)?,
        int_col(batch, col::PASSENGER_COUNT)?,
        int_col(batch, col::RATECODE_ID)?,
        int_col(batch, col::PU_LOCATION_ID)?,
        int_col(batch, col::DO_LOCATION_ID)?,
        int_col(batch, col::PAYMENT_TYPE)?,
        int_col(batch, PICKUP_WEEK)?,
    ];
    let floats = [
        float_col(batch, col::TRIP_DISTANCE)?,
        float_col(batch, col::FARE_AMOUNT)?,
        float_col(batch, col::TIP_AMOUNT)?,
        float_col(batch, col::TOTAL_AMOUNT)?,
        float_col(batch, col::CONGESTION_SURCHARGE)?,
        float_col(batch, col::AIRPORT_FEE)?,
        float_col(batch, SPEED_MPH)?,
    ];
    let ts = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| Error::schema_drift(name, "expected timestamp(us)"))
    };
    let (pickup, dropoff) = (ts(col::PICKUP_AT)?, ts(col::DROPOFF_AT)?);
    let duration = batch
        .column_by_name(DURATION_S)
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| Error::schema_drift(DURATION_S, "expected float64"))?;
    let to_time = |a: &arrow::array::PrimitiveArray<TimestampMicrosecondType>, i: usize| {
        a.is_valid(i)
            .then(|| DateTime::from_timestamp_micros(a.value(i)).map(|t| t.naive_utc()))
            .flatten()
    };
    let mut writer = writer;
    for i in 0..batch.num_rows() {
        let int = |a: &arrow::array::PrimitiveArray<Int32Type>| a.is_valid(i).then(|| a.value(i));
        let float = |a: &arrow::array::PrimitiveArray<Float64Type>| a.is_valid(i).then(|| a.value(i));
        let row = Row {
            ints: ints.map(int),
            floats: floats.map(float),
            pickup: to_time(pickup, i),
            dropoff: to_time(dropoff, i),
            duration_s: duration.is_valid(i).then(|| duration.value(i)),
            week: int(ints[6]),
        };
        let values: [&(dyn ToSql + Sync); 19] = [
            &source_id,
            &row.ints[0],
            &row.pickup,
            &row.dropoff,
            &row.ints[1],
            &row.floats[0],
            &row.ints[2],
            &row.ints[3],
            &row.ints[4],
            &row.ints[5],
            &row.floats[1],
            &row.floats[2],
            &row.floats[3],
            &row.floats[4],
            &row.floats[5],
            &row.duration_s,
            &row.floats[6],
            &date,
            &row.week,
        ];
        writer.as_mut().write(&values).await.map_err(classify)?;
    }
    Ok(())
}

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

pub async fn run(ctx: &StageContext, client: &mut Client, input: LoadInput) -> Result<LoadOutput> {
    let started_at = chrono::Utc::now();
    let layout = Layout::new(input.dataset.clone(), input.period);
    let source_id = layout.source_id();
    let store = &ctx.store;
    let manifest =
        Manifest::<TransformOutput>::read(store.as_ref(), &input.manifest_key, transform::STAGE, &source_id).await?;
    manifest.verify_objects(store.as_ref()).await?;
    let manifest_md5 = md5_of(store.as_ref(), &input.manifest_key).await?.md5;
    let rows_curated = manifest.output.rows_curated;

    db::apply_schema(client).await?;
    let tx = client.transaction().await.map_err(classify)?;
    // hashtextextended gives a 64-bit key per source: loads of the same source queue here.
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&source_id])
        .await
        .map_err(classify)?;
    let rows_replaced = tx
        .execute(
            &format!("DELETE FROM {TRIPS_TABLE} WHERE source_id = $1"),
            &[&source_id],
        )
        .await
        .map_err(classify)?;

    let column_list = COLUMNS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ");
    let sink = tx
        .copy_in(&format!("COPY {TRIPS_TABLE} ({column_list}) FROM STDIN BINARY"))
        .await
        .map_err(classify)?;
    let types: Vec<Type> = COLUMNS.iter().map(|(_, t)| t.clone()).collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for entry in &manifest.objects {
        let date = partition_date(&entry.object.key)?;
        let (_, mut stream) = open_stream(store, &entry.object.key, None).await?;
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| decode_error(&entry.object.key, e))?
        {
            copy_batch(writer.as_mut(), &batch, &source_id, date).await?;
        }
    }
    let copied = writer.finish().await.map_err(classify)?;

    let loaded: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {TRIPS_TABLE} WHERE source_id = $1"),
            &[&source_id],
        )
        .await
        .map_err(classify)?
        .get(0);
    let rows_loaded = u64::try_from(loaded).unwrap_or(0);
    if rows_loaded != rows_curated {
        // Dropping the transaction rolls it back: the previous rows stay as they were.
        tx.rollback().await.map_err(classify)?;
        return Err(Error::LoadCountMismatch {
            source_id,
            expected: rows_curated,
            loaded: rows_loaded,
        });
    }
    tx.execute(
        "INSERT INTO tripflow.load_runs (source_id, manifest_key, manifest_md5, rows_curated, rows_loaded, rows_replaced, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &source_id,
            &input.manifest_key,
            &manifest_md5,
            &(rows_curated as i64),
            &loaded,
            &(rows_replaced as i64),
            &started_at,
        ],
    )
    .await
    .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    info!(%source_id, rows_loaded, rows_replaced, copied, "load done");
    let output = LoadOutput {
        verdict: Verdict::Ok,
        dataset: input.dataset,
        period: input.period,
        source_id,
        rows_curated,
        rows_loaded,
        rows_replaced,
        table: TRIPS_TABLE.to_string(),
    };
    // Committed already: a failure here is retried, and the retry replaces the rows again, harmlessly.
    put_json(store.as_ref(), &layout.report_key(STAGE), &output).await?;
    Ok(output)
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

    #[test]
    fn copy_columns_match_the_schema_file() {
        for (name, _) in COLUMNS {
            assert!(
                db::SCHEMA_SQL.contains(&format!("    {name} ")),
                "{name} missing from table.sql"
            );
        }
    }
}
