//! The month a TLC file holds, and the dataset it belongs to, read from names like
//! `yellow_tripdata_2021-03.parquet`.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A calendar month, `YYYY-MM` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    pub fn new(year: i32, month: u32) -> Result<Self> {
        if !(1..=12).contains(&month) || !(1900..=9999).contains(&year) {
            return Err(Error::InvalidInput(format!(
                "{year:04}-{month:02} is not a valid month"
            )));
        }
        Ok(Period { year, month })
    }

    pub fn year(&self) -> i32 {
        self.year
    }

    pub fn month(&self) -> u32 {
        self.month
    }

    pub fn first_day(&self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or(NaiveDate::MIN)
    }

    /// The first day of the following month: the exclusive upper bound of this period.
    pub fn next_first_day(&self) -> NaiveDate {
        let (year, month) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MAX)
    }

    /// `[start, end)` of the month in microseconds since the Unix epoch (TLC timestamps are naive local time).
    pub fn bounds_micros(&self) -> (i64, i64) {
        let start = self
            .first_day()
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
        let end = self
            .next_first_day()
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
        (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX))
    }

    pub fn days(&self) -> impl Iterator<Item = NaiveDate> {
        let end = self.next_first_day();
        self.first_day().iter_days().take_while(move |d| *d < end)
    }

    pub fn contains(&self, date: NaiveDate) -> bool {
        date.year() == self.year && date.month() == self.month
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Period {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput(format!("{s:?} is not a month of the form YYYY-MM"));
        let (year, month) = s.split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        Period::new(year.parse().map_err(|_| bad())?, month.parse().map_err(|_| bad())?)
    }
}

impl TryFrom<String> for Period {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

/// What a TLC file name says about its content: `yellow_tripdata_2021-03.parquet` is dataset
/// `yellow`, period 2021-03.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlcFileName {
    pub dataset: String,
    pub period: Period,
}

impl TlcFileName {
    /// Parses the last path segment of `name` (a path, key or URL). `None` when it is not a TLC name.
    pub fn parse(name: &str) -> Option<Self> {
        let base = file_name_of(name);
        let stem = base.split('.').next()?;
        let (dataset, rest) = stem.split_once("_tripdata_")?;
        if dataset.is_empty() || !dataset.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let period = rest.get(..7)?.parse().ok()?;
        Some(TlcFileName {
            dataset: dataset.to_ascii_lowercase(),
            period,
        })
    }
}

/// The last segment of a path, key or URL, without any query string.
pub fn file_name_of(name: &str) -> &str {
    let without_query = name.split(['?', '#']).next().unwrap_or(name);
    without_query.rsplit(['/', '\\']).next().unwrap_or(without_query)
}

/// The period of a file: the explicit one wins, else the one in the name, else `UnknownPeriod`.
pub fn resolve_period(name: &str, explicit: Option<Period>) -> Result<Period> {
    explicit
        .or_else(|| TlcFileName::parse(name).map(|n| n.period))
        .ok_or_else(|| Error::UnknownPeriod {
            name: file_name_of(name).to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_gives_dataset_and_period() {
        let parsed = TlcFileName::parse("s3://b/landing/yellow_tripdata_2021-03.parquet");
        assert_eq!(
            parsed,
            Some(TlcFileName {
                dataset: "yellow".into(),
                period: Period::new(2021, 3).unwrap()
            })
        );
        let url = TlcFileName::parse("https://x.example/trip-data/yellow_tripdata_2025-01.parquet?x=1");
        assert_eq!(url.map(|n| n.period.to_string()), Some("2025-01".to_string()));
        let head = TlcFileName::parse("yellow_tripdata_2021-03_head999.parquet");
        assert_eq!(head.map(|n| n.period.to_string()), Some("2021-03".to_string()));
    }

    #[test]
    fn names_without_a_month_are_unknown_period() {
        assert_eq!(TlcFileName::parse("trips.parquet"), None);
        assert_eq!(TlcFileName::parse("yellow_tripdata_2021-13.parquet"), None);
        let err = resolve_period("trips.parquet", None).unwrap_err();
        assert_eq!(err.name(), "UnknownPeriod");
        assert_eq!(
            resolve_period("trips.parquet", Some("2020-02".parse().unwrap()))
                .unwrap()
                .to_string(),
            "2020-02"
        );
    }

    #[test]
    fn bounds_cover_the_whole_month_and_nothing_else() {
        let p: Period = "2021-12".parse().unwrap();
        let (start, end) = p.bounds_micros();
        assert_eq!(end - start, 31 * 86_400 * 1_000_000);
        assert_eq!(p.next_first_day().to_string(), "2022-01-01");
        assert_eq!(p.days().count(), 31);
        assert!("2021-3".parse::<Period>().is_err());
        assert!("2021-00".parse::<Period>().is_err());
    }
}
