//! Versions of a source's rows. A load never deletes: it builds the new version as a table of its own
//! ([`stage_version`]: a table partitioned by pickup date whose shares are filled at once, each by a
//! binary COPY on its own session into a table without indexes, with a `CHECK` on its dates and the
//! source's `CHECK (source_id = …)` so that no ATTACH needs a validation scan, then the parent's
//! indexes and `ANALYZE` per share; the count check; the answers computed from that one version),
//! then swaps it in ([`swap_in`]): one short transaction under the source's advisory lock that locks
//! `tripflow.trips` first (one lock order for every swap, so swaps of different months and analysts'
//! queries cannot deadlock), detaches the current version, attaches the new one and writes its
//! answers. The detached table is kept for [`make_current`]; retention keeps the current version plus
//! the [`KEEP_PREVIOUS`] most recent previous ones and drops older tables after the swap commits.

use std::pin::Pin;
use std::time::Instant;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, CopyInSink, GenericClient, Transaction};
use tracing::{info, warn};

use super::{TRIPS_TABLE, WeeklySlowPickup, classify, weekly_row};
use crate::checksum::md5_hex;
use crate::error::{Error, Result};

/// Previous versions kept per source besides the current one.
pub const KEEP_PREVIOUS: i64 = 2;
/// A staged version nobody swapped in within this long is abandoned; the next load of the source
/// drops it.
const STAGED_EXPIRY: &str = "1 day";

pub use crate::handoff::curated::TRIP_COLUMNS;

/// Whatever feeds a new version its rows: the rows of each [`DateShare`] into that share's COPY
/// ([`CopyOut::write_rows`]). The shares are copied at the same time, each on its own session.
#[async_trait]
pub trait TripRows: Sync {
    /// How many rows fall on each pickup date, in date order: where the shares divide.
    fn rows_per_date(&self) -> Vec<(NaiveDate, u64)>;

    /// Writes the rows whose pickup date falls in `share`.
    async fn copy_into(&self, share: DateShare, out: &mut CopyOut<'_>) -> Result<()>;

    /// The version's answers, when they were counted from the rows as they streamed
    /// ([`crate::answers`]); `None` has the database compute them from the new table.
    fn streamed_answers(&self, _rows_loaded: i64) -> Result<Option<VersionAnswers>> {
        Ok(None)
    }
}

/// Opens more sessions to the database a load is connected to, set up like its first (timeouts,
/// TLS): a version's shares are copied one per session.
#[async_trait]
pub trait Sessions: Send + Sync + std::fmt::Debug {
    async fn open(&self) -> Result<Client>;
}

/// Sessions to a `postgres://` URL without TLS (local clusters, tests).
pub struct UrlSessions {
    pub url: String,
    pub settings: crate::config::DbSettings,
}

impl std::fmt::Debug for UrlSessions {
    // Never the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = super::parse_url(&self.url).map(|c| super::describe_target(&c));
        f.debug_struct("UrlSessions")
            .field("target", &target.unwrap_or_else(|_| "?".into()))
            .finish()
    }
}

#[async_trait]
impl Sessions for UrlSessions {
    async fn open(&self) -> Result<Client> {
        super::connect_with(&self.url, &self.settings).await
    }
}

/// COPY streams per version. The server parses and stores a COPY's rows on one backend, one core:
/// on 2 cores, the curated month (1.93 M rows) as one server-side binary COPY took 2.42-2.78 s, as
/// two COPYs of half the days each, at once, 1.38-1.52 s. So the version is built as one table per
/// share of its pickup dates, each filled on its own session, then attached under the version's
/// table, which is partitioned by pickup date.
pub const COPY_STREAMS: usize = 2;

/// One COPY stream's rows: those whose pickup date is on or after `from` and before `until`
/// (`None`: unbounded on that side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateShare {
    pub from: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}

impl DateShare {
    pub const ALL: DateShare = DateShare {
        from: None,
        until: None,
    };

    pub fn contains(&self, date: NaiveDate) -> bool {
        self.from.is_none_or(|from| date >= from) && self.until.is_none_or(|until| date < until)
    }

    /// The share as a CHECK on its table, which lets ATTACH skip its validation scan; `None` for a
    /// share of every date.
    fn check(&self) -> Option<String> {
        let sides: Vec<String> = [
            self.from.map(|from| format!("pickup_date >= '{from}'")),
            self.until.map(|until| format!("pickup_date < '{until}'")),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!sides.is_empty()).then(|| sides.join(" AND "))
    }

    /// The share as range partition bounds.
    fn bounds(&self) -> String {
        let bound = |d: Option<NaiveDate>, open: &str| d.map_or(open.to_string(), |d| format!("'{d}'"));
        format!(
            "FROM ({}) TO ({})",
            bound(self.from, "MINVALUE"),
            bound(self.until, "MAXVALUE")
        )
    }
}

/// Divides the dates (ascending, with their rows) into at most `streams` runs of consecutive dates
/// with about as many rows each. A date's rows stay in one share: a single date, or no rows, is one
/// share of every date.
pub fn divide(rows_per_date: &[(NaiveDate, u64)], streams: usize) -> Vec<DateShare> {
    let total: u64 = rows_per_date.iter().map(|(_, rows)| rows).sum();
    let streams = streams.max(1) as u64;
    let mut cuts: Vec<NaiveDate> = Vec::new();
    let mut before = 0u64;
    for (i, &(date, rows)) in rows_per_date.iter().enumerate() {
        let next = cuts.len() as u64 + 1;
        // Cut before this date when at least half of its rows lie past the next share's start.
        if i > 0 && next < streams && (2 * before + rows) * streams >= 2 * total * next && before > 0 {
            cuts.push(date);
        }
        before += rows;
    }
    let mut shares = Vec::with_capacity(cuts.len() + 1);
    let mut from = None;
    for cut in cuts {
        shares.push(DateShare { from, until: Some(cut) });
        from = Some(cut);
    }
    shares.push(DateShare { from, until: None });
    shares
}

