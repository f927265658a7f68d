//! The expected outcome of a month computed straight from a source file with none of the pipeline's
//! code: the rules, the swap, the speed and the ranking written out again, independently.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, Datelike};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tripflow::db::WeeklySlowPickup;
use tripflow::period::Period;

/// The expected outcome of a month, computed straight from the source file with none of the
/// pipeline's code: the rules, the swap, the speed and the ranking written out again.
#[derive(Debug, Default)]
pub struct Expected {
    pub rows_in: u64,
    /// Rejected rows per rule name, as the run summary's `rows_rejected` serialises them.
    pub rejected: BTreeMap<String, u64>,
    pub kept: u64,
    pub avg_speed_mph: f64,
    pub weekly_top5: Vec<WeeklySlowPickup>,
}

pub fn expected_from_file(path: &Path, period: Period) -> Expected {
    let (start, end) = period.bounds_micros();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut e = Expected::default();
    for rule in [
        "null_timestamp",
        "timestamp_out_of_range",
        "non_positive_duration",
        "outside_period",
        "non_finite",
        "negative_distance",
        "location_out_of_range",
        "implausible_duration",
        "implausible_speed",
    ] {
        e.rejected.insert(rule.to_string(), 0);
    }
    let (mut distance_sum, mut seconds_sum) = (0.0f64, 0.0f64);
    let mut valid_trips: Vec<(i32, i64, f64)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ts = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let float = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let int = |name: &str| batch.column_by_name(name).unwrap().as_primitive::<Int64Type>().clone();
        let (pickup, dropoff) = (ts("tpep_pickup_datetime"), ts("tpep_dropoff_datetime"));
        let distance = float("trip_distance");
        let money = [
            "fare_amount",
            "tip_amount",
            "total_amount",
            "congestion_surcharge",
            "airport_fee",
        ]
        .map(float);
        let (pu, dol) = (int("PULocationID"), int("DOLocationID"));
        for i in 0..batch.num_rows() {
            e.rows_in += 1;
            let verdict = (|| {
                if pickup.is_null(i) || dropoff.is_null(i) {
                    return Some("null_timestamp");
                }
                let (p, d) = (pickup.value(i), dropoff.value(i));
                if d <= p {
                    return Some("non_positive_duration");
                }
                if p < start || p >= end {
                    return Some("outside_period");
                }
                let miles = distance.is_valid(i).then(|| distance.value(i));
                if miles.is_some_and(|m| !m.is_finite())
                    || money.iter().any(|m| m.is_valid(i) && !m.value(i).is_finite())
                {
                    return Some("non_finite");
                }
                if miles.is_some_and(|m| m < 0.0) {
                    return Some("negative_distance");
                }
                let zone = |a: &arrow::array::Int64Array| a.is_valid(i) && (1..=265).contains(&a.value(i));
                if !zone(&pu) || !zone(&dol) {
                    return Some("location_out_of_range");
                }
                let hours = (d - p) as f64 / 3.6e9;
                if hours > 24.0 {
                    return Some("implausible_duration");
                }
                if miles.is_some_and(|m| m > 0.0 && m / hours > 100.0) {
                    return Some("implausible_speed");
                }
                None
            })();
            if let Some(rule) = verdict {
                *e.rejected.get_mut(rule).unwrap() += 1;
                continue;
            }
            e.kept += 1;
            let (p, d) = (pickup.value(i), dropoff.value(i));
            let seconds = (d - p) as f64 / 1e6;
            let miles = distance.value(i);
            if distance.is_valid(i) && miles > 0.0 {
                distance_sum += miles;
                seconds_sum += seconds;
                let week = DateTime::from_timestamp_micros(p)
                    .unwrap()
                    .date_naive()
                    .iso_week()
                    .week() as i32;
                let location = match pu.value(i) {
                    161 => 237,
                    237 => 161,
                    other => other,
                };
                valid_trips.push((week, location, miles / (seconds / 3600.0)));
            }
        }
    }
    e.avg_speed_mph = distance_sum / (seconds_sum / 3600.0);
    let mut slow: HashMap<(i32, i64), i64> = HashMap::new();
    for (week, location, speed) in valid_trips {
        if speed < e.avg_speed_mph {
            *slow.entry((week, location)).or_default() += 1;
        }
    }
    let mut by_week: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for ((week, location), count) in slow {
        by_week.entry(week).or_default().push((count, location));
    }
    let mut weeks: Vec<i32> = by_week.keys().copied().collect();
    weeks.sort();
    for week in weeks {
        let mut ranked = by_week.remove(&week).unwrap();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (rank, (count, location)) in ranked.into_iter().take(5).enumerate() {
            let (borough, zone) = zone_names(location);
            e.weekly_top5.push(WeeklySlowPickup {
                week,
                rank: rank as i64 + 1,
                pu_location_id: location as i32,
                slow_trips: count,
                pu_borough: borough,
                pu_zone: zone,
            });
        }
    }
    e
}

/// Borough and zone of a TLC location id, read from the lookup the repository ships.
fn zone_names(location: i64) -> (Option<String>, Option<String>) {
    let csv = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/taxi_zone_lookup.csv")).unwrap();
    csv.lines()
        .skip(1)
        .map(|line| {
            line.split(',')
                .map(|f| f.trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .find(|fields| fields[0] == location.to_string())
        .map(|fields| (Some(fields[1].clone()), Some(fields[2].clone())))
        .unwrap_or((None, None))
}
