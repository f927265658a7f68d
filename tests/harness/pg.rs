//! A throwaway PostgreSQL cluster per test: created in a temp folder, stopped and removed on drop.

use tempfile::TempDir;
use tripflow::db::local::LocalPostgres;

pub struct TestPostgres {
    cluster: LocalPostgres,
    url: String,
    // Held so the cluster's files live as long as the server.
    _dir: TempDir,
}

impl TestPostgres {
    /// Starts a fresh cluster with an empty `tripflow` database.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tripflow-pg-")
            .tempdir()
            .expect("temp dir");
        let cluster = LocalPostgres::ensure_running(&dir.path().join("cluster"))
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e}"));
        let url = cluster.ensure_database("tripflow").await.expect("create database");
        TestPostgres {
            cluster,
            url,
            _dir: dir,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        tripflow::db::connect(&self.url)
            .await
            .expect("connect to the test cluster")
    }

    /// Rows of `source_id` in the trips table (0 when the table does not exist yet).
    pub async fn trip_count(&self, source_id: &str) -> i64 {
        let client = self.client().await;
        let exists: bool = client
            .query_one("SELECT to_regclass('tripflow.trips') IS NOT NULL", &[])
            .await
            .expect("query")
            .get(0);
        if !exists {
            return 0;
        }
        client
            .query_one(
                "SELECT count(*) FROM tripflow.trips WHERE source_id = $1",
                &[&source_id],
            )
            .await
            .expect("count")
            .get(0)
    }
}

impl TestPostgres {
    /// Terminates backend `pid` as soon as `pg_stat_activity` shows it in the state `condition`
    /// describes (an SQL predicate over that view's columns): a connection cut at one exact point.
    /// False if it was not seen there within about 10 s.
    pub async fn terminate_when(&self, pid: i32, condition: &str) -> bool {
        self.terminate_first(&format!("pid = {pid} AND {condition}")).await
    }

    /// Terminates the first backend `pg_stat_activity` shows matching `condition`, as soon as one
    /// does; false if none did within about 10 s.
    pub async fn terminate_first(&self, condition: &str) -> bool {
        let admin = self.client().await;
        let seen = format!("SELECT pid FROM pg_stat_activity WHERE {condition} LIMIT 1");
        for _ in 0..2_000 {
            let found: Option<i32> = admin
                .query_opt(&seen, &[])
                .await
                .expect("pg_stat_activity")
                .map(|row| row.get(0));
            if let Some(pid) = found {
                admin
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .expect("pg_terminate_backend");
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        false
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}
