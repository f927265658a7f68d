//! The pipeline's settings, read once at start-up. Every environment variable is a documented const;
//! a malformed value fails at start-up naming the variable, never later inside a stage.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Share of a file's rows clean may reject before its verdict is `TooManyRejectedRows` (0.0-1.0).
pub const ENV_MAX_REJECTED_RATIO: &str = "TRIPFLOW_MAX_REJECTED_RATIO";
/// Location IDs to swap in transform, as `a:b` pairs separated by commas (`161:237`). Empty: no swap.
pub const ENV_LOCATION_SWAPS: &str = "TRIPFLOW_LOCATION_SWAPS";
/// Memory, in MiB, that transform's open partition writers may buffer before flushing row groups.
pub const ENV_WRITE_BUFFER_MB: &str = "TRIPFLOW_WRITE_BUFFER_MB";
/// Longest plausible trip, in hours; longer ones are rejected as `implausible_duration`.
pub const ENV_MAX_TRIP_HOURS: &str = "TRIPFLOW_MAX_TRIP_HOURS";
/// Fastest plausible average speed of a trip, in mph; faster ones are rejected as `implausible_speed`.
pub const ENV_MAX_SPEED_MPH: &str = "TRIPFLOW_MAX_SPEED_MPH";
/// A new version of a month that keeps fewer rows than this share of the current version's is
/// refused as `SuspiciousShrink` unless the run allows it (0.0-1.0; 0 turns the guard off).
pub const ENV_MIN_KEPT_SHARE: &str = "TRIPFLOW_MIN_KEPT_SHARE";
/// Seconds to wait for the HTTPS source's TCP connection and TLS handshake.
pub const ENV_HTTP_CONNECT_TIMEOUT_S: &str = "TRIPFLOW_HTTP_CONNECT_TIMEOUT_S";
/// Seconds the HTTPS source may stay silent: for the response headers, and between body chunks.
/// Not a limit on the whole download, which may take long for a large file on a slow link.
pub const ENV_HTTP_READ_TIMEOUT_S: &str = "TRIPFLOW_HTTP_READ_TIMEOUT_S";
/// PostgreSQL connection URL (`postgres://user:pass@host:5432/db?sslmode=require`).
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
/// Seconds PostgreSQL lets one statement run (`statement_timeout`) before cancelling it as `Timeout`.
pub const ENV_DB_STATEMENT_TIMEOUT_S: &str = "TRIPFLOW_DB_STATEMENT_TIMEOUT_S";
/// Seconds a statement may wait for a lock (`lock_timeout`): the swap's table lock, a source's
/// advisory lock. Past it the load fails `Timeout` with nothing changed.
pub const ENV_DB_LOCK_TIMEOUT_S: &str = "TRIPFLOW_DB_LOCK_TIMEOUT_S";
/// Seconds connecting may take in all: TCP, TLS and the startup handshake, and the session settings.
pub const ENV_DB_CONNECT_TIMEOUT_S: &str = "TRIPFLOW_DB_CONNECT_TIMEOUT_S";

