//! The real `statemachine.asl.json`, executed by moto's Step Functions interpreter: Lambda tasks
//! answered in-process by our real handlers behind the [`Router`], S3, Glue and SNS by moto, the
//! load into a throwaway PostgreSQL. Each test asserts the final status, the Fail state's error and
//! what the run left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent, HistoryEventType};
use serde_json::{Value, json};
use tripflow::config::PipelineConfig;
use tripflow::generator::{GenSpec, write_month};
use tripflow_aws::db::Database;
use tripflow_aws::env::{DbSource, StageEnv};
use tripflow_aws::handlers::{LoadState, StageState, handle_clean, handle_ingest, handle_load, handle_transform};
use tripflow_tests::moto::Moto;
use tripflow_tests::pg::TestPostgres;
use tripflow_tests::router::{Fault, Router};

const BUCKET: &str = "tripflow-data";
const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const SOURCE_ID: &str = "yellow/2021-03";
const LANDING_KEY: &str = "landing/yellow_tripdata_2021-03.parquet";
const FUNCTIONS: [&str; 4] = [
    "tripflow-ingest",
    "tripflow-clean",
    "tripflow-transform",
    "tripflow-load",
];
const CRAWLERS: [&str; 4] = ["tripflow-raw", "tripflow-clean", "tripflow-curated", "tripflow-aurora"];
const TOPIC: &str = "tripflow-failures";
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(180);

fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
}

fn topic_arn() -> String {
    format!("arn:aws:sns:{REGION}:{ACCOUNT}:{TOPIC}")
}

/// The ASL with every `${...}` of template.yaml's DefinitionSubstitutions filled in.
fn definition(crawler_poll_seconds: u32) -> String {
    let asl = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../statemachine.asl.json")).unwrap();
    let substitutions = [
        ("IngestFunctionArn", function_arn(FUNCTIONS[0])),
        ("CleanFunctionArn", function_arn(FUNCTIONS[1])),
        ("TransformFunctionArn", function_arn(FUNCTIONS[2])),
        ("LoadFunctionArn", function_arn(FUNCTIONS[3])),
        ("RawCrawlerName", CRAWLERS[0].to_string()),
        ("CleanCrawlerName", CRAWLERS[1].to_string()),
        ("CuratedCrawlerName", CRAWLERS[2].to_string()),
        ("AuroraCrawlerName", CRAWLERS[3].to_string()),
        ("FailureTopicArn", topic_arn()),
        ("CrawlerPollSeconds", crawler_poll_seconds.to_string()),
    ];
    let mut filled = asl;
    for (name, value) in substitutions {
        filled = filled.replace(&format!("${{{name}}}"), &value);
    }
    assert!(!filled.contains("${"), "an unfilled substitution is left in the ASL");
    filled
}

struct Setup {
    // Field order is drop order: the router goes first, then moto, then PostgreSQL.
    router: Router,
    _moto: Moto,
    pg: TestPostgres,
    s3: aws_sdk_s3::Client,
    sfn: aws_sdk_sfn::Client,
    sdk: aws_config::SdkConfig,
    state_machine_arn: String,
    dir: tempfile::TempDir,
}

struct Execution {
    status: ExecutionStatus,
    error: Option<String>,
    history: Vec<HistoryEvent>,
}

impl Execution {
    fn entered(&self, state: &str) -> bool {
        self.history
            .iter()
            .filter_map(|e| e.state_entered_event_details())
            .any(|d| d.name() == state)
    }

