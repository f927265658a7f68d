//! All four stages in order, as `tripflow run` executes them on one machine. The state machine does
//! the same in AWS; both call the very same stage `run` functions.

use std::time::Instant;

use serde::Serialize;
use tokio_postgres::Client;

use crate::db::{self, Answers, WeeklySlowPickup};
use crate::error::{Error, Result};
use crate::stages::clean::{CleanInput, CleanOutput, RejectCounts};
use crate::stages::ingest::{IngestInput, IngestOutput};
use crate::stages::load::{LoadInput, LoadOutput};
use crate::stages::transform::{TransformInput, TransformOutput};
use crate::stages::{StageContext, Verdict, clean, ingest, load, transform};

/// What `tripflow run --json` prints: one object, stable keys, for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub source: String,
    pub source_id: String,
    pub md5: String,
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_rejected: RejectCounts,
    pub rows_curated: u64,
    pub rows_loaded: u64,
    pub avg_speed_mph: Option<f64>,
    pub weekly_top5: Vec<WeeklySlowPickup>,
    pub stage_seconds: StageSeconds,
    /// Where the version's quality report is: a file path for a local store, else a URL-like
    /// `s3://bucket/key`. Set by the front door that knows the store.
    pub quality_report: Option<String>,
    /// Peak resident memory of this process so far (Linux; `None` elsewhere).
    pub peak_rss_bytes: Option<u64>,
    pub ingest: IngestOutput,
    pub clean: CleanOutput,
    pub transform: TransformOutput,
    pub load: LoadOutput,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StageSeconds {
    pub ingest: f64,
    pub clean: f64,
    pub transform: f64,
    pub load: f64,
    pub queries: f64,
}

/// What ingest, clean and transform of one run produced: files written, nothing published yet.
#[derive(Debug, Clone)]
pub struct PreparedRun {
    pub ingested: IngestOutput,
    pub cleaned: CleanOutput,
    pub transformed: TransformOutput,
}

impl PreparedRun {
    /// The input of the run's load (which publishes it).
    pub fn load_input(&self) -> LoadInput {
        Self::load_input_of(&self.transformed)
    }

    fn load_input_of(transformed: &TransformOutput) -> LoadInput {
        LoadInput {
            dataset: transformed.dataset.clone(),
            period: transformed.period,
            manifest_key: transformed.manifest_key.clone(),
        }
    }
}

/// Times stages one after the other.
struct Stopwatch(Instant);

impl Stopwatch {
    fn lap(&mut self, slot: &mut f64) {
        *slot = self.0.elapsed().as_secs_f64();
        self.0 = Instant::now();
        tracing::debug!(seconds = *slot, peak_rss_bytes = peak_rss_bytes(), "stage finished");
    }
}

/// Ingest, clean and transform: everything of a run before its load and publish.
pub async fn prepare(ctx: &StageContext, input: IngestInput) -> Result<PreparedRun> {
    prepare_timed(ctx, input, &mut StageSeconds::default()).await
}

async fn prepare_timed(ctx: &StageContext, input: IngestInput, seconds: &mut StageSeconds) -> Result<PreparedRun> {
    let mut stopwatch = Stopwatch(Instant::now());
    let mut lap = |slot: &mut f64| stopwatch.lap(slot);
    let ingested = ingest::run(ctx, input).await?;
    lap(&mut seconds.ingest);

    let cleaned = clean::run(
        ctx,
        CleanInput {
            dataset: ingested.dataset.clone(),
            period: ingested.period,
            raw_key: ingested.raw_key.clone(),
            manifest_key: ingested.manifest_key.clone(),
            max_rejected_ratio: None,
            allow_shrink: ingested.allow_shrink,
            run_id: ingested.run_id.clone(),
        },
    )
    .await?;
    lap(&mut seconds.clean);
    if cleaned.verdict == Verdict::TooManyRejectedRows {
        return Err(Error::TooManyRejectedRows {
            rejected: cleaned.rows_rejected.total(),
            rows_in: cleaned.rows_in,
            ratio: cleaned.rejected_ratio,
            max_ratio: cleaned.max_rejected_ratio,
        });
    }

    let transformed = transform::run(
        ctx,
        TransformInput {
            dataset: cleaned.dataset.clone(),
            period: cleaned.period,
            clean_key: cleaned.clean_key.clone(),
            manifest_key: cleaned.manifest_key.clone(),
        },
    )
    .await?;
    lap(&mut seconds.transform);
    Ok(PreparedRun {
        ingested,
        cleaned,
        transformed,
    })
}

/// Runs ingest, clean, transform and load (which publishes), then reads the two answers.
pub async fn run_all(ctx: &StageContext, client: &mut Client, input: IngestInput) -> Result<RunSummary> {
    let mut seconds = StageSeconds::default();
    let source = input.source.clone();
    let PreparedRun {
        ingested,
        cleaned,
        transformed,
    } = prepare_timed(ctx, input, &mut seconds).await?;
    if let Some(before_load) = ctx.before_load {
        before_load();
    }
    let mut stopwatch = Stopwatch(Instant::now());
    let mut lap = |slot: &mut f64| stopwatch.lap(slot);

    let loaded = load::run(ctx, client, PreparedRun::load_input_of(&transformed)).await?;
    lap(&mut seconds.load);

    let Answers {
        avg_speed_mph,
        weekly_top5,
    } = db::answers(client, &loaded.source_id).await?;
    lap(&mut seconds.queries);

    Ok(RunSummary {
        source,
        source_id: loaded.source_id.clone(),
        md5: ingested.md5.clone(),
        rows_in: cleaned.rows_in,
        rows_kept: cleaned.rows_kept,
        rows_rejected: cleaned.rows_rejected,
        rows_curated: transformed.rows_curated,
        rows_loaded: loaded.rows_loaded,
        avg_speed_mph,
        weekly_top5,
        stage_seconds: seconds,
        quality_report: None,
        peak_rss_bytes: peak_rss_bytes(),
        ingest: ingested,
        clean: cleaned,
        transform: transformed,
        load: loaded,
    })
}

/// The process's peak resident set size (`VmHWM`), for the run summary and the benchmark.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
