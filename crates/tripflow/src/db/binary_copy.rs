//! PostgreSQL's binary COPY format, written straight from Arrow arrays: the load's hot loop.
//!
//! tokio-postgres's `BinaryCopyInWriter` takes one `&dyn ToSql` per value and checks its type each
//! time; for two million trips of nineteen columns that is most of a load. Here each column of
//! [`copied_columns`] is resolved once per batch to its typed array (or its constant: the
//! partition's date), and every row is appended to one buffer, sent to the server in large chunks.
//! The format: a header, per row a field count then per field its length (-1 for NULL) and its
//! bytes in network order, and a trailer (-1).
//!
//! The source id, the same in every row of a version, is not sent: the version's table fills it
//! in as the column's default (18 bytes of a row's 195, and a text value less for the server to
//! receive per row).

use arrow::array::{Array, AsArray, PrimitiveArray, RecordBatch};
use arrow::datatypes::{ArrowPrimitiveType, Float64Type, Int32Type, TimestampMicrosecondType};
use bytes::{BufMut, BytesMut};
use chrono::NaiveDate;
use tokio_postgres::types::Type;

use crate::error::{Error, Result};
use crate::handoff::curated::{Origin, TRIP_COLUMNS, TripColumn};

/// `PGCOPY\n\377\r\n\0`, then 32-bit flags (none) and header-extension length (none).
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of -1 ends the data.
pub const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The columns a COPY sends, in [`TRIP_COLUMNS`] order: all but the source id, which the
/// version's table has as its default.
pub fn copied_columns() -> impl Iterator<Item = &'static TripColumn> {
    TRIP_COLUMNS.iter().filter(|c| c.origin != Origin::Load)
}

