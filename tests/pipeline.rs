//! The whole pipeline over a local folder and a real PostgreSQL: generated months end to end with
//! answers computed independently here, reruns, the real samples, and every kind of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tripflow::Error;
use tripflow::config::{DbSettings, PipelineConfig};
use tripflow::db::{WeeklySlowPickup, versions};
use tripflow::stages::StageContext;
use tripflow::stages::ingest::IngestInput;
use tripflow::stages::load;
use tripflow::storage::LocalStore;
use tripflow_tests::data::shared_file;
use tripflow_tests::expected::expected_from_file;
use tripflow_tests::faults::Stalling;
use tripflow_tests::intercept::Intercepted;
use tripflow_tests::local::Setup;
use tripflow_tests::pg::TestPostgres;

#[tokio::test]
async fn a_generated_month_ends_in_postgres_with_the_independently_computed_answers() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 150_000, 11);
    let expected = expected_from_file(&source, "2021-03".parse().unwrap());
    let summary = setup.run(&source, None).await.unwrap();

    assert_eq!(summary.rows_in, expected.rows_in);
    let rejected: BTreeMap<String, u64> =
        serde_json::from_value(serde_json::to_value(summary.rows_rejected).unwrap()).unwrap();
    assert_eq!(rejected, expected.rejected);
    assert_eq!(summary.rows_kept, expected.kept);
    assert_eq!(
        summary.rows_kept + summary.rows_rejected.total(),
        summary.rows_in,
        "every row accounted for"
    );
    // Every rule but timestamp_out_of_range (the generator writes timestamp[us]) is exercised.
    for (rule, count) in &expected.rejected {
        assert!(
            *count > 0 || rule == "timestamp_out_of_range",
            "no {rule} rows generated"
        );
    }
    assert_eq!(summary.rows_curated, expected.kept);
    assert_eq!(summary.rows_loaded, expected.kept);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, expected.kept);

    // The quality report's speed distribution, counted by transform as it wrote, is PostgreSQL's.
    let in_database = tripflow::quality::speed_buckets_in_database(&setup.pg.client().await, "yellow/2021-03")
        .await
        .unwrap();
    assert_eq!(summary.transform.speed_buckets, in_database);
    assert!(
        in_database.iter().sum::<u64>() > expected.kept * 9 / 10,
        "{in_database:?}"
    );

    let avg = summary.avg_speed_mph.unwrap();
    assert!(
        (avg - expected.avg_speed_mph).abs() < 1e-9 * expected.avg_speed_mph,
        "{avg} vs {}",
        expected.avg_speed_mph
    );
    assert_eq!(summary.weekly_top5, expected.weekly_top5);
    assert_eq!(
        summary
            .weekly_top5
            .iter()
            .map(|w| w.week)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        5,
        "ISO weeks 9-13"
    );

    // Zones as documented: one raw copy for the run, one clean file, quarantine with the rejects,
    // daily partitions.
    assert_eq!(
        setup.keys("raw/").await,
        [format!(
            "raw/yellow/2021-03/run={}/yellow_tripdata_2021-03.parquet",
            summary.ingest.run_id
        )]
    );
    let run = &summary.ingest.run_id;
    let live = setup.live_files("2021-03").await;
    assert_eq!(
        live["clean/yellow/"],
        [format!("clean/yellow/period=2021-03/part-{run}.parquet")]
    );
    assert_eq!(
        live["quarantine/yellow/"],
        [format!("quarantine/yellow/period=2021-03/part-{run}.parquet")]
    );
    assert_eq!(live["curated/yellow/"].len(), 31);
    assert!(
        live["curated/yellow/"]
            .iter()
            .all(|k| k.starts_with("curated/yellow/pickup_date=2021-03-")
                && k.ends_with(&format!("/part-{run}.parquet")))
    );
    for table in ["clean", "quarantine", "curated"] {
        assert!(
            !setup.keys(&format!("{table}/yellow/_delta_log/")).await.is_empty(),
            "{table} is a Delta table"
        );
    }
    assert_eq!(
        setup.keys("reports/").await,
        [
            "reports/yellow/2021-03/clean.json".to_string(),
            "reports/yellow/2021-03/load.json".to_string(),
            "reports/yellow/2021-03/quality.html".to_string(),
            format!("reports/yellow/2021-03/runs/{run}/clean.json"),
            format!("reports/yellow/2021-03/runs/{run}/ingest.json"),
            format!("reports/yellow/2021-03/runs/{run}/publish.json"),
            format!("reports/yellow/2021-03/runs/{run}/transform.json"),
            "reports/yellow/2021-03/transform.json".to_string(),
            "reports/yellow/2021-03/versions/1.json".to_string(),
        ]
    );

    // query.sql, as shipped for psql, gives the same answer as the views.
    let client = setup.pg.client().await;
    let first_query = tripflow::db::QUERY_SQL
        .split(';')
        .find(|s| s.contains("avg_speed_mph") && !s.contains("WITH"))
        .unwrap()
        .replace(":'source_id'", "'yellow/2021-03'");
    let from_query_sql: f64 = client.query_one(first_query.as_str(), &[]).await.unwrap().get(0);
    assert!((from_query_sql - avg).abs() < 1e-9 * avg);
}

#[tokio::test]
async fn rerun_of_same_file_leaves_one_copy_of_each_trip() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 30_000, 5);
    let first = setup.run(&source, None).await.unwrap();
    let second = setup.run(&source, None).await.unwrap();
    assert_eq!(second.load.rows_replaced, first.rows_loaded);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, first.rows_loaded);
    assert_eq!(second.avg_speed_mph, first.avg_speed_mph);
    assert_eq!(second.weekly_top5, first.weekly_top5);
    let runs: i64 = setup
        .pg
        .client()
        .await
        .query_one("SELECT count(*) FROM tripflow.load_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 2);
    // The lake holds the second run's files; the first run's stay on storage as the previous version.
    let live = setup.live_files("2021-03").await;
    assert_eq!(live["curated/yellow/"].len(), 31);
    assert!(
        live.values()
            .flatten()
            .all(|k| k.ends_with(&format!("part-{}.parquet", second.ingest.run_id)))
    );
}

#[tokio::test]
async fn rerun_leaves_one_current_version_and_keeps_the_previous_one_detached() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 20_000, 5);
    let first = setup.run(&source, None).await.unwrap();
    let second = setup.run(&source, None).await.unwrap();
    assert_eq!((first.load.version, second.load.version), (1, 2));
    let client = setup.pg.client().await;
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "previous".to_string()), (2, "current".to_string())]
    );
    let history = versions::history(&client, "yellow/2021-03").await.unwrap();
    let (v1, v2) = (&history[0].partition_table, &history[1].partition_table);
    assert!(!is_attached(&client, v1).await, "the previous version is detached");
    assert!(is_attached(&client, v2).await);
    assert_eq!(
        indexes_of(&client, v2).await,
        [("brin".to_string(), "pickup_date".to_string(), true)],
        "the load built the parent's BRIN index on its table, and ATTACH adopted it instead of building another"
    );
    // The version was copied as two shares of the month's days at once, each on its own session.
    let shares = shares_of(&client, v2).await;
    assert_eq!(shares.len(), versions::COPY_STREAMS, "{shares:?}");
    for (i, (share, rows, analyzed)) in shares.iter().enumerate() {
        assert_eq!(share, &versions::share_table_name(v2, i + 1));
        assert!(*rows > 0 && *analyzed, "{share}: {rows} rows, analysed: {analyzed}");
        assert_eq!(
            indexes_of(&client, share).await,
            [("brin".to_string(), "pickup_date".to_string(), true)],
            "{share}'s own index, adopted by the version's"
        );
    }
    assert_eq!(shares.iter().map(|s| s.1).sum::<i64>() as u64, second.rows_loaded);
    assert_eq!(rows_in(&client, v1).await as u64, first.rows_loaded, "and kept whole");
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, first.rows_loaded);
    assert_eq!(history[1].source_md5.as_deref(), Some(first.md5.as_str()));
    assert_eq!(history[1].avg_speed_mph, second.avg_speed_mph);
}

