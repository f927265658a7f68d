//! The lake zones (`clean/`, `quarantine/`, `curated/`) as Delta Lake tables, one table per zone and
//! dataset. Stages write their Parquet files under the table root with names unique to their run
//! (`period=2021-03/part-<run_id>.parquet`); nothing references them, so no reader sees them. Only
//! [`replace_month`] changes what readers see: one Delta commit that removes the month's live
//! files and adds the new ones, so Athena, the load stage and an analyst read the old complete month
//! or the new complete month, never a mix.
//!
//! delta-rs is used without datafusion: the log (snapshots, commits, application transactions), not
//! its writer, since our own writer already makes the files (and checks what it reads). Every commit
//! carries an application transaction (`app_id` per table and month), so two publishers of the same
//! month cannot both land, and a retried publish finds its files already live and commits nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError, FilterOp, FilterValue, TableProperty};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::contract;
use crate::error::{Error, Result};
use crate::handoff::curated;
use crate::handoff::manifest::ManifestObject;
use crate::period::Period;
use crate::stages::clean;
use crate::storage::ObjectStore;

/// Attempts of one month's commit when another writer's commit lands in between (a replace of
/// another month removes files our snapshot read, which delta-rs without datafusion reports as a
/// conflict; rebuilding the commit on the new snapshot is then correct).
/// Twelve covers a year of months published at once (a backfill), each at most once in the way.
const COMMIT_ATTEMPTS: u32 = 12;

/// Where delta-rs finds a table and how it connects there (object_store options: endpoint,
/// credentials, region). Given by the store, since only it knows its bucket or folder.
#[derive(Debug, Clone)]
pub struct LakeLocation {
    pub url: url::Url,
    pub options: HashMap<String, String>,
}

/// The three lake zones, in the order a run publishes them: the least read first, the analysts'
/// zone last, so a publish cut short leaves curated (what Athena and load read) on the old version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    Quarantine,
    Clean,
    Curated,
}

impl Zone {
    pub const PUBLISH_ORDER: [Zone; 3] = [Zone::Quarantine, Zone::Clean, Zone::Curated];

    pub fn name(self) -> &'static str {
        match self {
            Zone::Quarantine => "quarantine",
            Zone::Clean => "clean",
            Zone::Curated => "curated",
        }
    }

    /// The table's partition column: the month for clean and quarantine, the pickup day for curated.
    pub fn partition_column(self) -> &'static str {
        match self {
            Zone::Curated => curated::PICKUP_DATE,
            Zone::Clean | Zone::Quarantine => PERIOD,
        }
    }
}

/// The partition column of clean and quarantine: the source's month, `YYYY-MM`.
pub const PERIOD: &str = "period";

/// One zone's table of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeTable {
    pub zone: Zone,
    pub dataset: String,
}

impl LakeTable {
    pub fn new(zone: Zone, dataset: impl Into<String>) -> Self {
        LakeTable {
            zone,
            dataset: dataset.into(),
        }
    }

    /// The table's root key, `clean/yellow/`.
    pub fn root(&self) -> String {
        format!("{}/{}/", self.zone.name(), self.dataset)
    }

    /// The application id of a month's commits: one per table and source.
    pub fn app_id(&self, period: Period) -> String {
        format!("tripflow:{}/{}/{period}", self.zone.name(), self.dataset)
    }

    /// The columns of the table's data files (the partition column lives in the path only).
    pub fn data_schema(&self) -> SchemaRef {
        match self.zone {
            Zone::Clean => contract::canonical_schema(),
            Zone::Quarantine => clean::quarantine_schema(),
            Zone::Curated => curated::curated_schema(),
        }
    }

    /// The table's Delta schema: the data columns plus the partition column.
    pub fn delta_schema(&self) -> Result<StructType> {
        let mut fields: Vec<Field> = self.data_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let partition_type = match self.zone {
            Zone::Curated => DataType::Date32,
            Zone::Clean | Zone::Quarantine => DataType::Utf8,
        };
        fields.push(Field::new(self.zone.partition_column(), partition_type, false));
        (&Schema::new(fields))
            .try_into_kernel()
            .map_err(|e| Error::InvalidInput(format!("the {} schema has no Delta form: {e}", self.root())))
    }

    /// The partitions that hold one month, as delta-rs partition filters.
    fn month_filter(&self, period: Period) -> (String, String) {
        (period.first_day().to_string(), period.next_first_day().to_string())
    }

