//! Every environment variable the Lambda functions read, and the typed configuration built from them
//! once at init. A missing or malformed variable fails the function's init with a message naming
//! it, never later inside a handler. The pipeline's own settings (`TRIPFLOW_MAX_REJECTED_RATIO`,
//! `TRIPFLOW_LOCATION_SWAPS`, `TRIPFLOW_WRITE_BUFFER_MB`, `TRIPFLOW_HTTP_*_TIMEOUT_S`, `DATABASE_URL`)
//! are constants of [`tripflow::config`]; AWS region, credentials and `AWS_ENDPOINT_URL` are read by
//! aws-config.

use std::path::PathBuf;

use tripflow::config::{DbSettings, ENV_DATABASE_URL, PipelineConfig};

use crate::s3::S3Timeouts;

/// The bucket holding every zone (`landing/`, `raw/`, `clean/`, `curated/`, `reports/`). Required by
/// the four stage functions; optional for the trigger, which then ignores other buckets' events.
pub const ENV_BUCKET: &str = "TRIPFLOW_BUCKET";
/// ARN of the pipeline state machine the trigger starts. Required by the trigger.
pub const ENV_STATE_MACHINE_ARN: &str = "TRIPFLOW_STATE_MACHINE_ARN";
/// ARN of the Secrets Manager secret with the database credentials (the Aurora-managed secret:
/// `username`, `password`, and possibly `host`, `port`, `dbname`). Load uses this or `DATABASE_URL`.
pub const ENV_DB_SECRET_ARN: &str = "TRIPFLOW_DB_SECRET_ARN";
/// Database host; overrides the secret's `host` (point it at an RDS Proxy endpoint, for instance).
pub const ENV_DB_HOST: &str = "TRIPFLOW_DB_HOST";
/// Database port; overrides the secret's `port`. Default 5432.
pub const ENV_DB_PORT: &str = "TRIPFLOW_DB_PORT";
/// Database name; overrides the secret's `dbname`. Default `postgres`.
pub const ENV_DB_NAME: &str = "TRIPFLOW_DB_NAME";
/// TLS for a secret-configured connection: `require` (default), `prefer` or `disable`. With
/// `DATABASE_URL` the URL's own `sslmode` applies.
pub const ENV_DB_SSLMODE: &str = "TRIPFLOW_DB_SSLMODE";
/// A PEM file of extra CA certificates trusted for the database's TLS certificate, besides the
/// public web roots: the RDS CA bundle when connecting to Aurora directly rather than via RDS Proxy.
pub const ENV_DB_CA_FILE: &str = "TRIPFLOW_DB_CA_FILE";
/// Glue database holding the curated table. Set together with `TRIPFLOW_GLUE_CURATED_TABLE` to have
/// load check the catalog before loading; unset both to skip the check.
pub const ENV_GLUE_DATABASE: &str = "TRIPFLOW_GLUE_DATABASE";
/// Glue table over `curated/<dataset>/` (the crawler names it after the folder, e.g. `yellow`).
pub const ENV_GLUE_CURATED_TABLE: &str = "TRIPFLOW_GLUE_CURATED_TABLE";

/// Seconds the S3 client waits to open a connection (TCP and TLS). Default 5.
pub const ENV_S3_CONNECT_TIMEOUT_S: &str = "TRIPFLOW_S3_CONNECT_TIMEOUT_S";
/// Seconds the S3 client waits from sending a request (an 8 MiB part included) to the first byte of
/// the answer. Default 60.
pub const ENV_S3_READ_TIMEOUT_S: &str = "TRIPFLOW_S3_READ_TIMEOUT_S";
/// Seconds one attempt of an S3 operation may take, up to its response; the SDK retries a timed-out
/// attempt (3 attempts in all) before the function fails with `Timeout`. Default 120.
pub const ENV_S3_ATTEMPT_TIMEOUT_S: &str = "TRIPFLOW_S3_ATTEMPT_TIMEOUT_S";

/// Seconds a stage's claim on its month lasts after the stage starts (every stage renews it): while
/// it lasts, another execution of the month fails `ConcurrentRun` (and the state machine retries
/// that ingest until the month is free). It must outlast one stage and the crawl after it. A claim
/// whose holder died is taken over after this. Default 1800.
pub const ENV_LEASE_SECONDS: &str = "TRIPFLOW_LEASE_SECONDS";

pub const DEFAULT_DB_PORT: u16 = 5432;
pub const DEFAULT_DB_NAME: &str = "postgres";