#[tokio::test]
async fn retention_keeps_the_current_and_two_previous_versions() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 5_000, 8);
    let first = setup.run(&source, None).await.unwrap();
    let first_files = setup.live_files("2021-03").await;
    let mut client = setup.pg.client().await;
    for _ in 0..3 {
        let input = setup.prepare_load(&source).await;
        load::run(&setup.ctx, &mut client, input).await.unwrap();
    }
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [
            (1, "dropped".to_string()),
            (2, "previous".to_string()),
            (3, "previous".to_string()),
            (4, "current".to_string())
        ]
    );
    let history = versions::history(&client, "yellow/2021-03").await.unwrap();
    assert!(
        !table_exists(&client, &history[0].partition_table).await,
        "v1's table dropped"
    );
    assert!(history[0].avg_speed_mph.is_some(), "its answers stay in the history");
    for kept in &history[1..] {
        assert!(table_exists(&client, &kept.partition_table).await);
    }
    let err = versions::make_current(&mut client, "yellow/2021-03", 1)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "InvalidInput", "{err}");
    // The lake lets go of v1's files with its rows; the kept versions' files stay.
    for key in first_files.values().flatten() {
        assert_eq!(setup.ctx.store.size(key).await.unwrap(), None, "{key} kept");
    }
    let err = tripflow::handoff::restore(&setup.ctx, &mut client, &layout(), 1)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "VersionNotFound", "{err}");
    assert_eq!(first.load.version, 1);
}

fn layout() -> tripflow::storage::Layout {
    tripflow::storage::Layout::new("yellow", "2021-03".parse().unwrap())
}

#[tokio::test]
async fn restore_makes_every_zone_and_the_answers_equal_the_earlier_version_again() {
    let setup = Setup::new().await;
    let a = setup.run(&setup.generate("2021-03", 12_000, 31), None).await.unwrap();
    let a_files = setup.live_files("2021-03").await;
    let a_clean_report = tripflow::storage::get_bytes(setup.ctx.store.as_ref(), "reports/yellow/2021-03/clean.json")
        .await
        .unwrap();
    let b = setup.run(&setup.generate("2021-03", 9_000, 32), None).await.unwrap();
    assert_ne!(setup.live_files("2021-03").await, a_files);
    assert_ne!(a.avg_speed_mph, b.avg_speed_mph);

    let mut client = setup.pg.client().await;
    let restored = tripflow::handoff::restore(&setup.ctx, &mut client, &layout(), 1)
        .await
        .unwrap();
    assert_eq!((restored.version, restored.previous_version), (1, Some(2)));
    assert_eq!(restored.rows_kept, a.rows_kept);
    assert_eq!(
        setup.live_files("2021-03").await,
        a_files,
        "every lake table holds A's files again"
    );
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, a.avg_speed_mph);
    assert_eq!(answers.weekly_top5, a.weekly_top5);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, a.rows_loaded);
    // The current report is A's again, so the shrink guard measures against A.
    assert_eq!(
        tripflow::storage::get_bytes(setup.ctx.store.as_ref(), "reports/yellow/2021-03/clean.json")
            .await
            .unwrap(),
        a_clean_report
    );

    // Restoring the current version again commits nothing; restoring B brings B back.
    let again = tripflow::handoff::restore(&setup.ctx, &mut client, &layout(), 1)
        .await
        .unwrap();
    assert!(again.commits.iter().all(|c| c.already_live));
    tripflow::handoff::restore(&setup.ctx, &mut client, &layout(), 2)
        .await
        .unwrap();
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, b.avg_speed_mph);
    let err = tripflow::handoff::restore(&setup.ctx, &mut client, &layout(), 9)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "VersionNotFound");
}

#[tokio::test]
async fn restoring_a_previous_version_brings_back_its_rows_and_answers() {
    let setup = Setup::new().await;
    let a = setup.run(&setup.generate("2021-03", 12_000, 21), None).await.unwrap();
    let b = setup.run(&setup.generate("2021-03", 9_000, 22), None).await.unwrap();
    assert_ne!(a.avg_speed_mph, b.avg_speed_mph);
    let mut client = setup.pg.client().await;
    let restored = versions::make_current(&mut client, "yellow/2021-03", 1).await.unwrap();
    assert_eq!(
        (restored.previous_version, restored.rows_replaced),
        (Some(2), b.rows_loaded)
    );
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, a.avg_speed_mph);
    assert_eq!(answers.weekly_top5, a.weekly_top5);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, a.rows_loaded);
    let history = versions::history(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(
        history.iter().map(|v| (v.version, v.current)).collect::<Vec<_>>(),
        [(1, true), (2, false)]
    );
    // Restoring the current version changes nothing; and back again to B.
    versions::make_current(&mut client, "yellow/2021-03", 1).await.unwrap();
    versions::make_current(&mut client, "yellow/2021-03", 2).await.unwrap();
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, b.avg_speed_mph);
    assert_eq!(answers.weekly_top5, b.weekly_top5);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, b.rows_loaded);
    let err = versions::make_current(&mut client, "yellow/2021-03", 9)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "InvalidInput");
}

