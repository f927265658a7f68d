//! The messages the stages pass each other: each stage's typed input and output, the JSON Step
//! Functions carries from state to state (and `tripflow run` from call to call). They live here, not
//! in the stages, so a stage knows the shape of what it is handed without knowing the stage that made
//! it; the stage modules re-export their own.

use serde::{Deserialize, Serialize};

use crate::checksum::md5_hex;
use crate::period::Period;

/// A new run's id: sortable by start time, unique across concurrent runs (`20210401T120000Z-1a2b3c4d`).
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let now = chrono::Utc::now();
    let mut entropy = Vec::with_capacity(20);
    entropy.extend_from_slice(&now.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    entropy.extend_from_slice(&std::process::id().to_le_bytes());
    entropy.extend_from_slice(&SEQUENCE.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &md5_hex(&entropy)[..8])
}

/// The stage names: in manifests' `stage` field, run report names, logs and metrics.
pub const INGEST: &str = "ingest";
pub const CLEAN: &str = "clean";
pub const TRANSFORM: &str = "transform";
pub const LOAD: &str = "load";

/// A stage's judgement of its input. Hard failures are errors; a verdict is what the state machine's
/// Choice states read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Ok,
    TooManyRejectedRows,
}

// ---------------------------------------------------------------------------------------------
// ingest

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestInput {
    /// `s3://bucket/landing/…`, a key in the store (`landing/…`), an `https://` URL, or a local path.
    pub source: String,
    /// Hex MD5 the source must hash to. When absent, a `<source>.md5` sidecar is used if there is one.
    #[serde(default)]
    pub expected_md5: Option<String>,
    /// The month the file holds; defaults to the one in the file name.
    #[serde(default)]
    pub period: Option<Period>,
    /// Accept a new version that keeps far fewer rows than the month's current one. Carried in the
    /// output so clean, which applies the guard, sees it.
    #[serde(default)]
    pub allow_shrink: bool,
    /// Fetch a plain `http://` source. Off by default: without TLS nothing vouches that the bytes
    /// (and the `.md5` sidecar next to them) come from who the URL names. (`tripflow run --allow-http`;
    /// the Lambdas refuse `http://` whatever this says.) Left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestOutput {
    pub verdict: Verdict,
    pub dataset: String,
    pub period: Period,
    /// Names this run's own objects (its raw copy, its reports), so no other run's overwrite them.
    pub run_id: String,
    pub source: String,
    pub raw_key: String,
    pub manifest_key: String,
    pub size_bytes: u64,
    pub md5: String,
    /// True when an expected MD5 was given (input or sidecar) and matched.
    pub md5_verified: bool,
    pub rows: u64,
    pub row_groups: usize,
    pub schema_variant: String,
    #[serde(default)]
    pub allow_shrink: bool,
}

// ---------------------------------------------------------------------------------------------
// clean

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanInput {
    pub dataset: String,
    pub period: Period,
    pub raw_key: String,
    /// The ingest manifest the raw object is checked against.
    pub manifest_key: String,
    /// Overrides the configured rejection limit for this run.
    #[serde(default)]
    pub max_rejected_ratio: Option<f64>,
    /// Accept a new version that keeps far fewer rows than the current one (`SuspiciousShrink`).
    #[serde(default)]
    pub allow_shrink: bool,
    /// The run this is part of (from ingest); names the run's own reports.
    #[serde(default)]
    pub run_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanOutput {
    pub verdict: Verdict,
    pub dataset: String,
    pub period: Period,
    pub clean_key: String,
    pub quarantine_key: String,
    pub manifest_key: String,
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_rejected: RejectCounts,
    pub rejected_ratio: f64,
    pub max_rejected_ratio: f64,
    /// The MD5 of the source this version came from (ingest's), carried to the version history.
    #[serde(default)]
    pub source_md5: String,
    /// The run whose files these are (ingest's run id).
    #[serde(default)]
    pub run_id: String,
}

/// Why a row was rejected. The rules are tried in this order and the first that matches names the
/// reason, so each rejected row is counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    NullTimestamp,
    TimestampOutOfRange,
    NonPositiveDuration,
    OutsidePeriod,
    NonFinite,
    NegativeDistance,
    LocationOutOfRange,
    ImplausibleDuration,
    ImplausibleSpeed,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::NullTimestamp,
        RejectReason::TimestampOutOfRange,
        RejectReason::NonPositiveDuration,
        RejectReason::OutsidePeriod,
        RejectReason::NonFinite,
        RejectReason::NegativeDistance,
        RejectReason::LocationOutOfRange,
        RejectReason::ImplausibleDuration,
        RejectReason::ImplausibleSpeed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NullTimestamp => "null_timestamp",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::NonPositiveDuration => "non_positive_duration",
            RejectReason::OutsidePeriod => "outside_period",
            RejectReason::NonFinite => "non_finite",
            RejectReason::NegativeDistance => "negative_distance",
            RejectReason::LocationOutOfRange => "location_out_of_range",
            RejectReason::ImplausibleDuration => "implausible_duration",
            RejectReason::ImplausibleSpeed => "implausible_speed",
        }
    }
}