pub const DEFAULT_MAX_REJECTED_RATIO: f64 = 0.05;
/// The source system swaps these two zones (known defect); transform swaps them back.
pub const DEFAULT_LOCATION_SWAPS: &str = "161:237";
/// 32 MiB, by measurement: 64 gave no faster transform on a 1.93 M-row month (1.3 s either way)
/// and 80 MiB more peak RSS; 16 cost 25% more CPU in early flushes.
pub const DEFAULT_WRITE_BUFFER_MB: usize = 32;
pub const DEFAULT_MAX_TRIP_HOURS: f64 = 24.0;
pub const DEFAULT_MAX_SPEED_MPH: f64 = 100.0;
pub const DEFAULT_MIN_KEPT_SHARE: f64 = 0.5;
pub const DEFAULT_HTTP_CONNECT_TIMEOUT_S: f64 = 10.0;
pub const DEFAULT_HTTP_READ_TIMEOUT_S: f64 = 60.0;
/// Rows per written row group: large enough for good compression, small enough for a Lambda.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// A full month's COPY, index build and ANALYZE take seconds; a quarter of an hour is a hung statement.
pub const DEFAULT_DB_STATEMENT_TIMEOUT_S: f64 = 900.0;
/// The swap waits this long for running queries to let go of `tripflow.trips`.
pub const DEFAULT_DB_LOCK_TIMEOUT_S: f64 = 30.0;
/// Long enough for a paused Aurora Serverless cluster to resume, well inside a Lambda timeout.
pub const DEFAULT_DB_CONNECT_TIMEOUT_S: f64 = 20.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub max_rejected_ratio: f64,
    pub location_swaps: LocationSwaps,
    pub write_buffer_bytes: usize,
    pub row_group_rows: usize,
    pub rules: RuleLimits,
    pub min_kept_share: f64,
    /// `TRIPFLOW_HTTP_CONNECT_TIMEOUT_S`, in seconds.
    pub http_connect_timeout_s: f64,
    /// `TRIPFLOW_HTTP_READ_TIMEOUT_S`, in seconds.
    pub http_read_timeout_s: f64,
}

/// The thresholds of clean's plausibility rules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RuleLimits {
    pub max_trip_hours: f64,
    pub max_speed_mph: f64,
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits {
            max_trip_hours: DEFAULT_MAX_TRIP_HOURS,
            max_speed_mph: DEFAULT_MAX_SPEED_MPH,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_rejected_ratio: DEFAULT_MAX_REJECTED_RATIO,
            location_swaps: LocationSwaps::default(),
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_MB << 20,
            row_group_rows: ROW_GROUP_ROWS,
            rules: RuleLimits::default(),
            min_kept_share: DEFAULT_MIN_KEPT_SHARE,
            http_connect_timeout_s: DEFAULT_HTTP_CONNECT_TIMEOUT_S,
            http_read_timeout_s: DEFAULT_HTTP_READ_TIMEOUT_S,
        }
    }
}

impl PipelineConfig {
    /// Reads the `TRIPFLOW_*` variables; unset ones keep their defaults.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = PipelineConfig::default();
        if let Some(raw) = lookup(ENV_MAX_REJECTED_RATIO) {
            config.max_rejected_ratio = parse_ratio(&raw).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{ENV_MAX_REJECTED_RATIO}={raw:?}: expected a number from 0 to 1"
                ))
            })?;
        }
        if let Some(raw) = lookup(ENV_LOCATION_SWAPS) {
            config.location_swaps = raw
                .parse()
                .map_err(|e| Error::InvalidInput(format!("{ENV_LOCATION_SWAPS}: {e}")))?;
        }
        if let Some(raw) = lookup(ENV_WRITE_BUFFER_MB) {
            let mb: usize = raw.trim().parse().ok().filter(|mb| *mb > 0).ok_or_else(|| {
                Error::InvalidInput(format!("{ENV_WRITE_BUFFER_MB}={raw:?}: expected a positive integer"))
            })?;
            config.write_buffer_bytes = mb << 20;
        }
        if let Some(raw) = lookup(ENV_MAX_TRIP_HOURS) {
            config.rules.max_trip_hours = parse_positive(ENV_MAX_TRIP_HOURS, &raw)?;
        }
        if let Some(raw) = lookup(ENV_MAX_SPEED_MPH) {
            config.rules.max_speed_mph = parse_positive(ENV_MAX_SPEED_MPH, &raw)?;
        }
        if let Some(raw) = lookup(ENV_MIN_KEPT_SHARE) {
            config.min_kept_share = parse_ratio(&raw).ok_or_else(|| {
                Error::InvalidInput(format!("{ENV_MIN_KEPT_SHARE}={raw:?}: expected a number from 0 to 1"))
            })?;
        }
        if let Some(raw) = lookup(ENV_HTTP_CONNECT_TIMEOUT_S) {
            config.http_connect_timeout_s = parse_timeout_var(ENV_HTTP_CONNECT_TIMEOUT_S, &raw)?;
        }
        if let Some(raw) = lookup(ENV_HTTP_READ_TIMEOUT_S) {
            config.http_read_timeout_s = parse_timeout_var(ENV_HTTP_READ_TIMEOUT_S, &raw)?;
        }
        Ok(config)
    }
}