#[tokio::test]
async fn the_views_agree_with_the_materialized_answers() {
    let setup = Setup::new().await;
    let march = setup.run(&setup.generate("2021-03", 40_000, 31), None).await.unwrap();
    setup.run(&setup.generate("2021-04", 20_000, 32), None).await.unwrap();
    let client = setup.pg.client().await;
    for source_id in ["yellow/2021-03", "yellow/2021-04"] {
        let materialized = tripflow::db::answers(&client, source_id).await.unwrap();
        let from_view: f64 = client
            .query_one(
                "SELECT avg_speed_mph FROM tripflow.monthly_avg_speed WHERE source_id = $1",
                &[&source_id],
            )
            .await
            .unwrap()
            .get(0);
        let avg = materialized.avg_speed_mph.unwrap();
        assert!((from_view - avg).abs() < 1e-9 * avg, "{from_view} vs {avg}");
        let weekly: Vec<WeeklySlowPickup> = client
            .query(
                "SELECT week, rank, pu_location_id, slow_trips, pu_borough, pu_zone \
                 FROM tripflow.weekly_top5_slow_pickups WHERE source_id = $1 ORDER BY week, rank",
                &[&source_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| WeeklySlowPickup {
                week: r.get(0),
                rank: r.get(1),
                pu_location_id: r.get(2),
                slow_trips: r.get(3),
                pu_borough: r.get(4),
                pu_zone: r.get(5),
            })
            .collect();
        assert_eq!(weekly, materialized.weekly_top5, "{source_id}");

        // Load counted these as the rows streamed by; the database, over the version's table,
        // counts the same (the totals to rounding).
        let current = client
            .query_one(
                "SELECT 'tripflow.' || v.partition_table, a.rows_loaded, a.valid_trips, a.total_distance, \
                        a.total_hours, a.avg_speed_mph, a.slow_trips \
                 FROM tripflow.versions v JOIN tripflow.monthly_answers a USING (source_id, version) \
                 WHERE v.source_id = $1 AND v.current",
                &[&source_id],
            )
            .await
            .unwrap();
        let table: String = current.get(0);
        let by_sql = versions::compute_answers(&client, &table, current.get(1))
            .await
            .unwrap();
        assert_eq!(by_sql.valid_trips, current.get::<_, i64>(2), "{source_id}");
        assert_eq!(by_sql.slow_trips, current.get::<_, i64>(6), "{source_id}");
        for (sql, streamed) in [
            (by_sql.total_distance, current.get::<_, Option<f64>>(3)),
            (by_sql.total_hours, current.get(4)),
            (by_sql.avg_speed_mph, current.get(5)),
        ] {
            let (sql, streamed) = (sql.unwrap(), streamed.unwrap());
            assert!(
                (sql - streamed).abs() <= 1e-9 * sql.abs(),
                "{source_id}: {sql} vs {streamed}"
            );
        }
        let weekly_by_sql: Vec<_> = by_sql
            .weekly_top5
            .iter()
            .map(|w| (w.week, w.rank, w.pu_location_id, w.slow_trips))
            .collect();
        let weekly_streamed: Vec<_> = weekly
            .iter()
            .map(|w| (w.week, w.rank, w.pu_location_id, w.slow_trips))
            .collect();
        assert_eq!(weekly_by_sql, weekly_streamed, "{source_id}");
    }
    // The answers were streamed, not queried: the transform manifest carried the month's totals.
    let layout = tripflow::storage::Layout::new("yellow", "2021-03".parse().unwrap());
    let transform: tripflow::handoff::manifest::Manifest<tripflow::handoff::TransformOutput> =
        tripflow::storage::get_json(setup.ctx.store.as_ref(), &layout.report_key("transform"))
            .await
            .unwrap();
    let transform = transform.output;
    let totals = transform.speed_totals.expect("transform hands on its speed totals");
    assert_eq!(totals.avg_speed_mph(), march.avg_speed_mph);
    // query.sql's recomputation agrees too.
    let statements: Vec<String> = tripflow::db::QUERY_SQL
        .split(';')
        .map(|s| s.replace(":'source_id'", "'yellow/2021-03'"))
        .collect();
    let weekly_sql = statements.iter().find(|s| s.contains("WITH avg")).unwrap();
    let from_query_sql: Vec<(i32, i64, i32, i64)> = client
        .query(weekly_sql.as_str(), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected: Vec<(i32, i64, i32, i64)> = march
        .weekly_top5
        .iter()
        .map(|w| (w.week, w.rank, w.pu_location_id, w.slow_trips))
        .collect();
    assert_eq!(from_query_sql, expected);
}

#[tokio::test]
async fn migrations_applied_twice_are_a_no_op_and_recorded_once() {
    let pg = TestPostgres::start().await;
    let (mut a, mut b) = (pg.client().await, pg.client().await);
    // Two first loads at once: the advisory lock lets exactly one apply each migration.
    let (ra, rb) = tokio::join!(tripflow::db::migrate(&mut a), tripflow::db::migrate(&mut b));
    let mut applied = ra.unwrap();
    applied.extend(rb.unwrap());
    applied.sort();
    assert_eq!(applied, [1, 2, 3], "each migration applied by exactly one of the two");
    assert!(tripflow::db::migrate(&mut a).await.unwrap().is_empty());
    let recorded: Vec<(i32, String)> = a
        .query(
            "SELECT version, name FROM tripflow.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        [
            (1, "versioned_trips".to_string()),
            (2, "zones".to_string()),
            (3, "pickup_date_brin".to_string())
        ]
    );
    let zones: i64 = a
        .query_one("SELECT count(*) FROM tripflow.zones", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(zones, 265, "TLC's zone lookup, loaded once");
    let partitioned: bool = a
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = 'tripflow.trips'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(partitioned, "tripflow.trips is partitioned by source");
}

#[tokio::test]
async fn loads_of_two_months_beside_a_query_loop_finish_without_deadlock() {
    let setup = Setup::new().await;
    let (march_file, april_file) = (
        setup.generate("2021-03", 30_000, 41),
        setup.generate("2021-04", 30_000, 42),
    );
    let march = setup.run(&march_file, None).await.unwrap();
    let april = setup.run(&april_file, None).await.unwrap();
    let (next_march, next_april) = (
        setup.prepare_load(&march_file).await,
        setup.prepare_load(&april_file).await,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let queries = {
        let stop = stop.clone();
        let client = setup.pg.client().await;
        async move {
            let started = std::time::Instant::now();
            let mut rounds = 0u32;
            // Bounded: until both loads are done, at most 3 s after they start.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds == 0 {
                for source_id in ["yellow/2021-03", "yellow/2021-04"] {
                    tripflow::db::answers(&client, source_id).await?;
                    client
                        .query(
                            "SELECT * FROM tripflow.weekly_top5_slow_pickups WHERE source_id = $1",
                            &[&source_id],
                        )
                        .await
                        .map_err(tripflow::db::classify)?;
                    client
                        .query("SELECT * FROM tripflow.monthly_avg_speed", &[])
                        .await
                        .map_err(tripflow::db::classify)?;
                }
                rounds += 1;
                if started.elapsed() > std::time::Duration::from_secs(3) {
                    break;
                }
            }
            Ok::<u32, Error>(rounds)
        }
    };
    let loads = async {
        let (mut a, mut b) = (setup.pg.client().await, setup.pg.client().await);
        let result = tokio::join!(
            load::run(&setup.ctx, &mut a, next_march),
            load::run(&setup.ctx, &mut b, next_april)
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    };
    let ((ra, rb), rounds) = tokio::join!(loads, queries);
    assert_eq!(ra.unwrap().version, 2);
    assert_eq!(rb.unwrap().version, 2);
    assert!(rounds.unwrap() > 0);
    let client = setup.pg.client().await;
    assert_eq!(
        tripflow::db::answers(&client, "yellow/2021-03")
            .await
            .unwrap()
            .avg_speed_mph,
        march.avg_speed_mph
    );
    assert_eq!(
        tripflow::db::answers(&client, "yellow/2021-04")
            .await
            .unwrap()
            .weekly_top5,
        april.weekly_top5
    );
}

/// A month loaded once (version 1) and its next load prepared but not yet run: where every test of a
/// load that must be refused without changing anything readers see begins.
struct LoadToRefuse {
    setup: Setup,
    summary: tripflow::pipeline::RunSummary,
    next: load::LoadInput,
    before: tripflow_tests::local::Snapshot,
}

impl LoadToRefuse {
    async fn new(rows: usize, seed: u64) -> Self {
        let setup = Setup::new().await;
        let source = setup.generate("2021-03", rows, seed);
        let summary = setup.run(&source, None).await.unwrap();
        let next = setup.prepare_load(&source).await;
        let before = setup.snapshot().await;
        LoadToRefuse {
            setup,
            summary,
            next,
            before,
        }
    }

    /// Runs the prepared load, which must fail as `error_name`, and checks that readers see what
    /// they saw before: every zone as it was, version 1 current with its rows and answers, version 2
    /// failed and its table gone. Returns the error for the test's own checks of its message.
    async fn refused_as(self, error_name: &str) -> Error {
        let LoadToRefuse {
            setup,
            summary,
            next,
            before,
        } = self;
        let source_id = "yellow/2021-03";
        let mut client = setup.pg.client().await;
        let err = load::run(&setup.ctx, &mut client, next).await.unwrap_err();
        assert_eq!(err.name(), error_name, "{err}");
        assert_eq!(setup.snapshot().await, before, "no zone and no lake table changed");
        assert_eq!(
            states(&client, source_id).await,
            [(1, "current".to_string()), (2, "failed".to_string())]
        );
        assert!(!table_exists(&client, &versions::partition_table_name(source_id, 2)).await);
        assert_eq!(
            setup.pg.trip_count(source_id).await as u64,
            summary.rows_loaded,
            "version 1's rows intact"
        );
        let answers = tripflow::db::answers(&client, source_id).await.unwrap();
        assert_eq!(answers.avg_speed_mph, summary.avg_speed_mph);
        assert_eq!(answers.weekly_top5, summary.weekly_top5);
        err
    }
}

#[tokio::test]
async fn a_curated_file_damaged_after_transform_fails_the_load_in_its_one_read_and_changes_nothing() {
    let refused = LoadToRefuse::new(10_000, 54).await;
    let store = refused.setup.ctx.store.as_ref();
    let manifest: tripflow::handoff::manifest::Manifest<tripflow::handoff::TransformOutput> =
        tripflow::storage::get_json(store, &refused.next.manifest_key)
            .await
            .unwrap();
    // The last day: the COPY is well under way when its file is read.
    let damaged = manifest.objects.last().unwrap().object.key.clone();
    let path = refused.setup.dir.path().join("zones").join(&damaged);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let err = refused.refused_as("IntegrityError").await;
    assert!(err.to_string().contains(damaged.as_str()), "{err}");
    assert!(err.to_string().contains("CRC64-NVME"), "{err}");
}

#[tokio::test]
async fn a_load_whose_rows_do_not_add_up_to_transform_s_totals_is_refused_and_changes_nothing() {
    let refused = LoadToRefuse::new(10_000, 53).await;
    // The run's transform manifest says the month drove one mile more than its rows did.
    let store = refused.setup.ctx.store.as_ref();
    let mut manifest: serde_json::Value = tripflow::storage::get_json(store, &refused.next.manifest_key)
        .await
        .unwrap();
    let distance = &mut manifest["output"]["speed_totals"]["total_distance"];
    *distance = serde_json::json!(distance.as_f64().expect("transform wrote its totals") + 1.0);
    tripflow::storage::put_json(store, &refused.next.manifest_key, &manifest)
        .await
        .unwrap();

    let err = refused.refused_as("IntegrityError").await;
    assert!(err.to_string().contains("add up"), "{err}");
}

#[tokio::test]
async fn a_swap_blocked_by_a_long_query_times_out_and_leaves_the_current_version() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 10_000, 51);
    let summary = setup.run(&source, None).await.unwrap();
    let next = setup.prepare_load(&source).await;
    let before = setup.snapshot().await;
    // An analyst's long query: holds tripflow.trips in share mode until it ends.
    let mut analyst = setup.pg.client().await;
    let reading = analyst.transaction().await.unwrap();
    reading.query("SELECT count(*) FROM tripflow.trips", &[]).await.unwrap();

    let settings = DbSettings {
        lock_timeout: std::time::Duration::from_secs(1),
        ..DbSettings::default()
    };
    let mut client = tripflow::db::connect_with(setup.pg.url(), &settings).await.unwrap();
    let err = load::run(&setup.ctx, &mut client, next.clone()).await.unwrap_err();
    assert_eq!(err.name(), "Timeout", "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("lock"), "{err}");
    reading.rollback().await.unwrap();

    let client = setup.pg.client().await;
    // The run was accepted but its swap waits: every reader still sees version 1, in the
    // database and in every lake table.
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "current".to_string()), (2, "staged".to_string())]
    );
    assert_eq!(setup.snapshot().await, before);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, summary.rows_loaded);
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, summary.avg_speed_mph);
    // Once the query is done, a retry of the same load finishes the publish of version 2.
    let mut client = setup.pg.client().await;
    assert_eq!(load::run(&setup.ctx, &mut client, next).await.unwrap().version, 2);
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "previous".to_string()), (2, "current".to_string())]
    );
}

