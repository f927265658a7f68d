//! Publishing an accepted run: what [`super`] describes under "the one place where a run's
//! output becomes what readers see".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{CLEAN, CleanOutput, LOAD, LoadOutput, TRANSFORM, TransformOutput};
use crate::db::versions::{self, StagedVersion};
use crate::error::{Error, Result};
use crate::handoff::manifest::{Manifest, ManifestObject};
use crate::lake::{self, CommitNote, LakeTable, TableCommit, Zone};
use crate::period::Period;
use crate::stages::StageContext;
use crate::storage::{Layout, ObjectStore, get_json, put_json};

/// The run report that holds a run's publish intent.
pub const INTENT_REPORT: &str = "publish";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentState {
    /// Accepted, not yet everywhere: the next run or restore of the month finishes it.
    Pending,
    Done,
    /// Could not be finished (its staged database table expired); a newer version replaced it.
    Abandoned,
}

/// A run accepted for publishing: everything [`publish`] needs to finish it, even in another process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishIntent {
    pub dataset: String,
    pub period: Period,
    pub run_id: String,
    pub clean_manifest_key: String,
    pub transform_manifest_key: String,
    pub staged: StagedVersion,
    pub state: IntentState,
    pub created_at: DateTime<Utc>,
}

/// One version of a month, as `history` and `restore` see it: which files every zone held and what
/// each stage reported. Written when the version is published; kept while its files are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub source_id: String,
    pub version: i32,
    pub run_id: String,
    pub source_md5: String,
    pub published_at: DateTime<Utc>,
    pub clean: Manifest<CleanOutput>,
    pub transform: Manifest<TransformOutput>,
    pub load: LoadOutput,
    pub commits: Vec<TableCommit>,
    /// Retention dropped the version: its lake files and raw copy are gone, the record stays for
    /// the history.
    #[serde(default)]
    pub files_deleted: bool,
}

impl VersionRecord {
    /// The files the version holds in `zone`.
    pub fn files(&self, zone: Zone) -> Vec<ManifestObject> {
        let layout = Layout::new(self.load.dataset.clone(), self.load.period);
        files_of(zone, &layout, &self.clean, &self.transform)
    }
}

fn files_of(
    zone: Zone,
    layout: &Layout,
    clean: &Manifest<CleanOutput>,
    transform: &Manifest<TransformOutput>,
) -> Vec<ManifestObject> {
    let root = LakeTable::new(zone, layout.dataset.clone()).root();
    let objects = match zone {
        Zone::Clean | Zone::Quarantine => &clean.objects,
        Zone::Curated => &transform.objects,
    };
    objects
        .iter()
        .filter(|o| o.object.key.starts_with(&root))
        .cloned()
        .collect()
}

async fn read_manifests(
    store: &dyn ObjectStore,
    layout: &Layout,
    intent: &PublishIntent,
) -> Result<(Manifest<CleanOutput>, Manifest<TransformOutput>)> {
    let source_id = layout.source_id();
    let clean = Manifest::<CleanOutput>::read(store, &intent.clean_manifest_key, CLEAN, &source_id).await?;
    let transform =
        Manifest::<TransformOutput>::read(store, &intent.transform_manifest_key, TRANSFORM, &source_id).await?;
    Ok((clean, transform))
}

/// Records `intent` (step 1) and carries it through (steps 2 to 4). Resuming a pending intent is the
/// same call. Returns the run's load output, which names the Delta version of each table.
pub async fn publish(ctx: &StageContext, client: &mut Client, intent: PublishIntent) -> Result<LoadOutput> {
    let source_id = intent.staged.source_id.clone();
    versions::lock_publish(client, &source_id).await?;
    let published = publish_locked(ctx, client, intent).await;
    versions::unlock_publish(client, &source_id).await;
    published
}

