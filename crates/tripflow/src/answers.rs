//! The analysts' two answers, computed from the rows as the pipeline streams them, so a load does
//! not scan its new table three times to find them.
//!
//! The slow-trip counts need the month's average first, and a stream is read once; so the work is
//! split across the two stages that see every curated row:
//! - transform adds up [`SpeedTotals`] (trips with a distance and a duration, their distances and
//!   durations) as it writes the curated files, and hands them on in its manifest;
//! - load, streaming the same rows into COPY, counts the trips slower than that average per ISO week
//!   and pickup location ([`SlowTally`]), adds the totals up again and refuses the version
//!   (`IntegrityError`) when its totals and transform's disagree.
//!
//! The definitions are those of the SQL views analysts query (`tripflow.monthly_avg_speed`,
//! `tripflow.weekly_top5_slow_pickups`): a trip counts when `trip_distance > 0 AND duration_s > 0`;
//! the average is Σ distance / (Σ duration_s / 3600); a trip is slow when its `speed_mph` is below
//! it; per week the 5 pickup locations with the most slow trips, ties to the lower location ID. The
//! sums are compensated (Neumaier), so the order rows arrive in moves them by no more than a
//! rounding error; a test checks every answer against the views.

use std::collections::HashMap;

use arrow::array::{Array, Float64Array, Int32Array, RecordBatch};
use serde::{Deserialize, Serialize};

use crate::contract::{col, typed_column};
use crate::db::WeeklySlowPickup;
use crate::db::versions::VersionAnswers;
use crate::error::{Error, Result};
use crate::handoff::curated::{DURATION_S, PICKUP_WEEK, SPEED_MPH};

/// Pickup locations per week in the answer.
pub const TOP_PER_WEEK: usize = 5;
/// How far transform's and load's sums may drift apart, relative: rounding, never a lost row.
const SUM_TOLERANCE: f64 = 1e-9;

/// A sum of many floats whose error does not grow with their number (Neumaier's variant of Kahan's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    pub fn add(&mut self, value: f64) {
        let total = self.sum + value;
        self.compensation += if self.sum.abs() >= value.abs() {
            (self.sum - total) + value
        } else {
            (value - total) + self.sum
        };
        self.sum = total;
    }

    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }

    /// Adds another sum in, keeping both compensations.
    pub fn merge(&mut self, other: &CompensatedSum) {
        self.add(other.sum);
        self.compensation += other.compensation;
    }
}

/// What the month's average speed is made of: the trips with a distance and a duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeedTotals {
    pub valid_trips: u64,
    pub total_distance: f64,
    pub total_duration_s: f64,
}

impl SpeedTotals {
    /// Σ distance / Σ hours, as `tripflow.monthly_avg_speed` computes it; `None` without valid trips.
    pub fn avg_speed_mph(&self) -> Option<f64> {
        (self.valid_trips > 0 && self.total_duration_s > 0.0)
            .then(|| self.total_distance / (self.total_duration_s / 3600.0))
    }

    fn agrees_with(&self, other: &SpeedTotals) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= SUM_TOLERANCE * a.abs().max(b.abs()).max(1.0);
        self.valid_trips == other.valid_trips
            && close(self.total_distance, other.total_distance)
            && close(self.total_duration_s, other.total_duration_s)
    }
}

/// Adds up [`SpeedTotals`] over curated batches; transform's also counts the speed distribution
/// the quality report draws, in the same pass.
#[derive(Debug, Clone, Default)]
pub struct TotalsTally {
    valid_trips: u64,
    distance: CompensatedSum,
    duration: CompensatedSum,
    speed_buckets: Option<Vec<u64>>,
}

impl TotalsTally {
    /// A tally that also counts speeds into [`crate::quality::SPEED_BUCKETS`] buckets.
    pub fn counting_speeds() -> Self {
        TotalsTally {
            speed_buckets: Some(vec![0; crate::quality::SPEED_BUCKETS]),
            ..TotalsTally::default()
        }
    }