#[tokio::test]
async fn a_load_whose_second_copy_session_is_cut_drops_its_version_and_changes_nothing() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 150_000, 62);
    let summary = setup.run(&source, None).await.unwrap();
    let next = setup.prepare_load(&source).await;
    let before = setup.snapshot().await;
    let mut loader = setup.pg.client().await;
    let pid: i32 = loader.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    // The COPY of the other share, on the session load opened for it.
    let other_copy = format!("pid <> {pid} AND query LIKE 'COPY %'");
    let killer = setup.pg.terminate_first(&other_copy);
    let (result, killed) = tokio::join!(load::run(&setup.ctx, &mut loader, next.clone()), killer);
    assert!(killed, "the second share's COPY was never seen running");
    let err = result.unwrap_err();
    assert_eq!(err.name(), "DatabaseUnavailable", "{err}");
    assert!(err.is_retryable());

    // The first session lived: it dropped the whole version at once, nothing waits for a sweep.
    let client = setup.pg.client().await;
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "current".to_string()), (2, "failed".to_string())]
    );
    let table = versions::partition_table_name("yellow/2021-03", 2);
    assert_eq!(version_tables(&client, &table).await, Vec::<String>::new());
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, summary.rows_loaded);
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, summary.avg_speed_mph);
    assert_eq!(answers.weekly_top5, summary.weekly_top5);
    assert_eq!(setup.snapshot().await, before, "no zone changed either");

    // The retry loads it whole.
    let mut client = setup.pg.client().await;
    let loaded = load::run(&setup.ctx, &mut client, next).await.unwrap();
    assert_eq!((loaded.version, loaded.rows_loaded), (3, summary.rows_loaded));
}

#[tokio::test]
async fn a_load_killed_during_its_swap_leaves_the_current_version_whole() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 10_000, 91);
    let summary = setup.run(&source, None).await.unwrap();
    let next = setup.prepare_load(&source).await;
    let before = setup.snapshot().await;
    // A long query holds the swap inside its transaction (advisory lock taken, waiting for the table).
    let mut analyst = setup.pg.client().await;
    let reading = analyst.transaction().await.unwrap();
    reading.query("SELECT count(*) FROM tripflow.trips", &[]).await.unwrap();
    let mut loader = setup.pg.client().await;
    let pid: i32 = loader.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let killer = setup
        .pg
        .terminate_when(pid, "wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'");
    let (result, killed) = tokio::join!(load::run(&setup.ctx, &mut loader, next.clone()), killer);
    assert!(killed, "the swap was never seen waiting for its lock");
    assert_eq!(result.unwrap_err().name(), "DatabaseUnavailable");
    reading.rollback().await.unwrap();

    let client = setup.pg.client().await;
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "current".to_string()), (2, "staged".to_string())],
        "the swap rolled back; the built version waits, unattached"
    );
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, summary.rows_loaded);
    let answers = tripflow::db::answers(&client, "yellow/2021-03").await.unwrap();
    assert_eq!(answers.avg_speed_mph, summary.avg_speed_mph);
    assert_eq!(answers.weekly_top5, summary.weekly_top5);
    assert_eq!(setup.snapshot().await, before, "no zone changed either");
    // The run was accepted (its publish intent stored), so it is rolled forward, not repeated: a
    // retry of the same load finishes the swap of version 2, then the lake commits.
    let mut client = setup.pg.client().await;
    assert_eq!(load::run(&setup.ctx, &mut client, next).await.unwrap().version, 2);
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "previous".to_string()), (2, "current".to_string())]
    );
    assert_ne!(setup.snapshot().await, before);
}

#[tokio::test]
async fn a_database_that_accepts_and_never_answers_is_a_timeout() {
    // Accepts and holds every connection without a byte in reply.
    let silent = Stalling::start(None).await;
    let port = silent.addr.port();
    let settings = DbSettings {
        connect_timeout: std::time::Duration::from_secs(1),
        ..DbSettings::default()
    };
    let started = std::time::Instant::now();
    let err = tripflow::db::connect_with(&format!("postgres://tripflow@127.0.0.1:{port}/tripflow"), &settings)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "gave up in time"
    );
    assert!(
        matches!(&err, Error::Timeout { after_s, what } if *after_s == 1.0 && what.contains(&format!("127.0.0.1:{port}"))),
        "{err}"
    );
    assert!(err.is_retryable());
    drop(silent);
    let err = tripflow::db::connect_with("postgres://u@host:port/db", &settings)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "InvalidInput");
}

#[tokio::test]
async fn a_statement_past_statement_timeout_is_a_timeout_naming_it() {
    let pg = TestPostgres::start().await;
    let settings = DbSettings {
        statement_timeout: std::time::Duration::from_secs(1),
        ..DbSettings::default()
    };
    let client = tripflow::db::connect_with(pg.url(), &settings).await.unwrap();
    let err = client
        .query("SELECT pg_sleep(30)", &[])
        .await
        .map_err(tripflow::db::classify)
        .unwrap_err();
    assert_eq!(err.name(), "Timeout", "{err}");
    assert!(err.to_string().contains("statement_timeout"), "{err}");
}

