//! PostgreSQL: connecting, the schema (`table.sql`), error classification and the analysts' answers.

pub mod local;

use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// The schema file, applied before every load (every statement in it is idempotent).
pub const SCHEMA_SQL: &str = include_str!("../../../../table.sql");
/// The analysts' queries, as shipped for psql.
pub const QUERY_SQL: &str = include_str!("../../../../query.sql");
pub const TRIPS_TABLE: &str = "tripflow.trips";
/// Serialises schema changes between concurrent loads (an arbitrary, fixed advisory-lock key).
const SCHEMA_LOCK_KEY: i64 = 0x7472_6970_666c_6f77;

/// Connects without TLS (local clusters). The Lambda front door builds TLS connections itself.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(classify)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Applies `table.sql` under an advisory lock, so two first loads do not race on `CREATE TABLE`.
pub async fn apply_schema(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .map_err(classify)?;
    tx.batch_execute(SCHEMA_SQL).await.map_err(classify)?;
    tx.commit().await.map_err(classify)
}

/// Connection-level trouble (worth a retry) versus a statement PostgreSQL refused (not).
pub fn classify(err: tokio_postgres::Error) -> Error {
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
}

/// Reads the answers for `source_id` from the views.
pub async fn answers(client: &Client, source_id: &str) -> Result<Answers> {
    let avg = client
        .query_opt(
            "SELECT avg_speed_mph FROM tripflow.monthly_avg_speed WHERE source_id = $1",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    let rows = client
        .query(
            "SELECT week, rank, pu_location_id, slow_trips FROM tripflow.weekly_top5_slow_pickups \
             WHERE source_id = $1 ORDER BY week, rank",
            &[&source_id],
        )
        .await
        .map_err(classify)?;
    Ok(Answers {
        avg_speed_mph: avg.map(|row| row.get::<_, f64>(0)),
        weekly_top5: rows
            .iter()
            .map(|r| WeeklySlowPickup {
                week: r.get(0),
                rank: r.get(1),
                pu_location_id: r.get(2),
                slow_trips: r.get(3),
            })
            .collect(),
    })
}

/// Sources that have rows loaded, newest period first.
pub async fn loaded_sources(client: &Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT DISTINCT source_id FROM tripflow.load_runs ORDER BY source_id DESC",
            &[],
        )
        .await
        .map_err(classify)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