    /// The SQL-like predicate recorded in the commit (delta-rs keeps it for history only).
    fn month_predicate(&self, period: Period) -> String {
        match self.zone {
            Zone::Curated => {
                let (from, until) = self.month_filter(period);
                format!("pickup_date >= '{from}' AND pickup_date < '{until}'")
            }
            Zone::Clean | Zone::Quarantine => format!("{PERIOD} = '{period}'"),
        }
    }
}

/// A file a table lists as live.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LiveFile {
    /// The store key (`curated/yellow/pickup_date=2021-03-01/part-….parquet`).
    pub key: String,
    pub size_bytes: u64,
    pub rows: Option<u64>,
}

/// What one month's publish to one table did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCommit {
    /// `clean/yellow/`.
    pub table: String,
    /// The table version holding the month's new files.
    pub delta_version: u64,
    /// The files were live already (a retried publish, or a restore of the current version): nothing
    /// was committed.
    pub already_live: bool,
    pub files_added: usize,
    pub files_removed: usize,
}

fn lake_error<'a>(table: &'a LakeTable, action: &'static str) -> impl Fn(DeltaTableError) -> Error + 'a {
    move |err| {
        let detail = err.to_string();
        match err {
            DeltaTableError::Transaction { .. } | DeltaTableError::VersionAlreadyExists(_) => Error::CommitConflict {
                table: table.root(),
                detail,
            },
            _ => Error::StorageUnavailable {
                action,
                key: table.root(),
                detail,
            },
        }
    }
}

/// The partition value a file's key names (`…/period=2021-03/part-….parquet` → `2021-03`).
fn partition_value(table: &LakeTable, relative: &str) -> Result<String> {
    let column = table.zone.partition_column();
    relative
        .split('/')
        .find_map(|segment| segment.strip_prefix(column)?.strip_prefix('='))
        .map(str::to_string)
        .ok_or_else(|| Error::IntegrityError {
            key: format!("{}{relative}", table.root()),
            detail: format!("no {column}=… partition in the key"),
        })
}

/// The Delta `add` action of one file a stage wrote. Only the row count goes into the stats:
/// enough for readers that count, and it is what the file's footer says.
pub fn add_action(table: &LakeTable, file: &ManifestObject) -> Result<Add> {
    let root = table.root();
    let relative = file
        .object
        .key
        .strip_prefix(&root)
        .ok_or_else(|| Error::IntegrityError {
            key: file.object.key.clone(),
            detail: format!("not under the table {root}"),
        })?;
    let value = partition_value(table, relative)?;
    Ok(Add {
        path: relative.to_string(),
        partition_values: HashMap::from([(table.zone.partition_column().to_string(), Some(value))]),
        size: i64::try_from(file.object.size_bytes).unwrap_or(i64::MAX),
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(serde_json::json!({ "numRecords": file.rows }).to_string()),
        ..Default::default()
    })
}

async fn builder(store: &dyn ObjectStore, table: &LakeTable) -> Result<DeltaTableBuilder> {
    let location = store.lake_location(&table.root()).await?;
    Ok(DeltaTableBuilder::from_url(location.url)
        .map_err(lake_error(table, "opening"))?
        .with_storage_options(location.options))
}

/// The table at its latest version, or `None` if nothing was ever published to it.
pub async fn open(store: &dyn ObjectStore, table: &LakeTable) -> Result<Option<DeltaTable>> {
    // Only an empty log is no table; asking delta-rs to load one logs an ERROR first.
    let log = format!("{}_delta_log/", table.root());
    if store.list(&log).await?.is_empty() {
        return Ok(None);
    }
    builder(store, table)
        .await?
        .load()
        .await
        .map(Some)
        .map_err(lake_error(table, "opening"))
}

async fn open_or_create(store: &dyn ObjectStore, table: &LakeTable) -> Result<DeltaTable> {
    if let Some(delta) = open(store, table).await? {
        return Ok(delta);
    }
    let schema = table.delta_schema()?;
    let created = builder(store, table)
        .await?
        .build()
        .map_err(lake_error(table, "creating"))?
        .create()
        .with_table_name(format!("{}_{}", table.zone.name(), table.dataset))
        .with_columns(schema.fields().cloned())
        .with_partition_columns([table.zone.partition_column()])
        // Old versions' files are tripflow's to delete (by its retention), never an outside vacuum's.
        .with_configuration_property(TableProperty::DeletedFileRetentionDuration, Some("interval 3650 days"))
        .with_configuration_property(TableProperty::LogRetentionDuration, Some("interval 365 days"))
        .with_save_mode(SaveMode::Ignore)
        .await
        .map_err(lake_error(table, "creating"))?;
    info!(table = %table.root(), "created the Delta table");
    Ok(created)
}