    /// Adds the valid trips of a curated batch (and, when counting, every speed it has).
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let distance = typed_column::<Float64Array>(batch, col::TRIP_DISTANCE)?;
        let duration = typed_column::<Float64Array>(batch, DURATION_S)?;
        let speed = match self.speed_buckets {
            Some(_) => Some(typed_column::<Float64Array>(batch, SPEED_MPH)?),
            None => None,
        };
        for row in 0..batch.num_rows() {
            if let Some((d, s)) = valid_trip(distance, duration, row) {
                self.add_trip(d, s);
            }
            if let (Some(buckets), Some(speed)) = (self.speed_buckets.as_mut(), speed)
                && speed.is_valid(row)
            {
                let bucket = crate::quality::speed_bucket(speed.value(row), buckets.len());
                buckets[bucket] += 1;
            }
        }
        Ok(())
    }

    /// Adds the trips another tally counted (of other batches of the same month).
    pub fn merge(&mut self, other: &TotalsTally) {
        self.valid_trips += other.valid_trips;
        self.distance.merge(&other.distance);
        self.duration.merge(&other.duration);
        if let (Some(mine), Some(theirs)) = (self.speed_buckets.as_mut(), other.speed_buckets.as_ref()) {
            for (bucket, n) in mine.iter_mut().zip(theirs) {
                *bucket += n;
            }
        }
    }

    fn add_trip(&mut self, distance: f64, duration_s: f64) {
        self.valid_trips += 1;
        self.distance.add(distance);
        self.duration.add(duration_s);
    }

    pub fn totals(&self) -> SpeedTotals {
        SpeedTotals {
            valid_trips: self.valid_trips,
            total_distance: self.distance.value(),
            total_duration_s: self.duration.value(),
        }
    }

    /// The speed distribution counted so far; empty for a tally made without [`Self::counting_speeds`].
    pub fn speed_buckets(&self) -> Vec<u64> {
        self.speed_buckets.clone().unwrap_or_default()
    }
}

/// Load's half: the slow trips per week and pickup location, against the average transform handed on.
#[derive(Debug, Clone)]
pub struct SlowTally {
    expected: SpeedTotals,
    avg_speed_mph: f64,
    seen: TotalsTally,
    slow_trips: i64,
    by_week_location: HashMap<(i32, i32), i64>,
}

impl SlowTally {
    /// `None` when the month has no valid trip: then there is nothing to count.
    pub fn new(expected: SpeedTotals) -> Option<Self> {
        Some(SlowTally {
            avg_speed_mph: expected.avg_speed_mph()?,
            expected,
            seen: TotalsTally::default(),
            slow_trips: 0,
            by_week_location: HashMap::new(),
        })
    }