/// The statistics target a new version is analysed with: samples 300 x 25 = 7,500 rows instead of
/// the default 30,000, with 25-bucket histograms and up to 25 most common values per column. A
/// month's rows are uniform enough that the planner's estimates for the analysts' filters (a month,
/// a few days, a zone) come out the same, and on 1.93 M rows ANALYZE took 49 ms instead of 270 ms.
/// Only this version's table is analysed, and only with this setting (`SET LOCAL`).
const ANALYZE_STATISTICS_TARGET: i32 = 25;

/// Sends to the server in chunks of about this many bytes: few enough round trips through the
/// connection task, little enough memory.
const COPY_CHUNK_BYTES: usize = 4 << 20;
/// Rows encoded at a time, some 3 MB in binary COPY format: a 64 K-row batch encoded whole held
/// 13 MB of buffer beside the chunks still in flight to the server, and made load's memory swing
/// by 40 MiB.
const ENCODE_SLICE_ROWS: usize = 16 * 1024;

/// A binary COPY in progress: rows are encoded into its buffer, which goes to the server whenever
/// it passes [`COPY_CHUNK_BYTES`].
pub struct CopyOut<'a> {
    sink: Pin<&'a mut CopyInSink<Bytes>>,
    buffer: BytesMut,
}

impl CopyOut<'_> {
    /// Encodes the rows of `batch`, a curated file's of partition `date`, a slice at a time, and
    /// sends each chunk that fills up.
    pub async fn write_rows(&mut self, batch: &RecordBatch, date: NaiveDate) -> Result<()> {
        let rows = batch.num_rows();
        for start in (0..rows).step_by(ENCODE_SLICE_ROWS) {
            let slice = batch.slice(start, ENCODE_SLICE_ROWS.min(rows - start));
            super::binary_copy::encode_batch(&slice, date, &mut self.buffer)?;
            if self.buffer.len() >= COPY_CHUNK_BYTES {
                self.send().await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<()> {
        use futures::SinkExt;
        let chunk = self.buffer.split().freeze();
        self.sink.send(chunk).await.map_err(classify)
    }
}

/// What a new version is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRequest {
    pub source_id: String,
    /// The rows the version must hold; any other count is `LoadCountMismatch` and nothing changes.
    pub expected_rows: u64,
    /// The source file's MD5 (from the ingest manifest), for `history`.
    pub source_md5: Option<String>,
    pub manifest_key: Option<String>,
    pub manifest_md5: Option<String>,
}

/// The answers of one version, computed from its own table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionAnswers {
    pub rows_loaded: i64,
    pub valid_trips: i64,
    pub total_distance: Option<f64>,
    pub total_hours: Option<f64>,
    pub avg_speed_mph: Option<f64>,
    pub slow_trips: i64,
    pub weekly_top5: Vec<WeeklySlowPickup>,
}

/// A version built and checked, not yet visible to readers. Small enough to pass between steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedVersion {
    pub source_id: String,
    pub version: i32,
    /// Schema-qualified: `tripflow.trips_p_…_v3`.
    pub partition_table: String,
    pub rows_loaded: u64,
    pub answers: VersionAnswers,
    pub manifest_key: Option<String>,
    pub manifest_md5: Option<String>,
    pub staged_at: DateTime<Utc>,
}

/// What a swap did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapOutcome {
    pub version: i32,
    /// The version detached to make room (kept as a previous version), if there was one.
    pub previous_version: Option<i32>,
    /// Rows of the detached version (0 on a first load).
    pub rows_replaced: u64,
    /// Previous versions whose tables retention dropped after the swap.
    pub dropped_versions: Vec<i32>,
}

/// One line of a source's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub rows_loaded: Option<i64>,
    pub avg_speed_mph: Option<f64>,
    pub current: bool,
    /// `current`, `previous` (restorable) or `dropped` (its table removed by retention).
    pub state: String,
    pub source_md5: Option<String>,
    pub partition_table: String,
}

/// A string as an SQL literal, for the DDL that cannot take parameters (CHECK, partition bounds).
fn sql_literal(value: &str) -> Result<String> {
    if value.contains(['\0', '\\']) {
        return Err(Error::InvalidInput(format!(
            "source id {value:?} contains a NUL or a backslash"
        )));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// The table of one version: readable, unique per source (a short hash of the exact source id, so
/// `yellow/2021-03` and `yellow_2021/03` never share a name) and within PostgreSQL's 63 bytes.
pub fn partition_table_name(source_id: &str, version: i32) -> String {
    let mut slug: String = source_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    slug.truncate(24);
    let hash = md5_hex(source_id.as_bytes());
    format!("trips_p_{slug}_{}_v{version}", &hash[..8])
}

fn qualified(table: &str) -> String {
    format!("tripflow.{table}")
}

/// The key of the session-level advisory lock a live builder holds on its version while staging.
fn staging_lock_sql(function: &str, table: &str) -> String {
    format!(
        "SELECT {function}(hashtextextended('tripflow.staging:' || {}, 0))",
        quote_or_empty(table)
    )
}

fn quote_or_empty(table: &str) -> String {
    sql_literal(table).unwrap_or_else(|_| "''".into())
}

async fn lock_source(tx: &Transaction<'_>, source_id: &str) -> Result<()> {
    // hashtextextended gives a 64-bit key per source: swaps and allocations of one source queue here.
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&source_id])
        .await
        .map_err(classify)?;
    Ok(())
}

