//! The Lambda handlers against a real S3, Glue and Step Functions API (moto in server mode) and a
//! real PostgreSQL: each handler driven with its real input type, the trigger's de-duplication, the
//! S3 store's ranged reads and multipart writes, and bad inputs arriving through S3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_lambda_events::event::s3::S3Event;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tempfile::TempDir;
use tripflow::checksum::{ChecksumCounter, md5_hex};
use tripflow::config::{DbSettings, PipelineConfig};
use tripflow::generator::{GenSpec, write_month};
use tripflow::stages::Verdict;
use tripflow::stages::clean::{CleanInput, CleanOutput};
use tripflow::stages::ingest::{IngestInput, IngestOutput};
use tripflow::stages::load::{LoadInput, LoadOutput};
use tripflow::stages::transform::{PICKUP_DATE, TransformInput, TransformOutput, curated_schema};
use tripflow::storage::ObjectStore;
use tripflow_aws::env::{DbSource, GlueTable, LoadEnv, StageEnv, TriggerEnv};
use tripflow_aws::handlers::{
    LoadState, StageState, TriggerState, handle_clean, handle_ingest, handle_load, handle_transform, handle_trigger,
};
use tripflow_aws::s3::{MD5_METADATA_KEY, PART_BYTES, S3Store, S3Timeouts};
use tripflow_aws::trigger::TriggerEvent;
use tripflow_tests::intercept::Intercepted;
use tripflow_tests::moto::Moto;
use tripflow_tests::pg::TestPostgres;

const BUCKET: &str = "tripflow-data";
const MONTH: &str = "2021-03";
const LANDING_KEY: &str = "landing/yellow_tripdata_2021-03.parquet";
/// Between two looks at something that happens in the background (bounded by a deadline each time).
const POLL: Duration = Duration::from_millis(20);

/// What Step Functions does between two tasks: the output's JSON becomes the next input.
fn pass_on<I: DeserializeOwned>(output: &impl Serialize) -> I {
    serde_json::from_value(serde_json::to_value(output).unwrap()).unwrap()
}

/// One moto server with the pipeline bucket, and the stage state of a deployed function over it.
struct World {
    moto: Moto,
    s3: aws_sdk_s3::Client,
    sdk: aws_config::SdkConfig,
    state: StageState,
    dir: TempDir,
}

