//! The TLC yellow-taxi schema contract: which source columns the pipeline needs, which physical
//! types TLC has really published for each, and the one canonical Arrow form every later stage sees.
//!
//! Accepted variants (all seen in published files): IDs as int32 or int64; timestamps in s, ms, us or
//! ns; `passenger_count` and `RatecodeID` as integers or doubles; `airport_fee` or `Airport_fee`;
//! extra columns (e.g. `cbd_congestion_fee`) ignored. Anything else is `SchemaDrift`, naming the
//! column and what was found: a missing or mistyped column, a name that appears twice (which copy
//! is meant would be a guess), or an integer too large for its canonical type (a silent NULL would
//! hide it). A timestamp too far from today for `timestamp[us]` is not drift but a row clean
//! rejects, so canonicalization reports those rows instead of nulling them.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::kernels::boolean::{and, is_not_null, is_null};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{Error, Result};

/// How a source column may be typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Identifiers and codes: any integer width.
    Id,
    /// Small counts TLC has published as integer or double.
    Count,
    Timestamp,
    /// Money and distance: floating point (integers tolerated).
    Measure,
}

/// One column of the contract.
struct Column {
    canonical: &'static str,
    /// Accepted source names, first is the documented one.
    source_names: &'static [&'static str],
    kind: Kind,
    required: bool,
}

const COLUMNS: &[Column] = &[
    Column {
        canonical: "vendor_id",
        source_names: &["VendorID"],
        kind: Kind::Id,
        required: true,
    },
    Column {
        canonical: "pickup_at",
        source_names: &["tpep_pickup_datetime"],
        kind: Kind::Timestamp,
        required: true,
    },
    Column {
        canonical: "dropoff_at",
        source_names: &["tpep_dropoff_datetime"],
        kind: Kind::Timestamp,
        required: true,
    },
    Column {
        canonical: "passenger_count",
        source_names: &["passenger_count"],
        kind: Kind::Count,
        required: true,
    },
    Column {
        canonical: "trip_distance",
        source_names: &["trip_distance"],
        kind: Kind::Measure,
        required: true,
    },
    Column {
        canonical: "ratecode_id",
        source_names: &["RatecodeID"],
        kind: Kind::Count,
        required: true,
    },
    Column {
        canonical: "pu_location_id",
        source_names: &["PULocationID"],
        kind: Kind::Id,
        required: true,
    },
    Column {
        canonical: "do_location_id",
        source_names: &["DOLocationID"],
        kind: Kind::Id,
        required: true,
    },
    Column {
        canonical: "payment_type",
        source_names: &["payment_type"],
        kind: Kind::Id,
        required: true,
    },
    Column {
        canonical: "fare_amount",
        source_names: &["fare_amount"],
        kind: Kind::Measure,
        required: true,
    },
    Column {
        canonical: "tip_amount",
        source_names: &["tip_amount"],
        kind: Kind::Measure,
        required: true,
    },
    Column {
        canonical: "total_amount",
        source_names: &["total_amount"],
        kind: Kind::Measure,
        required: true,
    },
    // Introduced in 2019 and 2021 respectively; older months load with nulls.
    Column {
        canonical: "congestion_surcharge",
        source_names: &["congestion_surcharge"],
        kind: Kind::Measure,
        required: false,
    },
    Column {
        canonical: "airport_fee",
        source_names: &["airport_fee", "Airport_fee"],
        kind: Kind::Measure,
        required: false,
    },
];

/// Official TLC columns the analysts do not need: not read, and not reported as extras.
const OFFICIAL_UNUSED: &[&str] = &[
    "store_and_fwd_flag",
    "extra",
    "mta_tax",
    "tolls_amount",
    "improvement_surcharge",
];