/// Drops what earlier loads of this source left behind: versions still `staging` whose builder
/// session is gone (its advisory lock is free), and `staged` versions never swapped in.
async fn sweep_abandoned(tx: &Transaction<'_>, source_id: &str) -> Result<()> {
    let rows = tx
        .query(
            &format!(
                "SELECT version, partition_table, state FROM tripflow.versions \
                 WHERE source_id = $1 AND (state = 'staging' \
                    OR (state = 'staged' AND created_at < now() - interval '{STAGED_EXPIRY}')) \
                 ORDER BY version"
            ),
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    for row in rows {
        let (version, table, state): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        if state == "staging" {
            let free: bool = tx
                .query_one(&staging_lock_sql("pg_try_advisory_lock", &table), &[])
                .await
                .map_err(classify)?
                .get(0);
            if !free {
                continue; // a live load is building it
            }
            tx.execute(&staging_lock_sql("pg_advisory_unlock", &table), &[])
                .await
                .map_err(classify)?;
        }
        drop_version_tables(tx, &table).await?;
        tx.execute(
            "UPDATE tripflow.versions SET state = 'failed' WHERE source_id = $1 AND version = $2",
            &[&source_id, &version],
        )
        .await
        .map_err(classify)?;
        warn!(source_id, version, table, state, "dropped an abandoned version");
    }
    Ok(())
}

/// The table of a version's `share`th share (from 1), attached under the version's table.
pub fn share_table_name(table: &str, share: usize) -> String {
    format!("{table}_s{share}")
}

/// Drops a version's table and its shares' tables, attached or not (a build that died leaves them
/// unattached). Versions built before shares existed have no share tables; nothing else is named so.
async fn drop_version_tables(client: &impl GenericClient, table: &str) -> Result<()> {
    let names: Vec<String> = client
        .query(
            "SELECT relname::text FROM pg_class \
             WHERE relnamespace = 'tripflow'::regnamespace AND relkind IN ('r', 'p') \
               AND (relname = $1 OR (starts_with(relname, $1 || '_s') \
                    AND substr(relname, length($1) + 3) ~ '^[0-9]+$'))",
            &[&table],
        )
        .await
        .map_err(classify)?
        .iter()
        .map(|row| qualified(row.get(0)))
        .collect();
    if !names.is_empty() {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", names.join(", ")))
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// One of the parent's indexes, for a version's tables to build the same one.
struct ParentIndex {
    unique: bool,
    /// `USING method (columns)`, from the parent's definition.
    method_and_columns: String,
}

impl ParentIndex {
    fn create_on(&self, full_table: &str) -> String {
        let unique = if self.unique { "UNIQUE " } else { "" };
        format!("CREATE {unique}INDEX ON {full_table} USING {}", self.method_and_columns)
    }
}

/// The parent's indexes.
async fn parent_indexes(client: &impl GenericClient) -> Result<Vec<ParentIndex>> {
    let definitions = client
        .query(
            "SELECT pg_get_indexdef(i.indexrelid), i.indisunique FROM pg_index i \
             WHERE i.indrelid = 'tripflow.trips'::regclass ORDER BY i.indexrelid",
            &[],
        )
        .await
        .map_err(classify)?;
    definitions
        .iter()
        .map(|row| {
            let (definition, unique): (String, bool) = (row.get(0), row.get(1));
            match definition.split_once(" USING ") {
                Some((_, method_and_columns)) => Ok(ParentIndex {
                    unique,
                    method_and_columns: method_and_columns.to_string(),
                }),
                None => Err(Error::DatabaseError(format!(
                    "unexpected index definition: {definition}"
                ))),
            }
        })
        .collect()
}

/// A version just allocated: its number, its table, and the parent's indexes it was created with,
/// which its shares build too (read once, so the version's table and its shares match).
struct Allocated {
    version: i32,
    table: String,
    indexes: Vec<ParentIndex>,
}

/// Numbers the next version, creates its empty tables and marks it `staging`, holding a session
/// advisory lock on it so no other load mistakes it for abandoned. The version's table is
/// partitioned by pickup date, with the parent's indexes (instant on an empty partitioned table);
/// each share's table stands alone until its rows are in.
async fn allocate(client: &mut Client, request: &StageRequest, shares: &[DateShare]) -> Result<Allocated> {
    let source_id = request.source_id.as_str();
    sql_literal(source_id)?;
    let tx = client.transaction().await.map_err(classify)?;
    lock_source(&tx, source_id).await?;
    sweep_abandoned(&tx, source_id).await?;
    let version: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) + 1 FROM tripflow.versions WHERE source_id = $1",
            &[&source_id],
        )
        .await
        .map_err(classify)?
        .get(0);
    let table = partition_table_name(source_id, version);
    // LIKE copies the columns, NOT NULLs and CHECKs ATTACH requires; done here, in a short
    // transaction, because it holds a share lock on tripflow.trips until commit. The source's CHECK,
    // which lets ATTACH skip its scan, is added while the table is empty, and the share tables copy
    // it (ATTACH under the version's table requires it there too): COPY then checks each row as it
    // arrives, instead of a scan of all of them afterwards. The source id is the tables' own
    // default, which COPY fills in instead of receiving it in every row; the only value the CHECK
    // allows, so it stays.
    let full = qualified(&table);
    let literal = sql_literal(source_id)?;
    let mut ddl = format!(
        "CREATE TABLE {full} (LIKE {TRIPS_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (pickup_date); \
         ALTER TABLE {full} ADD CONSTRAINT {table}_source CHECK (source_id IS NOT NULL AND source_id = {literal}); \
         ALTER TABLE {full} ALTER COLUMN source_id SET DEFAULT {literal}; "
    );
    let indexes = parent_indexes(&tx).await?;
    for index in &indexes {
        ddl.push_str(&index.create_on(&full));
        ddl.push_str("; ");
    }
    for (i, share) in shares.iter().enumerate() {
        let name = share_table_name(&table, i + 1);
        let share_table = qualified(&name);
        ddl.push_str(&format!(
            "CREATE TABLE {share_table} (LIKE {full} INCLUDING DEFAULTS INCLUDING CONSTRAINTS); "
        ));
        if let Some(check) = share.check() {
            ddl.push_str(&format!(
                "ALTER TABLE {share_table} ADD CONSTRAINT {name}_dates CHECK ({check}); "
            ));
        }
    }
    tx.batch_execute(&ddl).await.map_err(classify)?;
    tx.execute(
        "INSERT INTO tripflow.versions (source_id, version, state, partition_table, source_md5, manifest_key, manifest_md5) \
         VALUES ($1, $2, 'staging', $3, $4, $5, $6)",
        &[
            &source_id,
            &version,
            &table,
            &request.source_md5,
            &request.manifest_key,
            &request.manifest_md5,
        ],
    )
    .await
    .map_err(classify)?;
    tx.execute(&staging_lock_sql("pg_advisory_lock", &table), &[])
        .await
        .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    Ok(Allocated {
        version,
        table,
        indexes,
    })
}

/// Removes a version that will not be swapped in: its tables and its staging lock; state `failed`.
/// Best effort: what it cannot remove, the next load of the source sweeps.
async fn abandon(client: &Client, source_id: &str, version: i32, table: &str, holds_staging_lock: bool) {
    let result = async {
        drop_version_tables(client, table).await?;
        client
            .execute(
                "UPDATE tripflow.versions SET state = 'failed' WHERE source_id = $1 AND version = $2 \
                   AND state IN ('staging', 'staged')",
                &[&source_id, &version],
            )
            .await
            .map_err(classify)
    }
    .await;
    if let Err(err) = result {
        warn!(source_id, version, error = %err, "could not remove a refused version; the next load will");
    }
    if holds_staging_lock {
        let _ = client
            .execute(&staging_lock_sql("pg_advisory_unlock", table), &[])
            .await;
    }
}

/// Drops a staged version that will not be swapped in (its swap failed or was refused). Best
/// effort, like a failed build's clean-up; the current version is not touched.
pub async fn discard(client: &Client, staged: &StagedVersion) {
    let table = staged
        .partition_table
        .strip_prefix("tripflow.")
        .unwrap_or(&staged.partition_table);
    abandon(client, &staged.source_id, staged.version, table, false).await;
}

/// Builds the next version of `request.source_id` as its own table, fully indexed and analysed,
/// with its answers computed, and checks its count. Readers see nothing of it until [`swap_in`].
/// A count other than `request.expected_rows` is `LoadCountMismatch` and the tables are dropped.
///
/// The rows are divided by pickup date into up to [`COPY_STREAMS`] shares, copied at once: the
/// first on `client`, each other on a session `sessions` opens. Without `sessions`, or when it
/// cannot open one, fewer shares are copied, down to one on `client`.
pub async fn stage_version(
    client: &mut Client,
    sessions: Option<&dyn Sessions>,
    request: &StageRequest,
    rows: &dyn TripRows,
) -> Result<StagedVersion> {
    let rows_per_date = rows.rows_per_date();
    let mut helpers = Vec::new();
    if let Some(sessions) = sessions {
        for _ in 1..divide(&rows_per_date, COPY_STREAMS).len() {
            match sessions.open().await {
                Ok(helper) => helpers.push(helper),
                Err(err) => {
                    warn!(error = %err, "could not open another session; copying with fewer streams");
                    break;
                }
            }
        }
    }
    let shares = divide(&rows_per_date, helpers.len() + 1);
    let allocated = allocate(client, request, &shares).await?;
    let built = build(client, helpers, request, &allocated, &shares, rows).await;
    match built {
        Ok(staged) => {
            let _ = client
                .execute(&staging_lock_sql("pg_advisory_unlock", &allocated.table), &[])
                .await;
            Ok(staged)
        }
        Err(err) => {
            abandon(client, &request.source_id, allocated.version, &allocated.table, true).await;
            Err(err)
        }
    }
}

/// What one share's session did, for the log.
struct ShareBuilt {
    rows: u64,
    copy_seconds: f64,
    index_seconds: f64,
    analyze_seconds: f64,
}

/// Fills one share's table in one transaction on its own session: truncated there, so it takes
/// COPY's FREEZE (rows arrive frozen, so neither the index build nor ANALYZE, nor the answers'
/// scans where they run, stops to set hint bits on every page, and no later vacuum rewrites them);
/// then the parent's indexes, built here so ATTACH adopts them instead of building them; then
/// `ANALYZE` of this table alone.
async fn build_share(
    session: &mut Client,
    table: &str,
    share: DateShare,
    indexes: &[ParentIndex],
    rows: &dyn TripRows,
) -> Result<ShareBuilt> {
    let full = qualified(table);
    let tx = session.transaction().await.map_err(classify)?;
    // Every column but the source id, which the table's default fills in.
    let column_list = super::binary_copy::copied_columns()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!("TRUNCATE {full}")).await.map_err(classify)?;
    let copy_started = Instant::now();
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY {full} ({column_list}) FROM STDIN WITH (FORMAT binary, FREEZE)"
        ))
        .await
        .map_err(classify)?;
    futures::pin_mut!(sink);
    let mut out = CopyOut {
        sink: sink.as_mut(),
        buffer: BytesMut::from(super::binary_copy::HEADER),
    };
    rows.copy_into(share, &mut out).await?;
    out.buffer.put_slice(&super::binary_copy::TRAILER);
    out.send().await?;
    // The server's own count of the rows it took, as `COPY n` reports it.
    let copied = sink.as_mut().finish().await.map_err(classify)?;
    let copy_seconds = copy_started.elapsed().as_secs_f64();

    let indexes_started = Instant::now();
    for index in indexes {
        tx.batch_execute(&index.create_on(&full)).await.map_err(classify)?;
    }
    let index_seconds = indexes_started.elapsed().as_secs_f64();
    let analyze_started = Instant::now();
    tx.batch_execute(&format!(
        "SET LOCAL default_statistics_target = {ANALYZE_STATISTICS_TARGET}; ANALYZE {full}"
    ))
    .await
    .map_err(classify)?;
    let analyze_seconds = analyze_started.elapsed().as_secs_f64();
    tx.commit().await.map_err(classify)?;
    Ok(ShareBuilt {
        rows: copied,
        copy_seconds,
        index_seconds,
        analyze_seconds,
    })
}