fn parse_positive(name: &str, raw: &str) -> Result<f64> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| Error::InvalidInput(format!("{name}={raw:?}: expected a positive number")))
}

/// How long the database may keep us waiting. Every session gets these (see `db::connect`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DbSettings {
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings {
            connect_timeout: Duration::from_secs_f64(DEFAULT_DB_CONNECT_TIMEOUT_S),
            statement_timeout: Duration::from_secs_f64(DEFAULT_DB_STATEMENT_TIMEOUT_S),
            lock_timeout: Duration::from_secs_f64(DEFAULT_DB_LOCK_TIMEOUT_S),
        }
    }
}

impl DbSettings {
    /// Reads the `TRIPFLOW_DB_*_TIMEOUT_S` variables; unset ones keep their defaults.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let seconds = |name: &str, default: Duration| -> Result<Duration> {
            match lookup(name).filter(|raw| !raw.trim().is_empty()) {
                None => Ok(default),
                Some(raw) => raw
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "{name}={raw:?}: expected a number of seconds above 0 and at most 86400"
                        ))
                    }),
            }
        };
        let defaults = DbSettings::default();
        Ok(DbSettings {
            connect_timeout: seconds(ENV_DB_CONNECT_TIMEOUT_S, defaults.connect_timeout)?,
            statement_timeout: seconds(ENV_DB_STATEMENT_TIMEOUT_S, defaults.statement_timeout)?,
            lock_timeout: seconds(ENV_DB_LOCK_TIMEOUT_S, defaults.lock_timeout)?,
        })
    }
}

/// Seconds for a timeout: a finite number above zero and at most a day (zero would never wait,
/// and "no timeout" is what the variables exist to prevent).
pub fn parse_timeout_s(raw: &str) -> Option<f64> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
}

/// [`parse_timeout_s`], failing with `InvalidInput` naming the variable.
pub fn parse_timeout_var(name: &str, raw: &str) -> Result<f64> {
    parse_timeout_s(raw).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{name}={raw:?}: expected a number of seconds above 0 and at most 86400"
        ))
    })
}

pub fn parse_ratio(raw: &str) -> Option<f64> {
    raw.trim().parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r))
}

/// Pairs of location IDs to exchange. Applied to pickup and dropoff IDs alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LocationSwaps(Vec<(i32, i32)>);

impl Default for LocationSwaps {
    fn default() -> Self {
        LocationSwaps(vec![(161, 237)])
    }
}

impl LocationSwaps {
    pub fn none() -> Self {
        LocationSwaps(Vec::new())
    }

    pub fn pairs(&self) -> &[(i32, i32)] {
        &self.0
    }

    /// The ID after the swap (unchanged if it is in no pair).
    pub fn apply(&self, id: i32) -> i32 {
        for &(a, b) in &self.0 {
            if id == a {
                return b;
            }
            if id == b {
                return a;
            }
        }
        id
    }
}

impl std::str::FromStr for LocationSwaps {
    type Err = String;

    fn from_str(raw: &str) -> std::result::Result<Self, String> {
        let mut pairs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .split_once(':')
                .and_then(|(a, b)| Some((a.trim().parse::<i32>().ok()?, b.trim().parse::<i32>().ok()?)));
            let (a, b) = parsed.ok_or_else(|| format!("{part:?} is not a pair like 161:237"))?;
            // An ID in two pairs would make the result depend on pair order.
            if a == b || !seen.insert(a) || !seen.insert(b) {
                return Err(format!(
                    "{part:?}: each ID may appear in one pair only, paired with another ID"
                ));
            }
            pairs.push((a, b));
        }
        Ok(LocationSwaps(pairs))
    }
}