/// Canonical column names, in canonical order.
pub mod col {
    pub const VENDOR_ID: &str = "vendor_id";
    pub const PICKUP_AT: &str = "pickup_at";
    pub const DROPOFF_AT: &str = "dropoff_at";
    pub const PASSENGER_COUNT: &str = "passenger_count";
    pub const TRIP_DISTANCE: &str = "trip_distance";
    pub const RATECODE_ID: &str = "ratecode_id";
    pub const PU_LOCATION_ID: &str = "pu_location_id";
    pub const DO_LOCATION_ID: &str = "do_location_id";
    pub const PAYMENT_TYPE: &str = "payment_type";
    pub const FARE_AMOUNT: &str = "fare_amount";
    pub const TIP_AMOUNT: &str = "tip_amount";
    pub const TOTAL_AMOUNT: &str = "total_amount";
    pub const CONGESTION_SURCHARGE: &str = "congestion_surcharge";
    pub const AIRPORT_FEE: &str = "airport_fee";
}

/// A column of a canonical (or curated) batch as its concrete array type. A batch that lacks it or
/// types it otherwise did not come through the contract: `SchemaDrift`, naming what was found.
pub fn typed_column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| Error::schema_drift(name, "no such column in the batch"))?;
    column.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::schema_drift(
            name,
            format!(
                "{} where the pipeline's own schema has another type",
                column.data_type()
            ),
        )
    })
}

fn canonical_type(kind: Kind) -> DataType {
    match kind {
        Kind::Id | Kind::Count => DataType::Int32,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::Measure => DataType::Float64,
    }
}

static CANONICAL: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(c.canonical, canonical_type(c.kind), true))
            .collect::<Vec<_>>(),
    ))
});

/// The schema of clean-zone files: every contract column, canonical names and types.
pub fn canonical_schema() -> SchemaRef {
    CANONICAL.clone()
}

fn accepts(kind: Kind, found: &DataType) -> bool {
    use DataType::*;
    let integer = matches!(found, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64);
    let float = matches!(found, Float32 | Float64);
    match kind {
        Kind::Id => integer,
        Kind::Count | Kind::Measure => integer || float,
        // Timezone-aware timestamps are accepted as written: TLC times are local wall-clock times.
        Kind::Timestamp => matches!(found, Timestamp(_, _)),
    }
}

fn describe_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Id => "an integer",
        Kind::Count => "an integer or a double",
        Kind::Timestamp => "a timestamp",
        Kind::Measure => "a number",
    }
}

/// A source file's schema, checked against the contract: where each canonical column comes from.
#[derive(Debug, Clone)]
pub struct SourceSchema {
    /// For each contract column, the source column name it is read from (`None`: absent optional column).
    sources: Vec<Option<String>>,
    /// A one-line description of the variant, recorded in the ingest manifest.
    pub variant: String,
}

/// Checks a source schema against the contract.
pub fn check(schema: &Schema) -> Result<SourceSchema> {
    let mut seen = HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name().as_str()) {
            return Err(Error::schema_drift(
                field.name(),
                "appears more than once in the file; which copy holds the data is ambiguous",
            ));
        }
    }
    let mut sources = Vec::with_capacity(COLUMNS.len());
    for column in COLUMNS {
        let present: Vec<&str> = column
            .source_names
            .iter()
            .copied()
            .filter(|name| schema.field_with_name(name).is_ok())
            .collect();
        if present.len() > 1 {
            return Err(Error::schema_drift(
                present.join(" and "),
                format!(
                    "both present; each may hold {}, which one to use is ambiguous",
                    column.canonical
                ),
            ));
        }
        let found = present.first().and_then(|name| schema.field_with_name(name).ok());
        match found {
            Some(field) if accepts(column.kind, field.data_type()) => sources.push(Some(field.name().clone())),
            Some(field) => {
                return Err(Error::schema_drift(
                    field.name(),
                    format!("expected {}, found {}", describe_kind(column.kind), field.data_type()),
                ));
            }
            None if !column.required => sources.push(None),
            None => return Err(missing_column(schema, column.source_names[0])),
        }
    }
    let variant = describe_variant(schema, &sources);
    Ok(SourceSchema { sources, variant })
}