/// A variable that is missing or malformed. The message names it and never echoes a value that may
/// hold a password.
#[derive(thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {meaning}")]
    Missing { name: &'static str, meaning: &'static str },
    #[error("{name} is malformed: {problem}")]
    Malformed { name: &'static str, problem: String },
    #[error("{0}")]
    Conflict(String),
    /// A pipeline setting rejected by `tripflow::config` (its message names the variable).
    #[error("{0}")]
    Pipeline(#[from] tripflow::error::Error),
}

/// A binary's `main` returning this error prints it with `Debug`: make that the readable message
/// (`TRIPFLOW_BUCKET is not set: …`) that lands in the function's init log.
impl std::fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Looks a variable up; empty counts as unset, as it does in SAM templates that pass `""`.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(lookup: Lookup<'_>, name: &str) -> Option<String> {
    lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn required(lookup: Lookup<'_>, name: &'static str, meaning: &'static str) -> Result<String, ConfigError> {
    get(lookup, name).ok_or(ConfigError::Missing { name, meaning })
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The `TRIPFLOW_S3_*_TIMEOUT_S` variables; unset ones keep their defaults.
pub fn s3_timeouts(lookup: Lookup<'_>) -> Result<S3Timeouts, ConfigError> {
    let mut timeouts = S3Timeouts::default();
    for (name, slot) in [
        (ENV_S3_CONNECT_TIMEOUT_S, &mut timeouts.connect_s),
        (ENV_S3_READ_TIMEOUT_S, &mut timeouts.read_s),
        (ENV_S3_ATTEMPT_TIMEOUT_S, &mut timeouts.attempt_s),
    ] {
        if let Some(raw) = get(lookup, name) {
            *slot = tripflow::config::parse_timeout_s(&raw).ok_or_else(|| ConfigError::Malformed {
                name,
                problem: format!("{raw:?}: expected a number of seconds above 0 and at most 86400"),
            })?;
        }
    }
    Ok(timeouts)
}

/// What the ingest, clean and transform functions need.
#[derive(Debug, Clone)]
pub struct StageEnv {
    pub bucket: String,
    pub pipeline: PipelineConfig,
    pub s3_timeouts: S3Timeouts,
    pub lease_ttl: std::time::Duration,
}

impl StageEnv {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let bucket = required(lookup, ENV_BUCKET, "the bucket that holds the pipeline's zones")?;
        let pipeline = PipelineConfig::from_lookup(|name| get(lookup, name))?;
        let lease_ttl = match get(lookup, ENV_LEASE_SECONDS) {
            None => tripflow::lease::DEFAULT_TTL,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|s| (60..=86_400).contains(s))
                .map(std::time::Duration::from_secs)
                .ok_or_else(|| ConfigError::Malformed {
                    name: ENV_LEASE_SECONDS,
                    problem: format!("{raw:?}: expected whole seconds from 60 to 86400"),
                })?,
        };
        Ok(StageEnv {
            bucket,
            pipeline,
            s3_timeouts: s3_timeouts(lookup)?,
            lease_ttl,
        })
    }
}

/// What the trigger needs.
#[derive(Debug, Clone)]
pub struct TriggerEnv {
    pub state_machine_arn: String,
    /// When set, events about other buckets are skipped.
    pub bucket: Option<String>,
    pub s3_timeouts: S3Timeouts,
}

impl TriggerEnv {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let state_machine_arn = required(
            lookup,
            ENV_STATE_MACHINE_ARN,
            "the ARN of the state machine to start for each new file",
        )?;
        if !state_machine_arn.starts_with("arn:") || !state_machine_arn.contains(":stateMachine:") {
            return Err(ConfigError::Malformed {
                name: ENV_STATE_MACHINE_ARN,
                problem: format!("{state_machine_arn:?} is not a state machine ARN"),
            });
        }
        Ok(TriggerEnv {
            state_machine_arn,
            bucket: get(lookup, ENV_BUCKET),
            s3_timeouts: s3_timeouts(lookup)?,
        })
    }
}

/// TLS towards PostgreSQL, as `sslmode` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            other => Err(format!("{other:?}: expected require, prefer or disable")),
        }
    }
}

/// Where the database credentials come from.
#[derive(Clone)]
pub enum DbSource {
    /// `DATABASE_URL`, checked to parse at init.
    Url(String),
    /// A Secrets Manager secret, read at each (re)connect so a rotated password is picked up.
    Secret {
        arn: String,
        host: Option<String>,
        port: Option<u16>,
        dbname: Option<String>,
        sslmode: SslMode,
    },
}

impl std::fmt::Debug for DbSource {
    /// Never prints the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbSource::Url(_) => f.write_str("DbSource::Url(<redacted>)"),
            DbSource::Secret {
                arn,
                host,
                port,
                dbname,
                sslmode,
            } => f
                .debug_struct("DbSource::Secret")
                .field("arn", arn)
                .field("host", host)
                .field("port", port)
                .field("dbname", dbname)
                .field("sslmode", sslmode)
                .finish(),
        }
    }
}