/// One column of a batch, ready to encode.
enum Column<'a> {
    /// The same date in every row (the partition's), as days since 2000-01-01.
    Date(i32),
    Int4(&'a PrimitiveArray<Int32Type>),
    Float8(&'a PrimitiveArray<Float64Type>),
    Timestamp(&'a PrimitiveArray<TimestampMicrosecondType>),
}

fn pg_days(date: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default();
    i32::try_from((date - epoch).num_days()).unwrap_or(i32::MAX)
}

fn resolve(batch: &RecordBatch, date: NaiveDate) -> Result<Vec<Column<'_>>> {
    copied_columns()
        .map(|c| {
            let array = || {
                batch
                    .column_by_name(c.name)
                    .ok_or_else(|| Error::schema_drift(c.name, "missing from a curated file"))
            };
            let wrong = || Error::schema_drift(c.name, format!("not the curated type for {}", c.postgres));
            Ok(match (c.origin, &c.postgres) {
                (Origin::Load, _) => {
                    return Err(Error::InvalidInput(format!(
                        "{} is the table's default, never copied",
                        c.name
                    )));
                }
                (Origin::Partition, _) => Column::Date(pg_days(date)),
                (Origin::File, &Type::INT4) => Column::Int4(array()?.as_primitive_opt().ok_or_else(wrong)?),
                (Origin::File, &Type::FLOAT8) => Column::Float8(array()?.as_primitive_opt().ok_or_else(wrong)?),
                (Origin::File, &Type::TIMESTAMP) => Column::Timestamp(array()?.as_primitive_opt().ok_or_else(wrong)?),
                (Origin::File, other) => {
                    return Err(Error::schema_drift(c.name, format!("no binary encoder for {other}")));
                }
            })
        })
        .collect()
}

/// One field of a row: its length then its value, or -1 for NULL.
fn put_field<T: ArrowPrimitiveType>(
    out: &mut BytesMut,
    array: &PrimitiveArray<T>,
    row: usize,
    width: i32,
    put: impl Fn(&mut BytesMut, T::Native),
) {
    if array.is_null(row) {
        out.put_i32(-1);
    } else {
        out.put_i32(width);
        put(out, array.value(row));
    }
}

/// Appends every row of `batch` (a curated file's, of partition `date`) to `out`: the
/// [`copied_columns`].
pub fn encode_batch(batch: &RecordBatch, date: NaiveDate, out: &mut BytesMut) -> Result<()> {
    let columns = resolve(batch, date)?;
    let fields = i16::try_from(columns.len()).unwrap_or(i16::MAX);
    // 18 fields: a 2-byte count, then per field 4 bytes of length and at most 8 of value.
    out.reserve(batch.num_rows() * (2 + columns.len() * 12));
    for row in 0..batch.num_rows() {
        out.put_i16(fields);
        for column in &columns {
            match column {
                Column::Date(days) => {
                    out.put_i32(4);
                    out.put_i32(*days);
                }
                Column::Int4(array) => put_field(out, *array, row, 4, |out, v| out.put_i32(v)),
                Column::Float8(array) => put_field(out, *array, row, 8, |out, v| out.put_f64(v)),
                Column::Timestamp(array) => {
                    put_field(out, *array, row, 8, |out, v| out.put_i64(v - PG_EPOCH_MICROS));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int32Array, TimestampMicrosecondArray};

    use super::*;
    use crate::handoff::curated::curated_schema;

    /// A one-row curated batch: every int 7 but the nullable vendor null, every float 2.5, pickup at
    /// 2000-01-01T00:00:01, dropoff one hour later.
    fn one_row() -> RecordBatch {
        let schema = curated_schema();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.data_type() {
                    arrow::datatypes::DataType::Int32 if f.name() == "vendor_id" => {
                        Arc::new(Int32Array::from(vec![None]))
                    }
                    arrow::datatypes::DataType::Int32 => Arc::new(Int32Array::from(vec![7])),
                    arrow::datatypes::DataType::Float64 => Arc::new(Float64Array::from(vec![2.5])),
                    _ if f.name() == "pickup_at" => {
                        Arc::new(TimestampMicrosecondArray::from(vec![PG_EPOCH_MICROS + 1_000_000]))
                    }
                    _ => Arc::new(TimestampMicrosecondArray::from(vec![PG_EPOCH_MICROS + 3_601_000_000])),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    #[test]
    fn a_row_is_its_field_count_then_each_field_in_table_order() {
        let mut out = BytesMut::new();
        let date = NaiveDate::from_ymd_opt(2000, 1, 2).unwrap();
        encode_batch(&one_row(), date, &mut out).unwrap();
        let mut expected = BytesMut::new();
        expected.put_i16(18); // every column but the source id
        expected.put_i32(-1); // vendor_id NULL
        expected.put_i32(8);
        expected.put_i64(1_000_000); // pickup_at, microseconds since 2000-01-01
        expected.put_i32(8);
        expected.put_i64(3_601_000_000); // dropoff_at
        expected.put_i32(4);
        expected.put_i32(7); // passenger_count
        expected.put_i32(8);
        expected.put_f64(2.5); // trip_distance
        for _ in 0..4 {
            expected.put_i32(4);
            expected.put_i32(7); // ratecode, PU, DO, payment type
        }
        for _ in 0..7 {
            expected.put_i32(8);
            expected.put_f64(2.5); // fare .. airport_fee, duration_s, speed_mph
        }
        expected.put_i32(4);
        expected.put_i32(1); // pickup_date: one day after 2000-01-01
        expected.put_i32(4);
        expected.put_i32(7); // pickup_week
        assert_eq!(out, expected);
    }

    #[test]
    fn a_batch_missing_a_column_is_schema_drift() {
        let batch = one_row();
        let without_speed = batch
            .project(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16])
            .unwrap();
        let err = encode_batch(&without_speed, NaiveDate::MIN, &mut BytesMut::new()).unwrap_err();
        assert_eq!(err.name(), "SchemaDrift");
        assert!(err.to_string().contains("speed_mph"), "{err}");
    }

    #[test]
    fn header_and_trailer_are_postgres_binary_copy() {
        assert_eq!(HEADER.len(), 19);
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(TRAILER, [0xff, 0xff]);
    }
}
