//! The `tripflow` command as a user meets it: exit codes, the JSON summary's keys, error lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use tripflow_tests::pg::TestPostgres;

fn tripflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tripflow"))
}

/// `tripflow run SOURCE --data-dir DATA` against the database at `url`.
fn tripflow_run(source: impl AsRef<std::ffi::OsStr>, data: impl AsRef<std::ffi::OsStr>, url: &str) -> Command {
    let mut command = tripflow();
    command
        .arg("run")
        .arg(source)
        .arg("--data-dir")
        .arg(data)
        .env("DATABASE_URL", url);
    command
}

/// `tripflow gen` of a March 2021 of `rows` trips into `out`; panics if it fails.
fn generate_march(out: &std::path::Path, rows: usize, seed: u64) {
    let generated = tripflow()
        .args([
            "gen",
            "--month",
            "2021-03",
            "--rows",
            &rows.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
}

#[tokio::test]
async fn run_json_prints_the_documented_keys_and_the_answers() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("yellow_tripdata_2021-03.parquet");
    generate_march(&source, 20_000, 42);

    let out = tripflow_run(&source, dir.path().join("data"), pg.url())
        .arg("--json")
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
    for rule in tripflow::stages::clean::RejectReason::ALL.map(|r| r.as_str()) {
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
    // Zone names beside the ids: the generator's busiest zone, 237, is reported as 161 after the swap.
    assert!(text.contains("161 Midtown Center, Manhattan"), "{text}");
    assert_eq!(top[0]["pu_location_id"], 161);
    assert_eq!(top[0]["pu_zone"], "Midtown Center");
    assert_eq!(top[0]["pu_borough"], "Manhattan");
}

#[tokio::test]
async fn a_failure_exits_non_zero_with_the_error_name_and_cause() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("yellow_tripdata_2021-03.parquet");
    std::fs::write(&source, "not parquet at all").unwrap();
    let out = tripflow_run(&source, dir.path().join("data"), pg.url())
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
        let mut command = tripflow_run(&url, dir.path(), pg.url());
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

/// A `tripflow run` in progress, with the rest of its log collected in the background (so the child
/// never blocks on a full pipe).
struct Running {
    child: std::process::Child,
    log_tail: std::sync::mpsc::Receiver<String>,
}

impl Running {
    /// Starts `tripflow run SOURCE` and returns once its log says `line` (the stage it is in).
    fn until_log_says(source: &std::path::Path, data: &std::path::Path, url: &str, line: &str) -> Self {
        use std::io::{BufRead, BufReader, Read};
        let mut child = tripflow_run(source, data, url)
            .env("RUST_LOG", "tripflow=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut next = String::new();
            assert!(
                stderr.read_line(&mut next).unwrap() > 0,
                "the run ended before {line:?}:\n{seen}"
            );
            seen.push_str(&next);
            if next.contains(line) {
                break;
            }
        }
        let (tx, log_tail) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            let _ = tx.send(rest);
        });
        Running { child, log_tail }
    }

    /// Waits for the exit; returns its status and the rest of the log.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, self.log_tail.recv().unwrap_or_default())
    }
}

fn staging_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join(".staging")).map(|d| d.count()).unwrap_or(0)
}

/// Waits (bounded) until the run has writes in flight, so the fault lands mid-write.
fn wait_for_writes_in_flight(data: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while staging_files(data) == 0 {
        assert!(std::time::Instant::now() < deadline, "the run never started writing");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn zone_keys(data: &std::path::Path) -> Vec<String> {
    let mut keys = Vec::new();
    for zone in ["raw", "clean", "quarantine", "curated"] {
        let mut stack = vec![data.join(zone)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else {
                    let bytes = std::fs::read(entry.path()).unwrap();
                    keys.push(format!("{} {}", entry.path().display(), bytes.len()));
                }
            }
        }
    }
    keys.sort();
    keys
}

#[tokio::test]
async fn sigint_and_sigterm_mid_stage_exit_130_and_143_naming_the_signal_and_change_nothing() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let source = dir.path().join("yellow_tripdata_2021-03.parquet");
    generate_march(&source, 600_000, 42);
    let first = tripflow_run(&source, &data, pg.url()).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let before = zone_keys(&data);
    let trips_before = pg.trip_count("yellow/2021-03").await;

    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let running = Running::until_log_says(&source, &data, pg.url(), "clean started");
        wait_for_writes_in_flight(&data);
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(running.child.id().to_string())
            .status();
        assert!(killed.unwrap().success());
        let (status, stderr) = running.wait();
        assert_eq!(status.code(), Some(code), "SIG{signal}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("error: Interrupted: received SIG{signal}")),
            "{stderr}"
        );
        assert_eq!(staging_files(&data), 0, "SIG{signal} left partial writes behind");
        // The interrupted run's raw copy is its own (run-scoped); every accepted object is untouched.
        let after: Vec<String> = zone_keys(&data)
            .into_iter()
            .filter(|k| !k.contains("/run=") || before.contains(k))
            .collect();
        assert_eq!(after, before, "SIG{signal} changed an accepted object");
        assert_eq!(pg.trip_count("yellow/2021-03").await, trips_before);
    }
}

