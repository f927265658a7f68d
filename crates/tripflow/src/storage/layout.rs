//! The key layout of the zones. Keys carry dataset and period so reruns of the same source land on the
//! same keys (idempotent) and different months never collide.
//!
//! ```text
//! landing/yellow_tripdata_2021-03.parquet                         what arrives
//! raw/yellow/2021-03/run=<run_id>/yellow_tripdata_2021-03.parquet byte-exact copy per run, MD5-checked
//! clean/yellow/_delta_log/…                                       the Delta table of clean rows
//! clean/yellow/period=2021-03/part-<run_id>.parquet               rows that passed the rules
//! quarantine/yellow/period=2021-03/part-<run_id>.parquet          rejected rows + reject_reason
//! curated/yellow/pickup_date=2021-03-01/part-<run_id>.parquet     analyst-ready (a day of a large
//!                                           part-<run_id>.<n>.parquet  month continues in parts 1, 2, …)
//! reports/yellow/2021-03/{clean,transform,load}.json              the current version's manifests
//! reports/yellow/2021-03/versions/<N>.json                        each published version's record
//! reports/yellow/2021-03/runs/<run_id>/{ingest,clean,transform,publish}.json  one run's own reports
//! ```
//!
//! Raw copies are per run, so a file that a later stage refuses never replaces the accepted copy;
//! the current version's clean manifest names the run (and so the raw copy) it came from. Lake files
//! are per run too: a stage writes beside the live files, and only the Delta commit of the publish
//! (see [`crate::handoff`]) makes them the month's files.

use chrono::NaiveDate;

use crate::period::Period;

pub const LANDING: &str = "landing/";
pub const RAW: &str = "raw/";
pub const CLEAN: &str = "clean/";
pub const QUARANTINE: &str = "quarantine/";
pub const CURATED: &str = "curated/";
pub const REPORTS: &str = "reports/";

/// The keys of one source (dataset + period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dataset: String,
    pub period: Period,
}

impl Layout {
    pub fn new(dataset: impl Into<String>, period: Period) -> Self {
        Layout {
            dataset: dataset.into(),
            period,
        }
    }

    /// `yellow/2021-03`: how the database and the reports name this source.
    pub fn source_id(&self) -> String {
        format!("{}/{}", self.dataset, self.period)
    }

    fn file_name(&self) -> String {
        format!("{}_tripdata_{}.parquet", self.dataset, self.period)
    }

    /// The name of a lake data file written by one run.
    fn part_name(run_id: &str) -> String {
        format!("part-{run_id}.parquet")
    }

    /// The raw copy ingested by one run.
    pub fn raw_key(&self, run_id: &str) -> String {
        format!(
            "{RAW}{}/{}/run={run_id}/{}",
            self.dataset,
            self.period,
            self.file_name()
        )
    }

    /// Whether `key` is a raw copy that belongs to one run (and so may be discarded with it).
    pub fn is_run_scoped(key: &str) -> bool {
        key.starts_with(RAW) && key.contains("/run=")
    }

    /// A report that belongs to one run rather than to the month's current version.
    pub fn run_report_key(&self, run_id: &str, name: &str) -> String {
        format!("{REPORTS}{}/{}/runs/{run_id}/{name}.json", self.dataset, self.period)
    }

