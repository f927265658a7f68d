//! The whole pipeline over a local folder and a real PostgreSQL: generated months end to end with
//! answers computed independently here, reruns, the real samples, and every kind of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use tripflow::Error;
use tripflow::config::PipelineConfig;
use tripflow::stages::load;
use tripflow::stages::load::LoadInput;
use tripflow_tests::data::shared_file;
use tripflow_tests::expected::expected_from_file;
use tripflow_tests::local::Setup;

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
    assert_eq!(
        setup.keys("clean/").await,
        ["clean/yellow/period=2021-03/yellow_tripdata_2021-03.parquet"]
    );
    assert_eq!(setup.keys("quarantine/").await.len(), 1);
    assert_eq!(setup.keys("curated/yellow/pickup_date=2021-03-").await.len(), 31);
    assert_eq!(
        setup.keys("reports/").await,
        [
            "reports/yellow/2021-03/clean.json".to_string(),
            "reports/yellow/2021-03/load.json".to_string(),
            format!("reports/yellow/2021-03/runs/{}/ingest.json", summary.ingest.run_id),
            "reports/yellow/2021-03/transform.json".to_string(),
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
    assert_eq!(setup.keys("curated/").await.len(), 31);
}

#[tokio::test]
async fn two_loads_of_the_same_source_at_once_are_serialised() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 20_000, 9);
    let summary = setup.run(&source, None).await.unwrap();
    let input = LoadInput {
        dataset: "yellow".into(),
        period: summary.load.period,
        manifest_key: summary.transform.manifest_key.clone(),
    };
    let (mut a, mut b) = (setup.pg.client().await, setup.pg.client().await);
    let (ra, rb) = tokio::join!(
        load::run(&setup.ctx, &mut a, input.clone()),
        load::run(&setup.ctx, &mut b, input)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // The second to take the lock saw the first one's rows, never a mix.
    assert_eq!(ra.rows_replaced + rb.rows_replaced, 2 * summary.rows_loaded);
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await as u64, summary.rows_loaded);
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
    let md5 = {
        use md5_hex::hex_of;
        hex_of(&std::fs::read(&source).unwrap())
    };
    let summary = setup.run(&source, Some(&md5.to_uppercase())).await.unwrap();
    assert!(summary.ingest.md5_verified);
    assert_eq!(summary.md5, md5);
}

mod md5_hex {
    pub fn hex_of(bytes: &[u8]) -> String {
        let mut counter = tripflow::checksum::Md5Counter::new();
        counter.update(bytes);
        counter.finish_hex()
    }
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
    let cleaned = tripflow::stages::clean::run(
        &setup.ctx,
        tripflow::stages::clean::CleanInput {
            dataset: "yellow".into(),
            period: "2021-03".parse().unwrap(),
            raw_key: summary.ingest.raw_key.clone(),
            manifest_key: summary.ingest.manifest_key.clone(),
            max_rejected_ratio: None,
            allow_shrink: false,
            run_id: summary.ingest.run_id.clone(),
        },
    )
    .await;
    assert_eq!(cleaned.unwrap_err().name(), "IntegrityError");
}

#[tokio::test]
async fn a_count_mismatch_rolls_back_and_keeps_the_previous_load() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 8_000, 6);
    let summary = setup.run(&source, None).await.unwrap();
    // Claim one more curated row than the files hold: the database count cannot match.
    let manifest_path = setup.dir.path().join("zones").join(&summary.transform.manifest_key);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["output"]["rows_curated"] = serde_json::json!(summary.rows_curated + 1);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let mut client = setup.pg.client().await;
    let input = LoadInput {
        dataset: "yellow".into(),
        period: summary.load.period,
        manifest_key: summary.transform.manifest_key.clone(),
    };
    let err = load::run(&setup.ctx, &mut client, input).await.unwrap_err();
    assert_eq!(err.name(), "LoadCountMismatch");
    assert_eq!(
        setup.pg.trip_count("yellow/2021-03").await as u64,
        summary.rows_loaded,
        "previous rows intact"
    );
}