    fn task_failures(&self) -> Vec<String> {
        self.history
            .iter()
            .filter(|e| e.r#type() == &HistoryEventType::TaskFailed)
            .filter_map(|e| {
                e.task_failed_event_details()
                    .and_then(|d| d.error())
                    .map(str::to_string)
            })
            .collect()
    }

    /// When the execution first entered `state`.
    fn entered_at(&self, state: &str) -> Option<aws_sdk_sfn::primitives::DateTime> {
        self.history
            .iter()
            .find(|e| e.state_entered_event_details().is_some_and(|d| d.name() == state))
            .map(|e| *e.timestamp())
    }

    /// When the execution's last event happened.
    fn ended_at(&self) -> aws_sdk_sfn::primitives::DateTime {
        *self.history.last().expect("an execution has events").timestamp()
    }

    fn describe(&self) -> String {
        let states: Vec<String> = self
            .history
            .iter()
            .filter_map(|e| {
                e.state_entered_event_details()
                    .map(|d| d.name().to_string())
                    .or_else(|| {
                        e.task_failed_event_details()
                            .map(|d| format!("TaskFailed({:?}: {:?})", d.error(), d.cause()))
                    })
            })
            .collect();
        format!("status {:?}, error {:?}, states {states:?}", self.status, self.error)
    }
}

impl Setup {
    async fn new() -> Self {
        Self::with(PipelineConfig::default(), 1, 1).await
    }

