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

    /// The object starts like Parquet but its end magic or its footer is missing or unreadable
    /// (a cut-off upload).
    #[error("{key} is a truncated Parquet file: {detail}")]
    TruncatedParquet { key: String, detail: String },

    /// The source's footer is fine but a page inside it is damaged: a data-page CRC that does not
    /// match, or a page that does not decode. Found by clean, the first stage that decodes every
    /// page; nothing downstream is changed. (The same damage inside our own zones is `IntegrityError`.)
    #[error("{key} is corrupt: {detail}")]
    CorruptSource { key: String, detail: String },

    /// The source is beyond a limit the pipeline sets (its footer is larger than ingest keeps while
    /// streaming). Not damage: the limit and the size found are in the message.
    #[error("{key} is too large to ingest: {detail}")]
    SourceTooLarge { key: String, detail: String },

    /// Encoding a Parquet file failed (not the store under it, which reports its own errors).
    /// A bug or an unwritable batch; a retry would fail the same way.
    #[error("writing Parquet {key} failed: {detail}")]
    ParquetWriteFailed { key: String, detail: String },

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

    /// The object store refused the request: permission denied, a read-only folder, S3
    /// `AccessDenied`, a missing bucket. A deployment problem; retrying will not fix it.
    #[error("storage refused {action} {key}: {detail}")]
    StorageRefused {
        action: &'static str,
        key: String,
        detail: String,
    },

    /// The Glue Data Catalog failed in a way that may pass (throttling, 5xx, network). Retryable.
    #[error("catalog unavailable while {action} {name}: {detail}")]
    CatalogUnavailable {
        action: &'static str,
        name: String,
        detail: String,
    },

    /// A wait ran past its limit (connecting to or reading from the HTTPS source, S3 or Glue;
    /// connecting to PostgreSQL, a statement or a lock wait). `what` names what was waited for.
    /// Retryable: the next attempt may find the server, the network or the lock free.
    #[error("timed out after {after_s} s while {what}")]
    Timeout { what: String, after_s: f64 },

    /// The HTTPS source could not be fetched (network, 5xx). Retryable.
    #[error("source {url} unavailable: {detail}")]
    SourceUnavailable { url: String, detail: String },

    /// PostgreSQL could not be reached or dropped the connection. Retryable.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),

    /// Another run of the same month is under way; this one changed nothing. Run it again when
    /// that one has finished.
    #[error("another run of {source_id} is under way ({holder}); this run changed nothing")]
    ConcurrentRun { source_id: String, holder: String },

    /// The process was asked to stop (SIGINT, SIGTERM) before it finished; what it was writing was
    /// discarded and nothing it had not yet published changed.
    #[error("received {signal}; in-flight writes were discarded, nothing unfinished was published")]
    Interrupted { signal: &'static str },

    /// A Delta commit to a lake table kept meeting other writers' commits and did not land within
    /// its attempts. Nothing changed in that table; retryable.
    #[error("commit to the Delta table {table} did not land: {detail}")]
    CommitConflict { table: String, detail: String },

    /// `restore` was asked for a version the source does not have (never made, or dropped by
    /// retention). Nothing changed.
    #[error("{source_id} has no restorable version {version}: {detail}")]
    VersionNotFound {
        source_id: String,
        version: i32,
        detail: String,
    },

    /// PostgreSQL refused a statement (constraint, permission, SQL error). Not retryable.
    #[error("database error: {0}")]
    DatabaseError(String),
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
            Error::CorruptSource { .. } => "CorruptSource",
            Error::SourceTooLarge { .. } => "SourceTooLarge",
            Error::ParquetWriteFailed { .. } => "ParquetWriteFailed",
            Error::UnknownPeriod { .. } => "UnknownPeriod",
            Error::EmptySource { .. } => "EmptySource",
            Error::SuspiciousShrink { .. } => "SuspiciousShrink",
            Error::TooManyRejectedRows { .. } => "TooManyRejectedRows",
            Error::LoadCountMismatch { .. } => "LoadCountMismatch",
            Error::IntegrityError { .. } => "IntegrityError",
            Error::InvalidInput(_) => "InvalidInput",
            Error::ObjectNotFound { .. } => "ObjectNotFound",
            Error::StorageUnavailable { .. } => "StorageUnavailable",
            Error::StorageRefused { .. } => "StorageRefused",
            Error::CatalogUnavailable { .. } => "CatalogUnavailable",
            Error::Timeout { .. } => "Timeout",
            Error::SourceUnavailable { .. } => "SourceUnavailable",
            Error::DatabaseUnavailable(_) => "DatabaseUnavailable",
            Error::DatabaseError(_) => "DatabaseError",
            Error::Interrupted { .. } => "Interrupted",
            Error::ConcurrentRun { .. } => "ConcurrentRun",
            Error::CommitConflict { .. } => "CommitConflict",
            Error::VersionNotFound { .. } => "VersionNotFound",
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

    /// A local I/O error: permission denied (a read-only or foreign folder) is `StorageRefused`,
    /// which no retry fixes; anything else `StorageUnavailable`.
    pub fn io(action: &'static str, key: impl Into<String>, err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::PermissionDenied || err.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
            Error::StorageRefused {
                action,
                key: key.into(),
                detail: err.to_string(),
            }
        } else {
            Error::storage(action, key, err)
        }
    }
}