#[tokio::test]
async fn a_load_killed_during_copy_leaves_the_current_version_and_the_next_load_sweeps_its_table() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 150_000, 61);
    let summary = setup.run(&source, None).await.unwrap();
    let next = setup.prepare_load(&source).await;
    let mut loader = setup.pg.client().await;
    let pid: i32 = loader.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let killer = setup.pg.terminate_when(pid, "query LIKE 'COPY %'");
    let (result, killed) = tokio::join!(load::run(&setup.ctx, &mut loader, next.clone()), killer);
    assert!(killed, "the load's COPY was never seen running");
    let err = result.unwrap_err();
    assert_eq!(err.name(), "DatabaseUnavailable", "{err}");

    let client = setup.pg.client().await;
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "current".to_string()), (2, "staging".to_string())]
    );
    let orphan = versions::partition_table_name("yellow/2021-03", 2);
    assert_eq!(
        rows_in(&client, &orphan).await,
        0,
        "the COPY rolled back with its transaction"
    );
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, summary.rows_loaded);
    assert_eq!(
        tripflow::db::answers(&client, "yellow/2021-03")
            .await
            .unwrap()
            .avg_speed_mph,
        summary.avg_speed_mph
    );

    assert_eq!(
        version_tables(&client, &orphan).await,
        [
            orphan.clone(),
            versions::share_table_name(&orphan, 1),
            versions::share_table_name(&orphan, 2)
        ],
        "the dead builder left its table and its shares' tables"
    );

    // The next load finds the dead builder's tables (its session lock is gone) and drops them.
    let mut client = setup.pg.client().await;
    assert_eq!(load::run(&setup.ctx, &mut client, next).await.unwrap().version, 3);
    assert!(!table_exists(&client, &orphan).await);
    assert_eq!(version_tables(&client, &orphan).await, Vec::<String>::new());
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [
            (1, "previous".to_string()),
            (2, "failed".to_string()),
            (3, "current".to_string())
        ]
    );
}

#[tokio::test]
async fn a_version_still_being_built_by_a_live_load_is_not_swept() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 5_000, 71);
    setup.run(&source, None).await.unwrap();
    let next = setup.prepare_load(&source).await;
    // A live builder: a session holding the staging lock of version 2, as stage_version does.
    let builder = setup.pg.client().await;
    let table = versions::partition_table_name("yellow/2021-03", 2);
    builder
        .batch_execute(&format!(
            "CREATE TABLE tripflow.{table} (LIKE tripflow.trips INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
             INSERT INTO tripflow.versions (source_id, version, state, partition_table) \
               VALUES ('yellow/2021-03', 2, 'staging', '{table}'); \
             SELECT pg_advisory_lock(hashtextextended('tripflow.staging:' || '{table}', 0));"
        ))
        .await
        .unwrap();
    let mut client = setup.pg.client().await;
    assert_eq!(load::run(&setup.ctx, &mut client, next).await.unwrap().version, 3);
    assert!(
        table_exists(&client, &table).await,
        "a live builder's table is left alone"
    );
    drop(builder);
}

#[tokio::test]
async fn a_database_from_before_migrations_keeps_its_old_rows_aside_and_loads_versions() {
    let setup = Setup::new().await;
    let client = setup.pg.client().await;
    client
        .batch_execute(include_str!("fixtures/pre_migration_table.sql"))
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO tripflow.trips (source_id, pickup_at, dropoff_at, duration_s, pickup_date, pickup_week) \
             VALUES ('yellow/2021-03', '2021-03-01 10:00', '2021-03-01 10:10', 600, '2021-03-01', 9)",
        )
        .await
        .unwrap();
    let summary = setup.run(&setup.generate("2021-03", 5_000, 81), None).await.unwrap();
    assert_eq!(summary.load.version, 1);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, summary.rows_loaded);
    let kept: i64 = client
        .query_one("SELECT count(*) FROM tripflow.trips_unversioned", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the old rows are kept aside, not dropped");
}

/// Every version of a source with its state, in order.
async fn states(client: &tokio_postgres::Client, source_id: &str) -> Vec<(i32, String)> {
    client
        .query(
            "SELECT version, state FROM tripflow.versions WHERE source_id = $1 ORDER BY version",
            &[&source_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    let name = qualified(table);
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn is_attached(client: &tokio_postgres::Client, table: &str) -> bool {
    let name = qualified(table);
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits \
             WHERE inhrelid = to_regclass($1) AND inhparent = 'tripflow.trips'::regclass)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// The indexes of a version's table: (access method, columns, whether it is a partition of one of
/// `tripflow.trips`'s partitioned indexes).
async fn indexes_of(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String, bool)> {
    let name = qualified(table);
    client
        .query(
            "SELECT am.amname::text, \
                    (SELECT string_agg(a.attname::text, ',' ORDER BY k.n) \
                     FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum), \
                    EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
             WHERE i.indrelid = to_regclass($1) ORDER BY 1, 2",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The tables attached under a version's table: (name, rows, whether ANALYZE ran on it).
async fn shares_of(client: &tokio_postgres::Client, table: &str) -> Vec<(String, i64, bool)> {
    let mut shares = Vec::new();
    for row in client
        .query(
            "SELECT c.relname::text, s.last_analyze IS NOT NULL FROM pg_inherits h \
             JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE h.inhparent = to_regclass($1) ORDER BY c.relname",
            &[&qualified(table)],
        )
        .await
        .unwrap()
    {
        let name: String = row.get(0);
        let rows = rows_in(client, &name).await;
        shares.push((name, rows, row.get(1)));
    }
    shares
}

/// The tables of a version (its own and its shares'), attached or not.
async fn version_tables(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'tripflow'::regnamespace \
             AND relkind IN ('r', 'p') AND starts_with(relname, $1) ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn rows_in(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {}", qualified(table)), &[])
        .await
        .unwrap()
        .get(0)
}

fn qualified(table: &str) -> String {
    if table.starts_with("tripflow.") {
        table.to_string()
    } else {
        format!("tripflow.{table}")
    }
}

#[tokio::test]
async fn two_loads_of_the_same_source_at_once_are_serialised() {
    let setup = Setup::new().await;
    let summary = setup.run(&setup.generate("2021-03", 20_000, 9), None).await.unwrap();
    // Two different files of the month, prepared as two runs, then loaded and published at once.
    let mut files = Vec::new();
    for (name, seed) in [("a", 10), ("b", 11)] {
        let folder = setup.dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let file = folder.join("yellow_tripdata_2021-03.parquet");
        std::fs::rename(setup.generate("2021-03", 20_000, seed), &file).unwrap();
        files.push(file);
    }
    let (first, second) = (setup.prepare_load(&files[0]).await, setup.prepare_load(&files[1]).await);
    let (mut a, mut b) = (setup.pg.client().await, setup.pg.client().await);
    let (ra, rb) = tokio::join!(
        load::run(&setup.ctx, &mut a, first),
        load::run(&setup.ctx, &mut b, second)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Publishes are serialised whole: the one that published last is current in the database and
    // in every lake table; it replaced the other one's rows, which replaced the first load's.
    let client = setup.pg.client().await;
    let current = versions::history(&client, "yellow/2021-03")
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.current)
        .unwrap();
    let (earlier, last) = if ra.version == current.version {
        (&rb, &ra)
    } else {
        (&ra, &rb)
    };
    assert_eq!(earlier.rows_replaced, summary.rows_loaded);
    assert_eq!(last.rows_replaced, earlier.rows_loaded);
    assert_eq!(current.version, last.version);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, last.rows_loaded);
    for (table, files) in setup.live_files("2021-03").await {
        assert!(
            files
                .iter()
                .all(|k| k.ends_with(&format!("part-{}.parquet", last.run_id))),
            "{table} holds another run's files than the database's current version: {files:?}"
        );
    }
}

#[tokio::test]
async fn another_month_in_the_same_database_keeps_its_own_rows() {
    let setup = Setup::new().await;
    let march = setup.run(&setup.generate("2021-03", 10_000, 1), None).await.unwrap();
    let april = setup.run(&setup.generate("2021-04", 12_000, 2), None).await.unwrap();
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, march.rows_loaded);
    assert_eq!(setup.pg.trip_count("yellow/2021-04").await as u64, april.rows_loaded);
    assert_eq!(
        april.weekly_top5.first().map(|w| w.week),
        Some(13),
        "April 2021 starts in ISO week 13"
    );
}

#[tokio::test]
async fn the_real_march_2021_sample_loads_with_its_known_defects_rejected() {
    let Some(source) = shared_file("yellow_tripdata_2021-03_head999.parquet") else {
        return;
    };
    let setup = Setup::new().await;
    let expected = expected_from_file(&source, "2021-03".parse().unwrap());
    let summary = setup.run(&source, None).await.unwrap();
    assert_eq!(summary.rows_in, 999);
    // The sample's README: 7 pickups on 2021-02-28 and 2 trips whose dropoff equals pickup; and
    // two trips recorded at more than 100 mph, which the plausibility rule refuses.
    assert_eq!(summary.rows_rejected.outside_period, 7);
    assert_eq!(summary.rows_rejected.non_positive_duration, 2);
    assert_eq!(summary.rows_rejected.implausible_speed, 2);
    assert_eq!(summary.rows_rejected.total(), 11);
    let rejected: BTreeMap<String, u64> =
        serde_json::from_value(serde_json::to_value(summary.rows_rejected).unwrap()).unwrap();
    assert_eq!(rejected, expected.rejected);
    assert_eq!(summary.rows_loaded, 988);
    assert_eq!(
        summary.ingest.schema_variant,
        "ids=int64 timestamps=us counts=float64 airport_fee=airport_fee"
    );
    assert!((summary.avg_speed_mph.unwrap() - expected.avg_speed_mph).abs() < 1e-9 * expected.avg_speed_mph);
    assert_eq!(summary.weekly_top5, expected.weekly_top5);
}

#[tokio::test]
async fn the_real_2025_sample_with_its_later_schema_variant_loads_too() {
    let Some(source) = shared_file("yellow_tripdata_2025-01_head10k.parquet") else {
        return;
    };
    let setup = Setup::new().await;
    let summary = setup.run(&source, None).await.unwrap();
    assert_eq!(summary.rows_in, 10_000);
    assert_eq!(
        summary.ingest.schema_variant,
        "ids=int32 timestamps=ns counts=float64 airport_fee=Airport_fee extra=cbd_congestion_fee"
    );
    assert!(
        summary.rows_rejected.outside_period > 0,
        "the sample has pickups from 2024-12-31"
    );
    assert_eq!(summary.rows_loaded + summary.rows_rejected.total(), 10_000);
    let fees: i64 = setup
        .pg
        .client()
        .await
        .query_one("SELECT count(airport_fee) FROM tripflow.trips", &[])
        .await
        .unwrap()
        .get(0);
    assert!(fees > 0, "Airport_fee (capital A) is read into airport_fee");
}

/// A bad input fails with its name and leaves nothing in raw/, clean/, curated/ or the database.
async fn assert_rejected_cleanly(setup: &Setup, source: &Path, md5: Option<&str>, name: &str) {
    let err = setup.run(source, md5).await.unwrap_err();
    assert_eq!(err.name(), name, "{err}");
    for zone in ["raw/", "clean/", "curated/", "quarantine/"] {
        assert!(setup.keys(zone).await.is_empty(), "{zone} not empty after {name}");
    }
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await, 0);
}

#[tokio::test]
async fn a_checksum_mismatch_keeps_nothing() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 5_000, 3);
    assert_rejected_cleanly(
        &setup,
        &source,
        Some("00000000000000000000000000000000"),
        "ChecksumMismatch",
    )
    .await;
    // A sidecar says the same thing the flag does.
    std::fs::write(
        source.with_extension("parquet.md5"),
        "ffffffffffffffffffffffffffffffff  yellow_tripdata_2021-03.parquet\n",
    )
    .unwrap();
    assert_rejected_cleanly(&setup, &source, None, "ChecksumMismatch").await;
}

#[tokio::test]
async fn a_matching_md5_is_reported_as_verified() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 5_000, 3);
    let md5 = { tripflow::checksum::md5_hex(&std::fs::read(&source).unwrap()) };
    let summary = setup.run(&source, Some(&md5.to_uppercase())).await.unwrap();
    assert!(summary.ingest.md5_verified);
    assert_eq!(summary.md5, md5);
}

