//! The pipeline's errors. Each variant's name is a stable, public identifier: the Lambda front doors
//! report it as the `errorType` that Step Functions `Retry`/`Catch` match on, and `tripflow run`
//! prints it. Renaming a variant is a breaking change to `statemachine.asl.json`.

use std::fmt;

/// Every way a stage can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes received do not hash to the MD5 the caller or the sidecar promised.
    #[error("MD5 of {key} is {actual}, expected {expected}")]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },

    /// The file is Parquet but not the TLC yellow schema the pipeline is built for.
    #[error("{0}")]
    SchemaDrift(SchemaDriftDetail),

    /// The object does not start with the Parquet magic bytes.
    #[error("{key} is not a Parquet file: {detail}")]
    NotParquet { key: String, detail: String },

    /// The object starts like Parquet but its footer is missing or unreadable (cut-off upload).
    #[error("{key} is a truncated or corrupt Parquet file: {detail}")]
    TruncatedParquet { key: String, detail: String },

    /// Neither the file name (`yellow_tripdata_YYYY-MM`) nor the caller says which month the file holds.
    #[error(
        "cannot tell the month of {name}: expected a name like yellow_tripdata_2021-03.parquet or an explicit period"
    )]
    UnknownPeriod { name: String },

    /// The source is valid Parquet with the right schema but holds no rows: it would replace a month
    /// with nothing.
    #[error("{key} holds no rows; refusing to replace a month with an empty file")]
    EmptySource { key: String },

    /// The new version of a month keeps far fewer rows than the version it would replace (a partial
    /// download, a one-day extract). Allowed only when the run says so.
    #[error(
        "the new version of {source_id} keeps {kept} rows, fewer than {min_share} of the current version's {current_kept}; \
         rerun with --allow-shrink (event field allow_shrink) if this is intended"
    )]
    SuspiciousShrink {
        source_id: String,
        kept: u64,
        current_kept: u64,
        min_share: f64,
    },

    /// Clean rejected more than the configured share of rows. Raised by the local runner; the Lambda
    /// returns it as the clean stage's verdict so the state machine's Choice routes it.
    #[error("{rejected} of {rows_in} rows rejected ({ratio:.4}), above the limit of {max_ratio:.4}")]
    TooManyRejectedRows {
        rejected: u64,
        rows_in: u64,
        ratio: f64,
        max_ratio: f64,
    },

    /// The database holds a different number of rows for the source than the curated zone; rolled back.
    #[error("loaded {loaded} rows for {source_id} but the curated zone holds {expected}; rolled back")]
    LoadCountMismatch {
        source_id: String,
        expected: u64,
        loaded: u64,
    },

    /// An object a stage was about to read does not match what the previous stage's manifest recorded.
    #[error("integrity check failed for {key}: {detail}")]
    IntegrityError { key: String, detail: String },

    /// The request itself is malformed (bad event, bad option, missing field).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A key the stage needs is not in the store.
    #[error("object not found: {key}")]
    ObjectNotFound { key: String },

    /// The object store failed in a way that may pass (I/O error, throttling, network).
    #[error("storage unavailable while {action} {key}: {detail}")]
    StorageUnavailable {
        action: &'static str,
        key: String,
        detail: String,
    },

    /// The HTTPS source could not be fetched (network, 5xx). Retryable.
    #[error("source {url} unavailable: {detail}")]
    SourceUnavailable { url: String, detail: String },

    /// PostgreSQL could not be reached or dropped the connection. Retryable.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),

    /// The process was asked to stop (SIGINT, SIGTERM) before it finished; what it was writing was
    /// discarded and nothing it had not yet published changed.
    #[error("received {signal}; in-flight writes were discarded, nothing unfinished was published")]
    Interrupted { signal: &'static str },

    /// PostgreSQL refused a statement (constraint, permission, SQL error). Not retryable.
    #[error("database error: {0}")]
    DatabaseError(String),

    /// A wait ran out of time: `what` says what was waited for (connecting to the database, a
    /// statement, a lock). Retryable: the next attempt may find the server or the lock free.
    #[error("timed out after {after_s} s {what}")]
    Timeout { what: String, after_s: f64 },
}

/// What drifted: the column and what was found instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaDriftDetail {
    pub column: String,
    pub found: String,
}

impl fmt::Display for SchemaDriftDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schema drift in column {}: {}", self.column, self.found)
    }
}

impl Error {
    /// The stable name of the error, as Step Functions and scripts see it.
    pub fn name(&self) -> &'static str {
        match self {
            Error::ChecksumMismatch { .. } => "ChecksumMismatch",
            Error::SchemaDrift(_) => "SchemaDrift",
            Error::NotParquet { .. } => "NotParquet",
            Error::TruncatedParquet { .. } => "TruncatedParquet",
            Error::UnknownPeriod { .. } => "UnknownPeriod",
            Error::EmptySource { .. } => "EmptySource",
            Error::SuspiciousShrink { .. } => "SuspiciousShrink",
            Error::TooManyRejectedRows { .. } => "TooManyRejectedRows",
            Error::LoadCountMismatch { .. } => "LoadCountMismatch",
            Error::IntegrityError { .. } => "IntegrityError",
            Error::InvalidInput(_) => "InvalidInput",
            Error::ObjectNotFound { .. } => "ObjectNotFound",
            Error::StorageUnavailable { .. } => "StorageUnavailable",
            Error::SourceUnavailable { .. } => "SourceUnavailable",
            Error::DatabaseUnavailable(_) => "DatabaseUnavailable",
            Error::DatabaseError(_) => "DatabaseError",
            Error::Interrupted { .. } => "Interrupted",
            Error::Timeout { .. } => "Timeout",
        }
    }

    /// Whether trying the same input again may succeed. The state machine retries only these.
    pub fn is_retryable(&self) -> bool {
        RETRYABLE_ERROR_NAMES.contains(&self.name())
    }

    pub fn schema_drift(column: impl Into<String>, found: impl Into<String>) -> Self {
        Error::SchemaDrift(SchemaDriftDetail {
            column: column.into(),
            found: found.into(),
        })
    }

    pub(crate) fn storage(action: &'static str, key: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::StorageUnavailable {
            action,
            key: key.into(),
            detail: err.to_string(),
        }
    }
}

/// Every error name, for documentation and for the tests that keep the state machine in step.
pub const ERROR_NAMES: &[&str] = &[
    "ChecksumMismatch",
    "SchemaDrift",
    "NotParquet",
    "TruncatedParquet",
    "UnknownPeriod",
    "EmptySource",
    "SuspiciousShrink",
    "TooManyRejectedRows",
    "LoadCountMismatch",
    "IntegrityError",
    "InvalidInput",
    "ObjectNotFound",
    "StorageUnavailable",
    "SourceUnavailable",
    "DatabaseUnavailable",
    "DatabaseError",
    "Interrupted",
    "Timeout",
];

/// The names of the errors a retry may cure: the state machine's `Retry` lists exactly these.
pub const RETRYABLE_ERROR_NAMES: &[&str] = &[
    "StorageUnavailable",
    "SourceUnavailable",
    "DatabaseUnavailable",
    "Timeout",
];

pub type Result<T, E = Error> = std::result::Result<T, E>;