async fn publish_locked(ctx: &StageContext, client: &mut Client, intent: PublishIntent) -> Result<LoadOutput> {
    let store = ctx.store.as_ref();
    let layout = Layout::new(intent.dataset.clone(), intent.period);
    let intent_key = layout.run_report_key(&intent.run_id, INTENT_REPORT);
    put_json(store, &intent_key, &intent).await?;
    let (clean, transform) = read_manifests(store, &layout, &intent).await?;
    let staged = &intent.staged;

    let state = versions::version_state(client, &staged.source_id, staged.version).await?;
    let (rows_replaced, dropped) = match state.as_deref() {
        Some("staged") => {
            let swapped = versions::swap_in(client, staged).await?;
            (swapped.rows_replaced, swapped.dropped_versions)
        }
        Some("current") => (0, Vec::new()),
        other => {
            return Err(Error::IntegrityError {
                key: intent_key,
                detail: format!(
                    "version {} of {} is {}, not staged: the run cannot be published",
                    staged.version,
                    staged.source_id,
                    other.unwrap_or("unknown")
                ),
            });
        }
    };

    let note = CommitNote {
        run_id: intent.run_id.clone(),
        version: i64::from(staged.version),
        source_md5: clean.output.source_md5.clone(),
        restore_of: None,
    };
    let mut commits = Vec::new();
    for table in lake::tables(&layout.dataset) {
        let files = files_of(table.zone, &layout, &clean, &transform);
        commits.push(lake::replace_month(store, &table, layout.period, &files, &note).await?);
    }

    let load = LoadOutput {
        verdict: crate::stages::Verdict::Ok,
        dataset: layout.dataset.clone(),
        period: layout.period,
        source_id: staged.source_id.clone(),
        rows_curated: transform.output.rows_curated,
        rows_loaded: staged.rows_loaded,
        rows_replaced,
        table: crate::db::TRIPS_TABLE.to_string(),
        version: staged.version,
        run_id: intent.run_id.clone(),
        lake: commits,
    };
    let record = VersionRecord {
        source_id: staged.source_id.clone(),
        version: staged.version,
        run_id: intent.run_id.clone(),
        source_md5: clean.output.source_md5.clone(),
        published_at: Utc::now(),
        clean,
        transform,
        load: load.clone(),
        commits: load.lake.clone(),
        files_deleted: false,
    };
    put_json(store, &layout.version_key(staged.version), &record).await?;
    write_current_reports(store, client, &layout, &record).await?;
    put_json(
        store,
        &intent_key,
        &PublishIntent {
            state: IntentState::Done,
            ..intent.clone()
        },
    )
    .await?;
    collect_garbage(store, &layout, &dropped).await;
    info!(source_id = %staged.source_id, version = staged.version, run_id = %intent.run_id, "published");
    Ok(load)
}

/// The manifests a month's current version is known by (the shrink guard reads `clean.json`), and
/// its quality report.
async fn write_current_reports(
    store: &dyn ObjectStore,
    client: &Client,
    layout: &Layout,
    record: &VersionRecord,
) -> Result<()> {
    put_json(store, &layout.report_key(CLEAN), &record.clean).await?;
    put_json(store, &layout.report_key(TRANSFORM), &record.transform).await?;
    put_json(store, &layout.report_key(LOAD), &record.load).await?;
    crate::quality::write(store, client, layout, record).await?;
    Ok(())
}

/// Deletes the lake files of versions the database's retention dropped, unless a table still lists
/// them. Best effort: a file left behind is only storage, and the next publish tries again.
async fn collect_garbage(store: &dyn ObjectStore, layout: &Layout, dropped: &[i32]) {
    for &version in dropped {
        let record = match get_json::<VersionRecord>(store, &layout.version_key(version)).await {
            Ok(record) => record,
            Err(Error::ObjectNotFound { .. }) => continue,
            Err(err) => {
                warn!(version, error = %err, "cannot read a dropped version's record; its files stay");
                continue;
            }
        };
        let mut all_deleted = true;
        for table in lake::tables(&layout.dataset) {
            let live = match lake::live_files(store, &table, layout.period).await {
                Ok(live) => live,
                Err(err) => {
                    warn!(version, error = %err, "cannot list live files; the dropped version's files stay");
                    all_deleted = false;
                    continue;
                }
            };
            for file in record.files(table.zone) {
                if !live.iter().any(|l| l.key == file.object.key)
                    && let Err(err) = store.delete(&file.object.key).await
                {
                    warn!(key = %file.object.key, error = %err, "cannot delete a dropped version's file");
                    all_deleted = false;
                }
            }
        }
        let raw_prefix = format!(
            "{}{}/{}/run={}/",
            crate::storage::layout::RAW,
            layout.dataset,
            layout.period,
            record.run_id
        );
        match store.list(&raw_prefix).await {
            Ok(keys) => {
                for key in keys {
                    if store.delete(&key).await.is_err() {
                        all_deleted = false;
                    }
                }
            }
            Err(_) => all_deleted = false,
        }
        if all_deleted {
            let record = VersionRecord {
                files_deleted: true,
                ..record
            };
            if let Err(err) = put_json(store, &layout.version_key(version), &record).await {
                warn!(version, error = %err, "cannot mark a dropped version's files as deleted");
            }
        }
        info!(
            version,
            "deleted the lake files and raw copy of a version retention dropped"
        );
    }
}