/// The month's live files in `delta` (at the version it is loaded at), with their remove actions.
async fn month_files(
    delta: &DeltaTable,
    table: &LakeTable,
    period: Period,
) -> Result<Vec<(String, deltalake_core::kernel::Remove, LiveFile)>> {
    let month = period.to_string();
    let (from, until) = table.month_filter(period);
    let filters: Vec<(&str, FilterOp, FilterValue<'_>)> = match table.zone {
        Zone::Curated => vec![
            (curated::PICKUP_DATE, FilterOp::Ge, FilterValue::Scalar(&from)),
            (curated::PICKUP_DATE, FilterOp::Lt, FilterValue::Scalar(&until)),
        ],
        Zone::Clean | Zone::Quarantine => vec![(PERIOD, FilterOp::Eq, FilterValue::Scalar(&month))],
    };
    let views: Vec<_> = delta
        .get_active_add_actions_by_partitions(&filters)
        .try_collect()
        .await
        .map_err(lake_error(table, "listing"))?;
    Ok(views
        .into_iter()
        .map(|view| {
            let relative = view.path().to_string();
            let live = LiveFile {
                key: format!("{}{relative}", table.root()),
                size_bytes: u64::try_from(view.size()).unwrap_or_default(),
                rows: view.num_records().map(|n| n as u64),
            };
            (relative, view.remove_action(true), live)
        })
        .collect())
}

/// The month's files readers see now (empty when the table or the month does not exist yet).
pub async fn live_files(store: &dyn ObjectStore, table: &LakeTable, period: Period) -> Result<Vec<LiveFile>> {
    let Some(delta) = open(store, table).await? else {
        return Ok(Vec::new());
    };
    let mut files: Vec<LiveFile> = month_files(&delta, table, period)
        .await?
        .into_iter()
        .map(|(_, _, live)| live)
        .collect();
    files.sort();
    Ok(files)
}

/// Every live file of the table, all months (for checks that compare whole zones).
pub async fn all_live_keys(store: &dyn ObjectStore, table: &LakeTable) -> Result<Vec<String>> {
    let Some(delta) = open(store, table).await? else {
        return Ok(Vec::new());
    };
    let views: Vec<_> = delta
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .map_err(lake_error(table, "listing"))?;
    let mut keys: Vec<String> = views.iter().map(|v| format!("{}{}", table.root(), v.path())).collect();
    keys.sort();
    Ok(keys)
}

/// What a commit records besides the files, for `history` and for people reading the Delta log.
#[derive(Debug, Clone, Default)]
pub struct CommitNote {
    pub run_id: String,
    pub version: i64,
    pub source_md5: String,
    /// Set when the commit makes an earlier version current again.
    pub restore_of: Option<i64>,
}

