//! One run of a month at a time where the stages are separate processes: the Lambdas, chained by
//! Step Functions. `tripflow run` holds a file lock for its whole run instead (the kernel drops it
//! when the process dies); a Lambda has no process that lives from ingest to load, so there the
//! claim is an object, `reports/<dataset>/<YYYY-MM>/lease.json`, written with conditional puts
//! (`If-None-Match: *` to take a free month, `If-Match: <ETag>` to renew or take over), so of two
//! runs racing for a month exactly one wins.
//!
//! Every stage renews the lease for its run before it starts, so a run that lost it (it expired
//! while the run stalled, and another took it) stops with `ConcurrentRun` at its next stage. A lease
//! whose holder died (a Lambda killed by its timeout) expires after its time to live and is then
//! taken over. The publish at the end of load is serialised by the database's advisory lock as well,
//! so even a run that outlived its lease never publishes over another.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::storage::{Expect, Layout, ObjectStore};

/// How long a lease lasts after its last renewal: longer than a stage may run (a Lambda's 15
/// minutes at most) plus the crawl that follows it. `TRIPFLOW_LEASE_SECONDS` in the functions.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// Conditional writes lost to other writers before giving up with `ConcurrentRun`. Each loss means
/// another run changed the lease in between, so a handful is plenty.
const ATTEMPTS: usize = 5;

/// The lease object: which run holds the month, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub run_id: String,
    pub source_id: String,
    /// The stage that last renewed it.
    pub stage: String,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The claim on one (dataset, month).
#[derive(Debug, Clone)]
pub struct MonthLease {
    key: String,
    source_id: String,
    ttl: Duration,
}