/// The publish intent of a run that load has accepted, pending or done; `None` before load accepts
/// it. An abandoned publish is an `IntegrityError`: its files may be gone, so nothing of the run
/// can be finished or reported, only the month run again.
pub async fn accepted_intent(store: &dyn ObjectStore, layout: &Layout, run_id: &str) -> Result<Option<PublishIntent>> {
    let intent_key = layout.run_report_key(run_id, INTENT_REPORT);
    match get_json::<PublishIntent>(store, &intent_key).await {
        Ok(intent) if intent.state == IntentState::Abandoned => Err(Error::IntegrityError {
            key: intent_key,
            detail: "this run's publish was abandoned; run the month again".into(),
        }),
        Ok(intent) => Ok(Some(intent)),
        Err(Error::ObjectNotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// What `stage` (clean or transform) reported for a run that load has accepted for publishing, if
/// load has. The run's files are then the month's live files, or are becoming them, and a rerun of
/// that stage over the same run (a console redrive, a replayed event) would write the same keys
/// again: with another build's bytes, say, under checksums the published version vouches for. Such
/// a rerun answers with the report it made then and writes nothing, as a rerun of load does.
pub async fn report_of_accepted_run<T: Serialize + serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    layout: &Layout,
    run_id: &str,
    stage: &str,
) -> Result<Option<T>> {
    if accepted_intent(store, layout, run_id).await?.is_none() {
        return Ok(None);
    }
    let report = Manifest::<T>::read(store, &layout.run_report_key(run_id, stage), stage, &layout.source_id()).await?;
    Ok(Some(report.output))
}

/// Finishes every pending publish of the month except `except_run` (which its caller is about to
/// finish itself). Called under the month's lease, at the start of a load or a restore, so a run
/// killed mid-publish never leaves zones and database on different versions for longer than the
/// next run of that month.
pub async fn roll_forward(
    ctx: &StageContext,
    client: &mut Client,
    layout: &Layout,
    except_run: Option<&str>,
) -> Result<Vec<String>> {
    let store = ctx.store.as_ref();
    let mut finished = Vec::new();
    for key in store.list(&layout.runs_prefix()).await? {
        if !key.ends_with(&format!("/{INTENT_REPORT}.json")) {
            continue;
        }
        let intent: PublishIntent = get_json(store, &key).await?;
        if intent.state != IntentState::Pending || Some(intent.run_id.as_str()) == except_run {
            continue;
        }
        let state = versions::version_state(client, &intent.staged.source_id, intent.staged.version).await?;
        if !matches!(state.as_deref(), Some("staged" | "current")) {
            warn!(run_id = %intent.run_id, ?state, "a pending publish whose database version is gone; abandoned");
            abandon(store, &key, intent).await?;
            continue;
        }
        info!(run_id = %intent.run_id, version = intent.staged.version, "finishing a publish an earlier process left pending");
        let run_id = intent.run_id.clone();
        match publish(ctx, client, intent.clone()).await {
            Ok(_) => finished.push(run_id),
            // It may pass on a later attempt: stop here, so this month's versions stay in order.
            Err(err) if err.is_retryable() => return Err(err),
            // It never will (its files or manifests are gone): give it up rather than block the month;
            // the caller's own publish then replaces whatever part of it landed.
            Err(err) => {
                warn!(%run_id, error = %err, "a pending publish cannot be finished; abandoned");
                abandon(store, &key, intent).await?;
            }
        }
    }
    Ok(finished)
}

/// Marks a pending publish that can never be finished as abandoned, so it no longer holds the month.
async fn abandon(store: &dyn ObjectStore, key: &str, intent: PublishIntent) -> Result<()> {
    let abandoned = PublishIntent {
        state: IntentState::Abandoned,
        ..intent
    };
    put_json(store, key, &abandoned).await.map(|_| ())
}

/// What `tripflow restore` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub source_id: String,
    pub version: i32,
    /// The version that was current before (none if the month had none).
    pub previous_version: Option<i32>,
    pub commits: Vec<TableCommit>,
    pub rows_kept: u64,
    pub avg_speed_mph: Option<f64>,
}

/// Makes version `version` of the month current again, in the lake and the database, the way a
/// publish does: each table in one commit, then the database swap, then the current manifests.
pub async fn restore(ctx: &StageContext, client: &mut Client, layout: &Layout, version: i32) -> Result<Restored> {
    let source_id = layout.source_id();
    crate::db::migrate(client).await?;
    versions::lock_publish(client, &source_id).await?;
    let restored = restore_locked(ctx, client, layout, version).await;
    versions::unlock_publish(client, &source_id).await;
    restored
}

async fn restore_locked(ctx: &StageContext, client: &mut Client, layout: &Layout, version: i32) -> Result<Restored> {
    let store = ctx.store.as_ref();
    let source_id = layout.source_id();
    let not_found = |detail: String| Error::VersionNotFound {
        source_id: source_id.clone(),
        version,
        detail,
    };
    roll_forward(ctx, client, layout, None).await?;
    match versions::version_state(client, &source_id, version).await?.as_deref() {
        Some("current" | "previous") => {}
        Some("dropped") => return Err(not_found("its rows were removed by retention".into())),
        Some(other) => return Err(not_found(format!("it was never published (it is {other})"))),
        None => return Err(not_found("no such version".into())),
    }
    let record = match get_json::<VersionRecord>(store, &layout.version_key(version)).await {
        Err(Error::ObjectNotFound { key }) => {
            return Err(not_found(format!(
                "no version record {key} (published before the lake kept versions)"
            )));
        }
        other => other?,
    };
    for table in lake::tables(&layout.dataset) {
        for file in record.files(table.zone) {
            if store.size(&file.object.key).await? != Some(file.object.size_bytes) {
                return Err(not_found(format!("its file {} is missing or changed", file.object.key)));
            }
        }
    }
    let swapped = versions::make_current(client, &source_id, version).await?;
    let note = CommitNote {
        run_id: record.run_id.clone(),
        version: i64::from(version),
        source_md5: record.source_md5.clone(),
        restore_of: Some(i64::from(version)),
    };
    let mut commits = Vec::new();
    for table in lake::tables(&layout.dataset) {
        commits.push(lake::replace_month(store, &table, layout.period, &record.files(table.zone), &note).await?);
    }
    write_current_reports(store, client, layout, &record).await?;
    info!(%source_id, version, previous = ?swapped.previous_version, "restored");
    let answers = crate::db::answers(client, &source_id).await?;
    Ok(Restored {
        source_id,
        version,
        previous_version: swapped.previous_version,
        commits,
        rows_kept: record.clean.output.rows_kept,
        avg_speed_mph: answers.avg_speed_mph,
    })
}

/// Removes what runs of the month that never published left behind: their lake files (written
/// beside the live ones, never committed) and their raw copies. Kept: every file a table lists as
/// live, every file and raw copy of a recorded version, everything of a pending publish. Only safe
/// while no other run of the month is writing, so the caller holds the month's lease (`tripflow
/// run` calls it under its lock file before ingest). Returns the keys it deleted.
pub async fn sweep_unpublished(store: &dyn ObjectStore, layout: &Layout) -> Result<Vec<String>> {
    let mut keep: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut keep_runs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for table in lake::tables(&layout.dataset) {
        keep.extend(
            lake::live_files(store, &table, layout.period)
                .await?
                .into_iter()
                .map(|f| f.key),
        );
    }
    for key in store.list(&layout.versions_prefix()).await? {
        let record: VersionRecord = get_json(store, &key).await?;
        if record.files_deleted {
            continue;
        }
        keep_runs.insert(record.run_id.clone());
        for zone in Zone::PUBLISH_ORDER {
            keep.extend(record.files(zone).into_iter().map(|f| f.object.key));
        }
    }
    for key in store.list(&layout.runs_prefix()).await? {
        if !key.ends_with(&format!("/{INTENT_REPORT}.json")) {
            continue;
        }
        let intent: PublishIntent = get_json(store, &key).await?;
        if intent.state == IntentState::Pending {
            keep_runs.insert(intent.run_id.clone());
        }
    }
    let run_of = |key: &str| -> Option<String> {
        if let Some(run) = Layout::run_of_part(key) {
            return Some(run.to_string());
        }
        key.split('/').find_map(|s| s.strip_prefix("run=")).map(str::to_string)
    };
    let prefixes = [
        format!(
            "{}period={}/",
            LakeTable::new(Zone::Clean, layout.dataset.clone()).root(),
            layout.period
        ),
        format!(
            "{}period={}/",
            LakeTable::new(Zone::Quarantine, layout.dataset.clone()).root(),
            layout.period
        ),
        layout.curated_period_prefix(),
        format!("{}{}/{}/", crate::storage::layout::RAW, layout.dataset, layout.period),
    ];
    let mut deleted = Vec::new();
    for prefix in prefixes {
        for key in store.list(&prefix).await? {
            let Some(run) = run_of(&key) else { continue };
            if keep.contains(&key) || keep_runs.contains(&run) {
                continue;
            }
            store.delete(&key).await?;
            deleted.push(key);
        }
    }
    if !deleted.is_empty() {
        info!(files = deleted.len(), source_id = %layout.source_id(), "removed what unpublished runs left behind");
    }
    Ok(deleted)
}