/// Makes `files` the month's files in `table`, in one commit: the month's other live files are
/// removed (they stay on storage as the previous version), these are added. Idempotent: if exactly
/// these files are live already, nothing is committed. A commit that conflicts with another
/// writer's is rebuilt on the new snapshot and tried again; one that may have landed despite an
/// error (a failed post-commit checkpoint) is recognised by the live files on the next attempt.
pub async fn replace_month(
    store: &dyn ObjectStore,
    table: &LakeTable,
    period: Period,
    files: &[ManifestObject],
    note: &CommitNote,
) -> Result<TableCommit> {
    let adds = files
        .iter()
        .map(|file| add_action(table, file))
        .collect::<Result<Vec<_>>>()?;
    let wanted: BTreeSet<&str> = adds.iter().map(|a| a.path.as_str()).collect();
    let app_id = table.app_id(period);
    let mut delta = open_or_create(store, table).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        delta.update_state().await.map_err(lake_error(table, "reading"))?;
        let live = month_files(&delta, table, period).await?;
        let live_paths: BTreeSet<&str> = live.iter().map(|(path, _, _)| path.as_str()).collect();
        if live_paths == wanted {
            return Ok(TableCommit {
                table: table.root(),
                delta_version: delta.version().unwrap_or_default(),
                already_live: true,
                files_added: 0,
                files_removed: 0,
            });
        }
        let removes: Vec<Action> = live
            .iter()
            .filter(|(path, _, _)| !wanted.contains(path.as_str()))
            .map(|(_, remove, _)| Action::Remove(remove.clone()))
            .collect();
        let new_adds: Vec<Action> = adds
            .iter()
            .filter(|add| !live_paths.contains(add.path.as_str()))
            .cloned()
            .map(Action::Add)
            .collect();
        let (files_added, files_removed) = (new_adds.len(), removes.len());
        let mut metadata = vec![
            ("tripflow.run_id".to_string(), serde_json::json!(note.run_id)),
            ("tripflow.version".to_string(), serde_json::json!(note.version)),
            ("tripflow.source_md5".to_string(), serde_json::json!(note.source_md5)),
            ("tripflow.month".to_string(), serde_json::json!(period.to_string())),
        ];
        if let Some(restored) = note.restore_of {
            metadata.push(("tripflow.restore_of".to_string(), serde_json::json!(restored)));
        }
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, note.version))
            .with_metadata(metadata);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: Some(vec![table.zone.partition_column().to_string()]),
            predicate: Some(table.month_predicate(period)),
        };
        let snapshot = delta.snapshot().map_err(lake_error(table, "reading"))?;
        let committed = CommitBuilder::from(properties)
            .with_actions(removes.into_iter().chain(new_adds).collect())
            .build(Some(snapshot as &dyn TableReference), delta.log_store(), operation)
            .await;
        match committed {
            Ok(done) => {
                info!(
                    table = %table.root(),
                    %period,
                    delta_version = done.version(),
                    files_added,
                    files_removed,
                    "published the month"
                );
                return Ok(TableCommit {
                    table: table.root(),
                    delta_version: done.version(),
                    already_live: false,
                    files_added,
                    files_removed,
                });
            }
            Err(err) if attempt < COMMIT_ATTEMPTS => {
                warn!(table = %table.root(), %period, attempt, error = %err, "commit did not land; trying again on the latest snapshot");
                // Spread the retries of publishers that collided, so they do not collide again.
                let jitter = u64::from(chrono::Utc::now().timestamp_subsec_nanos() % 256);
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt) + jitter)).await;
            }
            Err(err) => return Err(lake_error(table, "committing to")(err)),
        }
    }
}

/// The three tables of a dataset, in publish order.
pub fn tables(dataset: &str) -> [LakeTable; 3] {
    Zone::PUBLISH_ORDER.map(|zone| LakeTable::new(zone, dataset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectInfo;

    fn file(key: &str, rows: u64) -> ManifestObject {
        ManifestObject {
            object: ObjectInfo {
                key: key.into(),
                size_bytes: 100,
                checksum: crate::checksum::Checksum::Crc64nvme("AAAAAAAAAAA=".into()),
            },
            rows,
        }
    }

    #[test]
    fn add_actions_carry_the_partition_from_the_key() {
        let curated = LakeTable::new(Zone::Curated, "yellow");
        let add = add_action(
            &curated,
            &file("curated/yellow/pickup_date=2021-03-07/part-r1.parquet", 5),
        )
        .unwrap();
        assert_eq!(add.path, "pickup_date=2021-03-07/part-r1.parquet");
        assert_eq!(add.partition_values["pickup_date"].as_deref(), Some("2021-03-07"));
        assert_eq!(add.stats.as_deref(), Some(r#"{"numRecords":5}"#));
        let clean = LakeTable::new(Zone::Clean, "yellow");
        assert_eq!(
            add_action(&clean, &file("clean/yellow/period=2021-03/part-r1.parquet", 1))
                .unwrap()
                .partition_values["period"]
                .as_deref(),
            Some("2021-03")
        );
        for bad in ["curated/yellow/x.parquet", "clean/green/period=2021-03/p.parquet"] {
            assert_eq!(
                add_action(&curated, &file(bad, 1)).unwrap_err().name(),
                "IntegrityError",
                "{bad}"
            );
        }
    }

    #[test]
    fn each_zone_has_a_delta_schema_with_its_partition_column() {
        for table in tables("yellow") {
            let schema = table.delta_schema().unwrap();
            assert!(
                schema.field(table.zone.partition_column()).is_some(),
                "{}",
                table.root()
            );
            assert_eq!(schema.fields().count(), table.data_schema().fields().len() + 1);
        }
        assert_eq!(
            LakeTable::new(Zone::Curated, "yellow").app_id("2021-03".parse().unwrap()),
            "tripflow:curated/yellow/2021-03"
        );
    }
}