impl World {
    async fn new() -> Self {
        let moto = Moto::start();
        let s3 = moto.create_bucket(BUCKET, true).await;
        let sdk = moto.sdk_config().await;
        let state = StageState::from_parts(
            &sdk,
            StageEnv {
                bucket: BUCKET.into(),
                pipeline: PipelineConfig::default(),
                s3_timeouts: S3Timeouts::default(),
                lease_ttl: tripflow::lease::DEFAULT_TTL,
            },
        );
        World {
            moto,
            s3,
            sdk,
            state,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        self.state.ctx.store.clone()
    }

    fn generate(&self, rows: usize, seed: u64) -> Vec<u8> {
        let path: PathBuf = self.dir.path().join(format!("gen-{seed}-{rows}.parquet"));
        write_month(
            &path,
            GenSpec {
                period: MONTH.parse().unwrap(),
                rows,
                seed,
            },
        )
        .unwrap();
        std::fs::read(path).unwrap()
    }

    /// Uploads like an outside producer would (a plain PutObject), returning the version id and ETag.
    async fn land(&self, key: &str, body: &[u8]) -> (Option<String>, Option<String>) {
        let put = self
            .s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap();
        (put.version_id().map(str::to_string), put.e_tag().map(str::to_string))
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.store().list(prefix).await.unwrap()
    }

    async fn open_uploads(&self) -> usize {
        let uploads = self.s3.list_multipart_uploads().bucket(BUCKET).send().await.unwrap();
        uploads.uploads().len()
    }

    async fn ingest(&self, md5: Option<&str>) -> Result<IngestOutput, lambda_runtime::Diagnostic> {
        let input: IngestInput = serde_json::from_value(
            json!({"source": format!("s3://{BUCKET}/{LANDING_KEY}"), "expected_md5": md5, "period": null}),
        )
        .unwrap();
        handle_ingest(&self.state, input).await
    }

    /// Ingest, clean and transform through their handlers, each fed the previous one's output.
    async fn run_to_curated(&self, rows: usize) -> TransformOutput {
        let body = self.generate(rows, 11);
        self.land(LANDING_KEY, &body).await;
        let ingested = self.ingest(Some(&md5_hex(&body))).await.unwrap();
        assert!(ingested.md5_verified);
        let cleaned: CleanOutput = handle_clean(&self.state, pass_on(&ingested)).await.unwrap();
        assert_eq!(cleaned.verdict, Verdict::Ok);
        handle_transform(&self.state, pass_on::<TransformInput>(&cleaned))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_landed_month_goes_through_the_ingest_clean_and_transform_handlers_on_s3() {
    let world = World::new().await;
    let body = world.generate(40_000, 7);
    world.land(LANDING_KEY, &body).await;

    let ingested = world.ingest(Some(&md5_hex(&body))).await.unwrap();
    assert_eq!((ingested.rows, ingested.size_bytes), (40_000, body.len() as u64));
    assert_eq!(ingested.md5, md5_hex(&body));
    let cleaned: CleanOutput = handle_clean(&world.state, pass_on::<CleanInput>(&ingested))
        .await
        .unwrap();
    assert_eq!(cleaned.rows_in, 40_000);
    assert!(cleaned.rows_kept > 39_000 && cleaned.rows_kept < 40_000, "{cleaned:?}");
    let transformed = handle_transform(&world.state, pass_on::<TransformInput>(&cleaned))
        .await
        .unwrap();
    assert_eq!(transformed.rows_curated, cleaned.rows_kept);
    let curated = world.keys(&transformed.curated_prefix).await;
    assert_eq!(curated.len(), transformed.partitions);
    assert!(curated.len() >= 28, "a partition per pickup day: {curated:?}");

    // Every written object carries its MD5, and it is the MD5 of what S3 serves.
    for zone in ["raw/", "clean/", "quarantine/", "curated/", "reports/"] {
        let keys = world.keys(zone).await;
        assert!(!keys.is_empty(), "{zone} is empty");
        for key in keys {
            let head = world.s3.head_object().bucket(BUCKET).key(&key).send().await.unwrap();
            let recorded = head.metadata().and_then(|m| m.get(MD5_METADATA_KEY)).cloned();
            let served = tripflow::storage::get_bytes(world.store().as_ref(), &key)
                .await
                .unwrap();
            assert_eq!(recorded, Some(md5_hex(&served)), "{key}");
        }
    }
}

#[tokio::test]
async fn the_load_handler_checks_the_glue_table_and_loads_the_month_into_postgres() {
    let world = World::new().await;
    let pg = TestPostgres::start().await;
    let transformed = world.run_to_curated(20_000).await;
    let glue = aws_sdk_glue::Client::new(&world.sdk);
    create_curated_table(&glue, &format!("s3://{BUCKET}/curated/yellow/"), &curated_columns()).await;
    let state = load_state(&world, &pg, true).await;

    let input: LoadInput = pass_on(&transformed);
    let loaded: LoadOutput = handle_load(&state, input.clone()).await.unwrap();
    assert_eq!(loaded.rows_loaded, transformed.rows_curated);
    assert_eq!(loaded.rows_replaced, 0);
    assert_eq!(pg.trip_count("yellow/2021-03").await as u64, transformed.rows_curated);

    // The load published the run on S3: every lake table is a Delta table whose log lists exactly
    // the run's files for the month (delta-rs committing through moto's conditional puts).
    let store = state.stage.ctx.store.clone();
    let month = "2021-03".parse().unwrap();
    // The other stages' store never opens a Delta table: their binaries leave delta-rs out.
    let without_lake = tripflow::lake::live_files(world.store().as_ref(), &tripflow::lake::tables("yellow")[0], month)
        .await
        .unwrap_err();
    assert_eq!(without_lake.name(), "InvalidInput", "{without_lake}");
    assert!(without_lake.to_string().contains("with_lake"), "{without_lake}");
    for table in tripflow::lake::tables("yellow") {
        let live = tripflow::lake::live_files(store.as_ref(), &table, month).await.unwrap();
        assert!(!live.is_empty(), "{} has no live files", table.root());
        assert!(
            live.iter()
                .all(|f| f.key.contains(&format!("part-{}", transformed.run_id))),
            "{live:?}"
        );
    }
    let curated = tripflow::lake::LakeTable::new(tripflow::lake::Zone::Curated, "yellow");
    let live_rows: u64 = tripflow::lake::live_files(store.as_ref(), &curated, month)
        .await
        .unwrap()
        .iter()
        .map(|f| f.rows.unwrap())
        .sum();
    assert_eq!(live_rows, transformed.rows_curated);

    // The Lambda's publish left the month's quality report beside the JSON reports.
    let page = tripflow::storage::get_bytes(store.as_ref(), "reports/yellow/2021-03/quality.html")
        .await
        .unwrap();
    let page = String::from_utf8(page.to_vec()).unwrap();
    let avg = tripflow::db::answers(&pg.client().await, "yellow/2021-03")
        .await
        .unwrap()
        .avg_speed_mph
        .unwrap();
    assert!(page.contains(&format!("average {avg:.2} mph")), "{page}");
    let loaded_card = format!(
        ">{}</div><div class=\"k\">rows loaded",
        tripflow::quality::thousands(loaded.rows_loaded)
    );
    assert!(page.contains(&loaded_card), "{page}");

    // A retry of the same load (Step Functions after a lost reply) finds the run published and
    // returns the same outcome: no second version, still one copy of each trip.
    let again = handle_load(&state, input).await.unwrap();
    assert_eq!(again, loaded);
    assert_eq!(pg.trip_count("yellow/2021-03").await as u64, transformed.rows_curated);
}

#[tokio::test]
async fn a_glue_table_that_disagrees_with_the_curated_schema_fails_load_with_schema_drift() {
    let world = World::new().await;
    let pg = TestPostgres::start().await;
    let transformed = world.run_to_curated(5_000).await;
    let glue = aws_sdk_glue::Client::new(&world.sdk);
    let mut columns = curated_columns();
    columns.retain(|c| c != "speed_mph");
    create_curated_table(&glue, &format!("s3://{BUCKET}/curated/yellow/"), &columns).await;
    let state = load_state(&world, &pg, true).await;

    let err = handle_load(&state, pass_on(&transformed)).await.unwrap_err();
    assert_eq!(err.error_type, "SchemaDrift");
    assert!(err.error_message.contains("speed_mph"), "{}", err.error_message);
    assert_eq!(
        pg.trip_count("yellow/2021-03").await,
        0,
        "nothing loaded when the catalog disagrees"
    );
}

#[tokio::test]
async fn a_missing_glue_table_is_schema_drift_too() {
    let world = World::new().await;
    let pg = TestPostgres::start().await;
    let transformed = world.run_to_curated(5_000).await;
    let glue = aws_sdk_glue::Client::new(&world.sdk);
    glue.create_database()
        .database_input(
            aws_sdk_glue::types::DatabaseInput::builder()
                .name("tripflow")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let state = load_state(&world, &pg, true).await;
    let err = handle_load(&state, pass_on(&transformed)).await.unwrap_err();
    assert_eq!(err.error_type, "SchemaDrift", "{}", err.error_message);
}

#[tokio::test]
async fn a_dropped_database_connection_costs_at_most_one_retryable_failure() {
    let world = World::new().await;
    let pg = TestPostgres::start().await;
    let transformed = world.run_to_curated(5_000).await;
    let state = load_state(&world, &pg, false).await;
    let input: LoadInput = pass_on(&transformed);
    handle_load(&state, input.clone()).await.unwrap();

    // A failover or idle timeout, as the function sees it: the server ends its session.
    let admin = pg.client().await;
    let ended: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'tripflow-load' OR (datname = current_database() AND pid <> pg_backend_pid())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 1, "the load function's session was not found");

    match handle_load(&state, input.clone()).await {
        Ok(loaded) => assert_eq!(loaded.rows_loaded, transformed.rows_curated),
        Err(err) => {
            assert_eq!(err.error_type, "DatabaseUnavailable", "{}", err.error_message);
            let loaded = handle_load(&state, input).await.unwrap();
            assert_eq!(loaded.rows_loaded, transformed.rows_curated);
        }
    }
    assert_eq!(pg.trip_count("yellow/2021-03").await as u64, transformed.rows_curated);
}

#[tokio::test]
async fn a_database_down_at_init_fails_the_invocation_as_retryable_not_the_init() {
    let world = World::new().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = LoadEnv {
        stage: StageEnv {
            bucket: BUCKET.into(),
            pipeline: PipelineConfig::default(),
            s3_timeouts: S3Timeouts::default(),
            lease_ttl: tripflow::lease::DEFAULT_TTL,
        },
        db: DbSource::Url(format!("postgres://tripflow@127.0.0.1:{port}/tripflow")),
        ca_file: None,
        glue: None,
        db_settings: DbSettings::default(),
    };
    let state = LoadState::from_parts(&world.sdk, env).await.unwrap();
    let input = LoadInput {
        dataset: "yellow".into(),
        period: MONTH.parse().unwrap(),
        manifest_key: "reports/yellow/2021-03/runs/r1/transform.json".into(),
    };
    let err = handle_load(&state, input).await.unwrap_err();
    assert_eq!(err.error_type, "DatabaseUnavailable", "{}", err.error_message);
}

#[tokio::test]
async fn a_database_that_accepts_and_never_answers_fails_the_load_as_a_timeout() {
    let world = World::new().await;
    let silent = tripflow_tests::faults::Stalling::start(None).await;
    let port = silent.addr.port();
    let env = LoadEnv {
        stage: StageEnv {
            bucket: BUCKET.into(),
            pipeline: PipelineConfig::default(),
            s3_timeouts: S3Timeouts::default(),
            lease_ttl: tripflow::lease::DEFAULT_TTL,
        },
        db: DbSource::Url(format!("postgres://tripflow@127.0.0.1:{port}/tripflow")),
        ca_file: None,
        glue: None,
        db_settings: DbSettings {
            connect_timeout: Duration::from_secs(1),
            ..DbSettings::default()
        },
    };
    let state = LoadState::from_parts(&world.sdk, env).await.unwrap();
    let input = LoadInput {
        dataset: "yellow".into(),
        period: MONTH.parse().unwrap(),
        manifest_key: "reports/yellow/2021-03/runs/r1/transform.json".into(),
    };
    let started = Instant::now();
    let err = handle_load(&state, input).await.unwrap_err();
    assert_eq!(err.error_type, "Timeout", "{}", err.error_message);
    assert!(
        err.error_message.contains("connecting to PostgreSQL"),
        "{}",
        err.error_message
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

fn curated_columns() -> Vec<String> {
    let mut columns: Vec<String> = curated_schema()
        .fields()
        .iter()
        .map(|f| f.name().to_ascii_lowercase())
        .collect();
    columns.push(PICKUP_DATE.into());
    columns
}

/// Creates the table a crawler of `curated/yellow/` would: data columns plus the partition key.
async fn create_curated_table(glue: &aws_sdk_glue::Client, location: &str, columns: &[String]) {
    use aws_sdk_glue::types::{Column, DatabaseInput, StorageDescriptor, TableInput};
    glue.create_database()
        .database_input(DatabaseInput::builder().name("tripflow").build().unwrap())
        .send()
        .await
        .unwrap();
    let column = |name: &str| Column::builder().name(name).r#type("string").build().unwrap();
    let data: Vec<Column> = columns
        .iter()
        .filter(|c| *c != PICKUP_DATE)
        .map(|c| column(c))
        .collect();
    let partitions: Vec<Column> = columns
        .iter()
        .filter(|c| *c == PICKUP_DATE)
        .map(|c| column(c))
        .collect();
    glue.create_table()
        .database_name("tripflow")
        .table_input(
            TableInput::builder()
                .name("yellow")
                .storage_descriptor(
                    StorageDescriptor::builder()
                        .location(location)
                        .set_columns(Some(data))
                        .build(),
                )
                .set_partition_keys(Some(partitions))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_execution_of_a_month_fails_concurrent_run_changing_nothing_until_the_first_ends() {
    let world = World::new().await;
    let pg = TestPostgres::start().await;
    let body = world.generate(20_000, 11);
    world.land(LANDING_KEY, &body).await;
    let md5 = md5_hex(&body);
    let lease_key = "reports/yellow/2021-03/lease.json";

    let first = world.ingest(Some(&md5)).await.unwrap();
    let refused = |err: lambda_runtime::Diagnostic| {
        assert_eq!(err.error_type, "ConcurrentRun", "{}", err.error_message);
        assert!(
            err.error_message.contains(&first.run_id),
            "names the holder: {}",
            err.error_message
        );
    };
    // While the first run is anywhere between ingest and load, another execution's ingest is refused
    // before it writes a byte.
    let cleaned: CleanOutput = handle_clean(&world.state, pass_on(&first)).await.unwrap();
    let before = world.keys("").await;
    refused(world.ingest(Some(&md5)).await.unwrap_err());
    assert_eq!(world.keys("").await, before, "the refused ingest wrote nothing");
    let transformed = handle_transform(&world.state, pass_on::<TransformInput>(&cleaned))
        .await
        .unwrap();
    refused(world.ingest(Some(&md5)).await.unwrap_err());
    let state = load_state(&world, &pg, false).await;
    let loaded = handle_load(&state, pass_on(&transformed)).await.unwrap();
    assert_eq!(loaded.run_id, first.run_id);

    // The load ended the run and gave the month up: the next execution runs.
    assert!(!world.keys(lease_key).await.contains(&lease_key.to_string()));
    let second = world.ingest(Some(&md5)).await.unwrap();
    assert_ne!(second.run_id, first.run_id);
}

#[tokio::test]
async fn a_run_whose_lease_expired_and_was_taken_over_stops_at_its_next_stage() {
    let world = World::new().await;
    let body = world.generate(5_000, 12);
    world.land(LANDING_KEY, &body).await;
    // A run that stalls past its lease (here: a lease that lasts a millisecond) ...
    let mut stalled = world.state.clone();
    stalled.lease_ttl = Duration::from_millis(1);
    let input: IngestInput = serde_json::from_value(json!({"source": format!("s3://{BUCKET}/{LANDING_KEY}")})).unwrap();
    let old = handle_ingest(&stalled, input).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ... loses the month to the next execution, and its next stage stops without writing.
    let new = world.ingest(None).await.unwrap();
    let before = world.keys("").await;
    let err = handle_clean(&world.state, pass_on(&old)).await.unwrap_err();
    assert_eq!(err.error_type, "ConcurrentRun", "{}", err.error_message);
    assert!(err.error_message.contains(&new.run_id), "{}", err.error_message);
    assert_eq!(world.keys("").await, before);
    // The new holder carries on.
    let cleaned: CleanOutput = handle_clean(&world.state, pass_on(&new)).await.unwrap();
    assert_eq!(cleaned.verdict, Verdict::Ok);
}

async fn load_state(world: &World, pg: &TestPostgres, glue: bool) -> LoadState {
    let env = LoadEnv {
        stage: StageEnv {
            bucket: BUCKET.into(),
            pipeline: PipelineConfig::default(),
            s3_timeouts: S3Timeouts::default(),
            lease_ttl: tripflow::lease::DEFAULT_TTL,
        },
        db: DbSource::Url(pg.url().to_string()),
        ca_file: None,
        db_settings: DbSettings::default(),
        glue: glue.then(|| GlueTable {
            database: "tripflow".into(),
            table: "yellow".into(),
        }),
    };
    LoadState::from_parts(&world.sdk, env).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Bad inputs arriving through S3

/// Ingest of the landed object fails with `name`, and no zone holds anything, nor any upload.
async fn assert_ingest_refuses(world: &World, body: &[u8], md5: Option<&str>, name: &str) {
    world.land(LANDING_KEY, body).await;
    let err = world.ingest(md5).await.unwrap_err();
    assert_eq!(err.error_type, name, "{}", err.error_message);
    for zone in ["raw/", "clean/", "quarantine/", "curated/", "reports/"] {
        assert!(world.keys(zone).await.is_empty(), "{zone} not empty after {name}");
    }
    assert_eq!(
        world.open_uploads().await,
        0,
        "a multipart upload was left open after {name}"
    );
}

#[tokio::test]
async fn bad_sources_landing_in_s3_fail_ingest_with_their_name_and_leave_nothing_behind() {
    let world = World::new().await;
    let good = world.generate(20_000, 3);

    assert_ingest_refuses(
        &world,
        &good,
        Some("00000000000000000000000000000000"),
        "ChecksumMismatch",
    )
    .await;
    assert_ingest_refuses(&world, &good[..good.len() / 2], None, "TruncatedParquet").await;
    assert_ingest_refuses(
        &world,
        b"VendorID,tpep_pickup_datetime\n1,2021-03-01 00:00:00\n",
        None,
        "NotParquet",
    )
    .await;
    // Larger than one part: ingest's raw write had become a multipart upload, which must be aborted.
    let big: Vec<u8> = (0..PART_BYTES * 2 + 12_345).map(|i| (i % 251) as u8).collect();
    assert_ingest_refuses(&world, &big, None, "NotParquet").await;
    assert_ingest_refuses(&world, &tripflow_tests::data::green_taxi_parquet(), None, "SchemaDrift").await;
}

/// A valid Parquet file with the green-taxi columns instead of the yellow ones.

#[tokio::test]
async fn the_ingest_handler_fetches_only_its_own_bucket_and_https() {
    let world = World::new().await;
    for (source, why) in [
        ("/etc/passwd", "local path"),
        ("http://127.0.0.1:9001/2018-06-01/runtime/invocation/next", "plain http"),
        (
            "s3://someone-elses-bucket/landing/yellow_tripdata_2021-03.parquet",
            "other bucket",
        ),
    ] {
        let input = IngestInput {
            source: source.into(),
            ..IngestInput::default()
        };
        let err = handle_ingest(&world.state, input).await.unwrap_err();
        assert_eq!(err.error_type, "InvalidInput", "{why}: {}", err.error_message);
    }
    let missing = IngestInput {
        source: format!("s3://{BUCKET}/{LANDING_KEY}"),
        ..IngestInput::default()
    };
    assert_eq!(
        handle_ingest(&world.state, missing).await.unwrap_err().error_type,
        "ObjectNotFound"
    );
}

// ---------------------------------------------------------------------------------------------
// The S3 store itself

#[tokio::test]
async fn reading_one_column_of_a_parquet_object_reads_its_footer_once_and_a_fraction_of_its_bytes() {
    let world = World::new().await;
    let body = world.generate(100_000, 5);
    world.land(LANDING_KEY, &body).await;
    let intercepted = Intercepted::new(world.store());
    let (bytes, reads) = (intercepted.bytes_read(), intercepted.reads());
    let counting: Arc<dyn ObjectStore> = Arc::new(intercepted);

    // What clean does: the footer's schema decides the columns, then those columns stream.
    let object = tripflow::parquet_io::ParquetObject::open(&counting, LANDING_KEY)
        .await
        .unwrap();
    let opened = reads.load(Ordering::Relaxed);
    assert!(opened > 0);
    assert!(object.schema().field_with_name("trip_distance").is_ok());
    let (schema, stream) = object.stream(Some(&["trip_distance"]), 32 * 1024).unwrap();
    assert_eq!(
        reads.load(Ordering::Relaxed),
        opened,
        "choosing the columns reads nothing more"
    );
    assert_eq!(schema.fields().len(), 1);
    let batches: Vec<_> = stream.try_collect().await.unwrap();
    let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 100_000);
    assert_eq!(sizes, [32_768, 32_768, 32_768, 1_696], "batches of the size asked for");
    let fetched = bytes.load(Ordering::Relaxed);
    assert!(
        fetched * 4 < body.len() as u64,
        "one column of ~18 should cost well under a quarter of the file: fetched {fetched} of {}",
        body.len()
    );
}

#[tokio::test]
async fn a_ranged_get_returns_exactly_the_bytes_asked_for() {
    let world = World::new().await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    world.land("landing/bytes.bin", &body).await;
    let store = world.store();
    for range in [0..4, 9_996..10_000, 1_234..5_678, 5..6] {
        let got = store.get_range("landing/bytes.bin", range.clone()).await.unwrap();
        assert_eq!(
            got.as_ref(),
            &body[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    assert!(store.get_range("landing/bytes.bin", 7..7).await.unwrap().is_empty());
    let past_end = store.get_range("landing/bytes.bin", 9_000..10_001).await.unwrap_err();
    assert_eq!(past_end.name(), "IntegrityError", "{past_end}");
    assert_eq!(store.size("landing/bytes.bin").await.unwrap(), Some(10_000));
}

#[tokio::test]
async fn a_write_larger_than_a_part_goes_up_in_parts_and_records_its_md5() {
    let world = World::new().await;
    let store = world.store();
    let body: Vec<u8> = (0..PART_BYTES * 2 + 777).map(|i| (i % 253) as u8).collect();
    let mut sink = store.create("clean/big.bin").await.unwrap();
    // Uneven chunks, as a Parquet writer produces them.
    for chunk in body.chunks(3 * 1024 * 1024 + 17) {
        sink.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert!(
        store.size("clean/big.bin").await.unwrap().is_none(),
        "nothing is visible before finish"
    );
    let info = sink.finish().await.unwrap();
    let mut crc = ChecksumCounter::crc64nvme();
    crc.update(&body);
    assert_eq!((info.size_bytes, &info.checksum), (body.len() as u64, &crc.finish()));
    let head = world
        .s3
        .head_object()
        .bucket(BUCKET)
        .key("clean/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata().and_then(|m| m.get(MD5_METADATA_KEY)),
        Some(&md5_hex(&body))
    );
    let served = tripflow::storage::get_bytes(store.as_ref(), "clean/big.bin")
        .await
        .unwrap();
    assert_eq!(served, body);
    assert_eq!(world.open_uploads().await, 0);
}

#[tokio::test]
async fn an_aborted_or_dropped_multipart_write_leaves_no_object_and_no_upload() {
    let world = World::new().await;
    let store = world.store();
    let part = Bytes::from(vec![1u8; PART_BYTES + 1]);

    let mut aborted = store.create("curated/aborted.bin").await.unwrap();
    aborted.write(part.clone()).await.unwrap();
    assert_eq!(world.open_uploads().await, 1, "the write became a multipart upload");
    aborted.abort().await.unwrap();
    assert_eq!(world.open_uploads().await, 0);

    let mut dropped = store.create("curated/dropped.bin").await.unwrap();
    dropped.write(part).await.unwrap();
    drop(dropped);
    // The abort of a dropped sink runs in the background: wait for its effect, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while world.open_uploads().await > 0 {
        assert!(Instant::now() < deadline, "the dropped sink's upload was never aborted");
        tokio::time::sleep(POLL).await;
    }
    assert!(world.keys("curated/").await.is_empty());
}

#[tokio::test]
async fn each_invocation_emits_one_cloudwatch_emf_line_with_its_counts_or_its_failure() {
    let mut world = World::new().await;
    world.state.metrics = tripflow_aws::metrics::MetricsSink::memory();
    let transformed = world.run_to_curated(6_000).await;
    let missing: IngestInput =
        serde_json::from_value(json!({"source": format!("s3://{BUCKET}/landing/yellow_tripdata_2021-04.parquet")}))
            .unwrap();
    handle_ingest(&world.state, missing).await.unwrap_err();

    let lines: Vec<serde_json::Value> = world
        .state
        .metrics
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("each EMF line is one JSON object"))
        .collect();
    let stages: Vec<&str> = lines.iter().map(|l| l["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["ingest", "clean", "transform", "ingest"]);
    for line in &lines {
        let declared = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "tripflow");
        assert_eq!(declared["Dimensions"], json!([["stage", "dataset"]]));
        assert_eq!(line["dataset"], "yellow");
        // Every declared metric has its value at the top level, as EMF requires.
        for metric in declared["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(line[name].is_number(), "{name} declared without a value: {line}");
        }
        assert!(line["Seconds"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(lines[0]["RowsIn"], 6_000.0);
    let clean = &lines[1];
    assert_eq!(clean["RowsIn"], 6_000.0);
    assert_eq!(clean["RowsKept"].as_f64().unwrap() as u64, transformed.rows_curated);
    let by_reason: f64 = tripflow::stages::clean::RejectReason::ALL
        .iter()
        .map(|r| clean[format!("Rejected_{}", r.as_str())].as_f64().unwrap())
        .sum();
    assert_eq!(by_reason, clean["RowsRejected"].as_f64().unwrap());
    assert_eq!(
        lines[2]["RowsCurated"].as_f64().unwrap() as u64,
        transformed.rows_curated
    );
    assert_eq!(
        (
            lines[3]["Failures"].clone(),
            lines[3]["Failures_ObjectNotFound"].clone()
        ),
        (json!(1.0), json!(1.0))
    );
}

#[tokio::test]
async fn a_shutdown_aborts_the_uploads_a_stage_still_has_open() {
    let world = World::new().await;
    // The function's own store, as its SIGTERM hook holds it.
    let s3 = world
        .state
        .s3
        .clone()
        .expect("a stage state built from the SDK has its S3 store");
    let mut writing = s3.create("curated/in-flight.bin").await.unwrap();
    writing.write(Bytes::from(vec![7u8; PART_BYTES + 1])).await.unwrap();
    let mut small = s3.create("curated/small.bin").await.unwrap();
    small
        .write(Bytes::from_static(b"not a multipart upload"))
        .await
        .unwrap();
    assert_eq!(world.open_uploads().await, 1);

    assert_eq!(s3.abort_in_flight().await, 1);
    assert_eq!(world.open_uploads().await, 0, "the shutdown left an upload open");
    assert_eq!(s3.abort_in_flight().await, 0, "nothing left to abort");
    std::mem::forget(writing); // a process that exits drops nothing
    drop(small);
    assert!(world.keys("curated/").await.is_empty());
}

/// One HTTP answer to one request, then the request line and headers it received.
async fn answer_once(listener: tokio::net::TcpListener, response: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut request = vec![0u8; 4096];
    let n = socket.read(&mut request).await.unwrap();
    socket.write_all(response.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&request[..n]).to_string()
}

#[tokio::test]
async fn the_shutdown_extension_registers_and_a_refusal_is_an_error_not_a_crash() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let served = tokio::spawn(answer_once(
        listener,
        "HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: ext-1\r\nContent-Length: 2\r\n\r\n{}",
    ));
    assert_eq!(tripflow_aws::shutdown::register(&api).await.unwrap(), "ext-1");
    let request = served.await.unwrap().to_ascii_lowercase();
    assert!(request.starts_with("post /2020-01-01/extension/register "), "{request}");
    assert!(
        request.contains(&format!(
            "lambda-extension-name: {}",
            tripflow_aws::shutdown::EXTENSION_NAME
        )),
        "{request}"
    );

    // An emulator without the Extensions API: the function starts anyway, without the hook.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    tokio::spawn(answer_once(
        listener,
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ));
    let err = tripflow_aws::shutdown::register(&api).await.unwrap_err();
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn s3_failures_map_to_the_pipeline_errors_the_state_machine_matches() {
    let world = World::new().await;
    let store = world.store();
    assert_eq!(
        store.get("raw/missing.parquet").await.err().unwrap().name(),
        "ObjectNotFound"
    );
    assert_eq!(
        store.get_range("raw/missing.parquet", 0..4).await.unwrap_err().name(),
        "ObjectNotFound"
    );
    assert_eq!(store.size("raw/missing.parquet").await.unwrap(), None);
    store.delete("raw/missing.parquet").await.unwrap();

    let no_bucket = S3Store::new(world.moto.s3_client().await, "no-such-bucket");
    let err = no_bucket.list("raw/").await.unwrap_err();
    assert_eq!(err.name(), "StorageRefused", "{err}");
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
    assert!(!err.is_retryable());

    // Nothing listens on the endpoint: transient, so the state machine retries it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = aws_sdk_s3::config::Builder::from(&world.sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let unreachable = S3Store::new(aws_sdk_s3::Client::from_conf(config), BUCKET);
    let err = unreachable.size("raw/x").await.unwrap_err();
    assert_eq!(err.name(), "StorageUnavailable", "{err}");
    assert!(err.is_retryable());
}

/// An AWS endpoint that accepts connections (the kernel does, into the backlog) and never answers a
/// request, the SDK configuration pointing at it without retries, and one-second timeouts.
async fn silent_endpoint() -> (std::net::TcpListener, aws_config::SdkConfig, S3Timeouts) {
    use aws_sdk_s3::config::{Credentials, Region};
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(format!("http://{}", silent.local_addr().unwrap()))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .load()
        .await;
    let timeouts = S3Timeouts {
        connect_s: 1.0,
        read_s: 1.0,
        attempt_s: 3.0,
    };
    (silent, sdk, timeouts)
}

#[tokio::test]
async fn an_s3_endpoint_that_never_answers_is_a_timeout_naming_the_key() {
    let (silent, sdk, timeouts) = silent_endpoint().await;
    let store = S3Store::new(tripflow_aws::s3::s3_client(&sdk, &timeouts), BUCKET);
    let started = Instant::now();
    let err = store.get_range("raw/yellow/2021-03/x.parquet", 0..4).await.unwrap_err();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(err.name(), "Timeout", "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("raw/yellow/2021-03/x.parquet"), "{err}");
    assert!(
        matches!(err, tripflow::Error::Timeout { after_s, .. } if after_s == 1.0),
        "the read timeout ran out first"
    );
    assert!(seconds < 5.0, "gave up after {seconds:.1} s, configured 1 s");
    drop(silent);
}

#[tokio::test]
async fn a_glue_endpoint_that_never_answers_is_a_timeout_naming_the_table() {
    let (silent, sdk, timeouts) = silent_endpoint().await;
    let check = tripflow_aws::catalog::CatalogCheck::new(
        tripflow_aws::handlers::glue_client(&sdk, &timeouts),
        GlueTable {
            database: "tripflow".into(),
            table: "curated_yellow".into(),
        },
    );
    let started = Instant::now();
    let err = check.facts().await.unwrap_err();
    assert_eq!(err.name(), "Timeout", "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("tripflow.curated_yellow"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// The trigger

const PASS_MACHINE: &str = r#"{"StartAt":"Done","States":{"Done":{"Type":"Pass","End":true}}}"#;

async fn trigger_world(execute: bool) -> (World, TriggerState, aws_sdk_sfn::Client, String) {
    let world = World::new().await;
    if execute {
        world.moto.enable_state_machine_execution().await;
    }
    let sfn = aws_sdk_sfn::Client::new(&world.sdk);
    let machine = sfn
        .create_state_machine()
        .name("tripflow")
        .definition(PASS_MACHINE)
        .role_arn("arn:aws:iam::123456789012:role/tripflow-states")
        .send()
        .await
        .unwrap();
    let arn = machine.state_machine_arn().to_string();
    let state = TriggerState::from_parts(
        &world.sdk,
        TriggerEnv {
            state_machine_arn: arn.clone(),
            bucket: Some(BUCKET.into()),
            s3_timeouts: S3Timeouts::default(),
        },
    );
    (world, state, sfn, arn)
}

/// The sample event of `events/`, pointed at `key` with the given version and ETag.
fn s3_event(key: &str, version: Option<&str>, etag: Option<&str>) -> TriggerEvent {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events/trigger-s3-put.json");
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let object = &mut event["Records"][0]["s3"]["object"];
    object["key"] = json!(key);
    object["versionId"] = json!(version);
    object["eTag"] = json!(etag);
    let parsed: S3Event = serde_json::from_value(event).unwrap();
    TriggerEvent::S3(parsed)
}

fn eventbridge_event(key: &str, version: Option<&str>, etag: Option<&str>) -> TriggerEvent {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events/trigger-eventbridge-object-created.json");
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    event["detail"]["object"]["key"] = json!(key);
    event["detail"]["object"]["version-id"] = json!(version);
    event["detail"]["object"]["etag"] = json!(etag);
    serde_json::from_value(event).unwrap()
}

async fn executions(sfn: &aws_sdk_sfn::Client, arn: &str) -> Vec<aws_sdk_sfn::types::ExecutionListItem> {
    sfn.list_executions()
        .state_machine_arn(arn)
        .send()
        .await
        .unwrap()
        .executions()
        .to_vec()
}

#[tokio::test]
async fn two_identical_notifications_start_one_execution_with_the_ingest_input() {
    let (world, state, sfn, arn) = trigger_world(false).await;
    let body = world.generate(2_000, 1);
    let (version, etag) = world.land(LANDING_KEY, &body).await;

    let first = handle_trigger(&state, s3_event(LANDING_KEY, version.as_deref(), etag.as_deref()))
        .await
        .unwrap();
    assert_eq!(first.started.len(), 1, "{first:?}");
    // The same upload again, once as an S3 notification and once through EventBridge.
    handle_trigger(&state, s3_event(LANDING_KEY, version.as_deref(), etag.as_deref()))
        .await
        .unwrap();
    let bridged = handle_trigger(
        &state,
        eventbridge_event(LANDING_KEY, version.as_deref(), etag.as_deref()),
    )
    .await
    .unwrap();
    assert_eq!(
        bridged.started, first.started,
        "both notification kinds name the run alike"
    );

    let runs = executions(&sfn, &arn).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].name(), first.started[0]);
    assert!(runs[0].name().starts_with("yellow_tripdata_2021-03-"));
    let described = sfn
        .describe_execution()
        .execution_arn(runs[0].execution_arn())
        .send()
        .await
        .unwrap();
    let input: Value = serde_json::from_str(described.input().unwrap()).unwrap();
    assert_eq!(
        input,
        json!({"source": format!("s3://{BUCKET}/{LANDING_KEY}"), "expected_md5": md5_hex(&body), "period": null,
            "allow_shrink": false}),
        "a single-part ETag is the MD5 ingest verifies; the shrink guard is on"
    );
    // And the execution input is exactly what the ingest function takes.
    let _: IngestInput = serde_json::from_value(input).unwrap();
}

#[tokio::test]
async fn a_late_duplicate_is_already_exists_and_a_new_version_starts_a_new_run() {
    let (world, state, sfn, arn) = trigger_world(true).await;
    let (v1, etag1) = world.land(LANDING_KEY, &world.generate(2_000, 1)).await;
    let first = handle_trigger(&state, s3_event(LANDING_KEY, v1.as_deref(), etag1.as_deref()))
        .await
        .unwrap();
    assert_eq!(first.started.len(), 1);
    wait_until_finished(&sfn, &arn).await;

    let late = handle_trigger(&state, s3_event(LANDING_KEY, v1.as_deref(), etag1.as_deref()))
        .await
        .unwrap();
    assert_eq!(
        (late.started.len(), late.already_exists.clone()),
        (0, first.started.clone())
    );

    let (v2, etag2) = world.land(LANDING_KEY, &world.generate(2_000, 2)).await;
    assert_ne!(v1, v2);
    let second = handle_trigger(&state, s3_event(LANDING_KEY, v2.as_deref(), etag2.as_deref()))
        .await
        .unwrap();
    assert_eq!(second.started.len(), 1);
    assert_ne!(second.started, first.started);
    assert_eq!(executions(&sfn, &arn).await.len(), 2);
}

async fn wait_until_finished(sfn: &aws_sdk_sfn::Client, arn: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = executions(sfn, arn).await;
        if runs
            .iter()
            .all(|r| r.status() != &aws_sdk_sfn::types::ExecutionStatus::Running)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Pass state machine never finished: {runs:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn objects_outside_landing_sidecars_and_other_names_start_nothing() {
    let (world, state, sfn, arn) = trigger_world(false).await;
    for key in [
        "raw/yellow/2021-03/yellow_tripdata_2021-03.parquet",
        "landing/yellow_tripdata_2021-03.parquet.md5",
        "landing/notes.txt",
    ] {
        let (version, etag) = world.land(key, b"x").await;
        let output = handle_trigger(&state, s3_event(key, version.as_deref(), etag.as_deref()))
            .await
            .unwrap();
        assert_eq!(
            (output.started.len(), output.skipped.len()),
            (0, 1),
            "{key}: {output:?}"
        );
    }
    // A notification for an object deleted before the trigger ran: nothing to ingest, no error.
    let gone = handle_trigger(&state, s3_event(LANDING_KEY, None, Some("0123")))
        .await
        .unwrap();
    assert_eq!((gone.started.len(), gone.skipped.len()), (0, 1), "{gone:?}");
    assert!(executions(&sfn, &arn).await.is_empty());
}

#[tokio::test]
async fn a_url_encoded_key_in_an_s3_notification_reaches_the_real_object() {
    let (world, state, sfn, arn) = trigger_world(false).await;
    let key = "landing/yellow_tripdata_2021-03 (resent).parquet";
    let (version, etag) = world.land(key, &world.generate(1_000, 4)).await;
    let encoded = "landing/yellow_tripdata_2021-03+%28resent%29.parquet";
    let output = handle_trigger(&state, s3_event(encoded, version.as_deref(), etag.as_deref()))
        .await
        .unwrap();
    assert_eq!(output.started.len(), 1, "{output:?}");
    let runs = executions(&sfn, &arn).await;
    let described = sfn
        .describe_execution()
        .execution_arn(runs[0].execution_arn())
        .send()
        .await
        .unwrap();
    let input: IngestInput = serde_json::from_str(described.input().unwrap()).unwrap();
    assert_eq!(input.source, format!("s3://{BUCKET}/{key}"));

    // And ingest takes it from there.
    let ingested = handle_ingest(&world.state, input).await.unwrap();
    assert!(ingested.md5_verified);
    assert_eq!(ingested.rows, 1_000);
}