async fn build(
    client: &mut Client,
    mut helpers: Vec<Client>,
    request: &StageRequest,
    allocated: &Allocated,
    shares: &[DateShare],
    rows: &dyn TripRows,
) -> Result<StagedVersion> {
    let source_id = request.source_id.as_str();
    let (version, table) = (allocated.version, allocated.table.as_str());
    let full = qualified(table);
    let started = Instant::now();
    let share_tables: Vec<String> = (1..=shares.len()).map(|i| share_table_name(table, i)).collect();
    let sessions = std::iter::once(&mut *client).chain(helpers.iter_mut());
    let built = futures::future::try_join_all(
        sessions
            .zip(shares.iter().zip(&share_tables))
            .map(|(session, (share, name))| build_share(session, name, *share, &allocated.indexes, rows)),
    )
    .await?;
    drop(helpers);
    let rows_loaded: u64 = built.iter().map(|b| b.rows).sum();
    let counted = i64::try_from(rows_loaded).unwrap_or(i64::MAX);
    if rows_loaded != request.expected_rows {
        return Err(Error::LoadCountMismatch {
            source_id: source_id.to_string(),
            expected: request.expected_rows,
            loaded: rows_loaded,
        });
    }
    let build_seconds = started.elapsed().as_secs_f64();

    let tx = client.transaction().await.map_err(classify)?;
    // Each share's CHECK on its dates lets ATTACH skip the scan; its indexes match the version
    // table's, so they are adopted, not built.
    for (share, name) in shares.iter().zip(&share_tables) {
        tx.batch_execute(&format!(
            "ALTER TABLE {full} ATTACH PARTITION {} FOR VALUES {}",
            qualified(name),
            share.bounds()
        ))
        .await
        .map_err(classify)?;
    }
    let answers = match rows.streamed_answers(counted)? {
        Some(answers) => answers,
        None => compute_answers(&tx, &full, counted).await?,
    };
    tx.execute(
        "UPDATE tripflow.versions SET state = 'staged', rows_loaded = $3 WHERE source_id = $1 AND version = $2",
        &[&source_id, &version, &counted],
    )
    .await
    .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    // Where a load's time goes, for whoever tunes the database: per share, the COPY (the client's
    // reading and encoding overlaps it), the index builds, ANALYZE; the shares run at once.
    for (b, (share, name)) in built.iter().zip(shares.iter().zip(&share_tables)) {
        info!(
            table = %name,
            from = ?share.from,
            until = ?share.until,
            rows = b.rows,
            copy_seconds = b.copy_seconds,
            index_seconds = b.index_seconds,
            analyze_seconds = b.analyze_seconds,
            "share built"
        );
    }
    info!(
        source_id,
        version,
        table,
        rows_loaded,
        shares = shares.len(),
        build_seconds,
        "version staged"
    );
    Ok(StagedVersion {
        source_id: source_id.to_string(),
        version,
        partition_table: full,
        rows_loaded,
        answers,
        manifest_key: request.manifest_key.clone(),
        manifest_md5: request.manifest_md5.clone(),
        staged_at: Utc::now(),
    })
}

