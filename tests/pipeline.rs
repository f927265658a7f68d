//! The whole pipeline over a local folder and a real PostgreSQL: generated months end to end with
//! answers computed independently here, reruns, the real samples, and every kind of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, Datelike};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tempfile::TempDir;
use tripflow::config::PipelineConfig;
use tripflow::db::WeeklySlowPickup;
use tripflow::generator::{GenSpec, write_month};
use tripflow::period::Period;
use tripflow::pipeline::{RunSummary, run_all};
use tripflow::stages::ingest::IngestInput;
use tripflow::stages::load::LoadInput;
use tripflow::stages::{StageContext, load};
use tripflow::storage::LocalStore;
use tripflow::{Error, Result};
use tripflow_tests::data::shared_file;
use tripflow_tests::pg::TestPostgres;

struct Setup {
    dir: TempDir,
    ctx: StageContext,
    pg: TestPostgres,
}

impl Setup {
    async fn new() -> Self {
        Self::with_config(PipelineConfig::default()).await
    }

    async fn with_config(config: PipelineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path().join("zones")).unwrap());
        Setup {
            ctx: StageContext::new(store, config),
            pg: TestPostgres::start().await,
            dir,
        }
    }

    fn generate(&self, month: &str, rows: usize, seed: u64) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("yellow_tripdata_{month}.parquet"));
        write_month(
            &path,
            GenSpec {
                period: month.parse().unwrap(),
                rows,
                seed,
            },
        )
        .unwrap();
        path
    }

    async fn run(&self, source: &Path, md5: Option<&str>) -> Result<RunSummary> {
        let mut client = self.pg.client().await;
        let input = IngestInput {
            source: source.display().to_string(),
            expected_md5: md5.map(str::to_string),
            period: None,
            allow_http: false,
        };
        run_all(&self.ctx, &mut client, input).await
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctx.store.list(prefix).await.unwrap()
    }
}

/// The expected outcome of a month, computed straight from the source file with none of the
/// pipeline's code: the rules, the swap, the speed and the ranking written out again.
#[derive(Debug, Default)]
struct Expected {
    rows_in: u64,
    null_timestamp: u64,
    non_positive_duration: u64,
    outside_period: u64,
    kept: u64,
    avg_speed_mph: f64,
    weekly_top5: Vec<WeeklySlowPickup>,
}

fn expected_from_file(path: &Path, period: Period) -> Expected {
    let (start, end) = period.bounds_micros();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut e = Expected::default();
    let (mut distance_sum, mut seconds_sum) = (0.0f64, 0i64);
    let mut valid_trips: Vec<(i32, i64, f64)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ts = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let (pickup, dropoff) = (ts("tpep_pickup_datetime"), ts("tpep_dropoff_datetime"));
        let distance = batch
            .column_by_name("trip_distance")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        let pu = batch
            .column_by_name("PULocationID")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..batch.num_rows() {
            e.rows_in += 1;
            if pickup.is_null(i) || dropoff.is_null(i) {
                e.null_timestamp += 1;
                continue;
            }
            let (p, d) = (pickup.value(i), dropoff.value(i));
            if d <= p {
                e.non_positive_duration += 1;
                continue;
            }
            if p < start || p >= end {
                e.outside_period += 1;
                continue;
            }
            e.kept += 1;
            let seconds = (d - p) / 1_000_000;
            let miles = distance.value(i);
            if miles > 0.0 && seconds > 0 {
                distance_sum += miles;
                seconds_sum += seconds;
                let week = DateTime::from_timestamp_micros(p)
                    .unwrap()
                    .date_naive()
                    .iso_week()
                    .week() as i32;
                let location = match pu.value(i) {
                    161 => 237,
                    237 => 161,
                    other => other,
                };
                valid_trips.push((week, location, miles / (seconds as f64 / 3600.0)));
            }
        }
    }
    e.avg_speed_mph = distance_sum / (seconds_sum as f64 / 3600.0);
    let mut slow: HashMap<(i32, i64), i64> = HashMap::new();
    for (week, location, speed) in valid_trips {
        if speed < e.avg_speed_mph {
            *slow.entry((week, location)).or_default() += 1;
        }
    }
    let mut by_week: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for ((week, location), count) in slow {
        by_week.entry(week).or_default().push((count, location));
    }
    let mut weeks: Vec<i32> = by_week.keys().copied().collect();
    weeks.sort();
    for week in weeks {
        let mut ranked = by_week.remove(&week).unwrap();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (rank, (count, location)) in ranked.into_iter().take(5).enumerate() {
            e.weekly_top5.push(WeeklySlowPickup {
                week,
                rank: rank as i64 + 1,
                pu_location_id: location as i32,
                slow_trips: count,
            });
        }
    }
    e
}