#[tokio::test]
async fn partial_writes_of_a_killed_run_are_removed_by_the_next_run_which_converges() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let source = dir.path().join("yellow_tripdata_2021-03.parquet");
    generate_march(&source, 600_000, 42);
    let mut running = Running::until_log_says(&source, &data, pg.url(), "clean started");
    wait_for_writes_in_flight(&data);
    running.child.kill().unwrap();
    running.wait();
    assert!(
        staging_files(&data) > 0,
        "a kill -9 mid-clean leaves its partial writes"
    );

    let rerun = tripflow_run(&source, &data, pg.url()).arg("--json").output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    assert_eq!(staging_files(&data), 0);
    let summary: serde_json::Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(summary["rows_loaded"], summary["rows_kept"]);
    assert_eq!(
        pg.trip_count("yellow/2021-03").await,
        summary["rows_loaded"].as_i64().unwrap()
    );
}

#[tokio::test]
async fn history_lists_each_loaded_version_newest_first_with_its_source_md5() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut md5s = Vec::new();
    for seed in [1, 2] {
        let source = dir.path().join(format!("s{seed}/yellow_tripdata_2021-03.parquet"));
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        generate_march(&source, 5_000, seed);
        let run = tripflow_run(&source, &data, pg.url()).arg("--json").output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        md5s.push((
            summary["md5"].clone(),
            summary["rows_kept"].clone(),
            summary["avg_speed_mph"].clone(),
        ));
    }
    // `tripflow COMMAND yellow/2021-03 ARGS…` on this data folder and database.
    let on_march = |args: &[&str]| {
        tripflow()
            .arg(args[0])
            .arg("yellow/2021-03")
            .args(&args[1..])
            .arg("--data-dir")
            .arg(&data)
            .env("DATABASE_URL", pg.url())
            .output()
            .unwrap()
    };
    let history = on_march(&["history", "--json"]);
    assert!(history.status.success(), "{}", String::from_utf8_lossy(&history.stderr));
    let versions: Vec<serde_json::Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(versions.len(), 2);
    for (entry, (md5, rows, avg)) in versions.iter().zip(md5s.iter().rev()) {
        for key in ["version", "md5", "rows_kept", "avg_speed_mph", "created_at", "current"] {
            assert!(entry.get(key).is_some(), "missing {key}: {entry}");
        }
        assert_eq!(&entry["md5"], md5);
        assert_eq!(&entry["rows_kept"], rows);
        assert_eq!(&entry["avg_speed_mph"], avg);
    }
    assert_eq!(versions[0]["current"], true, "the newest is current");
    assert_eq!(versions[1]["current"], false);

    let text = on_march(&["history"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(md5s[0].0.as_str().unwrap()) && text.contains("current"),
        "{text}"
    );

    let bad = tripflow().args(["history", "2021-03"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a malformed month is a usage error");

    // restore --version 1: the first file's version is current again, in the answers and the lake.
    let restore = |version: &str| on_march(&["restore", "--version", version, "--json"]);
    let restored = restore("1");
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let restored: serde_json::Value = serde_json::from_slice(&restored.stdout).unwrap();
    assert_eq!(restored["version"], 1);
    assert_eq!(restored["previous_version"], 2);
    assert_eq!(restored["rows_kept"], md5s[0].1);
    assert_eq!(restored["avg_speed_mph"], md5s[0].2);
    assert_eq!(restored["commits"].as_array().unwrap().len(), 3, "{restored}");
    let history = on_march(&["history", "--json"]);
    let versions: Vec<serde_json::Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(
        (versions[1]["version"].clone(), versions[1]["current"].clone()),
        (1.into(), true.into())
    );

    let missing = restore("7");
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("error: VersionNotFound"), "{stderr}");
}

#[tokio::test]
async fn a_second_run_of_the_same_month_at_once_fails_concurrent_run_and_changes_nothing() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first_file = dir.path().join("first/yellow_tripdata_2021-03.parquet");
    let second_file = dir.path().join("second/yellow_tripdata_2021-03.parquet");
    for (file, rows, seed) in [(&first_file, 600_000, 1), (&second_file, 20_000, 2)] {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        generate_march(file, rows, seed);
    }
    let first = Running::until_log_says(&first_file, &data, pg.url(), "clean started");
    let second = tripflow_run(&second_file, &data, pg.url()).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: ConcurrentRun: another run of yellow/2021-03"),
        "{stderr}"
    );
    let (status, log) = first.wait();
    assert!(status.success(), "{log}");
    // The database holds the first run's month only; the second, run again alone, replaces it.
    let history = |url: &str| {
        let out = tripflow()
            .args(["history", "yellow/2021-03", "--json", "--data-dir"])
            .arg(&data)
            .env("DATABASE_URL", url)
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    assert_eq!(history(pg.url()).len(), 1);
    let raw_copies = zone_keys(&data).iter().filter(|k| k.contains("/raw/")).count();
    assert_eq!(raw_copies, 1, "the refused run wrote nothing");
    let again = tripflow_run(&second_file, &data, pg.url())
        .args(["--json", "--allow-shrink"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        pg.trip_count("yellow/2021-03").await,
        summary["rows_loaded"].as_i64().unwrap()
    );
    assert_eq!(history(pg.url()).len(), 2);
}

#[test]
fn demo_as_root_in_a_folder_the_postgres_user_cannot_enter_still_starts_its_cluster() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        eprintln!("SKIPPED: this checks the root case (PostgreSQL runs as another user); not running as root");
        return;
    }
    // Like a checkout in /root: a private folder (0700) around the data folder.
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = home.path().join("tripflow/tripflow-data");
    let demo = tripflow()
        .args(["demo", "--rows", "5000", "--json", "--data-dir"])
        .arg(&data)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let note = std::fs::read_to_string(data.join(".postgres/WHERE_IS_THE_CLUSTER.txt")).unwrap_or_default();
    let cluster = note.trim().rsplit(' ').next().unwrap_or_default().to_string();
    let stop = tripflow()
        .args(["db", "stop", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    if cluster.starts_with("/var/tmp/tripflow-postgres/") {
        let _ = std::fs::remove_dir_all(&cluster);
    }
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&demo.stdout).unwrap();
    assert_eq!(summary["rows_loaded"], summary["rows_kept"]);
    assert!(
        cluster.starts_with("/var/tmp/tripflow-postgres/"),
        "the cluster moved where it can run: {note}"
    );
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
}