/// The two answers from one version's table (for rows that came without streamed answers, and for
/// the tests that check those against it): average speed = Σ distance / Σ hours over trips with
/// distance > 0 and duration > 0; slow trips are those trips slower than it; per ISO week the 5
/// pickup locations with the most slow trips, ties to the lower location ID.
pub async fn compute_answers(client: &impl GenericClient, table: &str, rows_loaded: i64) -> Result<VersionAnswers> {
    let totals = client
        .query_one(
            &format!(
                "SELECT count(*), sum(trip_distance), sum(duration_s) / 3600.0, \
                        sum(trip_distance) / (sum(duration_s) / 3600.0) \
                 FROM {table} WHERE trip_distance > 0 AND duration_s > 0"
            ),
            &[],
        )
        .await
        .map_err(classify)?;
    let valid_trips: i64 = totals.get(0);
    let avg_speed_mph: Option<f64> = totals.get(3);
    let (mut slow_trips, mut weekly_top5) = (0, Vec::new());
    if let Some(avg) = avg_speed_mph {
        slow_trips = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {table} \
                     WHERE trip_distance > 0 AND duration_s > 0 AND speed_mph < $1"
                ),
                &[&avg],
            )
            .await
            .map_err(classify)?
            .get(0);
        weekly_top5 = client
            .query(
                &format!(
                    "WITH slow AS ( \
                         SELECT pickup_week AS week, pu_location_id, count(*) AS slow_trips FROM {table} \
                         WHERE trip_distance > 0 AND duration_s > 0 AND speed_mph < $1 \
                           AND pu_location_id IS NOT NULL \
                         GROUP BY pickup_week, pu_location_id \
                     ), ranked AS ( \
                         SELECT week, pu_location_id, slow_trips, \
                                row_number() OVER (PARTITION BY week ORDER BY slow_trips DESC, pu_location_id) AS rank \
                         FROM slow \
                     ) \
                     SELECT week, rank, pu_location_id, slow_trips FROM ranked WHERE rank <= 5 ORDER BY week, rank"
                ),
                &[&avg],
            )
            .await
            .map_err(classify)?
            .iter()
            .map(weekly_row)
            .collect();
    }
    Ok(VersionAnswers {
        rows_loaded,
        valid_trips,
        total_distance: totals.get(1),
        total_hours: totals.get(2),
        avg_speed_mph,
        slow_trips,
        weekly_top5,
    })
}

