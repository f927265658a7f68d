//! One function per Lambda. The binaries only build the state (once, at init) and hand each event
//! to these; tests and the local Step Functions router call them in-process the same way.
//!
//! Every failure leaves here as a [`Diagnostic`] whose `error_type` is the pipeline's stable error
//! name (`ChecksumMismatch`, `StorageUnavailable`, ...): what the state machine's `Retry` and
//! `Catch` match on. Each failure is logged once, with its name and whether it is retryable.

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::Diagnostic;
use tracing::{Instrument, error, info, info_span, warn};
use tripflow::error::Error;
use tripflow::lease::MonthLease;
use tripflow::stages::clean::{self, CleanInput, CleanOutput};
use tripflow::stages::ingest::{self, IngestInput, IngestOutput, Source};
use tripflow::stages::load::{self, LoadInput, LoadOutput};
use tripflow::stages::transform::{self, TransformInput, TransformOutput};
use tripflow::stages::{StageContext, Verdict};
use tripflow::storage::Layout;

use crate::catalog::CatalogCheck;
use crate::db::Database;
use crate::env::{ConfigError, LoadEnv, StageEnv, TriggerEnv};
use crate::metrics::MetricsSink;
use crate::s3::{S3Store, s3_client};
use crate::trigger::{Trigger, TriggerError, TriggerEvent, TriggerOutput};

/// The Lambda error for a pipeline error: `errorType` is its stable name, `errorMessage` its text.
pub fn diagnostic(err: &Error) -> Diagnostic {
    Diagnostic {
        error_type: err.name().to_string(),
        error_message: err.to_string(),
    }
}

fn trigger_diagnostic(err: &TriggerError) -> Diagnostic {
    Diagnostic {
        error_type: err.name().to_string(),
        error_message: err.to_string(),
    }
}

/// Logs a stage's outcome once and turns its error into a [`Diagnostic`].
/// The dataset dimension of a failure that happened before the dataset was known.
const UNKNOWN_DATASET: &str = "unknown";

fn finish<T>(stage: &'static str, result: Result<T, Error>) -> Result<T, Diagnostic> {
    result.map_err(|err| {
        error!(stage, error_type = err.name(), retryable = err.is_retryable(), error = %err, "stage failed");
        diagnostic(&err)
    })
}

/// What the ingest, clean and transform functions hold between invocations: the S3 store and the
/// pipeline configuration.
#[derive(Debug, Clone)]
pub struct StageState {
    pub ctx: StageContext,
    /// How long a stage's claim on its month lasts ([`tripflow::lease`]).
    pub lease_ttl: std::time::Duration,
    /// The same store as `ctx.store`, typed, for what only S3 has (aborting uploads at shutdown).
    pub s3: Option<S3Store>,
    /// Where each invocation's metrics go (EMF lines on stdout in a function).
    pub metrics: MetricsSink,
}

impl StageState {
    pub fn new(ctx: StageContext) -> Self {
        StageState {
            ctx,
            lease_ttl: tripflow::lease::DEFAULT_TTL,
            s3: None,
            metrics: MetricsSink::Stdout,
        }
    }

    /// The state of a deployed function: configuration from the environment, S3 from aws-config.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let env = StageEnv::from_env()?;
        let sdk = crate::load_sdk_config().await;
        Ok(Self::from_parts(&sdk, env))
    }

    /// A stage's state over S3, without the lake: ingest, clean and transform write files but
    /// never open a Delta table (load publishes), so their binaries leave delta-rs out.
    pub fn from_parts(sdk: &aws_config::SdkConfig, env: StageEnv) -> Self {
        let store = S3Store::from_sdk(sdk, &env.s3_timeouts, env.bucket.clone());
        Self::with_store(store, env)
    }

    /// The state of the stage that publishes (load): its store opens the Delta tables.
    pub fn from_parts_with_lake(sdk: &aws_config::SdkConfig, env: StageEnv) -> Self {
        let store = S3Store::from_sdk(sdk, &env.s3_timeouts, env.bucket.clone()).with_lake();
        Self::with_store(store, env)
    }

    fn with_store(store: S3Store, env: StageEnv) -> Self {
        StageState {
            ctx: StageContext::new(Arc::new(store.clone()), env.pipeline),
            lease_ttl: env.lease_ttl,
            s3: Some(store),
            metrics: MetricsSink::Stdout,
        }
    }
}