/// The Glue table load checks the curated zone against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlueTable {
    pub database: String,
    pub table: String,
}

/// What the load function needs.
#[derive(Debug, Clone)]
pub struct LoadEnv {
    pub stage: StageEnv,
    pub db: DbSource,
    pub ca_file: Option<PathBuf>,
    pub glue: Option<GlueTable>,
    /// Connect, statement and lock timeouts (`TRIPFLOW_DB_*_TIMEOUT_S`).
    pub db_settings: DbSettings,
}

impl LoadEnv {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let stage = StageEnv::from_lookup(lookup)?;
        let db = match (get(lookup, ENV_DATABASE_URL), get(lookup, ENV_DB_SECRET_ARN)) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(format!(
                    "both {ENV_DATABASE_URL} and {ENV_DB_SECRET_ARN} are set: set exactly one"
                )));
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    name: ENV_DB_SECRET_ARN,
                    meaning: "the database secret's ARN (or set DATABASE_URL instead)",
                });
            }
            (Some(url), None) => {
                // Parse now so a typo fails init; the error text of tokio-postgres holds no password.
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| ConfigError::Malformed {
                        name: ENV_DATABASE_URL,
                        problem: e.to_string(),
                    })?;
                DbSource::Url(url)
            }
            (None, Some(arn)) => {
                if !arn.starts_with("arn:") || !arn.contains(":secretsmanager:") {
                    return Err(ConfigError::Malformed {
                        name: ENV_DB_SECRET_ARN,
                        problem: format!("{arn:?} is not a Secrets Manager ARN"),
                    });
                }
                let port = get(lookup, ENV_DB_PORT)
                    .map(|raw| {
                        raw.parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| ConfigError::Malformed {
                                name: ENV_DB_PORT,
                                problem: format!("{raw:?} is not a port number"),
                            })
                    })
                    .transpose()?;
                let sslmode = get(lookup, ENV_DB_SSLMODE)
                    .map(|raw| {
                        raw.parse::<SslMode>().map_err(|problem| ConfigError::Malformed {
                            name: ENV_DB_SSLMODE,
                            problem,
                        })
                    })
                    .transpose()?
                    .unwrap_or(SslMode::Require);
                DbSource::Secret {
                    arn,
                    host: get(lookup, ENV_DB_HOST),
                    port,
                    dbname: get(lookup, ENV_DB_NAME),
                    sslmode,
                }
            }
        };
        let ca_file = get(lookup, ENV_DB_CA_FILE).map(PathBuf::from);
        let db_settings = DbSettings::from_lookup(|name| get(lookup, name))?;
        let glue = match (get(lookup, ENV_GLUE_DATABASE), get(lookup, ENV_GLUE_CURATED_TABLE)) {
            (Some(database), Some(table)) => Some(GlueTable { database, table }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    name: ENV_GLUE_CURATED_TABLE,
                    meaning: "the curated table to check, since TRIPFLOW_GLUE_DATABASE is set",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    name: ENV_GLUE_DATABASE,
                    meaning: "the Glue database of TRIPFLOW_GLUE_CURATED_TABLE",
                });
            }
        };
        Ok(LoadEnv {
            stage,
            db,
            ca_file,
            glue,
            db_settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    const SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:tripflow-db-AbCdEf";

    #[test]
    fn s3_timeouts_have_defaults_and_a_bad_one_fails_naming_its_variable() {
        let env = StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b")])).unwrap();
        assert_eq!(env.s3_timeouts, S3Timeouts::default());
        let env = StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), (ENV_S3_READ_TIMEOUT_S, "7.5")])).unwrap();
        assert_eq!(env.s3_timeouts.read_s, 7.5);
        for name in [
            ENV_S3_CONNECT_TIMEOUT_S,
            ENV_S3_READ_TIMEOUT_S,
            ENV_S3_ATTEMPT_TIMEOUT_S,
        ] {
            let err = StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), (name, "0")])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            let arn = "arn:aws:states:us-east-1:123456789012:stateMachine:tripflow";
            let err = TriggerEnv::from_lookup(&vars(&[(ENV_STATE_MACHINE_ARN, arn), (name, "soon")])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        let err = StageEnv::from_lookup(&vars(&[
            (ENV_BUCKET, "b"),
            (tripflow::config::ENV_HTTP_READ_TIMEOUT_S, "x"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains(tripflow::config::ENV_HTTP_READ_TIMEOUT_S),
            "{err}"
        );
    }

    #[test]
    fn the_lease_lasts_half_an_hour_unless_set_and_refuses_nonsense() {
        let env = StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b")])).unwrap();
        assert_eq!(env.lease_ttl, std::time::Duration::from_secs(1800));
        let env = StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), (ENV_LEASE_SECONDS, "3600")])).unwrap();
        assert_eq!(env.lease_ttl, std::time::Duration::from_secs(3600));
        for bad in ["0", "59", "a while", "1e9"] {
            let err = StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), (ENV_LEASE_SECONDS, bad)])).unwrap_err();
            assert!(err.to_string().contains(ENV_LEASE_SECONDS), "{bad}: {err}");
        }
    }

    #[test]
    fn a_stage_function_without_its_bucket_fails_naming_the_variable() {
        let err = StageEnv::from_lookup(&vars(&[])).unwrap_err();
        assert!(err.to_string().contains(ENV_BUCKET), "{err}");
        let err =
            StageEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), ("TRIPFLOW_MAX_REJECTED_RATIO", "lots")])).unwrap_err();
        assert!(err.to_string().contains("TRIPFLOW_MAX_REJECTED_RATIO"), "{err}");
        assert_eq!(
            StageEnv::from_lookup(&vars(&[(ENV_BUCKET, " b ")])).unwrap().bucket,
            "b"
        );
    }

    #[test]
    fn the_trigger_requires_a_state_machine_arn() {
        let err = TriggerEnv::from_lookup(&vars(&[])).unwrap_err();
        assert!(err.to_string().contains(ENV_STATE_MACHINE_ARN));
        let err = TriggerEnv::from_lookup(&vars(&[(ENV_STATE_MACHINE_ARN, "tripflow")])).unwrap_err();
        assert!(err.to_string().contains(ENV_STATE_MACHINE_ARN));
        let arn = "arn:aws:states:us-east-1:123456789012:stateMachine:tripflow";
        let env = TriggerEnv::from_lookup(&vars(&[(ENV_STATE_MACHINE_ARN, arn)])).unwrap();
        assert_eq!((env.state_machine_arn.as_str(), env.bucket), (arn, None));
    }

    #[test]
    fn load_takes_exactly_one_of_url_and_secret() {
        let base = [(ENV_BUCKET, "b")];
        let err = LoadEnv::from_lookup(&vars(&base)).unwrap_err();
        assert!(err.to_string().contains(ENV_DB_SECRET_ARN));
        let both = [
            (ENV_BUCKET, "b"),
            (ENV_DATABASE_URL, "postgres://u@h/db"),
            (ENV_DB_SECRET_ARN, SECRET),
        ];
        assert!(matches!(
            LoadEnv::from_lookup(&vars(&both)).unwrap_err(),
            ConfigError::Conflict(_)
        ));
        let url =
            LoadEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), (ENV_DATABASE_URL, "postgres://u:pw@h/db")])).unwrap();
        assert!(matches!(url.db, DbSource::Url(_)));
        assert!(
            !format!("{:?}", url.db).contains("pw"),
            "the URL's password must not reach logs"
        );
    }

    #[test]
    fn secret_settings_default_to_tls_and_reject_a_bad_port() {
        let env = LoadEnv::from_lookup(&vars(&[(ENV_BUCKET, "b"), (ENV_DB_SECRET_ARN, SECRET)])).unwrap();
        let DbSource::Secret { sslmode, port, .. } = env.db else {
            panic!("expected a secret source")
        };
        assert_eq!((sslmode, port), (SslMode::Require, None));
        let bad = [(ENV_BUCKET, "b"), (ENV_DB_SECRET_ARN, SECRET), (ENV_DB_PORT, "54x")];
        assert!(
            LoadEnv::from_lookup(&vars(&bad))
                .unwrap_err()
                .to_string()
                .contains(ENV_DB_PORT)
        );
        let bad = [
            (ENV_BUCKET, "b"),
            (ENV_DB_SECRET_ARN, SECRET),
            (ENV_DB_SSLMODE, "verify-full"),
        ];
        assert!(
            LoadEnv::from_lookup(&vars(&bad))
                .unwrap_err()
                .to_string()
                .contains(ENV_DB_SSLMODE)
        );
    }

    #[test]
    fn the_glue_check_needs_both_database_and_table() {
        let half = [
            (ENV_BUCKET, "b"),
            (ENV_DB_SECRET_ARN, SECRET),
            (ENV_GLUE_DATABASE, "tripflow"),
        ];
        assert!(
            LoadEnv::from_lookup(&vars(&half))
                .unwrap_err()
                .to_string()
                .contains(ENV_GLUE_CURATED_TABLE)
        );
        let full = [
            (ENV_BUCKET, "b"),
            (ENV_DB_SECRET_ARN, SECRET),
            (ENV_GLUE_DATABASE, "d"),
            (ENV_GLUE_CURATED_TABLE, "t"),
        ];
        let env = LoadEnv::from_lookup(&vars(&full)).unwrap();
        assert_eq!(
            env.glue,
            Some(GlueTable {
                database: "d".into(),
                table: "t".into()
            })
        );
    }
}
