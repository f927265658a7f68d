//! A synthetic month of yellow-taxi trips with the official 2021 schema and the defects real files
//! have: pickups in other months and years, zero and negative durations, null timestamps and
//! passenger counts, zero distances, plenty of trips at zones 161 and 237; and, rarely, the absurd
//! rows clean must refuse: NaN and negative distances, zone ids outside 1..=265, day-long trips and
//! hundreds of miles in minutes. Deterministic for a seed.
//! Tests and benchmarks use it because full monthly files are not on these machines.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::period::Period;

/// Official monthly files have row groups of about a million rows.
pub const ROW_GROUP_ROWS: usize = 1 << 20;
const BATCH_ROWS: usize = 64 * 1024;
const MICROS_PER_SECOND: i64 = 1_000_000;

/// Defect rates, per row.
const NULL_TIMESTAMP: f64 = 0.0002;
const ZERO_DURATION: f64 = 0.001;
const NEGATIVE_DURATION: f64 = 0.0003;
const PREVIOUS_MONTH: f64 = 0.0004;
const NEXT_MONTH: f64 = 0.0002;
const DISTANT_YEAR: f64 = 0.0001;
const NULL_PASSENGERS: f64 = 0.03;
const ZERO_DISTANCE: f64 = 0.015;
/// The rarer absurdities real files hold, each of which would poison the answers if kept.
const NAN_DISTANCE: f64 = 0.00003;
const NEGATIVE_DISTANCE: f64 = 0.00005;
const UNKNOWN_ZONE_ID: f64 = 0.00005;
const DAY_LONG_TRIP: f64 = 0.00004;
const TELEPORT: f64 = 0.00003;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenSpec {
    pub period: Period,
    pub rows: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenSummary {
    pub rows: usize,
    pub row_groups: usize,
    pub size_bytes: u64,
}

/// The schema of the official 2021 files (int64 IDs, timestamp[us], double counts, `airport_fee`).
pub fn official_2021_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let double = |name: &str| Field::new(name, DataType::Float64, true);
    let int = |name: &str| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        int("VendorID"),
        Field::new("tpep_pickup_datetime", ts.clone(), true),
        Field::new("tpep_dropoff_datetime", ts, true),
        double("passenger_count"),
        double("trip_distance"),
        double("RatecodeID"),
        Field::new("store_and_fwd_flag", DataType::Utf8, true),
        int("PULocationID"),
        int("DOLocationID"),
        int("payment_type"),
        double("fare_amount"),
        double("extra"),
        double("mta_tax"),
        double("tip_amount"),
        double("tolls_amount"),
        double("improvement_surcharge"),
        double("total_amount"),
        double("congestion_surcharge"),
        double("airport_fee"),
    ]))
}

/// Zones weighted like Manhattan-heavy real traffic: a few very busy zones (161 and 237 among them),
/// a long tail over 1..=263.
const BUSY_ZONES: &[i64] = &[
    237, 161, 236, 162, 230, 186, 142, 170, 48, 239, 163, 234, 68, 141, 79, 107, 132, 138,
];