/// Runs one stage of `run_id` while holding its month ([`MonthLease`]): two executions of a month
/// never interleave. The claim is renewed before the stage and given up when the run is over.
///
/// The run is over after load, after a verdict that refuses the month (the state machine's Choice
/// ends it), and after a failure the state machine does not retry. `verdict` reads the output's.
async fn leased<T>(
    state: &StageState,
    layout: &Layout,
    run_id: &str,
    stage: &'static str,
    work: impl Future<Output = Result<T, Error>>,
    verdict: impl Fn(&T) -> Verdict,
) -> Result<T, Error> {
    let store = state.ctx.store.as_ref();
    let lease = MonthLease::new(layout, state.lease_ttl);
    lease.hold(store, run_id, stage, chrono::Utc::now()).await?;
    let result = work.await;
    // A failed ingest is retried under a new run id, so its own claim goes whatever the failure.
    let over = match &result {
        Ok(output) => stage == load::STAGE || verdict(output) != Verdict::Ok,
        Err(err) => stage == ingest::STAGE || !err.is_retryable(),
    };
    if over && let Err(err) = lease.release(store, run_id).await {
        warn!(lease = %lease.key(), error = %err, "could not release the month; it frees itself when the lease expires");
    }
    result
}

/// The run a later stage works for, from its run-scoped manifest key.
fn run_of(layout: &Layout, manifest_key: &str) -> Result<String, Error> {
    layout.run_of_report(manifest_key).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{manifest_key} is not a run's manifest of {}",
            layout.source_id()
        ))
    })
}

/// Ingest from the bucket's own `s3://` objects or from `https://` URLs only. Local paths would read
/// the function's own file system, and plain `http://` could reach the Lambda runtime API on
/// localhost.
fn check_lambda_source(state: &StageState, source: &str) -> Result<(), Error> {
    match Source::parse(source, state.ctx.store.as_ref())? {
        Source::StoreKey(_) => Ok(()),
        Source::Url(url) if url.starts_with("https://") => Ok(()),
        Source::Url(url) => Err(Error::InvalidInput(format!("{url}: only https:// sources are fetched"))),
        Source::LocalPath(path) => Err(Error::InvalidInput(format!(
            "{}: a Lambda ingests s3:// objects of its bucket or https:// URLs, not local paths",
            path.display()
        ))),
    }
}

pub async fn handle_ingest(state: &StageState, input: IngestInput) -> Result<IngestOutput, Diagnostic> {
    let source_id = ingest::layout_of(&input).map_or_else(|_| input.source.clone(), |l| l.source_id());
    ingest_invocation(state, input)
        .instrument(info_span!("ingest", %source_id))
        .await
}

async fn ingest_invocation(state: &StageState, input: IngestInput) -> Result<IngestOutput, Diagnostic> {
    info!(source = %input.source, "ingest invoked");
    let started = Instant::now();
    let dataset = ingest::layout_of(&input).map_or_else(|_| UNKNOWN_DATASET.to_string(), |l| l.dataset);
    let result = match (check_lambda_source(state, &input.source), ingest::layout_of(&input)) {
        (Ok(()), Ok(layout)) => {
            let run_id = ingest::new_run_id();
            let work = ingest::run_as(&state.ctx, input, run_id.clone());
            leased(state, &layout, &run_id, ingest::STAGE, work, |o| o.verdict).await
        }
        (Err(err), _) | (_, Err(err)) => Err(err),
    };
    state
        .metrics
        .record(ingest::STAGE, &dataset, &result, started.elapsed().as_secs_f64());
    finish(ingest::STAGE, result)
}