/// Takes the locks every swap takes, in the one order every swap takes them: the source's advisory
/// lock, then `tripflow.trips` exclusively (waits for running queries, bounded by `lock_timeout`).
async fn begin_swap<'a>(client: &'a mut Client, source_id: &str) -> Result<Transaction<'a>> {
    let tx = client.transaction().await.map_err(classify)?;
    lock_source(&tx, source_id).await?;
    tx.batch_execute(&format!("LOCK TABLE {TRIPS_TABLE} IN ACCESS EXCLUSIVE MODE"))
        .await
        .map_err(classify)?;
    Ok(tx)
}

/// Detaches the source's current version, if any: (version, rows).
async fn detach_current(tx: &Transaction<'_>, source_id: &str) -> Result<Option<(i32, i64)>> {
    let current = tx
        .query_opt(
            "SELECT version, partition_table, coalesce(rows_loaded, 0) FROM tripflow.versions \
             WHERE source_id = $1 AND current FOR UPDATE",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    let Some(row) = current else {
        return Ok(None);
    };
    let (version, table, rows): (i32, String, i64) = (row.get(0), row.get(1), row.get(2));
    tx.batch_execute(&format!(
        "ALTER TABLE {TRIPS_TABLE} DETACH PARTITION {}",
        qualified(&table)
    ))
    .await
    .map_err(classify)?;
    tx.execute(
        "UPDATE tripflow.versions SET state = 'previous', retired_at = now() WHERE source_id = $1 AND version = $2",
        &[&source_id, &version],
    )
    .await
    .map_err(classify)?;
    Ok(Some((version, rows)))
}

async fn attach(tx: &Transaction<'_>, source_id: &str, version: i32, table: &str) -> Result<()> {
    tx.batch_execute(&format!(
        "ALTER TABLE {TRIPS_TABLE} ATTACH PARTITION {table} FOR VALUES IN ({})",
        sql_literal(source_id)?
    ))
    .await
    .map_err(classify)?;
    tx.execute(
        "UPDATE tripflow.versions SET state = 'current', made_current_at = now(), retired_at = NULL \
         WHERE source_id = $1 AND version = $2",
        &[&source_id, &version],
    )
    .await
    .map_err(classify)?;
    Ok(())
}

/// Makes a staged version current in one short transaction: detach the current version (kept as a
/// previous one), attach the new one, write its answers and the load record, commit. Then drops
/// previous versions beyond retention.
pub async fn swap_in(client: &mut Client, staged: &StagedVersion) -> Result<SwapOutcome> {
    let source_id = staged.source_id.as_str();
    let tx = begin_swap(client, source_id).await?;
    let state: Option<String> = tx
        .query_opt(
            "SELECT state FROM tripflow.versions WHERE source_id = $1 AND version = $2 FOR UPDATE",
            &[&source_id, &staged.version],
        )
        .await
        .map_err(classify)?
        .map(|r| r.get(0));
    if state.as_deref() != Some("staged") {
        return Err(Error::InvalidInput(format!(
            "version {} of {source_id} cannot be swapped in: it is {}",
            staged.version,
            state.as_deref().unwrap_or("unknown")
        )));
    }
    let previous = detach_current(&tx, source_id).await?;
    attach(&tx, source_id, staged.version, &staged.partition_table).await?;
    let a = &staged.answers;
    tx.execute(
        "INSERT INTO tripflow.monthly_answers \
         (source_id, version, rows_loaded, valid_trips, total_distance, total_hours, avg_speed_mph, slow_trips) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &source_id,
            &staged.version,
            &a.rows_loaded,
            &a.valid_trips,
            &a.total_distance,
            &a.total_hours,
            &a.avg_speed_mph,
            &a.slow_trips,
        ],
    )
    .await
    .map_err(classify)?;
    for w in &a.weekly_top5 {
        tx.execute(
            "INSERT INTO tripflow.weekly_slow_pickups (source_id, version, week, rank, pu_location_id, slow_trips) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &source_id,
                &staged.version,
                &w.week,
                &w.rank,
                &w.pu_location_id,
                &w.slow_trips,
            ],
        )
        .await
        .map_err(classify)?;
    }
    let rows_replaced = previous.map_or(0, |(_, rows)| rows);
    if let (Some(key), Some(md5)) = (&staged.manifest_key, &staged.manifest_md5) {
        tx.execute(
            "INSERT INTO tripflow.load_runs \
             (source_id, manifest_key, manifest_md5, rows_curated, rows_loaded, rows_replaced, started_at, version) \
             VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
            &[
                &source_id,
                key,
                md5,
                &a.rows_loaded,
                &rows_replaced,
                &staged.staged_at,
                &staged.version,
            ],
        )
        .await
        .map_err(classify)?;
    }
    tx.commit().await.map_err(classify)?;
    info!(source_id, version = staged.version, previous = ?previous.map(|p| p.0), "version swapped in");
    let dropped_versions = match apply_retention(client, source_id).await {
        Ok(dropped) => dropped,
        Err(err) => {
            // The swap stands; the next load retries the clean-up.
            warn!(source_id, error = %err, "retention could not drop old versions");
            Vec::new()
        }
    };
    Ok(SwapOutcome {
        version: staged.version,
        previous_version: previous.map(|p| p.0),
        rows_replaced: u64::try_from(rows_replaced).unwrap_or(0),
        dropped_versions,
    })
}