impl TryFrom<String> for LocationSwaps {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<LocationSwaps> for String {
    fn from(s: LocationSwaps) -> String {
        s.0.iter()
            .map(|(a, b)| format!("{a}:{b}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_swap_161_and_237_and_reject_above_five_percent() {
        let config = PipelineConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config.max_rejected_ratio, 0.05);
        assert_eq!(config.location_swaps.apply(161), 237);
        assert_eq!(config.location_swaps.apply(237), 161);
        assert_eq!(config.location_swaps.apply(1), 1);
        assert_eq!(config.rules.max_trip_hours, 24.0);
        assert_eq!(config.rules.max_speed_mph, 100.0);
        assert_eq!(config.min_kept_share, 0.5);
    }

    #[test]
    fn malformed_variables_fail_naming_the_variable() {
        let err = PipelineConfig::from_lookup(|n| (n == ENV_MAX_REJECTED_RATIO).then(|| "5%".into())).unwrap_err();
        assert!(err.to_string().contains(ENV_MAX_REJECTED_RATIO));
        let err = PipelineConfig::from_lookup(|n| (n == ENV_LOCATION_SWAPS).then(|| "161-237".into())).unwrap_err();
        assert!(err.to_string().contains(ENV_LOCATION_SWAPS));
        let err = PipelineConfig::from_lookup(|n| (n == ENV_MAX_SPEED_MPH).then(|| "fast".into())).unwrap_err();
        assert!(err.to_string().contains(ENV_MAX_SPEED_MPH));
        let err = PipelineConfig::from_lookup(|n| (n == ENV_MAX_TRIP_HOURS).then(|| "-1".into())).unwrap_err();
        assert!(err.to_string().contains(ENV_MAX_TRIP_HOURS));
        let err = PipelineConfig::from_lookup(|n| (n == ENV_MIN_KEPT_SHARE).then(|| "2".into())).unwrap_err();
        assert!(err.to_string().contains(ENV_MIN_KEPT_SHARE));
        assert!("1:2,2:3".parse::<LocationSwaps>().is_err());
        assert_eq!("".parse::<LocationSwaps>().unwrap(), LocationSwaps::none());
        assert_eq!(String::from("1:2, 3:4".parse::<LocationSwaps>().unwrap()), "1:2,3:4");
    }

    #[test]
    fn database_timeouts_default_and_refuse_nonsense_naming_the_variable() {
        let defaults = DbSettings::from_lookup(|_| None).unwrap();
        assert_eq!(defaults.statement_timeout, Duration::from_secs(900));
        assert_eq!(defaults.lock_timeout, Duration::from_secs(30));
        assert_eq!(defaults.connect_timeout, Duration::from_secs(20));
        let quick = DbSettings::from_lookup(|n| (n == ENV_DB_LOCK_TIMEOUT_S).then(|| "1.5".into())).unwrap();
        assert_eq!(quick.lock_timeout, Duration::from_millis(1500));
        for bad in ["0", "-1", "soon", "NaN", "1e9"] {
            let err = DbSettings::from_lookup(|n| (n == ENV_DB_CONNECT_TIMEOUT_S).then(|| bad.into())).unwrap_err();
            assert_eq!(err.name(), "InvalidInput");
            assert!(err.to_string().contains(ENV_DB_CONNECT_TIMEOUT_S), "{err}");
        }
    }

    #[test]
    fn http_timeouts_default_to_10_and_60_seconds_and_a_bad_one_fails_naming_its_variable() {
        let config = PipelineConfig::from_lookup(|_| None).unwrap();
        assert_eq!(
            (config.http_connect_timeout_s, config.http_read_timeout_s),
            (10.0, 60.0)
        );
        let config = PipelineConfig::from_lookup(|n| (n == ENV_HTTP_READ_TIMEOUT_S).then(|| "2.5".into())).unwrap();
        assert_eq!(config.http_read_timeout_s, 2.5);
        for bad in ["0", "-1", "ten", "inf", "NaN", ""] {
            for name in [ENV_HTTP_CONNECT_TIMEOUT_S, ENV_HTTP_READ_TIMEOUT_S] {
                let err = PipelineConfig::from_lookup(|n| (n == name).then(|| bad.into())).unwrap_err();
                assert_eq!(err.name(), "InvalidInput");
                assert!(err.to_string().contains(name), "{err}");
            }
        }
    }
}