pub async fn handle_clean(state: &StageState, input: CleanInput) -> Result<CleanOutput, Diagnostic> {
    let source_id = Layout::new(input.dataset.clone(), input.period).source_id();
    let span = info_span!("clean", %source_id, run_id = %input.run_id);
    clean_invocation(state, input).instrument(span).await
}

async fn clean_invocation(state: &StageState, input: CleanInput) -> Result<CleanOutput, Diagnostic> {
    info!(raw_key = %input.raw_key, "clean invoked");
    let (started, dataset) = (Instant::now(), input.dataset.clone());
    let layout = Layout::new(input.dataset.clone(), input.period);
    let run_id = input.run_id.clone();
    let work = clean::run(&state.ctx, input);
    let result = leased(state, &layout, &run_id, clean::STAGE, work, |o| o.verdict).await;
    state
        .metrics
        .record(clean::STAGE, &dataset, &result, started.elapsed().as_secs_f64());
    finish(clean::STAGE, result)
}

pub async fn handle_transform(state: &StageState, input: TransformInput) -> Result<TransformOutput, Diagnostic> {
    let source_id = Layout::new(input.dataset.clone(), input.period).source_id();
    transform_invocation(state, input)
        .instrument(info_span!("transform", %source_id))
        .await
}

async fn transform_invocation(state: &StageState, input: TransformInput) -> Result<TransformOutput, Diagnostic> {
    info!(clean_key = %input.clean_key, "transform invoked");
    let (started, dataset) = (Instant::now(), input.dataset.clone());
    let layout = Layout::new(input.dataset.clone(), input.period);
    let result = match run_of(&layout, &input.manifest_key) {
        Ok(run_id) => {
            let work = transform::run(&state.ctx, input);
            leased(state, &layout, &run_id, transform::STAGE, work, |o| o.verdict).await
        }
        Err(err) => Err(err),
    };
    state
        .metrics
        .record(transform::STAGE, &dataset, &result, started.elapsed().as_secs_f64());
    finish(transform::STAGE, result)
}

/// What the load function holds between invocations: the stage state, the database connection and,
/// when configured, the Glue catalog check.
#[derive(Debug)]
pub struct LoadState {
    pub stage: StageState,
    pub db: Arc<Database>,
    pub catalog: Option<CatalogCheck>,
}

impl LoadState {
    /// Load's state; the stage's context opens its further COPY sessions through `db`.
    pub fn new(mut stage: StageState, db: Database, catalog: Option<CatalogCheck>) -> Self {
        let db = Arc::new(db);
        stage.ctx = stage.ctx.with_sessions(db.clone());
        LoadState { stage, db, catalog }
    }

    pub async fn from_env() -> Result<Self, ConfigError> {
        let env = LoadEnv::from_env()?;
        let sdk = crate::load_sdk_config().await;
        Self::from_parts(&sdk, env).await
    }

    pub async fn from_parts(sdk: &aws_config::SdkConfig, env: LoadEnv) -> Result<Self, ConfigError> {
        let db = Database::open_with(env.db, env.ca_file.as_deref(), Some(sdk), env.db_settings).await?;
        let catalog = env
            .glue
            .map(|table| CatalogCheck::new(glue_client(sdk, &env.stage.s3_timeouts), table));
        Ok(LoadState::new(
            StageState::from_parts_with_lake(sdk, env.stage),
            db,
            catalog,
        ))
    }
}

/// A Glue client with the same waits as S3 (`TRIPFLOW_S3_*_TIMEOUT_S`): the catalog check must not
/// hang the load either.
pub fn glue_client(sdk: &aws_config::SdkConfig, timeouts: &crate::s3::S3Timeouts) -> aws_sdk_glue::Client {
    let config = aws_sdk_glue::config::Builder::from(sdk)
        .timeout_config(timeouts.config())
        .build();
    aws_sdk_glue::Client::from_conf(config)
}