/// An error and every cause under it, `: `-separated. reqwest's and hyper's `Display` say only
/// "error sending request"; the reason (refused, reset, TLS) is further down the chain.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Every error name, for documentation and for the tests that keep the state machine in step.
pub const ERROR_NAMES: &[&str] = &[
    "ChecksumMismatch",
    "SchemaDrift",
    "NotParquet",
    "TruncatedParquet",
    "CorruptSource",
    "SourceTooLarge",
    "ParquetWriteFailed",
    "UnknownPeriod",
    "EmptySource",
    "SuspiciousShrink",
    "TooManyRejectedRows",
    "LoadCountMismatch",
    "IntegrityError",
    "InvalidInput",
    "ObjectNotFound",
    "StorageUnavailable",
    "StorageRefused",
    "CatalogUnavailable",
    "Timeout",
    "SourceUnavailable",
    "DatabaseUnavailable",
    "DatabaseError",
    "Interrupted",
    "ConcurrentRun",
    "CommitConflict",
    "VersionNotFound",
];

/// The names of the errors a retry may cure: the state machine's `Retry` lists exactly these.
pub const RETRYABLE_ERROR_NAMES: &[&str] = &[
    "StorageUnavailable",
    "CatalogUnavailable",
    "Timeout",
    "SourceUnavailable",
    "DatabaseUnavailable",
    "CommitConflict",
];

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_is_refused_and_other_io_errors_may_pass() {
        let denied = Error::io(
            "writing",
            "curated/x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(denied.name(), "StorageRefused");
        assert!(!denied.is_retryable());
        let broken = Error::io(
            "writing",
            "curated/x",
            std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        );
        assert_eq!(broken.name(), "StorageUnavailable");
        assert!(broken.is_retryable());
    }

    #[test]
    fn timeouts_and_catalog_outages_are_retried_and_corruption_is_not() {
        let timeout = Error::Timeout {
            what: "connecting to https://example.org/x.parquet".into(),
            after_s: 1.0,
        };
        assert_eq!(timeout.name(), "Timeout");
        assert!(timeout.is_retryable());
        assert_eq!(
            timeout.to_string(),
            "timed out after 1 s while connecting to https://example.org/x.parquet"
        );
        for name in [
            "CorruptSource",
            "SourceTooLarge",
            "ParquetWriteFailed",
            "StorageRefused",
        ] {
            assert!(
                ERROR_NAMES.contains(&name) && !RETRYABLE_ERROR_NAMES.contains(&name),
                "{name}"
            );
        }
        assert!(RETRYABLE_ERROR_NAMES.contains(&"CatalogUnavailable"));
        assert!(RETRYABLE_ERROR_NAMES.iter().all(|n| ERROR_NAMES.contains(n)));
    }

    #[test]
    fn a_cause_chain_is_kept_without_repeating_itself() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(chain(&outer), "sending request: connection refused");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("sending request")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