/// Drops the tables of previous versions beyond the [`KEEP_PREVIOUS`] most recent; their rows in
/// `versions` and their answers stay, as `dropped`, for `history`.
pub async fn apply_retention(client: &mut Client, source_id: &str) -> Result<Vec<i32>> {
    let tx = client.transaction().await.map_err(classify)?;
    lock_source(&tx, source_id).await?;
    let old = tx
        .query(
            "SELECT version, partition_table FROM tripflow.versions WHERE source_id = $1 AND state = 'previous' \
             ORDER BY version DESC OFFSET $2",
            &[&source_id, &KEEP_PREVIOUS],
        )
        .await
        .map_err(classify)?;
    let mut dropped = Vec::new();
    for row in old {
        let (version, table): (i32, String) = (row.get(0), row.get(1));
        drop_version_tables(&tx, &table).await?;
        tx.execute(
            "UPDATE tripflow.versions SET state = 'dropped' WHERE source_id = $1 AND version = $2",
            &[&source_id, &version],
        )
        .await
        .map_err(classify)?;
        dropped.push(version);
    }
    tx.commit().await.map_err(classify)?;
    if !dropped.is_empty() {
        info!(source_id, ?dropped, "retention dropped old versions");
    }
    Ok(dropped)
}

/// Makes a kept previous version current again, in the same transaction shape as a swap. Asking for
/// the current version changes nothing; a dropped or unknown one is `InvalidInput`.
pub async fn make_current(client: &mut Client, source_id: &str, version: i32) -> Result<SwapOutcome> {
    let tx = begin_swap(client, source_id).await?;
    let target = tx
        .query_opt(
            "SELECT state, partition_table FROM tripflow.versions WHERE source_id = $1 AND version = $2 FOR UPDATE",
            &[&source_id, &version],
        )
        .await
        .map_err(classify)?;
    let Some(target) = target else {
        return Err(Error::InvalidInput(format!("{source_id} has no version {version}")));
    };
    let (state, table): (String, String) = (target.get(0), target.get(1));
    match state.as_str() {
        "current" => {
            tx.commit().await.map_err(classify)?;
            return Ok(SwapOutcome {
                version,
                previous_version: None,
                rows_replaced: 0,
                dropped_versions: Vec::new(),
            });
        }
        "previous" => {}
        other => {
            return Err(Error::InvalidInput(format!(
                "version {version} of {source_id} cannot be made current: it is {other}{}",
                if other == "dropped" {
                    " (its table was removed by retention)"
                } else {
                    ""
                }
            )));
        }
    }
    let previous = detach_current(&tx, source_id).await?;
    attach(&tx, source_id, version, &qualified(&table)).await?;
    tx.commit().await.map_err(classify)?;
    info!(source_id, version, previous = ?previous.map(|p| p.0), "version restored");
    Ok(SwapOutcome {
        version,
        previous_version: previous.map(|p| p.0),
        rows_replaced: previous.map_or(0, |(_, rows)| u64::try_from(rows).unwrap_or(0)),
        dropped_versions: Vec::new(),
    })
}

/// Takes the source's publish lock for this session: one publish of a month at a time (its database
/// swap and its lake commits together), so two runs publishing at once leave the database and every
/// lake table on the same run, the later one. Session-level, so a process that dies releases it with
/// its connection; waiting for it is bounded by `lock_timeout` (a retryable `Timeout`).
pub async fn lock_publish(client: &Client, source_id: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('tripflow.publish:' || $1, 0))",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    Ok(())
}

/// Releases one hold of [`lock_publish`].
pub async fn unlock_publish(client: &Client, source_id: &str) {
    if let Err(err) = client
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended('tripflow.publish:' || $1, 0))",
            &[&source_id],
        )
        .await
    {
        // The connection is gone, and the lock with it.
        warn!(source_id, error = %err, "could not release the publish lock");
    }
}