pub async fn handle_load(state: &LoadState, input: LoadInput) -> Result<LoadOutput, Diagnostic> {
    let source_id = Layout::new(input.dataset.clone(), input.period).source_id();
    load_invocation(state, input)
        .instrument(info_span!("load", %source_id))
        .await
}

async fn load_invocation(state: &LoadState, input: LoadInput) -> Result<LoadOutput, Diagnostic> {
    info!(manifest_key = %input.manifest_key, "load invoked");
    let (started, dataset) = (Instant::now(), input.dataset.clone());
    let layout = Layout::new(input.dataset.clone(), input.period);
    let result = async {
        let run_id = run_of(&layout, &input.manifest_key)?;
        let work = async {
            let ctx = &state.stage.ctx;
            if let Some(catalog) = &state.catalog {
                catalog
                    .verify(&format!("{}/{}", ctx.store.describe(), layout.curated_prefix()))
                    .await?;
            }
            let mut client = state.db.client().await?;
            load::run(ctx, &mut client, input).await
        };
        leased(&state.stage, &layout, &run_id, load::STAGE, work, |o| o.verdict).await
    }
    .await;
    state
        .stage
        .metrics
        .record(load::STAGE, &dataset, &result, started.elapsed().as_secs_f64());
    finish(load::STAGE, result)
}

/// What the trigger function holds between invocations.
#[derive(Debug, Clone)]
pub struct TriggerState {
    pub trigger: Trigger,
}

impl TriggerState {
    pub async fn from_env() -> Result<Self, ConfigError> {
        let env = TriggerEnv::from_env()?;
        let sdk = crate::load_sdk_config().await;
        Ok(Self::from_parts(&sdk, env))
    }

    pub fn from_parts(sdk: &aws_config::SdkConfig, env: TriggerEnv) -> Self {
        TriggerState {
            trigger: Trigger {
                s3: s3_client(sdk, &env.s3_timeouts),
                sfn: aws_sdk_sfn::Client::new(sdk),
                state_machine_arn: env.state_machine_arn,
                bucket: env.bucket,
            },
        }
    }
}

pub async fn handle_trigger(state: &TriggerState, event: TriggerEvent) -> Result<TriggerOutput, Diagnostic> {
    match state.trigger.handle(&event).await {
        Ok(output) => {
            info!(
                started = output.started.len(),
                already_exists = output.already_exists.len(),
                skipped = output.skipped.len(),
                "trigger done"
            );
            Ok(output)
        }
        Err(err) => {
            error!(error_type = err.name(), retryable = err.is_retryable(), error = %err, "trigger failed");
            Err(trigger_diagnostic(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_carry_the_stable_error_name_not_a_rust_type() {
        let err = Error::ChecksumMismatch {
            key: "landing/x".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        let diag = diagnostic(&err);
        assert_eq!(diag.error_type, "ChecksumMismatch");
        assert!(diag.error_message.contains("landing/x"));
        let json = serde_json::to_value(&diag).unwrap();
        assert_eq!(json["errorType"], "ChecksumMismatch");
        for name in tripflow::error::ERROR_NAMES {
            assert!(!name.contains("::"));
        }
    }

    #[test]
    fn trigger_errors_keep_the_pipeline_name_or_their_own() {
        let storage = TriggerError::Pipeline(Error::StorageUnavailable {
            action: "inspecting",
            key: "landing/x".into(),
            detail: "SlowDown".into(),
        });
        assert_eq!(trigger_diagnostic(&storage).error_type, "StorageUnavailable");
        assert!(storage.is_retryable());
        let refused = TriggerError::StartExecutionRejected {
            name: "n".into(),
            detail: "AccessDenied".into(),
        };
        assert_eq!(trigger_diagnostic(&refused).error_type, "StartExecutionRejected");
        assert!(!refused.is_retryable());
    }
}