/// What readers see of March in each lake table: the run whose files are live and their rows.
/// Panics if a table lists files of two runs at once (a mix of versions).
async fn lake_state(data: &std::path::Path) -> Vec<(String, Option<String>, u64)> {
    let store = tripflow::storage::LocalStore::open(data).unwrap();
    let mut state = Vec::new();
    for table in tripflow::lake::tables("yellow") {
        let live = tripflow::lake::live_files(&store, &table, "2021-03".parse().unwrap())
            .await
            .unwrap();
        let runs: std::collections::BTreeSet<String> = live
            .iter()
            .map(|f| {
                tripflow::storage::Layout::run_of_part(&f.key)
                    .unwrap_or_else(|| panic!("{} is no run's part", f.key))
                    .to_string()
            })
            .collect();
        assert!(runs.len() <= 1, "{} mixes runs {runs:?}", table.root());
        let rows = live.iter().map(|f| f.rows.unwrap()).sum();
        state.push((table.root(), runs.into_iter().next(), rows));
    }
    state
}

/// Rows each lake table holds for a run summary: (quarantine, clean, curated), in publish order.
fn table_rows(summary: &serde_json::Value) -> Vec<u64> {
    let (rows_in, kept) = (
        summary["rows_in"].as_u64().unwrap(),
        summary["rows_kept"].as_u64().unwrap(),
    );
    vec![rows_in - kept, kept, kept]
}