    /// Counts the slow trips of a curated batch, adding its valid trips up as it goes.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let distance = typed_column::<Float64Array>(batch, col::TRIP_DISTANCE)?;
        let duration = typed_column::<Float64Array>(batch, DURATION_S)?;
        let speed = typed_column::<Float64Array>(batch, SPEED_MPH)?;
        let week = typed_column::<Int32Array>(batch, PICKUP_WEEK)?;
        let pickup_location = typed_column::<Int32Array>(batch, col::PU_LOCATION_ID)?;
        for row in 0..batch.num_rows() {
            let Some((d, s)) = valid_trip(distance, duration, row) else {
                continue;
            };
            self.seen.add_trip(d, s);
            if !(speed.is_valid(row) && speed.value(row) < self.avg_speed_mph) {
                continue;
            }
            self.slow_trips += 1;
            if pickup_location.is_valid(row) && week.is_valid(row) {
                *self
                    .by_week_location
                    .entry((week.value(row), pickup_location.value(row)))
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    /// Adds the trips another tally of the same month counted (load copies shares of the rows at
    /// once, each counting its own).
    pub fn merge(&mut self, other: SlowTally) {
        self.seen.merge(&other.seen);
        self.slow_trips += other.slow_trips;
        for (key, n) in other.by_week_location {
            *self.by_week_location.entry(key).or_default() += n;
        }
    }

    /// The version's answers; an `IntegrityError` when the rows streamed do not add up to the
    /// totals transform wrote them with.
    pub fn finish(self, rows_loaded: i64, curated_manifest: &str) -> Result<VersionAnswers> {
        let seen = self.seen.totals();
        if !seen.agrees_with(&self.expected) {
            return Err(Error::IntegrityError {
                key: curated_manifest.to_string(),
                detail: format!(
                    "the curated rows add up to {seen:?}, transform wrote them as {:?}",
                    self.expected
                ),
            });
        }
        let totals = self.expected;
        Ok(VersionAnswers {
            rows_loaded,
            valid_trips: i64::try_from(totals.valid_trips).unwrap_or(i64::MAX),
            total_distance: Some(totals.total_distance),
            total_hours: Some(totals.total_duration_s / 3600.0),
            avg_speed_mph: Some(self.avg_speed_mph),
            slow_trips: self.slow_trips,
            weekly_top5: top_per_week(self.by_week_location),
        })
    }
}

/// Per week, the [`TOP_PER_WEEK`] locations with the most slow trips (ties to the lower ID), ranked
/// from 1, ordered by week and rank.
pub fn top_per_week(counts: HashMap<(i32, i32), i64>) -> Vec<WeeklySlowPickup> {
    let mut rows: Vec<((i32, i32), i64)> = counts.into_iter().collect();
    rows.sort_by(|((week_a, loc_a), n_a), ((week_b, loc_b), n_b)| {
        week_a.cmp(week_b).then(n_b.cmp(n_a)).then(loc_a.cmp(loc_b))
    });
    let mut out: Vec<WeeklySlowPickup> = Vec::new();
    for ((week, pu_location_id), slow_trips) in rows {
        let rank = match out.last() {
            Some(previous) if previous.week == week => previous.rank + 1,
            _ => 1,
        };
        if rank as usize <= TOP_PER_WEEK {
            out.push(WeeklySlowPickup {
                week,
                rank,
                pu_location_id,
                slow_trips,
                pu_borough: None,
                pu_zone: None,
            });
        }
    }
    out
}

/// A trip's distance and duration when both make a speed (`trip_distance > 0 AND duration_s > 0`).
fn valid_trip(distance: &Float64Array, duration: &Float64Array, row: usize) -> Option<(f64, f64)> {
    let (d, s) = (
        distance.is_valid(row).then(|| distance.value(row))?,
        duration.is_valid(row).then(|| duration.value(row))?,
    );
    (d > 0.0 && s > 0.0).then_some((d, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(rows: &[(Option<f64>, f64, i32, i32)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new(col::TRIP_DISTANCE, DataType::Float64, true),
            Field::new(DURATION_S, DataType::Float64, false),
            Field::new(SPEED_MPH, DataType::Float64, true),
            Field::new(PICKUP_WEEK, DataType::Int32, false),
            Field::new(col::PU_LOCATION_ID, DataType::Int32, true),
        ]);
        let speed = rows
            .iter()
            .map(|(d, s, _, _)| crate::stages::transform::speed_mph(*d, *s));
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter(speed)),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_compensated_sum_keeps_what_a_naive_one_loses() {
        let mut sum = CompensatedSum::default();
        let mut naive = 0.0;
        for value in [1e16, 1.0, -1e16, 1.0] {
            sum.add(value);
            naive += value;
        }
        assert_eq!(sum.value(), 2.0);
        assert_ne!(naive, 2.0);
    }

    #[test]
    fn the_average_is_total_distance_over_total_hours_of_trips_with_both() {
        let mut tally = TotalsTally::counting_speeds();
        // 15 miles in 4 hours: 3.75 mph (the mean of the trips' speeds, 10, 2 and 1.5, is 4.5).
        tally
            .add_batch(&batch(&[
                (Some(10.0), 3600.0, 9, 1),
                (Some(2.0), 3600.0, 9, 2),
                (Some(3.0), 7200.0, 10, 1),
                (None, 600.0, 10, 3),
                (Some(0.0), 600.0, 10, 3),
            ]))
            .unwrap();
        let totals = tally.totals();
        assert_eq!(totals.valid_trips, 3);
        assert_eq!(totals.avg_speed_mph(), Some(3.75));
        assert_eq!(SpeedTotals::default().avg_speed_mph(), None);
        // Speeds 10, 2 and 1.5 mph in the 2 mph buckets 5, 1 and 0; the trips without one nowhere.
        let buckets = tally.speed_buckets();
        assert_eq!((buckets[0], buckets[1], buckets[5]), (1, 1, 1));
        assert_eq!(buckets.iter().sum::<u64>(), 3);
        assert!(TotalsTally::default().speed_buckets().is_empty());
    }

    #[test]
    fn slow_trips_rank_per_week_with_ties_to_the_lower_location_and_only_five() {
        // Week 9: locations 1..=7, location n with n slow trips, except 6 and 2 tied at 2.
        let mut rows = Vec::new();
        for (location, slow) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 2), (7, 7)] {
            for _ in 0..slow {
                rows.push((Some(1.0), 3600.0, 9, location)); // 1 mph: slow
            }
        }
        rows.push((Some(100.0), 3600.0, 9, 1)); // fast
        rows.push((Some(2.0), 3600.0, 10, 8)); // week 10: one slow trip
        let mut totals = TotalsTally::default();
        totals.add_batch(&batch(&rows)).unwrap();
        let mut tally = SlowTally::new(totals.totals()).unwrap();
        tally.add_batch(&batch(&rows)).unwrap();
        let answers = tally.finish(rows.len() as i64, "m").unwrap();
        assert_eq!(answers.slow_trips, 25);
        let ranked: Vec<(i32, i64, i32, i64)> = answers
            .weekly_top5
            .iter()
            .map(|w| (w.week, w.rank, w.pu_location_id, w.slow_trips))
            .collect();
        assert_eq!(
            ranked,
            [
                (9, 1, 7, 7),
                (9, 2, 5, 5),
                (9, 3, 4, 4),
                (9, 4, 3, 3),
                (9, 5, 2, 2),
                (10, 1, 8, 1)
            ]
        );
    }

    #[test]
    fn tallies_of_shares_merged_answer_as_one_tally_of_every_row() {
        let rows: Vec<(Option<f64>, f64, i32, i32)> = (0..40)
            .map(|i| {
                (
                    Some(0.1 + f64::from(i % 7)),
                    600.0 + f64::from(i * 37 % 900),
                    9 + i % 3,
                    i % 5,
                )
            })
            .collect();
        let mut totals = TotalsTally::counting_speeds();
        totals.add_batch(&batch(&rows)).unwrap();
        let (mut first, mut second) = (TotalsTally::counting_speeds(), TotalsTally::counting_speeds());
        first.add_batch(&batch(&rows[..13])).unwrap();
        second.add_batch(&batch(&rows[13..])).unwrap();
        first.merge(&second);
        assert_eq!(first.totals().valid_trips, totals.totals().valid_trips);
        assert!(first.totals().agrees_with(&totals.totals()));
        assert_eq!(first.speed_buckets(), totals.speed_buckets());

        let mut whole = SlowTally::new(totals.totals()).unwrap();
        whole.add_batch(&batch(&rows)).unwrap();
        let share = || SlowTally::new(totals.totals()).unwrap();
        let mut shares = [share(), share()];
        shares[0].add_batch(&batch(&rows[..21])).unwrap();
        shares[1].add_batch(&batch(&rows[21..])).unwrap();
        let [mut merged, other] = shares;
        merged.merge(other);
        let (merged, whole) = (merged.finish(40, "m").unwrap(), whole.finish(40, "m").unwrap());
        assert!(
            whole.slow_trips > 0 && whole.slow_trips < 40,
            "some trips are slow, not all"
        );
        assert_eq!(merged, whole);
    }

    #[test]
    fn rows_that_do_not_add_up_to_transform_s_totals_are_refused() {
        let rows = [(Some(1.0), 3600.0, 9, 1), (Some(5.0), 3600.0, 9, 2)];
        let mut totals = TotalsTally::default();
        totals.add_batch(&batch(&rows)).unwrap();
        let mut tally = SlowTally::new(totals.totals()).unwrap();
        tally.add_batch(&batch(&rows[..1])).unwrap();
        let err = tally.finish(1, "reports/m/transform.json").unwrap_err();
        assert_eq!(err.name(), "IntegrityError", "{err}");
        assert!(SlowTally::new(SpeedTotals::default()).is_none());
    }
}
