//! The `tripflow` command as a user meets it: exit codes, the JSON summary's keys, error lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use tripflow_tests::pg::TestPostgres;

fn tripflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tripflow"))
}

#[tokio::test]
async fn run_json_prints_the_documented_keys_and_the_answers() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("yellow_tripdata_2021-03.parquet");
    let generated = tripflow()
        .args(["gen", "--month", "2021-03", "--rows", "20000"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let out = tripflow()
        .arg("run")
        .arg(&source)
        .arg("--json")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DATABASE_URL", pg.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    for key in [
        "rows_in",
        "rows_kept",
        "rows_rejected",
        "rows_loaded",
        "md5",
        "avg_speed_mph",
        "weekly_top5",
    ] {
        assert!(summary.get(key).is_some(), "missing {key}");
    }
    assert_eq!(summary["rows_in"], 20000);
    assert_eq!(summary["rows_loaded"], summary["rows_kept"]);
    for rule in ["null_timestamp", "non_positive_duration", "outside_period"] {
        assert!(summary["rows_rejected"][rule].is_u64(), "missing rule {rule}");
    }
    let top = summary["weekly_top5"].as_array().unwrap();
    assert_eq!(top.len(), 25, "5 locations for each of ISO weeks 9-13");
    assert!(
        top[0]["week"].is_i64()
            && top[0]["rank"] == 1
            && top[0]["pu_location_id"].is_i64()
            && top[0]["slow_trips"].is_i64()
    );

    let query = tripflow()
        .args(["query", "--month", "2021-03"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DATABASE_URL", pg.url())
        .output()
        .unwrap();
    assert!(query.status.success());
    let text = String::from_utf8_lossy(&query.stdout);
    assert!(text.contains("average speed") && text.contains("week 13"), "{text}");
}

#[tokio::test]
async fn a_failure_exits_non_zero_with_the_error_name_and_cause() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("yellow_tripdata_2021-03.parquet");
    std::fs::write(&source, "not parquet at all").unwrap();
    let out = tripflow()
        .arg("run")
        .arg(&source)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DATABASE_URL", pg.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: NotParquet: "), "{stderr}");
    assert!(last.contains("not a Parquet file"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a failed run");
}

#[test]
fn help_describes_every_command() {
    let out = tripflow().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "demo", "query", "gen", "db"] {
        assert!(text.contains(command), "{command} missing from --help");
    }
    let run_help = String::from_utf8_lossy(&tripflow().args(["run", "--help"]).output().unwrap().stdout).to_string();
    assert!(run_help.contains("--md5") && run_help.contains("--month") && run_help.contains("DATABASE_URL"));
    assert!(run_help.contains("--allow-http"), "{run_help}");
}

#[test]
fn a_malformed_timeout_variable_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = tripflow()
        .args([
            "run",
            "https://example.org/yellow_tripdata_2021-03.parquet",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TRIPFLOW_HTTP_READ_TIMEOUT_S", "forever")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: InvalidInput: ") && stderr.contains("TRIPFLOW_HTTP_READ_TIMEOUT_S=\"forever\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn plain_http_is_refused_without_allow_http() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/yellow_tripdata_2021-03.parquet",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let run = |allow: bool| {
        let mut command = tripflow();
        command
            .arg("run")
            .arg(&url)
            .arg("--data-dir")
            .arg(dir.path())
            .env("DATABASE_URL", pg.url());
        if allow {
            command.arg("--allow-http");
        }
        command.output().unwrap()
    };
    let refused = run(false);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("error: InvalidInput: ") && stderr.contains("--allow-http"),
        "{stderr}"
    );
    // Allowed, it is fetched: nothing listens, so the sidecar's URL is what failed, with its cause.
    let fetched = run(true);
    let stderr = String::from_utf8_lossy(&fetched.stderr);
    assert!(
        stderr.contains("error: SourceUnavailable: ") && stderr.contains(".parquet.md5"),
        "{stderr}"
    );
}