#[tokio::test]
async fn kill_9_at_seeded_random_points_leaves_every_zone_on_one_version_and_a_rerun_converges() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, b) = (
        dir.path().join("a/yellow_tripdata_2021-03.parquet"),
        dir.path().join("b/yellow_tripdata_2021-03.parquet"),
    );
    for (file, seed) in [(&a, 1), (&b, 2)] {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        generate_march(file, 150_000, seed);
    }
    let started = std::time::Instant::now();
    let first = tripflow_run(&a, &data, pg.url()).arg("--json").output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let whole_run = started.elapsed().as_secs_f64();
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let tables_of_first = lake_state(&data).await;

    // Kill points spread over the whole run (ingest to the last commit), from a fixed seed so a
    // failure can be replayed; printed so the log says where each landed.
    let mut seed: u64 = 0x0072_6970_666c_6f77;
    let mut next_fraction = || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    let mut observed = Vec::new();
    for point in 0..10 {
        let fraction = next_fraction();
        // The last point falls well past the run's length: the runs after a kill do more (roll
        // forward, sweep, retention) than the first, and the publish is the last tenth of a second,
        // so random points alone may all land before it on a fast machine.
        let delay = if point == 9 {
            whole_run * 3.0
        } else {
            whole_run * (0.05 + 1.05 * fraction)
        };
        let mut child = tripflow_run(&b, &data, pg.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs_f64(delay));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let status = child.wait().unwrap();
        eprintln!(
            "kill point {point}: after {delay:.2} s of a {whole_run:.2} s run (finished first: {finished}, {status})"
        );
        let answers = tripflow::db::answers(&pg.client().await, "yellow/2021-03")
            .await
            .unwrap();
        observed.push((lake_state(&data).await, answers.avg_speed_mph));
    }

    // A run that is left alone finishes whatever was pending and publishes B everywhere.
    let last = tripflow_run(&b, &data, pg.url()).arg("--json").output().unwrap();
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    let last: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    let run_b = last["ingest"]["run_id"].as_str().unwrap().to_string();
    let converged = lake_state(&data).await;
    assert_eq!(
        converged
            .iter()
            .map(|(_, run, rows)| (run.clone(), *rows))
            .collect::<Vec<_>>(),
        table_rows(&last)
            .into_iter()
            .map(|rows| (Some(run_b.clone()), rows))
            .collect::<Vec<_>>()
    );
    let answers = tripflow::db::answers(&pg.client().await, "yellow/2021-03")
        .await
        .unwrap();
    assert_eq!(answers.avg_speed_mph, last["avg_speed_mph"].as_f64());
    assert_eq!(
        pg.trip_count("yellow/2021-03").await as u64,
        last["rows_kept"].as_u64().unwrap()
    );
    assert_eq!(staging_files(&data), 0, "litter of killed runs is removed");
    assert!(
        observed.iter().any(|(tables, _)| tables[2].1 != tables_of_first[2].1),
        "no kill point fell after a publish: the points do not cover the run"
    );
    // Every file under the month's partitions is live or a kept version's: no unpublished leftovers.
    let store = tripflow::storage::LocalStore::open(&data).unwrap();
    let swept = tripflow::handoff::sweep_unpublished(
        &store,
        &tripflow::storage::Layout::new("yellow", "2021-03".parse().unwrap()),
    )
    .await
    .unwrap();
    assert!(swept.is_empty(), "left behind: {swept:?}");

    // After every kill, each table and the database held A's version or B's, never a part of one.
    let (rows_a, rows_b) = (table_rows(&first), table_rows(&last));
    let (avg_a, avg_b) = (first["avg_speed_mph"].as_f64(), last["avg_speed_mph"].as_f64());
    for (point, (tables, avg)) in observed.iter().enumerate() {
        for (i, (table, _, rows)) in tables.iter().enumerate() {
            assert!(
                *rows == rows_a[i] || *rows == rows_b[i],
                "kill point {point}: {table} holds {rows} rows, neither A's {} nor B's {}",
                rows_a[i],
                rows_b[i]
            );
        }
        // PostgreSQL may sum float8 in parallel workers, in any order: the last bits may differ.
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs(),
            _ => x == y,
        };
        assert!(
            close(*avg, avg_a) || close(*avg, avg_b),
            "kill point {point}: average {avg:?}, A's {avg_a:?}, B's {avg_b:?}"
        );
    }
}

