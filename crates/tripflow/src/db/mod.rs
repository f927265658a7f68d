//! PostgreSQL: connecting (with timeouts), the versioned schema migrations, error classification and
//! the analysts' answers. Loaded data lives in versions (`versions`): each load builds a new table and
//! swaps it into the partitioned `tripflow.trips`.

pub mod binary_copy;
pub mod local;
pub mod versions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use crate::config::DbSettings;
use crate::error::{Error, Result};

/// The schema migrations, in order: (version, name, SQL). Each is applied once, in one transaction,
/// and recorded in `tripflow.schema_migrations`. Never edit an applied one: add the next file.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "versioned_trips",
        include_str!("../../migrations/0001_versioned_trips.sql"),
    ),
    (2, "zones", include_str!("../../migrations/0002_zones.sql")),
    (
        3,
        "pickup_date_brin",
        include_str!("../../migrations/0003_pickup_date_brin.sql"),
    ),
];
/// TLC's taxi zone lookup as shipped (`data/taxi_zone_lookup.csv`); migration 2 holds the same rows.
pub const ZONES_CSV: &str = include_str!("../../../../data/taxi_zone_lookup.csv");
/// The analysts' queries, as shipped for psql.
pub const QUERY_SQL: &str = include_str!("../../../../query.sql");
pub const TRIPS_TABLE: &str = "tripflow.trips";
/// Serialises schema changes between concurrent loads (an arbitrary, fixed advisory-lock key).
const SCHEMA_LOCK_KEY: i64 = 0x7472_6970_666c_6f77;

/// The timeouts the sessions of this process were given, so an error PostgreSQL raises for one can
/// say how long it was (the server does not). Milliseconds; 0 until a session is configured.
static STATEMENT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);
static LOCK_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

/// Parses a `postgres://` URL or key=value string. A malformed one is bad input, not an outage.
pub fn parse_url(url: &str) -> Result<Config> {
    // tokio-postgres's parse errors never echo the password.
    url.parse::<Config>()
        .map_err(|e| Error::InvalidInput(format!("malformed database URL: {e}")))
}

/// The connection options every session gets: TCP keepalives, so a peer that vanishes mid-statement
/// is noticed in about a minute instead of when the kernel gives up hours later. The connect timeout
/// is not set here but around the whole connect ([`within_connect_timeout`]), so that a TCP connect
/// that hangs and a handshake that hangs are the same `Timeout`.
pub fn apply_connect_options(config: &mut Config) {
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
}

/// Sets `statement_timeout` and `lock_timeout` on a new session.
pub async fn configure_session(client: &Client, settings: &DbSettings) -> Result<()> {
    let statement_ms = settings.statement_timeout.as_millis().max(1) as u64;
    let lock_ms = settings.lock_timeout.as_millis().max(1) as u64;
    client
        .batch_execute(&format!(
            "SET statement_timeout = {statement_ms}; SET lock_timeout = {lock_ms}"
        ))
        .await
        .map_err(classify)?;
    STATEMENT_TIMEOUT_MS.store(statement_ms, Ordering::Relaxed);
    LOCK_TIMEOUT_MS.store(lock_ms, Ordering::Relaxed);
    Ok(())
}

/// Where a config points, for messages (never the password).
pub fn describe_target(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Runs a connect future under the overall connect timeout: TCP, TLS, the startup handshake and the
/// session settings all count, so a server that accepts and never answers is a `Timeout`.
pub async fn within_connect_timeout<T>(
    settings: &DbSettings,
    target: &str,
    connecting: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(settings.connect_timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            what: format!("connecting to PostgreSQL at {target} (TCP and startup handshake)"),
            after_s: settings.connect_timeout.as_secs_f64(),
        }),
    }
}

/// Connects without TLS (local clusters) with the default timeouts.
pub async fn connect(url: &str) -> Result<Client> {
    connect_with(url, &DbSettings::default()).await
}

/// Connects without TLS (local clusters). The Lambda front door builds TLS connections itself, with
/// the same options, timeout and session settings.
pub async fn connect_with(url: &str, settings: &DbSettings) -> Result<Client> {
    let mut config = parse_url(url)?;
    apply_connect_options(&mut config);
    let target = describe_target(&config);
    within_connect_timeout(settings, &target, async {
        let (client, connection) = config.connect(NoTls).await.map_err(classify)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        configure_session(&client, settings).await?;
        Ok(client)
    })
    .await
}

/// Applies the migrations not yet recorded, each once, under an advisory lock, so concurrent first
/// loads neither race on `CREATE TABLE` nor apply anything twice. Returns the versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .map_err(classify)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS tripflow;
         CREATE TABLE IF NOT EXISTS tripflow.schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await
    .map_err(classify)?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM tripflow.schema_migrations", &[])
        .await
        .map_err(classify)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut newly = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(classify)?;
        tx.execute(
            "INSERT INTO tripflow.schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(classify)?;
        tracing::info!(version, name, "schema migration applied");
        newly.push(*version);
    }
    tx.commit().await.map_err(classify)?;
    Ok(newly)
}

fn timeout_ms(slot: &AtomicU64) -> f64 {
    slot.load(Ordering::Relaxed) as f64 / 1000.0
}