/// Rejected rows per reason. Serialised with the reasons' names as keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectCounts {
    pub null_timestamp: u64,
    #[serde(default)]
    pub timestamp_out_of_range: u64,
    pub non_positive_duration: u64,
    pub outside_period: u64,
    #[serde(default)]
    pub non_finite: u64,
    #[serde(default)]
    pub negative_distance: u64,
    #[serde(default)]
    pub location_out_of_range: u64,
    #[serde(default)]
    pub implausible_duration: u64,
    #[serde(default)]
    pub implausible_speed: u64,
}

impl RejectCounts {
    pub fn total(&self) -> u64 {
        RejectReason::ALL.iter().map(|&r| self.get(r)).sum()
    }

    pub fn get(&self, reason: RejectReason) -> u64 {
        *self.slot(reason)
    }

    pub(crate) fn add(&mut self, reason: RejectReason) {
        *self.slot_mut(reason) += 1;
    }

    fn slot(&self, reason: RejectReason) -> &u64 {
        match reason {
            RejectReason::NullTimestamp => &self.null_timestamp,
            RejectReason::TimestampOutOfRange => &self.timestamp_out_of_range,
            RejectReason::NonPositiveDuration => &self.non_positive_duration,
            RejectReason::OutsidePeriod => &self.outside_period,
            RejectReason::NonFinite => &self.non_finite,
            RejectReason::NegativeDistance => &self.negative_distance,
            RejectReason::LocationOutOfRange => &self.location_out_of_range,
            RejectReason::ImplausibleDuration => &self.implausible_duration,
            RejectReason::ImplausibleSpeed => &self.implausible_speed,
        }
    }

    fn slot_mut(&mut self, reason: RejectReason) -> &mut u64 {
        match reason {
            RejectReason::NullTimestamp => &mut self.null_timestamp,
            RejectReason::TimestampOutOfRange => &mut self.timestamp_out_of_range,
            RejectReason::NonPositiveDuration => &mut self.non_positive_duration,
            RejectReason::OutsidePeriod => &mut self.outside_period,
            RejectReason::NonFinite => &mut self.non_finite,
            RejectReason::NegativeDistance => &mut self.negative_distance,
            RejectReason::LocationOutOfRange => &mut self.location_out_of_range,
            RejectReason::ImplausibleDuration => &mut self.implausible_duration,
            RejectReason::ImplausibleSpeed => &mut self.implausible_speed,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// transform

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformInput {
    pub dataset: String,
    pub period: Period,
    pub clean_key: String,
    /// The clean manifest the clean object is checked against.
    pub manifest_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformOutput {
    pub verdict: Verdict,
    pub dataset: String,
    pub period: Period,
    pub curated_prefix: String,
    pub manifest_key: String,
    pub rows_curated: u64,
    pub partitions: usize,
    /// Pickup plus dropoff IDs changed by the swap.
    pub location_ids_swapped: u64,
    /// The MD5 of the source this version came from, for the version history.
    #[serde(default)]
    pub source_md5: String,
    /// The run whose files these are.
    #[serde(default)]
    pub run_id: String,
    /// Curated trips with a speed per 2 mph bucket (the quality report's distribution), counted
    /// as transform writes them; empty in outputs from before it was counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speed_buckets: Vec<u64>,
    /// What the month's average speed is made of, added up as transform writes the rows; load
    /// counts the slow trips against it while it streams them ([`crate::answers`]). `None` in
    /// outputs from before it was counted: load then asks the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_totals: Option<crate::answers::SpeedTotals>,
}

// ---------------------------------------------------------------------------------------------
// load

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
    /// Rows of the version this load replaced (0 on a first load); that version is kept, detached.
    pub rows_replaced: u64,
    pub table: String,
    /// The version this load made current (absent in outputs of loads before versions existed).
    #[serde(default)]
    pub version: i32,
    /// The run this version came from.
    #[serde(default)]
    pub run_id: String,
    /// The Delta version of each lake table that holds the month's new files.
    #[serde(default)]
    pub lake: Vec<crate::lake::TableCommit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_unique_and_sort_by_start_time() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), "20210401T120000Z-1a2b3c4d".len());
        assert!(a[..16] <= b[..16]);
    }
}