#[tokio::test]
async fn a_file_that_is_not_parquet_is_refused() {
    let setup = Setup::new().await;
    let source = setup.dir.path().join("yellow_tripdata_2021-03.parquet");
    std::fs::write(&source, "VendorID,tpep_pickup_datetime\n1,2021-03-01 00:00:00\n").unwrap();
    assert_rejected_cleanly(&setup, &source, None, "NotParquet").await;
}

#[tokio::test]
async fn a_truncated_parquet_file_is_refused() {
    let setup = Setup::new().await;
    let good = setup.generate("2021-03", 5_000, 3);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&good, &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected_cleanly(&setup, &good, None, "TruncatedParquet").await;
}

#[tokio::test]
async fn a_green_taxi_file_is_schema_drift() {
    let setup = Setup::new().await;
    let source = setup.dir.path().join("yellow_tripdata_2021-03.parquet");
    std::fs::write(&source, tripflow_tests::data::green_taxi_parquet()).unwrap();
    let err = setup.run(&source, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::SchemaDrift(d) if d.column == "tpep_pickup_datetime" && d.found.contains("green-taxi")),
        "{err}"
    );
    assert_rejected_cleanly(&setup, &source, None, "SchemaDrift").await;
}

#[tokio::test]
async fn a_file_without_a_month_in_its_name_is_unknown_period() {
    let setup = Setup::new().await;
    let good = setup.generate("2021-03", 1_000, 3);
    let renamed = setup.dir.path().join("trips.parquet");
    std::fs::rename(&good, &renamed).unwrap();
    assert_rejected_cleanly(&setup, &renamed, None, "UnknownPeriod").await;
}

#[tokio::test]
async fn too_many_rejected_rows_publishes_nothing_but_the_refusal_report() {
    let config = PipelineConfig {
        max_rejected_ratio: 0.0001,
        ..PipelineConfig::default()
    };
    let setup = Setup::with_config(config).await;
    let source = setup.generate("2021-03", 20_000, 4);
    let err = setup.run(&source, None).await.unwrap_err();
    assert_eq!(err.name(), "TooManyRejectedRows");
    for zone in ["raw/", "clean/", "curated/", "quarantine/"] {
        assert!(setup.keys(zone).await.is_empty(), "{zone} not empty");
    }
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await, 0);
    // The counts stay inspectable, in the refused run's own report.
    let reports = setup.keys("reports/yellow/2021-03/runs/").await;
    let refused = reports.iter().find(|k| k.ends_with("/clean-refused.json")).unwrap();
    let report: serde_json::Value = serde_json::from_slice(
        &tripflow::storage::get_bytes(setup.ctx.store.as_ref(), refused)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["verdict"], "TooManyRejectedRows");
    assert!(report["rows_rejected"]["outside_period"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_raw_file_changed_after_ingest_is_an_integrity_error() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 5_000, 3);
    let summary = setup.run(&source, None).await.unwrap();
    let raw = setup.dir.path().join("zones").join(&summary.ingest.raw_key);
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&raw, bytes).unwrap();
    // A run of its own: a rerun of the published run would answer with its report.
    let cleaned = tripflow::stages::clean::run(&setup.ctx, clean_input(&summary.ingest, "a-second-clean")).await;
    assert_eq!(cleaned.unwrap_err().name(), "IntegrityError");
}

#[tokio::test]
async fn a_clean_file_changed_after_clean_fails_transform_as_an_integrity_error_and_writes_nothing() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 20_000, 12);
    // A run not yet published: the rerun of a published one answers with its report unread.
    let prepared = setup.prepare(&source).await;
    // One bit in the middle of the clean file: its pages may still decode, its MD5 cannot match.
    let clean = setup.dir.path().join("zones").join(&prepared.cleaned.clean_key);
    let mut bytes = std::fs::read(&clean).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&clean, bytes).unwrap();
    let curated_before = setup.files("curated/").await;

    transform_again_fails_the_checksum_check(&setup, &prepared.cleaned).await;
    assert!(
        setup.files("curated/").await == curated_before,
        "a curated file was written"
    );
}

/// Clean's input for an ingested March, as run `run_id`.
fn clean_input(ingest: &tripflow::stages::ingest::IngestOutput, run_id: &str) -> tripflow::stages::clean::CleanInput {
    tripflow::stages::clean::CleanInput {
        dataset: "yellow".into(),
        period: "2021-03".parse().unwrap(),
        raw_key: ingest.raw_key.clone(),
        manifest_key: ingest.manifest_key.clone(),
        max_rejected_ratio: None,
        allow_shrink: false,
        run_id: run_id.into(),
    }
}