fn missing_column(schema: &Schema, wanted: &str) -> Error {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let hint = if names.iter().any(|n| n.starts_with("lpep_")) {
        "; lpep_* columns present: this looks like a green-taxi file".to_string()
    } else if let Some(near) = names.iter().find(|n| n.eq_ignore_ascii_case(wanted)) {
        format!("; found {near} (different case)")
    } else {
        String::new()
    };
    Error::schema_drift(wanted, format!("missing{hint}"))
}

fn describe_variant(schema: &Schema, sources: &[Option<String>]) -> String {
    let type_of = |name: &str| schema.field_with_name(name).map(|f| f.data_type().clone()).ok();
    let short = |t: Option<DataType>| match t {
        Some(DataType::Timestamp(unit, tz)) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            if tz.is_some() {
                format!("{unit}+tz")
            } else {
                unit.to_string()
            }
        }
        Some(t) => t.to_string().to_lowercase(),
        None => "absent".to_string(),
    };
    let airport = sources
        .get(13)
        .cloned()
        .flatten()
        .unwrap_or_else(|| "absent".to_string());
    let known: Vec<&str> = COLUMNS
        .iter()
        .flat_map(|c| c.source_names.iter().copied())
        .chain(OFFICIAL_UNUSED.iter().copied())
        .collect();
    let extra: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| !known.contains(n))
        .collect();
    format!(
        "ids={} timestamps={} counts={} airport_fee={}{}",
        short(type_of("PULocationID")),
        short(type_of("tpep_pickup_datetime")),
        short(type_of("passenger_count")),
        airport,
        if extra.is_empty() {
            String::new()
        } else {
            format!(" extra={}", extra.join(","))
        }
    )
}

impl SourceSchema {
    /// The source column names to read (column projection).
    pub fn source_columns(&self) -> Vec<&str> {
        self.sources.iter().flatten().map(String::as_str).collect()
    }

    /// Turns a batch read from the source (any accepted variant, projected or not) into the canonical form.
    pub fn canonicalize(&self, batch: &RecordBatch) -> Result<CanonicalBatch> {
        let rows = batch.num_rows();
        let canonical = canonical_schema();
        // Safe casts turn a value the target type cannot hold into null instead of wrapping it; the
        // nulls that appear that way are then found and reported, never kept. Fractional doubles in
        // integer columns truncate, as Spark's cast did.
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
        let mut out_of_range = [None, None];
        for ((field, source), column) in canonical.fields().iter().zip(&self.sources).zip(COLUMNS) {
            let converted = match source {
                None => new_null_array(field.data_type(), rows),
                Some(name) => {
                    let array = batch.column_by_name(name).ok_or_else(|| {
                        Error::schema_drift(name.clone(), "present in the footer but not in the data read")
                    })?;
                    let converted = cast_with_options(array, field.data_type(), &options)
                        .map_err(|e| Error::schema_drift(name.clone(), format!("cannot be cast: {e}")))?;
                    if let Some(lost) = nulled_by_cast(array, &converted)? {
                        match column.canonical {
                            col::PICKUP_AT => out_of_range[0] = Some(lost),
                            col::DROPOFF_AT => out_of_range[1] = Some(lost),
                            _ => return Err(overflow(name, array, &lost, field.data_type())),
                        }
                    }
                    converted
                }
            };
            columns.push(converted);
        }
        let batch = RecordBatch::try_new(canonical, columns).map_err(|e| Error::schema_drift("*", e.to_string()))?;
        let [pickup_out_of_range, dropoff_out_of_range] = out_of_range;
        Ok(CanonicalBatch {
            batch,
            pickup_out_of_range,
            dropoff_out_of_range,
        })
    }
}