    /// moto behind the router, the bucket, crawlers and topic, the handlers registered, and the
    /// state machine created from the real ASL.
    async fn with(clean_config: PipelineConfig, crawl_seconds: u32, poll_seconds: u32) -> Self {
        let router = Router::start().await;
        let router_port = router.port().to_string();
        let moto = Moto::start_with_env(&[("MOTO_PORT", router_port.as_str())]);
        router.set_upstream(&moto.endpoint());
        moto.enable_state_machine_execution().await;
        // With moto's default (instant) crawl transition the crawler polling loop never saw READY
        // here and executions stayed RUNNING; a timed transition behaves like a real crawl.
        moto.set_crawl_duration(crawl_seconds).await;
        let s3 = moto.create_bucket(BUCKET, false).await;
        let sdk = moto.sdk_config().await;
        let pg = TestPostgres::start().await;

        let glue = aws_sdk_glue::Client::new(&sdk);
        for (crawler, zone) in CRAWLERS.iter().zip(["raw", "clean", "curated", ""]) {
            let targets = if zone.is_empty() {
                aws_sdk_glue::types::CrawlerTargets::builder()
                    .jdbc_targets(
                        aws_sdk_glue::types::JdbcTarget::builder()
                            .connection_name("tripflow-aurora")
                            .path("tripflow/tripflow/%")
                            .build(),
                    )
                    .build()
            } else if zone == "raw" {
                aws_sdk_glue::types::CrawlerTargets::builder()
                    .s3_targets(
                        aws_sdk_glue::types::S3Target::builder()
                            .path(format!("s3://{BUCKET}/{zone}/"))
                            .build(),
                    )
                    .build()
            } else {
                // As in template.yaml: clean and curated are Delta tables, crawled as such.
                aws_sdk_glue::types::CrawlerTargets::builder()
                    .delta_targets(
                        aws_sdk_glue::types::DeltaTarget::builder()
                            .delta_tables(format!("s3://{BUCKET}/{zone}/yellow/"))
                            .create_native_delta_table(true)
                            .write_manifest(false)
                            .build(),
                    )
                    .build()
            };
            glue.create_crawler()
                .name(*crawler)
                .role(format!("arn:aws:iam::{ACCOUNT}:role/tripflow-crawler"))
                .database_name("tripflow")
                .targets(targets)
                .send()
                .await
                .unwrap_or_else(|e| panic!("create crawler {crawler}: {e:?}"));
        }
        create_topic(&moto).await;

        let env = |config: PipelineConfig| StageEnv {
            bucket: BUCKET.to_string(),
            pipeline: config,
            s3_timeouts: tripflow_aws::s3::S3Timeouts::default(),
            lease_ttl: tripflow::lease::DEFAULT_TTL,
        };
        let stage = |config: PipelineConfig| StageState::from_parts(&sdk, env(config));
        let ingest = Arc::new(stage(PipelineConfig::default()));
        let clean = Arc::new(stage(clean_config));
        let transform = Arc::new(stage(PipelineConfig::default()));
        let db = Database::open(DbSource::Url(pg.url().to_string()), None, None)
            .await
            .unwrap();
        let load = Arc::new(LoadState::new(
            StageState::from_parts_with_lake(&sdk, env(PipelineConfig::default())),
            db,
            None,
        ));
        router.register(FUNCTIONS[0], move |payload| {
            let state = ingest.clone();
            async move { to_value(handle_ingest(&state, from_value(payload)?).await?) }
        });
        router.register(FUNCTIONS[1], move |payload| {
            let state = clean.clone();
            async move { to_value(handle_clean(&state, from_value(payload)?).await?) }
        });
        router.register(FUNCTIONS[2], move |payload| {
            let state = transform.clone();
            async move { to_value(handle_transform(&state, from_value(payload)?).await?) }
        });
        router.register(FUNCTIONS[3], move |payload| {
            let state = load.clone();
            async move { to_value(handle_load(&state, from_value(payload)?).await?) }
        });

        let sfn = aws_sdk_sfn::Client::new(&sdk);
        let state_machine_arn = sfn
            .create_state_machine()
            .name("tripflow-pipeline")
            .definition(definition(poll_seconds))
            .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/tripflow-statemachine"))
            .send()
            .await
            .expect("create the state machine from the real ASL")
            .state_machine_arn()
            .to_string();
        Setup {
            router,
            _moto: moto,
            pg,
            s3,
            sfn,
            sdk,
            state_machine_arn,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn upload(&self, key: &str, bytes: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }

    /// Generates a month and uploads it to landing/; returns its bytes' MD5.
    async fn upload_generated(&self, rows: usize, seed: u64) -> String {
        self.upload_generated_to(LANDING_KEY, rows, seed).await
    }

    /// Generates a March into `key`; returns its MD5.
    async fn upload_generated_to(&self, key: &str, rows: usize, seed: u64) -> String {
        let path = self.dir.path().join("yellow_tripdata_2021-03.parquet");
        write_month(
            &path,
            GenSpec {
                period: "2021-03".parse().unwrap(),
                rows,
                seed,
            },
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let md5 = tripflow::checksum::md5_hex(&bytes);
        self.upload(key, bytes).await;
        md5
    }

    /// Starts an execution named `name` and waits for it to leave RUNNING.
    async fn execute(&self, name: &str, input: Value) -> Execution {
        let arn = self
            .sfn
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .unwrap()
            .execution_arn()
            .to_string();
        let deadline = Instant::now() + EXECUTION_TIMEOUT;
        let described = loop {
            let d = self.sfn.describe_execution().execution_arn(&arn).send().await.unwrap();
            if d.status() != &ExecutionStatus::Running {
                break d;
            }
            assert!(
                Instant::now() < deadline,
                "execution {name} still RUNNING after {EXECUTION_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut history = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .sfn
                .get_execution_history()
                .execution_arn(&arn)
                .set_next_token(token)
                .max_results(1000)
                .send()
                .await
                .unwrap();
            history.extend(page.events().iter().cloned());
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Execution {
            status: described.status().clone(),
            error: described.error().map(str::to_string),
            history,
        }
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    async fn answers(&self) -> tripflow::db::Answers {
        tripflow::db::answers(&self.pg.client().await, SOURCE_ID).await.unwrap()
    }

    /// The curated row count the transform reported in the execution.
    fn rows_curated(execution: &Execution) -> i64 {
        let output = execution
            .history
            .iter()
            .find_map(|e| e.execution_succeeded_event_details().and_then(|d| d.output()))
            .expect("the execution's output");
        let output: Value = serde_json::from_str(output).unwrap();
        output["transform"]["rows_curated"]
            .as_i64()
            .unwrap_or_else(|| panic!("no rows_curated in {output}"))
    }

    /// A failed run: FAILED with `error`, the failure notified through SNS, nothing in raw/ clean/
    /// curated/ or the database.
    async fn assert_failed_cleanly(&self, execution: &Execution, error: &str) {
        assert_eq!(execution.status, ExecutionStatus::Failed, "{}", execution.describe());
        assert_eq!(execution.error.as_deref(), Some(error), "{}", execution.describe());
        assert!(
            execution.entered(error),
            "ended in the {error} Fail state: {}",
            execution.describe()
        );
        self.assert_notified(execution);
        for zone in ["raw/", "clean/", "curated/"] {
            assert!(
                self.keys(zone).await.is_empty(),
                "{zone} not empty after {error}: {:?}",
                self.keys(zone).await
            );
        }
        assert_eq!(self.pg.trip_count(SOURCE_ID).await, 0);
    }

    /// NotifyFailure published once to moto's SNS, and it answered.
    fn assert_notified(&self, execution: &Execution) {
        assert!(execution.entered("NotifyFailure"), "{}", execution.describe());
        assert_eq!(
            self.router.proxied_count("Publish"),
            1,
            "one SNS Publish reached moto: {:?}",
            self.router.proxied()
        );
        let published = execution.history.iter().any(|e| {
            e.r#type() == &HistoryEventType::TaskSucceeded
                && e.task_succeeded_event_details()
                    .is_some_and(|d| d.resource_type() == "sns" && d.output().is_some_and(|o| o.contains("MessageId")))
        });
        assert!(
            published,
            "the SNS publish succeeded with a MessageId: {}",
            execution.describe()
        );
    }
}

fn from_value<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, lambda_runtime::Diagnostic> {
    serde_json::from_value(payload).map_err(|e| lambda_runtime::Diagnostic {
        error_type: "InvalidPayload".into(),
        error_message: e.to_string(),
    })
}

fn to_value<T: serde::Serialize>(output: T) -> Result<Value, lambda_runtime::Diagnostic> {
    Ok(serde_json::to_value(output).expect("handler output is JSON"))
}

/// CreateTopic through moto's SNS query API (the tests do not otherwise need the SNS SDK).
async fn create_topic(moto: &Moto) {
    let response = reqwest::Client::new()
        .post(format!("{}/", moto.endpoint()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/sns/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(format!("Action=CreateTopic&Name={TOPIC}&Version=2010-03-31"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(
        status.is_success() && body.contains(&topic_arn()),
        "CreateTopic: HTTP {status}: {body}"
    );
}

fn input(md5: Option<&str>) -> Value {
    match md5 {
        Some(md5) => json!({"source": format!("s3://{BUCKET}/{LANDING_KEY}"), "expected_md5": md5}),
        None => json!({"source": format!("s3://{BUCKET}/{LANDING_KEY}")}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_month_runs_through_the_real_state_machine_into_postgres_with_answers() {
    let setup = Setup::new().await;
    let md5 = setup.upload_generated(20_000, 7).await;
    let run = setup.execute("happy", input(Some(&md5))).await;
    assert_eq!(run.status, ExecutionStatus::Succeeded, "{}", run.describe());
    assert!(
        run.entered("Loaded") && !run.entered("NotifyFailure"),
        "{}",
        run.describe()
    );
    let curated = Setup::rows_curated(&run);
    assert!(curated > 19_000, "most generated rows survive cleaning: {curated}");
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, curated);
    let answers = setup.answers().await;
    assert!(answers.avg_speed_mph.is_some_and(|s| s > 0.0), "{answers:?}");
    assert!(!answers.weekly_top5.is_empty(), "{answers:?}");
    assert!(!setup.keys("curated/").await.is_empty());
    for f in FUNCTIONS {
        assert_eq!(setup.router.invocations(f), 1, "{f} invoked once");
    }
    assert_eq!(setup.router.proxied_count("Publish"), 0, "no failure notification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expected_md5_fails_as_checksum_mismatch_notifies_and_keeps_nothing() {
    let setup = Setup::new().await;
    setup.upload_generated(2_000, 3).await;
    let run = setup
        .execute("bad-md5", input(Some("00000000000000000000000000000000")))
        .await;
    setup.assert_failed_cleanly(&run, "ChecksumMismatch").await;
    assert_eq!(setup.router.invocations("tripflow-clean"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landing_file_that_is_not_parquet_fails_as_not_parquet() {
    let setup = Setup::new().await;
    setup
        .upload(
            LANDING_KEY,
            b"VendorID,tpep_pickup_datetime\n1,2021-03-01 00:00:00\n".to_vec(),
        )
        .await;
    let run = setup.execute("not-parquet", input(None)).await;
    setup.assert_failed_cleanly(&run, "NotParquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_taxi_file_in_landing_fails_as_schema_drift() {
    let setup = Setup::new().await;
    let bytes = tripflow_tests::data::green_taxi_parquet();
    setup.upload(LANDING_KEY, bytes).await;
    let run = setup.execute("green", input(None)).await;
    setup.assert_failed_cleanly(&run, "SchemaDrift").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rejected_rows_fails_as_too_many_rejected_rows_with_nothing_loaded() {
    let config = PipelineConfig {
        max_rejected_ratio: 0.0001,
        ..PipelineConfig::default()
    };
    let setup = Setup::with(config, 1, 1).await;
    setup.upload_generated(20_000, 4).await;
    let run = setup.execute("rejects", input(None)).await;
    assert_eq!(run.status, ExecutionStatus::Failed, "{}", run.describe());
    assert_eq!(run.error.as_deref(), Some("TooManyRejectedRows"), "{}", run.describe());
    setup.assert_notified(&run);
    // Clean refused the file: the run's raw copy is discarded with it, and nothing was published.
    assert!(setup.keys("raw/").await.is_empty(), "a refused file leaves no raw copy");
    assert!(setup.keys("quarantine/").await.is_empty());
    assert!(setup.keys("clean/").await.is_empty());
    assert!(setup.keys("curated/").await.is_empty());
    assert_eq!(setup.router.invocations("tripflow-transform"), 0);
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_clean_failure_is_retried_and_the_run_succeeds() {
    let setup = Setup::new().await;
    setup.upload_generated(5_000, 5).await;
    setup
        .router
        .fail_next("tripflow-clean", 1, Fault::unhandled("StorageUnavailable"));
    let run = setup.execute("transient", input(None)).await;
    assert_eq!(run.status, ExecutionStatus::Succeeded, "{}", run.describe());
    assert_eq!(setup.router.invocations("tripflow-clean"), 2);
    assert_eq!(run.task_failures(), vec!["StorageUnavailable".to_string()]);
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, Setup::rows_curated(&run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_failure_that_outlasts_its_retries_is_caught_notified_and_fails_as_stage_failed() {
    let setup = Setup::new().await;
    setup.upload_generated(2_000, 6).await;
    setup
        .router
        .fail_next("tripflow-clean", 100, Fault::unhandled("StorageUnavailable"));
    let run = setup.execute("exhausted", input(None)).await;
    assert_eq!(run.status, ExecutionStatus::Failed, "{}", run.describe());
    assert_eq!(run.error.as_deref(), Some("StageFailed"), "{}", run.describe());
    assert_eq!(
        setup.router.invocations("tripflow-clean"),
        4,
        "one attempt and MaxAttempts 3 retries"
    );
    assert!(
        run.entered("CleanFailed") && run.entered("StageFailed"),
        "{}",
        run.describe()
    );
    setup.assert_notified(&run);
    assert!(setup.keys("clean/").await.is_empty());
    assert_eq!(setup.router.invocations("tripflow-transform"), 0);
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_crawlers_are_polled_until_ready_and_the_run_succeeds() {
    let setup = Setup::with(PipelineConfig::default(), 2, 1).await;
    setup.upload_generated(2_000, 8).await;
    let run = setup.execute("slow-crawl", input(None)).await;
    assert_eq!(run.status, ExecutionStatus::Succeeded, "{}", run.describe());
    assert_eq!(
        setup.router.proxied_count("AWSGlue.StartCrawler"),
        4,
        "{:?}",
        setup.router.proxied()
    );
    let polls = setup.router.proxied_count("AWSGlue.GetCrawler");
    assert!(
        polls >= 8,
        "each of the 4 crawlers polled more than once, {polls} GetCrawler calls"
    );
    for state in [
        "GetRawCrawler",
        "GetCleanCrawler",
        "GetCuratedCrawler",
        "GetAuroraCrawler",
    ] {
        let entered = run
            .history
            .iter()
            .filter_map(|e| e.state_entered_event_details())
            .filter(|d| d.name() == state)
            .count();
        assert!(entered > 1, "{state} entered {entered} times");
    }
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, Setup::rows_curated(&run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_the_same_input_under_a_new_execution_name_leaves_the_database_unchanged() {
    let setup = Setup::new().await;
    let md5 = setup.upload_generated(5_000, 9).await;
    let first = setup.execute("first", input(Some(&md5))).await;
    assert_eq!(first.status, ExecutionStatus::Succeeded, "{}", first.describe());
    let count = setup.pg.trip_count(SOURCE_ID).await;
    let answers = setup.answers().await;
    assert_eq!(count, Setup::rows_curated(&first));
    let second = setup.execute("second", input(Some(&md5))).await;
    assert_eq!(second.status, ExecutionStatus::Succeeded, "{}", second.describe());
    assert_eq!(
        setup.router.invocations("tripflow-load"),
        2,
        "the load really ran twice"
    );
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, count);
    assert_eq!(setup.answers().await, answers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_fails_as_empty_source_and_leaves_the_loaded_month_as_it_was() {
    let setup = Setup::new().await;
    let md5 = setup.upload_generated(5_000, 10).await;
    let loaded = setup.execute("loaded", input(Some(&md5))).await;
    assert_eq!(loaded.status, ExecutionStatus::Succeeded, "{}", loaded.describe());
    let (count, answers) = (setup.pg.trip_count(SOURCE_ID).await, setup.answers().await);
    let (clean, curated) = (setup.keys("clean/").await, setup.keys("curated/").await);

    let md5 = setup.upload_generated(0, 10).await;
    let empty = setup.execute("empty", input(Some(&md5))).await;
    assert_eq!(empty.error.as_deref(), Some("EmptySource"), "{}", empty.describe());
    assert!(empty.entered("EmptySource"), "{}", empty.describe());
    setup.assert_notified(&empty);
    assert_eq!(
        setup.router.invocations("tripflow-clean"),
        1,
        "the empty file never reached clean"
    );
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, count);
    assert_eq!(setup.answers().await, answers);
    assert_eq!(setup.keys("clean/").await, clean);
    assert_eq!(setup.keys("curated/").await, curated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_much_smaller_file_fails_as_suspicious_shrink_unless_the_input_allows_it() {
    let setup = Setup::new().await;
    let md5 = setup.upload_generated(20_000, 11).await;
    let loaded = setup.execute("loaded", input(Some(&md5))).await;
    assert_eq!(loaded.status, ExecutionStatus::Succeeded, "{}", loaded.describe());
    let (count, answers) = (setup.pg.trip_count(SOURCE_ID).await, setup.answers().await);
    let (raw, clean) = (setup.keys("raw/").await, setup.keys("clean/").await);

    let md5 = setup.upload_generated(1_000, 11).await;
    let shrunk = setup.execute("shrunk", input(Some(&md5))).await;
    assert_eq!(
        shrunk.error.as_deref(),
        Some("SuspiciousShrink"),
        "{}",
        shrunk.describe()
    );
    assert!(shrunk.entered("SuspiciousShrink"), "{}", shrunk.describe());
    setup.assert_notified(&shrunk);
    assert_eq!(
        setup.router.invocations("tripflow-transform"),
        1,
        "only the first run reached transform"
    );
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, count);
    assert_eq!(setup.answers().await, answers);
    assert_eq!(
        setup.keys("raw/").await,
        raw,
        "the refused file's raw copy is gone, the accepted one stays"
    );
    assert_eq!(setup.keys("clean/").await, clean);

    let mut allowed_input = input(Some(&md5));
    allowed_input["allow_shrink"] = json!(true);
    let allowed = setup.execute("allowed", allowed_input).await;
    assert_eq!(allowed.status, ExecutionStatus::Succeeded, "{}", allowed.describe());
    let curated = Setup::rows_curated(&allowed);
    assert!(curated < 1_000);
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await, curated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executions_of_the_same_month_at_once_run_one_after_the_other_and_end_on_the_later() {
    let setup = Setup::new().await;
    let mut inputs = Vec::new();
    for (name, seed) in [("a", 21), ("b", 22)] {
        let key = format!("landing/{name}/yellow_tripdata_2021-03.parquet");
        let md5 = setup.upload_generated_to(&key, 8_000, seed).await;
        inputs.push(json!({"source": format!("s3://{BUCKET}/{key}"), "expected_md5": md5}));
    }
    let (a, b) = tokio::join!(
        setup.execute("month-a", inputs[0].clone()),
        setup.execute("month-b", inputs[1].clone())
    );
    assert_eq!(a.status, ExecutionStatus::Succeeded, "{}", a.describe());
    assert_eq!(b.status, ExecutionStatus::Succeeded, "{}", b.describe());

    // One took the month; the other's ingest found it held (ConcurrentRun), waited in its Retry,
    // and only went on to clean after the first had finished: the runs never interleaved.
    let waited = |e: &Execution| e.task_failures().iter().any(|f| f == "ConcurrentRun");
    let (first, second) = match (waited(&a), waited(&b)) {
        (false, true) => (&a, &b),
        (true, false) => (&b, &a),
        other => panic!(
            "exactly one execution waits for the month, not {other:?}: {} / {}",
            a.describe(),
            b.describe()
        ),
    };
    let second_cleaned = second.entered_at("Clean").expect("the second run cleaned");
    assert!(
        second_cleaned.as_nanos() > first.ended_at().as_nanos(),
        "the second run cleaned at {second_cleaned} before the first ended at {}",
        first.ended_at()
    );

    // The run that published last is current in PostgreSQL and in every Delta table on S3.
    let store = tripflow_aws::s3::S3Store::from_sdk(&setup.sdk, &Default::default(), BUCKET).with_lake();
    let current: tripflow::stages::load::LoadOutput =
        tripflow::storage::get_json(&store, "reports/yellow/2021-03/load.json")
            .await
            .unwrap();
    let client = setup.pg.client().await;
    let in_database = tripflow::db::versions::history(&client, SOURCE_ID)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.current)
        .unwrap();
    assert_eq!(in_database.version, current.version);
    assert_eq!(
        current.version, 2,
        "each run published its own version, the waiting one last"
    );
    let second_output: Value = serde_json::from_str(
        second
            .history
            .iter()
            .find_map(|e| e.execution_succeeded_event_details().and_then(|d| d.output()))
            .expect("the second execution's output"),
    )
    .unwrap();
    assert_eq!(second_output["ingest"]["run_id"], current.run_id.as_str());
    assert_eq!(setup.pg.trip_count(SOURCE_ID).await as u64, current.rows_loaded);
    for table in tripflow::lake::tables("yellow") {
        let live = tripflow::lake::live_files(&store, &table, "2021-03".parse().unwrap())
            .await
            .unwrap();
        assert!(!live.is_empty(), "{}", table.root());
        assert!(
            live.iter()
                .all(|f| f.key.ends_with(&format!("part-{}.parquet", current.run_id))),
            "{} holds another run's files than the database's current version: {live:?}",
            table.root()
        );
    }
}
