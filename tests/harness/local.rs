//! The whole pipeline on one machine, as `tripflow run` runs it: a local folder for the zones and a
//! throwaway PostgreSQL, plus what a test needs to look at both afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;
use tripflow::Result;
use tripflow::config::{DbSettings, PipelineConfig};
use tripflow::db::versions::UrlSessions;
use tripflow::generator::{GenSpec, write_month};
use tripflow::pipeline::{RunSummary, run_all};
use tripflow::stages::StageContext;
use tripflow::stages::ingest::IngestInput;
use tripflow::storage::LocalStore;

use crate::pg::TestPostgres;

pub struct Setup {
    pub dir: TempDir,
    pub ctx: StageContext,
    pub pg: TestPostgres,
}

impl Setup {
    pub async fn new() -> Self {
        Self::with_config(PipelineConfig::default()).await
    }

    pub async fn with_config(config: PipelineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path().join("zones")).unwrap());
        let pg = TestPostgres::start().await;
        // Load copies its shares on further sessions, as `tripflow run` does.
        let sessions = UrlSessions {
            url: pg.url().to_string(),
            settings: DbSettings::default(),
        };
        Setup {
            ctx: StageContext::new(store, config).with_sessions(Arc::new(sessions)),
            pg,
            dir,
        }
    }

    pub fn generate(&self, month: &str, rows: usize, seed: u64) -> PathBuf {
        let path = self.dir.path().join(format!("yellow_tripdata_{month}.parquet"));
        write_month(
            &path,
            GenSpec {
                period: month.parse().unwrap(),
                rows,
                seed,
            },
        )
        .unwrap();
        path
    }

    pub async fn run(&self, source: &Path, md5: Option<&str>) -> Result<RunSummary> {
        let mut client = self.pg.client().await;
        let input = IngestInput {
            source: source.display().to_string(),
            expected_md5: md5.map(str::to_string),
            ..IngestInput::default()
        };
        run_all(&self.ctx, &mut client, input).await
    }

    /// A new run of `source` through ingest, clean and transform, not loaded or published.
    pub async fn prepare(&self, source: &Path) -> tripflow::pipeline::PreparedRun {
        let input = IngestInput {
            source: source.display().to_string(),
            ..IngestInput::default()
        };
        tripflow::pipeline::prepare(&self.ctx, input).await.unwrap()
    }

    /// What a test hands to `load::run` to drive the load and publish of a new run itself.
    pub async fn prepare_load(&self, source: &Path) -> tripflow::stages::load::LoadInput {
        self.prepare(source).await.load_input()
    }

    /// The month's live files in each lake table (what readers of the lake see), by table root.
    pub async fn live_files(&self, month: &str) -> BTreeMap<String, Vec<String>> {
        let mut live = BTreeMap::new();
        for table in tripflow::lake::tables("yellow") {
            let files = tripflow::lake::live_files(self.ctx.store.as_ref(), &table, month.parse().unwrap())
                .await
                .unwrap();
            live.insert(table.root(), files.into_iter().map(|f| f.key).collect());
        }
        live
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctx.store.list(prefix).await.unwrap()
    }

    /// Every object under `prefix` with its bytes.
    pub async fn files(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let zones = self.dir.path().join("zones");
        let keys = self.keys(prefix).await;
        keys.into_iter()
            .map(|key| {
                let bytes = std::fs::read(zones.join(&key)).unwrap();
                (key, bytes)
            })
            .collect()
    }
}

/// Everything a reader can see: every object in the zones with its MD5 (the current manifests
/// included), and per month the database's rows and answers. One run's own reports
/// (`reports/…/runs/<run_id>/`) are left out: a refused run may leave its report there.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub objects: BTreeMap<String, String>,
    pub trips: BTreeMap<String, i64>,
    pub answers: BTreeMap<String, tripflow::db::Answers>,
}

impl Setup {
    pub async fn run_input(&self, input: IngestInput) -> Result<RunSummary> {
        let mut client = self.pg.client().await;
        run_all(&self.ctx, &mut client, input).await
    }

    pub async fn snapshot(&self) -> Snapshot {
        // What readers see: raw copies, the current reports, and of each lake table its log and
        // the files the log lists as live. Files a run wrote but never published are not seen.
        let mut live = std::collections::BTreeSet::new();
        for table in tripflow::lake::tables("yellow") {
            live.extend(
                tripflow::lake::all_live_keys(self.ctx.store.as_ref(), &table)
                    .await
                    .unwrap(),
            );
        }
        let mut objects = BTreeMap::new();
        for zone in ["raw/", "clean/", "quarantine/", "curated/", "reports/"] {
            for key in self.keys(zone).await {
                let lake_zone = ["clean/", "quarantine/", "curated/"].contains(&zone);
                if key.contains("/runs/") || (lake_zone && !key.contains("/_delta_log/") && !live.contains(&key)) {
                    continue;
                }
                let bytes = tripflow::storage::get_bytes(self.ctx.store.as_ref(), &key)
                    .await
                    .unwrap();
                objects.insert(key, tripflow::checksum::md5_hex(&bytes));
            }
        }
        let client = self.pg.client().await;
        let mut trips = BTreeMap::new();
        let mut answers = BTreeMap::new();
        let exists: bool = client
            .query_one("SELECT to_regclass('tripflow.trips') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        if exists {
            for row in client
                .query("SELECT source_id, count(*) FROM tripflow.trips GROUP BY 1", &[])
                .await
                .unwrap()
            {
                let source_id: String = row.get(0);
                answers.insert(
                    source_id.clone(),
                    tripflow::db::answers(&client, &source_id).await.unwrap(),
                );
                trips.insert(source_id, row.get(1));
            }
        }
        Snapshot {
            objects,
            trips,
            answers,
        }
    }
}