impl MonthLease {
    pub fn new(layout: &Layout, ttl: Duration) -> Self {
        MonthLease {
            key: layout.report_key("lease"),
            source_id: layout.source_id(),
            ttl,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Takes the month for `run_id`, or renews its hold, before `stage` runs. Fails
    /// `ConcurrentRun`, naming the holder and when its lease ends, while another run holds it.
    pub async fn hold(
        &self,
        store: &dyn ObjectStore,
        run_id: &str,
        stage: &str,
        now: DateTime<Utc>,
    ) -> Result<LeaseRecord> {
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        let record = LeaseRecord {
            run_id: run_id.to_string(),
            source_id: self.source_id.clone(),
            stage: stage.to_string(),
            renewed_at: now,
            expires_at: now + ttl,
        };
        let body = serde_json::to_vec_pretty(&record)
            .map(Bytes::from)
            .map_err(|e| Error::InvalidInput(format!("serialising {}: {e}", self.key)))?;
        let mut holder = None;
        for _ in 0..ATTEMPTS {
            let won = match store.get_tagged(&self.key).await? {
                None => store.put_if(&self.key, body.clone(), Expect::Absent).await?,
                Some(current) => {
                    let current_record = serde_json::from_slice::<LeaseRecord>(&current.body).ok();
                    match &current_record {
                        Some(other) if other.run_id != run_id && other.expires_at > now => {
                            return Err(self.taken(other));
                        }
                        Some(other) if other.run_id != run_id => {
                            warn!(lease = %self.key, expired_run = %other.run_id, expired_at = %other.expires_at, "taking over an expired lease");
                        }
                        None => warn!(lease = %self.key, "taking over an unreadable lease"),
                        Some(_) => {}
                    }
                    holder = current_record;
                    store.put_if(&self.key, body.clone(), Expect::Tag(&current.tag)).await?
                }
            };
            if won {
                info!(lease = %self.key, %run_id, %stage, expires_at = %record.expires_at, "holding the month");
                return Ok(record);
            }
        }
        Err(match holder {
            Some(other) => self.taken(&other),
            None => Error::ConcurrentRun {
                source_id: self.source_id.clone(),
                holder: format!("other runs kept changing {} while this one tried to take it", self.key),
            },
        })
    }

    /// Gives the month up if `run_id` still holds it; `Ok(false)` if it did not (never took it, or
    /// lost it). Called when a run ends, however it ends, so the next need not wait for expiry.
    pub async fn release(&self, store: &dyn ObjectStore, run_id: &str) -> Result<bool> {
        let Some(current) = store.get_tagged(&self.key).await? else {
            return Ok(false);
        };
        let ours = serde_json::from_slice::<LeaseRecord>(&current.body).is_ok_and(|r| r.run_id == run_id);
        if !ours {
            return Ok(false);
        }
        let released = store.delete_if(&self.key, &current.tag).await?;
        if released {
            info!(lease = %self.key, %run_id, "released the month");
        }
        Ok(released)
    }

    fn taken(&self, holder: &LeaseRecord) -> Error {
        Error::ConcurrentRun {
            source_id: self.source_id.clone(),
            holder: format!(
                "run {} holds {} since its {} stage, until {} unless it finishes first",
                holder.run_id,
                self.key,
                holder.stage,
                holder.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::Period;
    use crate::storage::LocalStore;

    fn march() -> Layout {
        Layout::new("yellow", Period::new(2021, 3).unwrap())
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::minutes(minutes)
    }

    #[tokio::test]
    async fn a_month_is_held_by_one_run_until_released_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let lease = MonthLease::new(&march(), Duration::from_secs(30 * 60));

        lease.hold(&store, "run-a", "ingest", at(0)).await.unwrap();
        // Its own later stages renew it.
        let renewed = lease.hold(&store, "run-a", "clean", at(10)).await.unwrap();
        assert_eq!(renewed.expires_at, at(40));

        let err = lease.hold(&store, "run-b", "ingest", at(20)).await.unwrap_err();
        assert_eq!(err.name(), "ConcurrentRun");
        let message = err.to_string();
        assert!(
            message.contains("run-a") && message.contains("clean") && message.contains("2026-12-01T00:40:00Z"),
            "{message}"
        );

        // Expired (its holder died): the next run takes it over, and the old holder is out.
        lease.hold(&store, "run-b", "ingest", at(41)).await.unwrap();
        assert_eq!(
            lease
                .hold(&store, "run-a", "transform", at(42))
                .await
                .unwrap_err()
                .name(),
            "ConcurrentRun"
        );
        assert!(
            !lease.release(&store, "run-a").await.unwrap(),
            "a run that lost the lease cannot release it"
        );

        assert!(lease.release(&store, "run-b").await.unwrap());
        assert!(store.get_tagged(lease.key()).await.unwrap().is_none());
        lease.hold(&store, "run-c", "ingest", at(43)).await.unwrap();
    }

    #[tokio::test]
    async fn of_many_runs_racing_for_a_free_month_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
        let lease = MonthLease::new(&march(), DEFAULT_TTL);
        let racers = (0..8).map(|i| {
            let (store, lease) = (store.clone(), lease.clone());
            tokio::spawn(async move { lease.hold(store.as_ref(), &format!("run-{i}"), "ingest", at(0)).await })
        });
        let outcomes = futures::future::join_all(racers).await;
        let won = outcomes.iter().filter(|o| o.as_ref().unwrap().is_ok()).count();
        assert_eq!(won, 1, "{outcomes:?}");
        for lost in outcomes.iter().filter_map(|o| o.as_ref().unwrap().as_ref().err()) {
            assert_eq!(lost.name(), "ConcurrentRun");
        }
    }

    #[tokio::test]
    async fn a_conditional_write_loses_to_a_change_made_after_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let key = "reports/yellow/2021-03/lease.json";
        assert!(
            store
                .put_if(key, Bytes::from_static(b"one"), Expect::Absent)
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_if(key, Bytes::from_static(b"two"), Expect::Absent)
                .await
                .unwrap()
        );
        let read = store.get_tagged(key).await.unwrap().unwrap();
        assert!(
            store
                .put_if(key, Bytes::from_static(b"three"), Expect::Tag(&read.tag))
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_if(key, Bytes::from_static(b"four"), Expect::Tag(&read.tag))
                .await
                .unwrap()
        );
        assert!(!store.delete_if(key, &read.tag).await.unwrap());
        let now = store.get_tagged(key).await.unwrap().unwrap();
        assert_eq!(now.body, Bytes::from_static(b"three"));
        assert!(store.delete_if(key, &now.tag).await.unwrap());
        assert!(store.get_tagged(key).await.unwrap().is_none());
    }
}
