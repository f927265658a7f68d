//! The curated schema, defined once. Every column of `tripflow.trips` is listed here, in the table's
//! order, with where its values come from and its PostgreSQL type; the Arrow type of curated files and
//! the type Glue shows Athena follow from that. Transform writes [`curated_schema`], load COPYs
//! [`TRIP_COLUMNS`] in order, the catalog check expects [`glue_columns`], and the tests hold the
//! migration's `CREATE TABLE` and the contract's canonical schema to the same list.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio_postgres::types::Type;

use crate::contract::col;

pub const DURATION_S: &str = "duration_s";
pub const SPEED_MPH: &str = "speed_mph";
pub const PICKUP_WEEK: &str = "pickup_week";
/// The partition column: in the key (`pickup_date=2021-03-01`), not in the files.
pub const PICKUP_DATE: &str = "pickup_date";
/// The database's own column naming the version's source (`yellow/2021-03`), in no file.
pub const SOURCE_ID: &str = "source_id";

/// Where a column's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Load adds it: the source id of the version.
    Load,
    /// A column of the curated files.
    File,
    /// The curated partition key, from the file's key.
    Partition,
}

#[derive(Debug, Clone)]
pub struct TripColumn {
    pub name: &'static str,
    pub origin: Origin,
    pub postgres: Type,
    /// Whether a curated file may hold nulls in it.
    pub nullable: bool,
}

impl TripColumn {
    /// The column's type in Arrow (curated files), from its PostgreSQL type.
    pub fn arrow(&self) -> DataType {
        match self.postgres {
            Type::INT4 => DataType::Int32,
            Type::FLOAT8 => DataType::Float64,
            Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
            Type::DATE => DataType::Date32,
            _ => DataType::Utf8,
        }
    }

    /// The column's type as Glue and Athena name it.
    pub fn glue(&self) -> &'static str {
        match self.postgres {
            Type::INT4 => "int",
            Type::FLOAT8 => "double",
            Type::TIMESTAMP => "timestamp",
            Type::DATE => "date",
            _ => "string",
        }
    }
}

const fn column(name: &'static str, origin: Origin, postgres: Type, nullable: bool) -> TripColumn {
    TripColumn {
        name,
        origin,
        postgres,
        nullable,
    }
}

/// The columns of `tripflow.trips`, in table order, which is also the order of a load's binary COPY.
/// The file columns come first from the contract's canonical schema (nullable: clean keeps what the
/// source had), then what transform derives.
pub const TRIP_COLUMNS: &[TripColumn] = &[
    column(SOURCE_ID, Origin::Load, Type::TEXT, false),
    column(col::VENDOR_ID, Origin::File, Type::INT4, true),
    column(col::PICKUP_AT, Origin::File, Type::TIMESTAMP, true),
    column(col::DROPOFF_AT, Origin::File, Type::TIMESTAMP, true),
    column(col::PASSENGER_COUNT, Origin::File, Type::INT4, true),
    column(col::TRIP_DISTANCE, Origin::File, Type::FLOAT8, true),
    column(col::RATECODE_ID, Origin::File, Type::INT4, true),
    column(col::PU_LOCATION_ID, Origin::File, Type::INT4, true),
    column(col::DO_LOCATION_ID, Origin::File, Type::INT4, true),
    column(col::PAYMENT_TYPE, Origin::File, Type::INT4, true),
    column(col::FARE_AMOUNT, Origin::File, Type::FLOAT8, true),
    column(col::TIP_AMOUNT, Origin::File, Type::FLOAT8, true),
    column(col::TOTAL_AMOUNT, Origin::File, Type::FLOAT8, true),
    column(col::CONGESTION_SURCHARGE, Origin::File, Type::FLOAT8, true),
    column(col::AIRPORT_FEE, Origin::File, Type::FLOAT8, true),
    column(DURATION_S, Origin::File, Type::FLOAT8, false),
    // Null where it means nothing: no distance.
    column(SPEED_MPH, Origin::File, Type::FLOAT8, true),
    column(PICKUP_DATE, Origin::Partition, Type::DATE, false),
    column(PICKUP_WEEK, Origin::File, Type::INT4, false),
];

static CURATED: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = TRIP_COLUMNS
        .iter()
        .filter(|c| c.origin == Origin::File)
        .map(|c| Field::new(c.name, c.arrow(), c.nullable))
        .collect();
    Arc::new(Schema::new(fields))
});

/// The schema of curated files (without the `pickup_date` partition column).
pub fn curated_schema() -> SchemaRef {
    CURATED.clone()
}

/// The columns (name, type) a Glue table over `curated/<dataset>/` has: the file columns, then the
/// partition key, as a crawler lists them.
pub fn glue_columns() -> Vec<(&'static str, &'static str)> {
    let files = TRIP_COLUMNS.iter().filter(|c| c.origin == Origin::File);
    let partitions = TRIP_COLUMNS.iter().filter(|c| c.origin == Origin::Partition);
    files.chain(partitions).map(|c| (c.name, c.glue())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract;

    #[test]
    fn curated_files_start_with_the_canonical_columns_then_the_derived_ones() {
        let curated = curated_schema();
        let canonical = contract::canonical_schema();
        assert_eq!(&curated.fields()[..canonical.fields().len()], &canonical.fields()[..]);
        let derived: Vec<&str> = curated.fields()[canonical.fields().len()..]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(derived, [DURATION_S, SPEED_MPH, PICKUP_WEEK]);
    }

    #[test]
    fn the_migration_creates_the_trip_columns_in_order_with_their_types() {
        let sql = include_str!("../../migrations/0001_versioned_trips.sql").to_ascii_lowercase();
        let body = sql
            .split("create table tripflow.trips")
            .nth(1)
            .and_then(|rest| rest.split(") partition by").next())
            .expect("0001 creates tripflow.trips");
        let declared: Vec<(String, String)> = body
            .lines()
            .map(str::trim)
            .filter_map(|line| {
                let mut words = line.trim_start_matches('(').split_whitespace();
                Some((
                    words.next()?.to_string(),
                    words.next()?.trim_end_matches(',').to_string(),
                ))
            })
            .filter(|(name, _)| TRIP_COLUMNS.iter().any(|c| c.name == name))
            .collect();
        let expected: Vec<(String, String)> = TRIP_COLUMNS
            .iter()
            .map(|c| {
                let sql_type = match c.postgres {
                    Type::INT4 => "integer",
                    Type::FLOAT8 => "double",
                    Type::TIMESTAMP => "timestamp",
                    Type::DATE => "date",
                    _ => "text",
                };
                (c.name.to_string(), sql_type.to_string())
            })
            .collect();
        assert_eq!(declared, expected);
    }

    #[test]
    fn glue_sees_the_file_columns_then_the_partition() {
        let glue = glue_columns();
        assert_eq!(glue.len(), curated_schema().fields().len() + 1);
        assert_eq!(glue.last(), Some(&(PICKUP_DATE, "date")));
        assert!(glue.contains(&(col::PICKUP_AT, "timestamp")));
        assert!(!glue.iter().any(|(name, _)| *name == SOURCE_ID));
    }
}