/// Transform's input after `clean`.
fn transform_input(clean: &tripflow::stages::clean::CleanOutput) -> tripflow::stages::transform::TransformInput {
    tripflow::stages::transform::TransformInput {
        dataset: "yellow".into(),
        period: "2021-03".parse().unwrap(),
        clean_key: clean.clean_key.clone(),
        manifest_key: clean.manifest_key.clone(),
    }
}

/// Runs transform again over the run's clean output, which must fail its check against the clean
/// manifest.
async fn transform_again_fails_the_checksum_check(setup: &Setup, clean: &tripflow::stages::clean::CleanOutput) {
    let err = tripflow::stages::transform::run(&setup.ctx, transform_input(clean))
        .await
        .unwrap_err();
    assert_eq!(err.name(), "IntegrityError", "{err}");
    assert!(err.to_string().contains("CRC64-NVME"), "{err}");
}

#[tokio::test]
async fn a_day_of_more_row_groups_than_a_file_holds_goes_on_in_parts_that_all_load() {
    use arrow::array::{Array, Float64Array, RecordBatch};
    use parquet::arrow::ArrowWriter;

    // Row groups of 10 rows: each day of this month closes some 120 of them, 4 files' worth.
    let setup = Setup::with_config(PipelineConfig {
        row_group_rows: 10,
        ..PipelineConfig::default()
    })
    .await;
    let source = setup.generate("2021-03", 40_000, 13);
    let expected = expected_from_file(&source, "2021-03".parse().unwrap());
    let summary = setup.run(&source, None).await.unwrap();
    assert_eq!(summary.rows_loaded, expected.kept);
    let avg = summary.avg_speed_mph.unwrap();
    assert!((avg - expected.avg_speed_mph).abs() < 1e-9 * expected.avg_speed_mph);
    assert_eq!(summary.weekly_top5, expected.weekly_top5);
    assert_eq!(summary.transform.partitions, 31, "partitions are days, not files");

    let run = &summary.ingest.run_id;
    let curated = setup.live_files("2021-03").await["curated/yellow/"].clone();
    let march_7: Vec<&String> = curated
        .iter()
        .filter(|k| k.starts_with("curated/yellow/pickup_date=2021-03-07/"))
        .collect();
    assert!(march_7.len() >= 3, "{march_7:?}");
    assert!(march_7.iter().any(|k| k.ends_with(&format!("/part-{run}.parquet"))));
    assert!(march_7.iter().any(|k| k.ends_with(&format!("/part-{run}.1.parquet"))));
    for key in &curated {
        let file = std::fs::File::open(setup.dir.path().join("zones").join(key)).unwrap();
        let row_groups = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .num_row_groups();
        // A day's file is finished after the write that closes its 32nd row group; that write and
        // the footer may close a few more.
        assert!(row_groups <= 40, "{key} has {row_groups} row groups");
    }

    // A rerun of a transform writes the keys its first attempt wrote, the files load is to read.
    // From a clean object that fails its check it finishes no part early: every file keeps its
    // bytes. The clean file of a second run, prepared but not published, is rewritten with every
    // distance doubled, so it decodes to other rows and only the check can tell.
    let prepared = setup.prepare(&source).await;
    let clean = setup.dir.path().join("zones").join(&prepared.cleaned.clean_key);
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&clean).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&clean).unwrap(), batches[0].schema(), None).unwrap();
    for batch in batches {
        let distance = batch.schema().index_of("trip_distance").unwrap();
        let doubled: Float64Array =
            arrow::compute::kernels::numeric::mul(batch.column(distance), &Float64Array::new_scalar(2.0))
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
        let mut columns = batch.columns().to_vec();
        columns[distance] = Arc::new(doubled);
        writer
            .write(&RecordBatch::try_new(batch.schema(), columns).unwrap())
            .unwrap();
    }
    writer.close().unwrap();
    let curated_before = setup.files("curated/").await;
    assert!(
        curated_before
            .keys()
            .any(|k| k.ends_with(&format!("/part-{}.1.parquet", prepared.cleaned.run_id)))
    );
    transform_again_fails_the_checksum_check(&setup, &prepared.cleaned).await;
    assert!(
        setup.files("curated/").await == curated_before,
        "a curated file was written"
    );
}

#[tokio::test]
async fn a_rerun_of_a_published_runs_clean_or_transform_answers_with_its_report_and_writes_nothing() {
    use tripflow::config::{LocationSwaps, RuleLimits};
    use tripflow::stages::{clean, transform};

    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 8_000, 21);
    let summary = setup.run(&source, None).await.unwrap();
    let before = setup.snapshot().await;
    // Another build over the same zones, a console redrive say: with other rule limits and no
    // location swaps, whatever it wrote under the run's keys would differ from the live files.
    let other_build = StageContext::new(
        setup.ctx.store.clone(),
        PipelineConfig {
            rules: RuleLimits {
                max_speed_mph: 20.0,
                ..RuleLimits::default()
            },
            location_swaps: LocationSwaps::none(),
            ..PipelineConfig::default()
        },
    );
    let cleaned = clean::run(&other_build, clean_input(&summary.ingest, &summary.ingest.run_id))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&cleaned).unwrap(),
        serde_json::to_value(&summary.clean).unwrap()
    );
    let transformed = transform::run(&other_build, transform_input(&summary.clean))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&transformed).unwrap(),
        serde_json::to_value(&summary.transform).unwrap()
    );
    assert!(
        transformed.location_ids_swapped > 0,
        "the report is the published run's"
    );
    assert_eq!(setup.snapshot().await, before, "no zone and no lake table changed");
}

#[tokio::test]
async fn a_count_mismatch_rolls_back_and_keeps_the_previous_load() {
    let refused = LoadToRefuse::new(8_000, 6).await;
    // Claim one more curated row than the files hold: the database count cannot match.
    let manifest_path = refused.setup.dir.path().join("zones").join(&refused.next.manifest_key);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["output"]["rows_curated"] = serde_json::json!(refused.summary.rows_curated + 1);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    refused.refused_as("LoadCountMismatch").await;
}

// ---------------------------------------------------------------------------------------------
// Integrity of the bytes inside a source: data-page CRCs.

/// `source` rewritten as another writer would write it: plain, uncompressed pages, each with its CRC.
fn with_page_crcs(source: &Path) -> Vec<u8> {
    use arrow::array::RecordBatchReader;
    use parquet::arrow::ArrowWriter;
    use tripflow_tests::parquet_crc::{plain_writer_properties, with_page_crcs};
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(source).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut plain = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut plain, reader.schema(), Some(plain_writer_properties())).unwrap();
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.close().unwrap();
    with_page_crcs(&plain)
}

