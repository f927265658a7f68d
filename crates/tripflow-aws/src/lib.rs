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
    let settings = LogSettings::from_lookup(|name| std::env::var(name).ok());
    let filter = EnvFilter::try_new(settings.directive()).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_target(false);
    // `try_init`: a second call (tests, a router hosting several handlers) keeps the first subscriber.
    let _ = if settings.json {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
}

/// What the function's logging configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// An `EnvFilter` directive, lower case (`info`, `debug`, `tripflow=trace`).
    pub level: String,
    /// JSON lines (Lambda's default) rather than text.
    pub json: bool,
}

impl LogSettings {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let level = set("AWS_LAMBDA_LOG_LEVEL")
            .or_else(|| set("RUST_LOG"))
            .unwrap_or_else(|| "info".to_string())
            .to_ascii_lowercase();
        let json = !set("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("text"));
        LogSettings { level, json }
    }

    /// The filter: the configured level, with delta-rs and its kernel held at `warn` unless the
    /// configuration names them. At INFO they log every snapshot, scan and commit: some sixty lines
    /// per publish, against tripflow's own twenty for a whole run.
    pub fn directive(&self) -> String {
        let level = self.level.as_str();
        let already_quiet = ["warn", "error", "off"].contains(&level);
        if already_quiet || QUIET_DEPENDENCIES.iter().any(|target| level.contains(target)) {
            return level.to_string();
        }
        let quiet: Vec<String> = QUIET_DEPENDENCIES.iter().map(|t| format!("{t}=warn")).collect();
        format!("{level},{}", quiet.join(","))
    }
}

/// Dependencies whose INFO lines are bookkeeping, not news.
const QUIET_DEPENDENCIES: [&str; 3] = ["deltalake_core", "buoyant_kernel", "buoyant_kernel_engine"];

/// The shared AWS configuration: region, credentials and `AWS_ENDPOINT_URL` (moto, LocalStack) as
/// aws-config resolves them from the environment.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}

#[cfg(test)]
mod log_tests {
    use super::LogSettings;

    fn settings(pairs: &[(&str, &str)]) -> LogSettings {
        LogSettings::from_lookup(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn logs_follow_the_functions_logging_configuration() {
        assert_eq!(
            settings(&[]),
            LogSettings {
                level: "info".into(),
                json: true
            }
        );
        assert_eq!(settings(&[("AWS_LAMBDA_LOG_LEVEL", "DEBUG")]).level, "debug");
        assert_eq!(settings(&[("RUST_LOG", "tripflow=trace")]).level, "tripflow=trace");
        // The function's configuration wins over RUST_LOG.
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "trace")]).level,
            "warn"
        );
        assert!(!settings(&[("AWS_LAMBDA_LOG_FORMAT", "Text")]).json);
        assert!(settings(&[("AWS_LAMBDA_LOG_FORMAT", "JSON")]).json);
        assert!(settings(&[("AWS_LAMBDA_LOG_FORMAT", "")]).json);
    }

    #[test]
    fn delta_rs_bookkeeping_stays_at_warn_unless_asked_for() {
        assert_eq!(
            settings(&[]).directive(),
            "info,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn"
        );
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_LEVEL", "DEBUG")]).directive(),
            "debug,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn"
        );
        assert_eq!(settings(&[("AWS_LAMBDA_LOG_LEVEL", "ERROR")]).directive(), "error");
        assert_eq!(
            settings(&[("RUST_LOG", "info,deltalake_core=debug")]).directive(),
            "info,deltalake_core=debug"
        );
        for settings in [settings(&[]), settings(&[("RUST_LOG", "tripflow=trace")])] {
            assert!(tracing_subscriber::EnvFilter::try_new(settings.directive()).is_ok());
        }
    }
}