/// Connection-level trouble (worth a retry) versus a statement PostgreSQL refused (not). The
/// server's timeouts are `Timeout`, naming which one ran out.
pub fn classify(err: tokio_postgres::Error) -> Error {
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        if *code == SqlState::QUERY_CANCELED && db.message().contains("statement timeout") {
            return Error::Timeout {
                what: format!(
                    "waiting for a PostgreSQL statement (statement_timeout): {}",
                    db.message()
                ),
                after_s: timeout_ms(&STATEMENT_TIMEOUT_MS),
            };
        }
        if *code == SqlState::LOCK_NOT_AVAILABLE {
            return Error::Timeout {
                what: format!("waiting for a PostgreSQL lock (lock_timeout): {}", db.message()),
                after_s: timeout_ms(&LOCK_TIMEOUT_MS),
            };
        }
    }
    let transient = match err.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS
        }
    };
    let message = match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    };
    if transient {
        Error::DatabaseUnavailable(message)
    } else {
        Error::DatabaseError(message)
    }
}

/// The two answers for one month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    /// Total distance / total hours over valid trips; `None` for a month with no valid trip.
    pub avg_speed_mph: Option<f64>,
    pub weekly_top5: Vec<WeeklySlowPickup>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeeklySlowPickup {
    pub week: i32,
    pub rank: i64,
    pub pu_location_id: i32,
    pub slow_trips: i64,
    /// The location's borough and zone from TLC's lookup (`tripflow.zones`); `None` for an id the
    /// lookup does not know.
    #[serde(default)]
    pub pu_borough: Option<String>,
    #[serde(default)]
    pub pu_zone: Option<String>,
}

/// The answers of `source_id`'s current version, read from the tables the load materialized (no
/// aggregation here). Empty when the source has no current version.
pub async fn answers(client: &Client, source_id: &str) -> Result<Answers> {
    let avg = client
        .query_opt(
            "SELECT a.avg_speed_mph FROM tripflow.versions v \
             JOIN tripflow.monthly_answers a USING (source_id, version) \
             WHERE v.source_id = $1 AND v.current",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    let rows = client
        .query(
            "SELECT w.week, w.rank, w.pu_location_id, w.slow_trips, z.borough, z.zone FROM tripflow.versions v \
             JOIN tripflow.weekly_slow_pickups w USING (source_id, version) \
             LEFT JOIN tripflow.zones z ON z.location_id = w.pu_location_id \
             WHERE v.source_id = $1 AND v.current ORDER BY w.week, w.rank",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    Ok(Answers {
        avg_speed_mph: avg.and_then(|row| row.get::<_, Option<f64>>(0)),
        weekly_top5: rows.iter().map(weekly_row).collect(),
    })
}

/// A row of (week, rank, pu_location_id, slow_trips[, borough, zone]).
pub(crate) fn weekly_row(r: &tokio_postgres::Row) -> WeeklySlowPickup {
    let name = |i: usize| r.try_get::<_, Option<String>>(i).ok().flatten();
    WeeklySlowPickup {
        week: r.get(0),
        rank: r.get(1),
        pu_location_id: r.get(2),
        slow_trips: r.get(3),
        pu_borough: name(4),
        pu_zone: name(5),
    }
}

/// Sources with a current version, newest period first.
pub async fn loaded_sources(client: &Client) -> Result<Vec<String>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tripflow.versions') IS NOT NULL", &[])
        .await
        .map_err(classify)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT source_id FROM tripflow.versions WHERE current ORDER BY source_id DESC",
            &[],
        )
        .await
        .map_err(classify)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of one CSV line: quoted (with "" for a quote) or bare.
    fn csv_fields(line: &str) -> Vec<String> {
        let (mut fields, mut field, mut quoted, mut chars) =
            (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                _ => field.push(c),
            }
        }
        fields.push(field);
        fields
    }

    #[test]
    fn the_zones_migration_holds_exactly_the_shipped_lookup() {
        let from_csv: Vec<String> = ZONES_CSV
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f = csv_fields(l.trim_end_matches('\r'));
                let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
                format!("({}, {}, {}, {})", f[0], q(&f[1]), q(&f[2]), q(&f[3]))
            })
            .collect();
        assert_eq!(from_csv.len(), 265);
        let migration = MIGRATIONS[1].2;
        let in_sql: Vec<String> = migration
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('(') && l.chars().nth(1).is_some_and(|c| c.is_ascii_digit()))
            .map(|l| l.trim_end_matches([',', ';']).to_string())
            .collect();
        assert_eq!(in_sql, from_csv);
    }

    #[test]
    fn a_malformed_database_url_is_invalid_input_and_not_retried() {
        let err = parse_url("postgres://u:hunter2@host:notaport/db").unwrap_err();
        assert_eq!(err.name(), "InvalidInput");
        assert!(!err.is_retryable());
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn migrations_are_numbered_in_order_without_gaps() {
        for (i, (version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1, "{name}");
            assert!(!sql.trim().is_empty());
        }
    }

    #[test]
    fn every_session_gets_keepalives() {
        let mut config = parse_url("postgres://u@db.internal:6543/trips").unwrap();
        apply_connect_options(&mut config);
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(describe_target(&config), "db.internal:6543");
    }
}