/// A source batch in canonical form, with the rows whose timestamps `timestamp[us]` cannot hold.
#[derive(Debug, Clone)]
pub struct CanonicalBatch {
    pub batch: RecordBatch,
    /// `Some` only when at least one row's pickup was present in the source but out of range (it is
    /// null in `batch`).
    pub pickup_out_of_range: Option<BooleanArray>,
    /// Likewise for dropoff.
    pub dropoff_out_of_range: Option<BooleanArray>,
}

impl CanonicalBatch {
    /// A batch that was canonical already (every timestamp in range).
    pub fn in_range(batch: RecordBatch) -> Self {
        CanonicalBatch {
            batch,
            pickup_out_of_range: None,
            dropoff_out_of_range: None,
        }
    }
}

/// Rows present in `source` but null after the cast, or `None` when the cast kept every value.
fn nulled_by_cast(source: &ArrayRef, converted: &ArrayRef) -> Result<Option<BooleanArray>> {
    if converted.null_count() == source.null_count() {
        return Ok(None);
    }
    let lost = is_not_null(source.as_ref())
        .and_then(|present| and(&present, &is_null(converted.as_ref())?))
        .map_err(|e| Error::InvalidInput(format!("comparing nulls before and after a cast: {e}")))?;
    Ok((lost.true_count() > 0).then_some(lost))
}

