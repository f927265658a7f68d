//! The AWS side of tripflow. The pipeline itself lives in the `tripflow` crate and knows nothing of
//! AWS; this crate supplies what the Lambda front doors need around it:
//!
//! - [`s3::S3Store`]: Amazon S3 as the pipeline's [`tripflow::storage::ObjectStore`] (streaming and
//!   ranged GETs, all-or-nothing single or multipart PUTs that record each object's MD5);
//! - [`trigger`]: from an S3 or EventBridge "object created" notification to one Step Functions
//!   execution per uploaded file, named so that a repeated notification starts nothing new;
//! - [`db`] and [`catalog`]: the PostgreSQL connection of the load function (URL or Secrets Manager,
//!   TLS, reconnect) and the optional Glue catalog check of the curated table;
//! - [`handlers`]: one function per Lambda, returning [`lambda_runtime::Diagnostic`]s whose
//!   `errorType` is the pipeline's stable error name, so Step Functions `Retry`/`Catch` can match it;
//! - [`metrics`]: each invocation's counts, duration and failures as CloudWatch EMF lines;
//! - [`shutdown`]: on SIGTERM (an environment shut down), the open multipart uploads are aborted;
//! - [`env`]: every environment variable the functions read, as documented constants, and the typed
//!   configuration read from them once at init.

pub mod catalog;
pub mod db;
pub mod env;
pub mod handlers;
pub mod metrics;
pub mod s3;
mod sdk_error;
pub mod shutdown;
pub mod trigger;

pub use handlers::{
    LoadState, StageState, TriggerState, diagnostic, handle_clean, handle_ingest, handle_load, handle_transform,
    handle_trigger,
};
pub use s3::S3Store;
pub use tripflow::stages::clean::CleanInput;
pub use tripflow::stages::ingest::IngestInput;
pub use tripflow::stages::load::LoadInput;
pub use tripflow::stages::transform::TransformInput;

/// Logs as the function's logging configuration asks, like the runtime's default subscriber:
/// `AWS_LAMBDA_LOG_FORMAT` `JSON` (one object per line, what CloudWatch Logs Insights queries; the
/// default) or `Text`, at `AWS_LAMBDA_LOG_LEVEL` (or `RUST_LOG`, default `info`). Each invocation
/// runs in a span named for its stage that carries the source id, so every line of a run says which
/// month it belongs to.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(level.to_ascii_lowercase()).unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_target(false);
    // `try_init`: a second call (tests, a router hosting several handlers) keeps the first subscriber.
    let _ = if text {
        builder.try_init()
    } else {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    };
}

/// The shared AWS configuration: region, credentials and `AWS_ENDPOINT_URL` (moto, LocalStack) as
/// aws-config resolves them from the environment.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}