fn zone(rng: &mut ChaCha8Rng) -> i64 {
    if rng.random_bool(0.6) {
        // Earlier entries are busier: squaring the uniform skews towards the front.
        let u: f64 = rng.random();
        BUSY_ZONES[((u * u) * BUSY_ZONES.len() as f64) as usize % BUSY_ZONES.len()]
    } else {
        rng.random_range(1..=263)
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; one of the pair is enough here.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

struct Columns {
    vendor: Vec<Option<i64>>,
    pickup: Vec<Option<i64>>,
    dropoff: Vec<Option<i64>>,
    passengers: Vec<Option<f64>>,
    distance: Vec<Option<f64>>,
    ratecode: Vec<Option<f64>>,
    flag: Vec<Option<&'static str>>,
    pu: Vec<Option<i64>>,
    dol: Vec<Option<i64>>,
    payment: Vec<Option<i64>>,
    fare: Vec<Option<f64>>,
    extra: Vec<Option<f64>>,
    mta: Vec<Option<f64>>,
    tip: Vec<Option<f64>>,
    tolls: Vec<Option<f64>>,
    improvement: Vec<Option<f64>>,
    total: Vec<Option<f64>>,
    congestion: Vec<Option<f64>>,
    airport: Vec<Option<f64>>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Generates the month batch by batch (bounded memory, whatever `rows` is).
pub struct Generator {
    spec: GenSpec,
    rng: ChaCha8Rng,
    produced: usize,
}

impl Generator {
    pub fn new(spec: GenSpec) -> Self {
        Generator {
            spec,
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            produced: 0,
        }
    }

    fn pickup_micros(&mut self) -> i64 {
        let (start, end) = self.spec.period.bounds_micros();
        let rng = &mut self.rng;
        let roll: f64 = rng.random();
        let day = 86_400 * MICROS_PER_SECOND;
        let in_range = |rng: &mut ChaCha8Rng, from: i64, to: i64| {
            rng.random_range(from..to) / MICROS_PER_SECOND * MICROS_PER_SECOND
        };
        if roll < PREVIOUS_MONTH {
            in_range(rng, start - day, start)
        } else if roll < PREVIOUS_MONTH + NEXT_MONTH {
            in_range(rng, end, end + day)
        } else if roll < PREVIOUS_MONTH + NEXT_MONTH + DISTANT_YEAR {
            // Real files hold trips stamped 2008 and 2009: broken taximeter clocks.
            let year_2009 = 1_230_768_000 * MICROS_PER_SECOND;
            in_range(rng, year_2009 - 365 * day, year_2009 + 365 * day)
        } else {
            in_range(rng, start, end)
        }
    }

    fn next_batch(&mut self) -> Option<RecordBatch> {
        let rows = BATCH_ROWS.min(self.spec.rows - self.produced);
        if rows == 0 {
            return None;
        }
        let mut c = Columns {
            vendor: Vec::with_capacity(rows),
            pickup: Vec::with_capacity(rows),
            dropoff: Vec::with_capacity(rows),
            passengers: Vec::with_capacity(rows),
            distance: Vec::with_capacity(rows),
            ratecode: Vec::with_capacity(rows),
            flag: Vec::with_capacity(rows),
            pu: Vec::with_capacity(rows),
            dol: Vec::with_capacity(rows),
            payment: Vec::with_capacity(rows),
            fare: Vec::with_capacity(rows),
            extra: Vec::with_capacity(rows),
            mta: Vec::with_capacity(rows),
            tip: Vec::with_capacity(rows),
            tolls: Vec::with_capacity(rows),
            improvement: Vec::with_capacity(rows),
            total: Vec::with_capacity(rows),
            congestion: Vec::with_capacity(rows),
            airport: Vec::with_capacity(rows),
        };
        for _ in 0..rows {
            let pickup = self.pickup_micros();
            let rng = &mut self.rng;
            let distance = if rng.random_bool(ZERO_DISTANCE) {
                0.0
            } else {
                round2((0.5 + 0.9 * normal(rng)).exp().clamp(0.01, 80.0))
            };
            // City traffic: around 11 mph with a wide spread; short hops are slower.
            let speed_mph = (11.0 * (0.35 * normal(rng)).exp()).clamp(1.5, 45.0);
            let mut seconds = ((distance.max(0.05) / speed_mph) * 3600.0).round() as i64 + rng.random_range(30..240);
            let defect: f64 = rng.random();
            if defect < ZERO_DURATION {
                seconds = 0;
            } else if defect < ZERO_DURATION + NEGATIVE_DURATION {
                seconds = -rng.random_range(60..7200);
            }
            let oddity: f64 = rng.random();
            let mut distance = distance;
            let mut zone_ids = (zone(rng), zone(rng));
            let mut oddity_at = 0.0;
            let mut next = |rate: f64| {
                oddity_at += rate;
                oddity < oddity_at
            };
            if next(NAN_DISTANCE) {
                distance = f64::NAN;
            } else if next(NEGATIVE_DISTANCE) {
                distance = -distance;
            } else if next(UNKNOWN_ZONE_ID) {
                zone_ids.0 = [0, 266, 999][rng.random_range(0..3)];
            } else if next(DAY_LONG_TRIP) {
                seconds = rng.random_range(25 * 3600..80 * 3600);
            } else if next(TELEPORT) {
                distance = rng.random_range(300.0..5000.0);
            }
            let dropoff = pickup + seconds * MICROS_PER_SECOND;
            let null_time: f64 = rng.random();
            let (pickup, dropoff) = if null_time < NULL_TIMESTAMP / 2.0 {
                (None, Some(dropoff))
            } else if null_time < NULL_TIMESTAMP {
                (Some(pickup), None)
            } else {
                (Some(pickup), Some(dropoff))
            };
            let unknown_meta = rng.random_bool(NULL_PASSENGERS);
            let fare = round2(2.5 + 2.5 * distance + 0.5 * (seconds.max(0) as f64 / 60.0) * 0.35);
            let payment = if unknown_meta {
                0
            } else {
                [1, 1, 1, 2, 2, 3, 4][rng.random_range(0..7)]
            };
            let tip = if payment == 1 {
                round2(fare * rng.random_range(0.1..0.3))
            } else {
                0.0
            };
            let congestion = if unknown_meta { None } else { Some(2.5) };
            c.vendor.push(Some(if rng.random_bool(0.7) { 2 } else { 1 }));
            c.pickup.push(pickup);
            c.dropoff.push(dropoff);
            c.passengers
                .push((!unknown_meta).then(|| [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 5.0, 0.0][rng.random_range(0..9)]));
            c.distance.push(Some(distance));
            c.ratecode.push((!unknown_meta).then_some(1.0));
            c.flag.push((!unknown_meta).then_some("N"));
            c.pu.push(Some(zone_ids.0));
            c.dol.push(Some(zone_ids.1));
            c.payment.push(Some(payment));
            c.fare.push(Some(fare));
            c.extra.push(Some(0.5));
            c.mta.push(Some(0.5));
            c.tip.push(Some(tip));
            c.tolls.push(Some(0.0));
            c.improvement.push(Some(0.3));
            c.total
                .push(Some(round2(fare + 0.5 + 0.5 + tip + 0.3 + congestion.unwrap_or(0.0))));
            c.congestion.push(congestion);
            // All null in 2021's files: the fee existed in the schema before it was charged.
            c.airport.push(None);
        }
        self.produced += rows;
        let ts = |v: Vec<Option<i64>>| Arc::new(TimestampMicrosecondArray::from(v)) as ArrayRef;
        let int = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let dbl = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let columns = vec![
            int(c.vendor),
            ts(c.pickup),
            ts(c.dropoff),
            dbl(c.passengers),
            dbl(c.distance),
            dbl(c.ratecode),
            Arc::new(StringArray::from(c.flag)) as ArrayRef,
            int(c.pu),
            int(c.dol),
            int(c.payment),
            dbl(c.fare),
            dbl(c.extra),
            dbl(c.mta),
            dbl(c.tip),
            dbl(c.tolls),
            dbl(c.improvement),
            dbl(c.total),
            dbl(c.congestion),
            dbl(c.airport),
        ];
        RecordBatch::try_new(official_2021_schema(), columns).ok()
    }
}

impl Iterator for Generator {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        self.next_batch()
    }
}

/// Writes the month to `path` (snappy, ~1 M-row row groups, as TLC publishes).
pub fn write_month(path: &Path, spec: GenSpec) -> Result<GenSummary> {
    let io = |e: std::io::Error| Error::storage("writing", path.display().to_string(), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let pq = |e: parquet::errors::ParquetError| Error::InvalidInput(format!("writing {}: {e}", path.display()));
    let mut writer = ArrowWriter::try_new(file, official_2021_schema(), Some(props)).map_err(pq)?;
    for batch in Generator::new(spec) {
        writer.write(&batch).map_err(pq)?;
    }
    let metadata = writer.close().map_err(pq)?;
    let size_bytes = std::fs::metadata(path).map_err(io)?.len();
    Ok(GenSummary {
        rows: spec.rows,
        row_groups: metadata.num_row_groups(),
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    #[test]
    fn same_seed_same_rows_and_every_defect_occurs() {
        let spec = GenSpec {
            period: "2021-03".parse().unwrap(),
            rows: 100_000,
            seed: 7,
        };
        let a: Vec<RecordBatch> = Generator::new(spec).collect();
        let b: Vec<RecordBatch> = Generator::new(spec).collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|b| b.num_rows()).sum::<usize>(), 100_000);

        let (start, end) = spec.period.bounds_micros();
        let (mut outside, mut zero, mut negative, mut null_ts, mut zone_161) = (0, 0, 0, 0, 0);
        let (mut nan, mut negative_distance, mut bad_zone, mut long, mut fast) = (0, 0, 0, 0, 0);
        for batch in &a {
            let pickup = batch
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let dropoff = batch
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let pu = batch.column(7).as_any().downcast_ref::<Int64Array>().unwrap();
            let distance = batch.column(4).as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..batch.num_rows() {
                zone_161 += usize::from(pu.value(i) == 161);
                nan += usize::from(distance.value(i).is_nan());
                negative_distance += usize::from(distance.value(i) < 0.0);
                fast += usize::from(distance.value(i) >= 300.0);
                bad_zone += usize::from(!(1..=265).contains(&pu.value(i)));
                match (
                    pickup.is_valid(i).then(|| pickup.value(i)),
                    dropoff.is_valid(i).then(|| dropoff.value(i)),
                ) {
                    (Some(p), Some(d)) => {
                        zero += usize::from(d == p);
                        negative += usize::from(d < p);
                        outside += usize::from(p < start || p >= end);
                        long += usize::from(d - p > 24 * 3600 * MICROS_PER_SECOND);
                    }
                    _ => null_ts += 1,
                }
            }
        }
        assert!(
            outside > 20 && zero > 50 && negative > 10 && null_ts > 5,
            "{outside} {zero} {negative} {null_ts}"
        );
        assert!(zone_161 > 1000, "{zone_161}");
        assert!(
            nan > 0 && negative_distance > 0 && bad_zone > 0 && long > 0 && fast > 0,
            "{nan} {negative_distance} {bad_zone} {long} {fast}"
        );
    }
}