#[tokio::test]
async fn a_generated_month_ends_in_postgres_with_the_independently_computed_answers() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 150_000, 11);
    let expected = expected_from_file(&source, "2021-03".parse().unwrap());
    let summary = setup.run(&source, None).await.unwrap();

    assert_eq!(summary.rows_in, expected.rows_in);
    assert_eq!(summary.rows_rejected.null_timestamp, expected.null_timestamp);
    assert_eq!(
        summary.rows_rejected.non_positive_duration,
        expected.non_positive_duration
    );
    assert_eq!(summary.rows_rejected.outside_period, expected.outside_period);
    assert_eq!(summary.rows_kept, expected.kept);
    assert_eq!(
        summary.rows_kept + summary.rows_rejected.total(),
        summary.rows_in,
        "every row accounted for"
    );
    assert!(expected.null_timestamp > 0 && expected.non_positive_duration > 0 && expected.outside_period > 0);
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

    // Zones as documented: one raw copy, one clean file, quarantine with the rejects, daily partitions.
    assert_eq!(
        setup.keys("raw/").await,
        ["raw/yellow/2021-03/yellow_tripdata_2021-03.parquet"]
    );
    assert_eq!(
        setup.keys("clean/").await,
        ["clean/yellow/period=2021-03/yellow_tripdata_2021-03.parquet"]
    );
    assert_eq!(setup.keys("quarantine/").await.len(), 1);
    assert_eq!(setup.keys("curated/yellow/pickup_date=2021-03-").await.len(), 31);
    assert_eq!(setup.keys("reports/").await.len(), 4);

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
    // The sample's README: 7 pickups on 2021-02-28 and 2 trips whose dropoff equals pickup.
    assert_eq!(summary.rows_rejected.outside_period, 7);
    assert_eq!(summary.rows_rejected.non_positive_duration, 2);
    assert_eq!(summary.rows_rejected.null_timestamp, 0);
    assert_eq!(summary.rows_loaded, 990);
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
async fn too_many_rejected_rows_publishes_quarantine_but_no_clean_file() {
    let config = PipelineConfig {
        max_rejected_ratio: 0.0001,
        ..PipelineConfig::default()
    };
    let setup = Setup::with_config(config).await;
    let source = setup.generate("2021-03", 20_000, 4);
    let err = setup.run(&source, None).await.unwrap_err();
    assert_eq!(err.name(), "TooManyRejectedRows");
    assert!(setup.keys("clean/").await.is_empty());
    assert!(setup.keys("curated/").await.is_empty());
    assert_eq!(setup.keys("quarantine/").await.len(), 1, "the rejects stay inspectable");
    assert_eq!(setup.pg.trip_count("yellow/2021-03").await, 0);
}

#[tokio::test]
async fn a_raw_file_changed_after_ingest_is_an_integrity_error() {
    let setup = Setup::new().await;
    let source = setup.generate("2021-03", 5_000, 3);
    setup.run(&source, None).await.unwrap();
    let raw = setup
        .dir
        .path()
        .join("zones/raw/yellow/2021-03/yellow_tripdata_2021-03.parquet");
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&raw, bytes).unwrap();
    let cleaned = tripflow::stages::clean::run(
        &setup.ctx,
        tripflow::stages::clean::CleanInput {
            dataset: "yellow".into(),
            period: "2021-03".parse().unwrap(),
            raw_key: "raw/yellow/2021-03/yellow_tripdata_2021-03.parquet".into(),
            manifest_key: "reports/yellow/2021-03/ingest.json".into(),
            max_rejected_ratio: None,
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
            let info = tripflow::storage::md5_of(setup.ctx.store.as_ref(), &key).await.unwrap();
            objects.push((key, info.md5));
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

/// A listener on 127.0.0.1 that accepts connections and, when `head` is given, sends it and then
/// nothing more; connections stay open until the listener is dropped.
struct Stalling {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Stalling {
    async fn start(head: Option<&'static [u8]>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if let Some(head) = head {
                    // Answer only once the request is in: a client ignores an answer before it asked.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket.write_all(head).await;
                }
                open.push(socket);
            }
        });
        Stalling { addr, task }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        period: None,
        allow_http,
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