/// The state of one version (`staged`, `current`, `previous`, `dropped`, `discarded`), if it exists.
pub async fn version_state(client: &Client, source_id: &str, version: i32) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT state FROM tripflow.versions WHERE source_id = $1 AND version = $2",
            &[&source_id, &version],
        )
        .await
        .map_err(classify)?
        .map(|row| row.get(0)))
}

/// Every version of `source_id` that was ever swapped in, oldest first, with its answers.
pub async fn history(client: &Client, source_id: &str) -> Result<Vec<VersionInfo>> {
    let rows = client
        .query(
            "SELECT v.version, v.created_at, v.rows_loaded, a.avg_speed_mph, v.current, v.state, v.source_md5, \
                    v.partition_table \
             FROM tripflow.versions v LEFT JOIN tripflow.monthly_answers a USING (source_id, version) \
             WHERE v.source_id = $1 AND v.state IN ('current', 'previous', 'dropped') ORDER BY v.version",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    Ok(rows
        .iter()
        .map(|r| VersionInfo {
            version: r.get(0),
            created_at: r.get(1),
            rows_loaded: r.get(2),
            avg_speed_mph: r.get(3),
            current: r.get(4),
            state: r.get(5),
            source_md5: r.get(6),
            partition_table: r.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tables_are_readable_unique_per_source_and_short_enough() {
        let name = partition_table_name("yellow/2021-03", 3);
        assert!(name.starts_with("trips_p_yellow_2021_03_"), "{name}");
        assert!(name.ends_with("_v3"));
        assert_ne!(name, partition_table_name("yellow_2021/03", 3));
        let long = partition_table_name(&"x".repeat(200), i32::MAX);
        assert!(long.len() <= 63, "{long}");
        // A share's date CHECK is named for its table: the longest name PostgreSQL must keep whole.
        let share_check = format!("{}_dates", share_table_name(&long, COPY_STREAMS));
        assert!(share_check.len() <= 63, "{share_check}");
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2021, 3, d).unwrap()
    }

    #[test]
    fn shares_are_runs_of_whole_days_with_about_as_many_rows_each() {
        let month: Vec<(NaiveDate, u64)> = (1..=31).map(|d| (day(d), 1_000 + u64::from(d % 3))).collect();
        let shares = divide(&month, 2);
        assert_eq!(
            shares,
            [
                DateShare {
                    from: None,
                    until: Some(day(16))
                },
                DateShare {
                    from: Some(day(16)),
                    until: None
                }
            ]
        );
        let rows_in =
            |share: &DateShare| -> u64 { month.iter().filter(|(d, _)| share.contains(*d)).map(|(_, n)| n).sum() };
        let (first, second) = (rows_in(&shares[0]), rows_in(&shares[1]));
        assert_eq!(first + second, month.iter().map(|(_, n)| n).sum::<u64>());
        assert!(first.abs_diff(second) <= 1_002, "{first} against {second}");

        // A day of most of the rows is one share's alone; the rest go to the other side.
        let lopsided = [(day(1), 10), (day(2), 1_000), (day(3), 10)];
        assert_eq!(
            divide(&lopsided, 2),
            [
                DateShare {
                    from: None,
                    until: Some(day(2))
                },
                DateShare {
                    from: Some(day(2)),
                    until: None
                }
            ]
        );
        // Three shares of six even days: two days each.
        let even: Vec<_> = (1..=6).map(|d| (day(d), 5)).collect();
        let cuts: Vec<_> = divide(&even, 3).iter().filter_map(|s| s.from).collect();
        assert_eq!(cuts, [day(3), day(5)]);
        // One day, no rows, or one stream: one share of every date.
        for (dates, streams) in [(&month[..1], 2), (&[][..], 2), (&month[..], 1), (&month[..], 0)] {
            assert_eq!(
                divide(dates, streams),
                [DateShare::ALL],
                "{} dates, {streams} streams",
                dates.len()
            );
        }
        assert_eq!(divide(&[(day(1), 0), (day(2), 0)], 2), [DateShare::ALL]);
    }

    #[test]
    fn a_share_is_its_check_and_its_bounds() {
        let middle = DateShare {
            from: Some(day(1)),
            until: Some(day(16)),
        };
        assert!(middle.contains(day(1)) && middle.contains(day(15)) && !middle.contains(day(16)));
        assert_eq!(
            middle.check().unwrap(),
            "pickup_date >= '2021-03-01' AND pickup_date < '2021-03-16'"
        );
        assert_eq!(middle.bounds(), "FROM ('2021-03-01') TO ('2021-03-16')");
        let last = DateShare {
            from: Some(day(16)),
            until: None,
        };
        assert_eq!(last.check().unwrap(), "pickup_date >= '2021-03-16'");
        assert_eq!(last.bounds(), "FROM ('2021-03-16') TO (MAXVALUE)");
        assert_eq!(DateShare::ALL.check(), None);
        assert_eq!(DateShare::ALL.bounds(), "FROM (MINVALUE) TO (MAXVALUE)");
        assert!(DateShare::ALL.contains(day(31)));
    }

    #[test]
    fn literals_double_their_quotes_and_refuse_backslashes() {
        assert_eq!(sql_literal("it's").unwrap(), "'it''s'");
        assert_eq!(sql_literal("a\\b").unwrap_err().name(), "InvalidInput");
    }
}