    /// The run a run-scoped report of this month belongs to (`…/runs/<run_id>/clean.json` → its
    /// run id): how a stage handed a manifest knows which run it works for.
    pub fn run_of_report(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.runs_prefix())?;
        let (run_id, name) = rest.split_once('/')?;
        (!run_id.is_empty() && !name.contains('/')).then(|| run_id.to_string())
    }

    /// Where a run's reports go: `reports/<dataset>/<period>/runs/`.
    pub fn runs_prefix(&self) -> String {
        format!("{REPORTS}{}/{}/runs/", self.dataset, self.period)
    }

    /// Where the records of published versions go.
    pub fn versions_prefix(&self) -> String {
        format!("{REPORTS}{}/{}/versions/", self.dataset, self.period)
    }

    /// The record of one published version (its files in every zone, its stages' reports).
    pub fn version_key(&self, version: i32) -> String {
        format!("{REPORTS}{}/{}/versions/{version}.json", self.dataset, self.period)
    }

    pub fn clean_key(&self, run_id: &str) -> String {
        format!(
            "{CLEAN}{}/period={}/{}",
            self.dataset,
            self.period,
            Self::part_name(run_id)
        )
    }

    pub fn quarantine_key(&self, run_id: &str) -> String {
        format!(
            "{QUARANTINE}{}/period={}/{}",
            self.dataset,
            self.period,
            Self::part_name(run_id)
        )
    }

    /// The curated table's root: one table per dataset, partitioned by pickup date.
    pub fn curated_prefix(&self) -> String {
        format!("{CURATED}{}/", self.dataset)
    }

    /// Every curated partition of this period starts with this (`pickup_date=2021-03-`).
    pub fn curated_period_prefix(&self) -> String {
        format!("{}pickup_date={}-", self.curated_prefix(), self.period)
    }

    /// The `part`th file one run writes for one day: part 0 is `part-<run_id>.parquet`, the
    /// parts a large day continues in are `part-<run_id>.<part>.parquet`.
    pub fn curated_key(&self, pickup_date: NaiveDate, run_id: &str, part: u32) -> String {
        let name = match part {
            0 => Self::part_name(run_id),
            n => format!("part-{run_id}.{n}.parquet"),
        };
        format!(
            "{}pickup_date={}/{name}",
            self.curated_prefix(),
            pickup_date.format("%Y-%m-%d"),
        )
    }

    /// The run that wrote a lake data file (`…/part-<run_id>[.<part>].parquet`), or None for any
    /// other key.
    pub fn run_of_part(key: &str) -> Option<&str> {
        let name = key.rsplit('/').next()?;
        let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        Some(match stem.rsplit_once('.') {
            Some((run, part)) if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) => run,
            _ => stem,
        })
    }

    pub fn report_key(&self, stage: &str) -> String {
        format!("{REPORTS}{}/{}/{stage}.json", self.dataset, self.period)
    }

    /// The month's quality report, an HTML page beside the JSON reports.
    pub fn quality_report_key(&self) -> String {
        format!("{REPORTS}{}/{}/quality.html", self.dataset, self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let layout = Layout::new("yellow", "2021-03".parse().unwrap());
        assert_eq!(
            layout.raw_key("20210401T000000Z-0a1b2c3d"),
            "raw/yellow/2021-03/run=20210401T000000Z-0a1b2c3d/yellow_tripdata_2021-03.parquet"
        );
        assert_eq!(
            layout.run_report_key("r1", "ingest"),
            "reports/yellow/2021-03/runs/r1/ingest.json"
        );
        assert_eq!(layout.clean_key("r1"), "clean/yellow/period=2021-03/part-r1.parquet");
        assert_eq!(
            layout.quarantine_key("r1"),
            "quarantine/yellow/period=2021-03/part-r1.parquet"
        );
        let march_7 = NaiveDate::from_ymd_opt(2021, 3, 7).unwrap();
        assert_eq!(
            layout.curated_key(march_7, "r1", 0),
            "curated/yellow/pickup_date=2021-03-07/part-r1.parquet"
        );
        assert_eq!(
            layout.curated_key(march_7, "r1", 2),
            "curated/yellow/pickup_date=2021-03-07/part-r1.2.parquet"
        );
        assert!(
            layout
                .curated_key(march_7, "r1", 0)
                .starts_with(&layout.curated_period_prefix())
        );
        assert_eq!(layout.version_key(3), "reports/yellow/2021-03/versions/3.json");
        assert!(layout.run_report_key("r1", "clean").starts_with(&layout.runs_prefix()));
        assert_eq!(layout.report_key("clean"), "reports/yellow/2021-03/clean.json");
        assert_eq!(layout.quality_report_key(), "reports/yellow/2021-03/quality.html");
        assert_eq!(
            layout.run_of_report(&layout.run_report_key("r1", "clean")).as_deref(),
            Some("r1")
        );
        assert_eq!(layout.run_of_report("reports/yellow/2021-04/runs/r1/clean.json"), None);
        assert_eq!(layout.run_of_report("reports/yellow/2021-03/clean.json"), None);
        assert_eq!(layout.source_id(), "yellow/2021-03");
    }

    #[test]
    fn every_part_of_a_run_names_its_run() {
        let layout = Layout::new("yellow", "2021-03".parse().unwrap());
        let run = "20210401T000000Z-0a1b2c3d";
        let march_7 = NaiveDate::from_ymd_opt(2021, 3, 7).unwrap();
        for key in [
            layout.curated_key(march_7, run, 0),
            layout.curated_key(march_7, run, 1),
            layout.curated_key(march_7, run, 12),
            layout.clean_key(run),
            layout.quarantine_key(run),
        ] {
            assert_eq!(Layout::run_of_part(&key), Some(run), "{key}");
        }
        assert_eq!(
            Layout::run_of_part("curated/yellow/pickup_date=2021-03-07/part-r.1.x.parquet"),
            Some("r.1.x")
        );
        assert_eq!(Layout::run_of_part(&layout.raw_key(run)), None);
        assert_eq!(
            Layout::run_of_part("curated/yellow/_delta_log/00000000000000000000.json"),
            None
        );
    }
}