#[tokio::test]
async fn the_quality_report_renders_in_chromium_with_the_average_and_the_counts() {
    use tripflow::quality::thousands;
    use tripflow_tests::browser;

    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (source, data) = (
        dir.path().join("yellow_tripdata_2021-03.parquet"),
        dir.path().join("data"),
    );
    generate_march(&source, 30_000, 5);
    let out = tripflow_run(&source, &data, pg.url()).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The run says where its report is, and `tripflow report` names the same file.
    let page = std::path::PathBuf::from(
        summary["quality_report"]
            .as_str()
            .expect("quality_report in the summary"),
    );
    assert!(
        page.ends_with("reports/yellow/2021-03/quality.html"),
        "{}",
        page.display()
    );
    let report = |extra: &[&str]| {
        tripflow()
            .args(["report", "yellow/2021-03"])
            .args(extra)
            .arg("--data-dir")
            .arg(&data)
            .env("DATABASE_URL", pg.url())
            .output()
            .unwrap()
    };
    let printed = report(&[]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        page.display().to_string()
    );

    // Rendered by a real browser: a page with ink on it, the bars drawn, and the figures in its text.
    let png = dir.path().join("report.png");
    browser::screenshot(&page, &png, 1200, 2600);
    let pixels = browser::pixels(&png, [0x25, 0x63, 0xeb]);
    assert_eq!((pixels.width, pixels.height), (1200, 2600));
    assert!(pixels.inked > 0.05, "the page is nearly blank: {pixels:?}");
    assert!(
        pixels.of_colour > 10_000,
        "the blue bars of two charts are missing: {pixels:?}"
    );
    let text = browser::rendered_text(&page);
    let avg = summary["avg_speed_mph"].as_f64().unwrap();
    let rows_in = summary["rows_in"].as_u64().unwrap();
    let rows_kept = summary["rows_kept"].as_u64().unwrap();
    for expected in [
        format!("{avg:.2} mph"),
        format!("average {avg:.2} mph"),
        format!("{} rows in", thousands(rows_in)),
        format!("{} rows kept", thousands(rows_kept)),
        format!("{} rows loaded", thousands(summary["rows_loaded"].as_u64().unwrap())),
        "Midtown Center (161) Manhattan".to_string(),
        "outside_period".to_string(),
    ] {
        assert!(
            text.contains(&expected),
            "{expected:?} not in the rendered page: {text}"
        );
    }

    // A month whose report is gone (loaded before reports existed) gets it written by `report`.
    std::fs::remove_file(&page).unwrap();
    let printed = report(&[]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert!(page.exists());
    assert!(browser::rendered_text(&page).contains(&format!("average {avg:.2} mph")));

    // A month never loaded is an error naming what to do.
    let missing = tripflow()
        .args(["report", "yellow/2020-01", "--data-dir"])
        .arg(&data)
        .env("DATABASE_URL", pg.url())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("yellow/2020-01 has no loaded version"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// Runs `tripflow ARGS` under a pseudo-terminal (util-linux `script`), as a person at a terminal
/// would, and returns everything it drew, escape sequences removed and redraws split into lines.
fn on_a_terminal(args: &str, url: &str) -> (bool, String) {
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_tripflow"));
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("util-linux script runs");
    let raw = String::from_utf8_lossy(&out.stdout);
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI sequences: ESC [ parameters final-letter.
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for p in chars.by_ref() {
                        if p.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => text.push('\n'),
            c => text.push(c),
        }
    }
    (out.status.success(), text)
}

#[tokio::test]
async fn on_a_terminal_run_draws_a_bar_per_stage_and_only_warnings_unless_verbose() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (source, data) = (
        dir.path().join("yellow_tripdata_2021-03.parquet"),
        dir.path().join("data"),
    );
    generate_march(&source, 20_000, 9);
    let args = format!("run {} --data-dir {}", source.display(), data.display());

    let (ok, drawn) = on_a_terminal(&args, pg.url());
    assert!(ok, "{drawn}");
    for stage in ["ingest", "clean", "transform", "load"] {
        assert!(
            drawn
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{stage} [")) && l.contains(']')),
            "no {stage} bar in: {drawn}"
        );
    }
    assert!(
        drawn.contains("20,000/20,000"),
        "clean's bar reaches every row: {drawn}"
    );
    assert!(
        drawn.contains(" B/") || drawn.contains("KiB/"),
        "ingest counts bytes: {drawn}"
    );
    assert!(
        !drawn.contains(" INFO "),
        "only warnings and errors beside the bars: {drawn}"
    );
    let last = drawn.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(
        last.starts_with("quality report: ") && last.ends_with("reports/yellow/2021-03/quality.html"),
        "the summary ends with where the report is: {last:?}"
    );

    let (ok, verbose) = on_a_terminal(&format!("{args} -v"), pg.url());
    assert!(ok, "{verbose}");
    assert!(
        verbose.contains(" INFO ") && verbose.contains("ingest done"),
        "{verbose}"
    );
    assert!(
        !verbose.contains("clean ["),
        "-v logs instead of drawing bars: {verbose}"
    );

    // Not a terminal: the log as before, no bars.
    let piped = tripflow_run(&source, &data, pg.url()).output().unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("INFO") && !stderr.contains("clean ["), "{stderr}");
}