fn overflow(name: &str, source: &ArrayRef, lost: &BooleanArray, target: &DataType) -> Error {
    let first = (0..lost.len()).find(|&i| lost.value(i)).unwrap_or(0);
    let value = ArrayFormatter::try_new(source.as_ref(), &FormatOptions::default())
        .map(|f| f.value(first).to_string())
        .unwrap_or_else(|_| "?".to_string());
    Error::schema_drift(
        name,
        format!(
            "value {value} does not fit the canonical {target} ({} such rows in this batch)",
            lost.true_count()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, Float64Array, Int32Array, Int64Array, TimestampMicrosecondArray, TimestampNanosecondArray,
    };

    #[test]
    fn a_column_missing_or_of_another_type_is_schema_drift_naming_what_was_found() {
        let schema = Schema::new(vec![Field::new(col::TRIP_DISTANCE, DataType::Int32, true)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int32Array::from(vec![1]))]).unwrap();
        assert_eq!(
            typed_column::<Int32Array>(&batch, col::TRIP_DISTANCE).unwrap().value(0),
            1
        );
        let mistyped = typed_column::<Float64Array>(&batch, col::TRIP_DISTANCE).unwrap_err();
        assert_eq!(mistyped.name(), "SchemaDrift");
        assert!(mistyped.to_string().contains("Int32"), "{mistyped}");
        let missing = typed_column::<Float64Array>(&batch, col::FARE_AMOUNT).unwrap_err();
        assert_eq!(missing.name(), "SchemaDrift");
        assert!(missing.to_string().contains(col::FARE_AMOUNT), "{missing}");
    }

    fn fields_2021() -> Vec<Field> {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        vec![
            Field::new("VendorID", DataType::Int64, true),
            Field::new("tpep_pickup_datetime", ts.clone(), true),
            Field::new("tpep_dropoff_datetime", ts, true),
            Field::new("passenger_count", DataType::Float64, true),
            Field::new("trip_distance", DataType::Float64, true),
            Field::new("RatecodeID", DataType::Float64, true),
            Field::new("store_and_fwd_flag", DataType::Utf8, true),
            Field::new("PULocationID", DataType::Int64, true),
            Field::new("DOLocationID", DataType::Int64, true),
            Field::new("payment_type", DataType::Int64, true),
            Field::new("fare_amount", DataType::Float64, true),
            Field::new("tip_amount", DataType::Float64, true),
            Field::new("total_amount", DataType::Float64, true),
            Field::new("congestion_surcharge", DataType::Float64, true),
            Field::new("airport_fee", DataType::Float64, true),
        ]
    }

    fn fields_2025() -> Vec<Field> {
        let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
        let mut fields = fields_2021();
        for f in fields.iter_mut() {
            *f = match f.name().as_str() {
                "VendorID" | "PULocationID" | "DOLocationID" => Field::new(f.name(), DataType::Int32, true),
                "passenger_count" | "RatecodeID" => Field::new(f.name(), DataType::Int64, true),
                "tpep_pickup_datetime" | "tpep_dropoff_datetime" => Field::new(f.name(), ts.clone(), true),
                "airport_fee" => Field::new("Airport_fee", DataType::Float64, true),
                _ => f.clone(),
            };
        }
        fields.push(Field::new("cbd_congestion_fee", DataType::Float64, true));
        fields
    }

    #[test]
    fn the_2021_and_2025_variants_are_both_accepted() {
        let v2021 = check(&Schema::new(fields_2021())).unwrap();
        assert_eq!(
            v2021.variant,
            "ids=int64 timestamps=us counts=float64 airport_fee=airport_fee"
        );
        let v2025 = check(&Schema::new(fields_2025())).unwrap();
        assert_eq!(
            v2025.variant,
            "ids=int32 timestamps=ns counts=int64 airport_fee=Airport_fee extra=cbd_congestion_fee"
        );
        assert!(v2025.source_columns().contains(&"Airport_fee"));
        assert!(!v2025.source_columns().contains(&"cbd_congestion_fee"));
    }

    #[test]
    fn a_missing_column_is_schema_drift_naming_it() {
        let fields: Vec<Field> = fields_2021()
            .into_iter()
            .filter(|f| f.name() != "trip_distance")
            .collect();
        let err = check(&Schema::new(fields)).unwrap_err();
        assert_eq!(err.name(), "SchemaDrift");
        assert!(err.to_string().contains("trip_distance"), "{err}");
    }

    #[test]
    fn an_incompatible_type_is_schema_drift_naming_column_and_type() {
        let fields: Vec<Field> = fields_2021()
            .into_iter()
            .map(|f| {
                if f.name() == "PULocationID" {
                    Field::new("PULocationID", DataType::Utf8, true)
                } else {
                    f
                }
            })
            .collect();
        let err = check(&Schema::new(fields)).unwrap_err().to_string();
        assert!(err.contains("PULocationID") && err.contains("Utf8"), "{err}");
    }

    #[test]
    fn a_green_taxi_file_is_recognised_as_schema_drift() {
        let fields: Vec<Field> = fields_2021()
            .into_iter()
            .map(|f| match f.name().as_str() {
                "tpep_pickup_datetime" => Field::new("lpep_pickup_datetime", f.data_type().clone(), true),
                "tpep_dropoff_datetime" => Field::new("lpep_dropoff_datetime", f.data_type().clone(), true),
                _ => f,
            })
            .collect();
        let err = check(&Schema::new(fields)).unwrap_err().to_string();
        assert!(
            err.contains("tpep_pickup_datetime") && err.contains("green-taxi"),
            "{err}"
        );
    }

    #[test]
    fn optional_columns_may_be_absent_and_load_as_null() {
        let fields: Vec<Field> = fields_2021()
            .into_iter()
            .filter(|f| !matches!(f.name().as_str(), "airport_fee" | "congestion_surcharge"))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let source = check(&schema).unwrap();
        assert!(source.variant.contains("airport_fee=absent"));
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 2))
            .collect();
        let batch = source
            .canonicalize(&RecordBatch::try_new(schema, columns).unwrap())
            .unwrap()
            .batch;
        assert_eq!(batch.schema(), canonical_schema());
        assert_eq!(batch.column_by_name(col::AIRPORT_FEE).unwrap().null_count(), 2);
    }

    #[test]
    fn canonicalize_converts_units_and_widths() {
        let schema = Arc::new(Schema::new(fields_2025()));
        let source = check(&schema).unwrap();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "tpep_pickup_datetime" => Arc::new(TimestampNanosecondArray::from(vec![1_614_556_800_123_456_789])),
                    "PULocationID" => Arc::new(Int32Array::from(vec![161])),
                    "passenger_count" => Arc::new(Int64Array::from(vec![3])),
                    "trip_distance" => Arc::new(Float64Array::from(vec![2.5])),
                    _ => new_null_array(f.data_type(), 1),
                }
            })
            .collect();
        let batch = source
            .canonicalize(&RecordBatch::try_new(schema, columns).unwrap())
            .unwrap()
            .batch;
        let pickup = batch.column_by_name(col::PICKUP_AT).unwrap();
        let pickup = pickup.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(pickup.value(0), 1_614_556_800_123_456);
        let pu = batch.column_by_name(col::PU_LOCATION_ID).unwrap();
        assert_eq!(pu.as_any().downcast_ref::<Int32Array>().unwrap().value(0), 161);
        let passengers = batch.column_by_name(col::PASSENGER_COUNT).unwrap();
        assert_eq!(passengers.as_any().downcast_ref::<Int32Array>().unwrap().value(0), 3);
    }

    fn with_field(name: &str, field: Field) -> Vec<Field> {
        fields_2021()
            .into_iter()
            .map(|f| if f.name() == name { field.clone() } else { f })
            .collect()
    }

    fn one_row(schema: &SchemaRef, set: impl Fn(&Field) -> Option<ArrayRef>) -> RecordBatch {
        let columns = schema
            .fields()
            .iter()
            .map(|f| set(f).unwrap_or_else(|| new_null_array(f.data_type(), 1)))
            .collect();
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    #[test]
    fn a_column_name_that_appears_twice_is_schema_drift_naming_it() {
        let mut fields = fields_2021();
        fields.insert(0, Field::new("trip_distance", DataType::Float64, true));
        let err = check(&Schema::new(fields)).unwrap_err();
        assert_eq!(err.name(), "SchemaDrift");
        assert!(
            err.to_string().contains("trip_distance") && err.to_string().contains("more than once"),
            "{err}"
        );

        let mut fields = fields_2021();
        fields.push(Field::new("Airport_fee", DataType::Float64, true));
        let err = check(&Schema::new(fields)).unwrap_err().to_string();
        assert!(err.contains("airport_fee and Airport_fee"), "{err}");
    }

    #[test]
    fn an_id_too_large_for_int32_is_schema_drift_with_the_value_not_a_null() {
        let schema = Arc::new(Schema::new(fields_2021()));
        let source = check(&schema).unwrap();
        for value in [1i64 << 40, (1i64 << 31) + 5] {
            let batch = one_row(&schema, |f| {
                (f.name() == "PULocationID").then(|| Arc::new(Int64Array::from(vec![value])) as ArrayRef)
            });
            let err = source.canonicalize(&batch).unwrap_err();
            assert_eq!(err.name(), "SchemaDrift");
            assert!(
                err.to_string().contains("PULocationID") && err.to_string().contains(&value.to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn a_timestamp_beyond_timestamp_us_is_reported_as_out_of_range_not_null() {
        let seconds = DataType::Timestamp(TimeUnit::Second, None);
        let schema = Arc::new(Schema::new(with_field(
            "tpep_dropoff_datetime",
            Field::new("tpep_dropoff_datetime", seconds, true),
        )));
        let source = check(&schema).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            schema
                .fields()
                .iter()
                .map(|f| -> ArrayRef {
                    match f.name().as_str() {
                        // In range, beyond i64 microseconds, and truly null.
                        "tpep_dropoff_datetime" => Arc::new(arrow::array::TimestampSecondArray::from(vec![
                            Some(1_614_556_900),
                            Some(i64::MAX / 10),
                            None,
                        ])),
                        _ => new_null_array(f.data_type(), 3),
                    }
                })
                .collect(),
        )
        .unwrap();
        let canonical = source.canonicalize(&batch).unwrap();
        assert!(canonical.pickup_out_of_range.is_none());
        let lost = canonical.dropoff_out_of_range.unwrap();
        assert_eq!(lost.iter().collect::<Vec<_>>(), [Some(false), Some(true), Some(false)]);
    }
}