/// Every object of the zones a run publishes, with its MD5, and a fingerprint of every trip row.
async fn zones_and_rows(setup: &Setup) -> (Vec<(String, String)>, String) {
    let mut objects = Vec::new();
    for zone in ["clean/", "quarantine/", "curated/"] {
        for key in setup.keys(zone).await {
            let bytes = tripflow::storage::get_bytes(setup.ctx.store.as_ref(), &key)
                .await
                .unwrap();
            objects.push((key, tripflow::checksum::md5_hex(&bytes)));
        }
    }
    let rows: String = setup
        .pg
        .client()
        .await
        .query_one(
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
             FROM tripflow.trips t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (objects, rows)
}

#[tokio::test]
async fn a_flipped_byte_inside_a_data_page_is_corrupt_source_and_changes_nothing() {
    let setup = Setup::new().await;
    // A good month with page CRCs loads: the CRCs are read and they match.
    let good = setup.generate("2021-03", 6_000, 3);
    let with_crcs = with_page_crcs(&good);
    let pages = tripflow_tests::parquet_crc::column_pages(&with_crcs, 0, "trip_distance");
    assert!(pages.iter().all(|p| p.crc.is_some()), "every page carries its CRC");
    std::fs::write(&good, &with_crcs).unwrap();
    let loaded = setup.run(&good, None).await.unwrap();
    assert_eq!(loaded.rows_in, 6_000);
    let before = zones_and_rows(&setup).await;
    assert!(!before.0.is_empty() && before.1.starts_with(&format!("{}:", loaded.rows_loaded)));

    // Another file of the same month, one byte flipped in the middle of a trip_distance data page:
    // without the CRC that is one wrong distance loaded and nothing said.
    let other = setup.generate("2021-03", 6_000, 9);
    let mut bytes = with_page_crcs(&other);
    let page = tripflow_tests::parquet_crc::column_pages(&bytes, 0, "trip_distance")[0].clone();
    bytes[(page.body.start + page.body.end) / 2] ^= 0x10;
    std::fs::write(&other, &bytes).unwrap();

    let err = setup.run(&other, None).await.unwrap_err();
    assert_eq!(err.name(), "CorruptSource", "{err}");
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains("raw/yellow/2021-03/") && message.contains("CRC"),
        "{message}"
    );
    assert_eq!(
        zones_and_rows(&setup).await,
        before,
        "clean, quarantine, curated and the trips are as before"
    );
    let staging = setup.dir.path().join("zones/.staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0, "no staging litter");
}

// ---------------------------------------------------------------------------------------------
// Nothing hangs: an HTTPS source that accepts and never answers.

/// One-second HTTP timeouts, a local store, no database: the ingest stage alone.
fn ingest_ctx(dir: &Path) -> StageContext {
    let config = PipelineConfig {
        http_connect_timeout_s: 1.0,
        http_read_timeout_s: 1.0,
        ..PipelineConfig::default()
    };
    StageContext::new(Arc::new(LocalStore::open(dir.join("zones")).unwrap()), config)
}

async fn ingest_url(ctx: &StageContext, url: &str, md5: Option<&str>, allow_http: bool) -> (Error, f64) {
    let started = std::time::Instant::now();
    let input = IngestInput {
        source: url.to_string(),
        expected_md5: md5.map(str::to_string),
        allow_http,
        ..IngestInput::default()
    };
    let err = tripflow::stages::ingest::run(ctx, input).await.unwrap_err();
    (err, started.elapsed().as_secs_f64())
}

#[tokio::test]
async fn an_https_source_that_never_answers_times_out_naming_the_url_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ingest_ctx(dir.path());
    let silent = Stalling::start(None).await;
    let url = format!("https://{}/trip-data/yellow_tripdata_2021-03.parquet", silent.addr);

    // The sidecar is asked for first; when it is the sidecar that hangs, the error names the sidecar.
    let (err, seconds) = ingest_url(&ctx, &url, None, false).await;
    assert_eq!(err.name(), "Timeout", "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&format!("{url}.md5")), "{err}");
    assert!(seconds < 5.0, "gave up after {seconds:.1} s, configured 1 s");

    // With the MD5 given there is no sidecar: the file's own URL is what timed out.
    let (err, seconds) = ingest_url(&ctx, &url, Some("0123456789abcdef0123456789abcdef"), false).await;
    assert!(
        matches!(&err, Error::Timeout { what, after_s } if what.ends_with(&url) && *after_s == 1.0),
        "{err}"
    );
    assert!(seconds < 5.0, "gave up after {seconds:.1} s, configured 1 s");
    assert!(ctx.store.list("raw/").await.unwrap().is_empty(), "nothing in raw/");
    assert!(ctx.store.list("reports/").await.unwrap().is_empty(), "no manifest");
    assert_eq!(std::fs::read_dir(dir.path().join("zones/.staging")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_source_that_stalls_mid_body_times_out_reading_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ingest_ctx(dir.path());
    // Headers and the first bytes of a Parquet file, then silence. Plain HTTP, so the read timeout
    // (not the TLS handshake) is what runs out.
    let stalled = Stalling::start(Some(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\nPAR1\x15\x04",
    ))
    .await;
    let url = format!("http://{}/yellow_tripdata_2021-03.parquet", stalled.addr);
    let (err, seconds) = ingest_url(&ctx, &url, Some("0123456789abcdef0123456789abcdef"), true).await;
    assert!(
        matches!(&err, Error::Timeout { what, .. } if what == &format!("reading from {url}")),
        "{err}"
    );
    assert!(seconds < 5.0, "gave up after {seconds:.1} s, configured 1 s");
    assert!(ctx.store.list("raw/").await.unwrap().is_empty(), "nothing in raw/");
    assert_eq!(std::fs::read_dir(dir.path().join("zones/.staging")).unwrap().count(), 0);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed_and_a_refused_connection_keeps_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ingest_ctx(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let url = format!("http://{addr}/yellow_tripdata_2021-03.parquet");
    let (err, _) = ingest_url(&ctx, &url, None, false).await;
    assert_eq!(err.name(), "InvalidInput", "{err}");
    assert!(err.to_string().contains("--allow-http"), "{err}");

    // Allowed, but nothing listens: SourceUnavailable naming the sidecar's URL and saying why.
    let (err, _) = ingest_url(&ctx, &url, None, true).await;
    assert_eq!(err.name(), "SourceUnavailable", "{err}");
    let message = err.to_string().to_lowercase();
    assert!(message.contains(&format!("{url}.md5")), "{message}");
    assert!(message.contains("refused"), "the cause is kept: {message}");
}

#[tokio::test]
async fn a_publish_waits_while_another_publish_of_the_month_holds_its_lock() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 10_000, 12);
    setup.run(&source, None).await.unwrap();
    let next = setup.prepare_load(&source).await;
    let before = setup.snapshot().await;
    // Another publisher of March, mid-way: it holds the month's publish lock.
    let other = setup.pg.client().await;
    versions::lock_publish(&other, "yellow/2021-03").await.unwrap();

    let mut loader = setup.pg.client().await;
    let load = load::run(&setup.ctx, &mut loader, next);
    tokio::pin!(load);
    let waited = tokio::time::timeout(std::time::Duration::from_secs(3), &mut load).await;
    assert!(
        waited.is_err(),
        "the load published while another publish held the month"
    );
    let client = setup.pg.client().await;
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "current".to_string()), (2, "staged".to_string())],
        "built, not swapped in"
    );
    assert_eq!(setup.snapshot().await, before, "no zone changed while it waited");

    versions::unlock_publish(&other, "yellow/2021-03").await;
    assert_eq!(load.await.unwrap().version, 2);
    assert_eq!(
        states(&client, "yellow/2021-03").await,
        [(1, "previous".to_string()), (2, "current".to_string())]
    );
}

#[tokio::test]
async fn an_unwritable_zone_fails_the_run_as_storage_refused_and_changes_nothing_readers_see() {
    let setup = Setup::new().await;
    setup.run(&setup.generate("2021-03", 10_000, 13), None).await.unwrap();
    let source = setup.generate("2021-03", 10_000, 14);
    for zone in ["curated/", "quarantine/", "reports/"] {
        let before = setup.snapshot().await;
        let refusing = StageContext::new(
            Arc::new(Intercepted::new(setup.ctx.store.clone()).refusing_writes_under(zone)),
            PipelineConfig::default(),
        );
        let mut client = setup.pg.client().await;
        let input = IngestInput {
            source: source.display().to_string(),
            ..IngestInput::default()
        };
        let err = tripflow::pipeline::run_all(&refusing, &mut client, input)
            .await
            .unwrap_err();
        assert_eq!(err.name(), "StorageRefused", "{zone}: {err}");
        assert!(!err.is_retryable());
        let after = setup.snapshot().await;
        // A raw copy of the refused run may stay until the next run sweeps it; nothing else moves.
        let without_raw = |s: &tripflow_tests::local::Snapshot| {
            s.objects
                .iter()
                .filter(|(k, _)| !k.starts_with("raw/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(without_raw(&after), without_raw(&before), "{zone}");
        assert_eq!(
            (&after.trips, &after.answers),
            (&before.trips, &before.answers),
            "{zone}"
        );
    }
}
