//! `tripflow`: the whole pipeline on one machine. The zones live in a local folder (`--data-dir`),
//! the trips land in PostgreSQL (`--database-url`, or a private cluster it starts under the data
//! folder). Calls the same stage functions as the Lambdas.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tripflow::config::{DbSettings, ENV_DATABASE_URL, PipelineConfig};
use tripflow::db::versions::UrlSessions;
use tripflow::db::{self, Answers, local::LocalPostgres};
use tripflow::generator::{GenSpec, write_month};
use tripflow::period::Period;
use tripflow::pipeline::{RunSummary, run_all};
use tripflow::stages::StageContext;
use tripflow::stages::ingest::IngestInput;
use tripflow::storage::{Layout, LocalStore, ObjectStore};
use tripflow::{Error, Result};

mod progress;
mod report;

#[derive(Parser)]
#[command(
    name = "tripflow",
    version,
    about = "ETL for the NYC TLC yellow-taxi trip records: ingest, clean, transform, load."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print the INFO log lines. On a terminal, `run` and `demo` otherwise draw a progress bar per
    /// stage and print only warnings and errors; piped or with --json, the log is always INFO.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run all four stages on one file and print the run summary and the two answers.
    Run(RunArgs),
    /// Generate a synthetic month into the landing zone and run the pipeline on it.
    Demo(DemoArgs),
    /// Print the two answers for months already loaded.
    Query(QueryArgs),
    /// List the versions of one month in the database (newest first): when, from which file, rows,
    /// average speed, which one is current.
    History(HistoryArgs),
    /// Make an earlier version of one month current again, in every lake table and the database,
    /// the way a run publishes (one Delta commit per table, then the database swap).
    Restore(RestoreArgs),
    /// Print where the quality report of a month's current version is (an HTML page with the
    /// rejects per rule, trips per day, the speed distribution, the weekly top 5 slow zones, the
    /// versions and the stage timings), writing it first if the month has none.
    Report(ReportArgs),
    /// Generate a synthetic month of trips with the official schema and realistic defects.
    Gen(GenArgs),
    /// Manage the private PostgreSQL cluster `tripflow` starts when no database URL is given.
    Db {
        #[command(subcommand)]
        action: DbAction,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Args, Clone)]
struct Place {
    /// Folder holding the zones (landing/, raw/, clean/, quarantine/, curated/, reports/).
    #[arg(long, global = true, default_value = "tripflow-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// PostgreSQL URL. Without it, a private cluster under DIR/.postgres is started and reused.
    #[arg(long, global = true, env = ENV_DATABASE_URL, value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The source file: a local path or an https:// URL. Month and dataset come from its name
    /// (yellow_tripdata_YYYY-MM.parquet) unless --month is given.
    source: String,
    /// The month the file holds (YYYY-MM).
    #[arg(long, value_name = "YYYY-MM")]
    month: Option<Period>,
    /// Expected MD5 (hex). Without it, a SOURCE.md5 sidecar is used when present.
    #[arg(long, value_name = "HEX")]
    md5: Option<String>,
    /// Share of rows clean may reject before the run fails with TooManyRejectedRows.
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    max_rejected_ratio: Option<f64>,
    /// Accept a file that keeps fewer rows than TRIPFLOW_MIN_KEPT_SHARE (default 0.5) of the month's
    /// current version; without it such a run fails with SuspiciousShrink and changes nothing.
    #[arg(long)]
    allow_shrink: bool,
    /// Fetch a plain http:// SOURCE (refused by default: nothing vouches for bytes sent without TLS).
    #[arg(long)]
    allow_http: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    place: Place,
}

#[derive(Args)]
struct DemoArgs {
    /// The month to generate.
    #[arg(long, default_value = "2021-03", value_name = "YYYY-MM")]
    month: Period,
    /// Rows to generate (the real March 2021 file has about 1.9 M).
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    place: Place,
}

#[derive(Args)]
struct QueryArgs {
    /// The month to answer for; default: every loaded month.
    #[arg(long, value_name = "YYYY-MM")]
    month: Option<Period>,
    #[arg(long, default_value = "yellow")]
    dataset: String,
    /// Print the answers as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    place: Place,
}

#[derive(Args)]
struct HistoryArgs {
    /// The month, as DATASET/YYYY-MM (e.g. yellow/2021-03).
    #[arg(value_name = "DATASET/YYYY-MM", value_parser = parse_source_id)]
    source_id: String,
    /// Print one JSON object per version (keys version, md5, rows_kept, avg_speed_mph, created_at,
    /// current), as a JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    place: Place,
}

#[derive(Args)]
struct RestoreArgs {
    /// The month, as DATASET/YYYY-MM (e.g. yellow/2021-03).
    #[arg(value_name = "DATASET/YYYY-MM", value_parser = parse_source_id)]
    source_id: String,
    /// The version to make current (see `tripflow history`).
    #[arg(long, value_name = "N")]
    version: i32,
    /// Print what was done as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    place: Place,
}

#[derive(Args)]
struct ReportArgs {
    /// The month, as DATASET/YYYY-MM (e.g. yellow/2021-03).
    #[arg(value_name = "DATASET/YYYY-MM", value_parser = parse_source_id)]
    source_id: String,
    /// Also open it in the desktop's browser (xdg-open, or open on macOS).
    #[arg(long)]
    open: bool,
    #[command(flatten)]
    place: Place,
}

#[derive(Args)]
struct GenArgs {
    /// Output Parquet file; name it yellow_tripdata_YYYY-MM.parquet so `run` can tell its month.
    out: PathBuf,
    #[arg(long, value_name = "YYYY-MM")]
    month: Period,
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Subcommand)]
enum DbAction {
    /// Start the private cluster if needed and print its URL.
    Url,
    /// Stop the private cluster (its data stays for the next run).
    Stop,
}

fn parse_source_id(raw: &str) -> std::result::Result<String, String> {
    let (dataset, month) = raw
        .split_once('/')
        .ok_or_else(|| format!("{raw:?} is not DATASET/YYYY-MM, e.g. yellow/2021-03"))?;
    let valid_dataset = !dataset.is_empty() && dataset.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let month: Period = month.parse().map_err(|e| format!("{raw:?}: {e}"))?;
    if !valid_dataset {
        return Err(format!("{raw:?}: the dataset must be letters, digits or _"));
    }
    Ok(format!("{dataset}/{month}"))
}

fn parse_ratio(raw: &str) -> std::result::Result<f64, String> {
    tripflow::config::parse_ratio(raw).ok_or_else(|| format!("{raw:?} is not a number from 0 to 1"))
}

/// jemalloc, configured in `.cargo/config.toml` (one arena, freed pages returned after a second):
/// on a generated month, three interleaved rounds of a whole `run`, peak RSS fell from 237-277 MiB
/// with glibc's malloc (which keeps every stage's freed buffers) to 150-152 MiB, in 7.8-9.2 s
/// against glibc's 7.5-8.4 s.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Gives every page jemalloc keeps freed back to the system now, before the load of a run
/// ([`StageContext::before_load`]): setting an arena's dirty decay to zero purges it, and the
/// second's decay comes back at once. Without it, the second transform's freed pages are kept
/// overlaps load's start, whose first object buffers (13 MB each at 10x, from jemalloc's arena for
/// large allocations, which cannot reuse the other's pages) came on top: a 10x peak of 153-165 MiB
/// at load's start against 136-142 in the stages themselves. Only there: between the other stages
/// the pages given back cost the next stage the faults of taking them again (a 1x run's system time
/// 0.46-0.52 s to 0.49-0.65 s with a purge after each stage), and no peak comes of keeping them.
#[cfg(feature = "jemalloc")]
fn return_freed_pages() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let Ok(arenas) = Access::<u32>::read(b"arenas.narenas\0".name()) else {
        return;
    };
    let Ok(mut decay) = b"arena.0.dirty_decay_ms\0".name().mib::<[usize; 3]>() else {
        return;
    };
    for arena in 0..arenas {
        decay[1] = arena as usize;
        // An arena not yet in use answers with an error; it keeps nothing either.
        if let Ok(kept_for) = Access::<isize>::update(&decay, 0) {
            let _ = decay.write(kept_for);
        }
    }
}

#[cfg(not(feature = "jemalloc"))]
fn return_freed_pages() {}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Bars for a person watching a terminal; logs for everyone else (pipes, --json, -v).
    let watched = match &cli.command {
        Command::Run(args) => !args.json,
        Command::Demo(args) => !args.json,
        _ => false,
    };
    let bars = (watched && !cli.verbose && std::io::stderr().is_terminal()).then(progress::Bars::on_stderr);
    let default_filter = if bars.is_some() { "warn" } else { "tripflow=info,warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match &bars {
        Some(bars) => logs.with_writer(bars.clone()).init(),
        None => logs.with_writer(std::io::stderr).init(),
    }
    // On SIGINT or SIGTERM the command's future is dropped where it stands: every object being
    // written is discarded by its sink (nothing half-written is published) and an open database
    // transaction rolls back with its connection.
    let outcome = tokio::select! {
        result = execute(cli.command, bars.clone()) => result,
        signal = interrupted() => Err(Error::Interrupted { signal }),
    };
    if let Some(bars) = &bars {
        bars.leave();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}: {err}", err.name());
            match err {
                // The shell's convention: 128 + the signal's number.
                Error::Interrupted { signal: "SIGINT" } => ExitCode::from(130),
                Error::Interrupted { .. } => ExitCode::from(143),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Resolves with the name of the first SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut sigint), Ok(mut sigterm)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        // Without signal handlers the default disposition stays: the process dies as before.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    }
}

async fn execute(command: Command, bars: Option<progress::Bars>) -> Result<()> {
    match command {
        Command::Run(args) => {
            let mut config = PipelineConfig::from_env()?;
            if let Some(ratio) = args.max_rejected_ratio {
                config.max_rejected_ratio = ratio;
            }
            let input = IngestInput {
                source: args.source,
                expected_md5: args.md5,
                period: args.month,
                allow_shrink: args.allow_shrink,
                allow_http: args.allow_http,
            };
            let summary = run(&args.place, config, input, bars).await?;
            print_summary(&summary, args.json)
        }
        Command::Demo(args) => {
            let store = LocalStore::open(&args.place.data_dir)?;
            let file = store.path_of(&format!("landing/yellow_tripdata_{}.parquet", args.month))?;
            let generated = write_month(
                &file,
                GenSpec {
                    period: args.month,
                    rows: args.rows,
                    seed: args.seed,
                },
            )?;
            tracing::info!(path = %file.display(), rows = generated.rows, size_bytes = generated.size_bytes, "generated a synthetic month");
            let input = IngestInput {
                source: file.display().to_string(),
                expected_md5: None,
                period: Some(args.month),
                ..IngestInput::default()
            };
            let summary = run(&args.place, PipelineConfig::from_env()?, input, bars).await?;
            print_summary(&summary, args.json)
        }
        Command::Query(args) => {
            let client = database(&args.place).await?;
            let sources = match args.month {
                Some(month) => vec![format!("{}/{month}", args.dataset)],
                None => db::loaded_sources(&client).await?,
            };
            if sources.is_empty() {
                return Err(Error::InvalidInput(
                    "nothing loaded yet: run `tripflow run` or `tripflow demo` first".into(),
                ));
            }
            let mut all: Vec<(String, Answers)> = Vec::new();
            for source_id in sources {
                let answers = db::answers(&client, &source_id).await?;
                all.push((source_id, answers));
            }
            if args.json {
                let object: serde_json::Map<String, serde_json::Value> = all
                    .into_iter()
                    .map(|(s, a)| (s, serde_json::to_value(a).unwrap_or_default()))
                    .collect();
                println!("{}", serde_json::Value::Object(object));
            } else {
                for (source_id, answers) in &all {
                    print!("{}", report::answers_text(source_id, answers));
                }
            }
            Ok(())
        }
        Command::History(args) => {
            let client = database(&args.place).await?;
            let mut versions = db::versions::history(&client, &args.source_id).await?;
            if versions.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{} has no loaded version: run `tripflow run` on its file first",
                    args.source_id
                )));
            }
            versions.reverse();
            if args.json {
                let entries: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "version": v.version,
                            "md5": v.source_md5,
                            "rows_kept": v.rows_loaded,
                            "avg_speed_mph": v.avg_speed_mph,
                            "created_at": v.created_at.to_rfc3339(),
                            "current": v.current,
                            "state": v.state,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(entries));
            } else {
                print!("{}", report::history_text(&args.source_id, &versions));
            }
            Ok(())
        }
        Command::Restore(args) => {
            let (dataset, month) = args.source_id.split_once('/').unwrap_or_default();
            let layout = Layout::new(dataset, month.parse::<Period>()?);
            let store = Arc::new(LocalStore::open(&args.place.data_dir)?);
            // A restore is a publish: no run of the month may be under way meanwhile.
            let _month = store.lock_month(&layout)?;
            let ctx = StageContext::new(store, PipelineConfig::from_env()?);
            let mut client = database(&args.place).await?;
            let restored = tripflow::handoff::restore(&ctx, &mut client, &layout, args.version).await?;
            if args.json {
                let text = serde_json::to_string_pretty(&restored).map_err(|e| Error::InvalidInput(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", report::restored_text(&restored));
            }
            Ok(())
        }
        Command::Report(args) => {
            let (dataset, month) = args.source_id.split_once('/').unwrap_or_default();
            let layout = Layout::new(dataset, month.parse::<Period>()?);
            let store = LocalStore::open(&args.place.data_dir)?;
            let key = layout.quality_report_key();
            if store.size(&key).await?.is_none() {
                let client = database(&args.place).await?;
                if db::versions::history(&client, &args.source_id).await?.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "{} has no loaded version: run `tripflow run` on its file first",
                        args.source_id
                    )));
                }
                tripflow::quality::write_current(&store, &client, &layout).await?;
            }
            let path = store.path_of(&key)?;
            println!("{}", path.display());
            if args.open {
                open_in_browser(&path);
            }
            Ok(())
        }
        Command::Gen(args) => {
            let summary = write_month(
                &args.out,
                GenSpec {
                    period: args.month,
                    rows: args.rows,
                    seed: args.seed,
                },
            )?;
            println!(
                "wrote {} rows in {} row groups ({} bytes) to {}",
                summary.rows,
                summary.row_groups,
                summary.size_bytes,
                args.out.display()
            );
            Ok(())
        }
        Command::Db { action, place } => {
            let cluster = LocalPostgres::ensure_running(&cluster_dir(&place.data_dir))?;
            match action {
                DbAction::Url => println!("{}", cluster.ensure_database(db::local::DATABASE).await?),
                DbAction::Stop => {
                    cluster.stop()?;
                    println!("stopped the private PostgreSQL cluster in {}", cluster.dir().display());
                }
            }
            Ok(())
        }
    }
}

/// Hands `path` to the desktop's opener; says so on stderr when there is none (a server, a
/// container), the path printed above being the way to it then.
fn open_in_browser(path: &Path) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    match std::process::Command::new(opener).arg(path).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: {opener} {} exited with {status}", path.display()),
        Err(err) => {
            eprintln!("warning: cannot run {opener} to open the report ({err}); open the path above in a browser")
        }
    }
}

fn cluster_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(".postgres")
}

async fn database(place: &Place) -> Result<tokio_postgres::Client> {
    let sessions = sessions(place).await?;
    db::connect_with(&sessions.url, &sessions.settings).await
}

/// Where `place`'s database is, starting the private cluster when no URL is given.
async fn sessions(place: &Place) -> Result<UrlSessions> {
    let url = match &place.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&place.data_dir)
                .map_err(|e| Error::InvalidInput(format!("cannot create {}: {e}", place.data_dir.display())))?;
            let cluster = LocalPostgres::ensure_running(&cluster_dir(&place.data_dir))?;
            cluster.ensure_database(db::local::DATABASE).await?
        }
    };
    Ok(UrlSessions {
        url,
        settings: DbSettings::from_env()?,
    })
}

async fn run(
    place: &Place,
    config: PipelineConfig,
    input: IngestInput,
    bars: Option<progress::Bars>,
) -> Result<RunSummary> {
    let store = Arc::new(LocalStore::open(&place.data_dir)?);
    // One run of a month at a time, from ingest to the answers, so the summary is this run's own.
    let layout = tripflow::stages::ingest::layout_of(&input)?;
    let _month = store.lock_month(&layout)?;
    // What earlier runs of the month left unpublished (killed, refused late) goes first.
    tripflow::handoff::sweep_unpublished(store.as_ref(), &layout).await?;
    let mut ctx = StageContext::new(store.clone(), config).with_before_load(return_freed_pages);
    if let Some(bars) = &bars {
        ctx = ctx.with_progress(Arc::new(bars.clone()));
    }
    let sessions = sessions(place).await?;
    let mut client = db::connect_with(&sessions.url, &sessions.settings).await?;
    let ctx = ctx.with_sessions(Arc::new(sessions));
    let ran = run_all(&ctx, &mut client, input).await;
    if let Some(bars) = &bars {
        bars.leave();
    }
    let mut summary = ran?;
    let report = store.path_of(&layout.quality_report_key())?;
    summary.quality_report = Some(report.display().to_string());
    Ok(summary)
}

fn print_summary(summary: &RunSummary, json: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(summary).map_err(|e| Error::InvalidInput(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", report::summary_text(summary));
    }
    Ok(())
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use super::return_freed_pages;

    fn resident_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    #[test]
    fn freed_pages_go_back_to_the_system_before_load() {
        const MIB: u64 = 1 << 20;
        let before = resident_bytes();
        // 4 MiB each: below jemalloc's threshold for its arena of large allocations, so they come
        // from, and go back to, the arena the stages allocate from; written, so they are resident.
        let held: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8 + 1; 4 << 20]).collect();
        assert!(held.iter().all(|v| v[v.len() - 1] != 0));
        drop(held);
        // Some go back as the decay runs while the others are allocated; most are kept.
        let kept = resident_bytes();
        assert!(
            kept > before + 16 * MIB,
            "jemalloc keeps what was freed: {before} then {kept}"
        );
        return_freed_pages();
        let after = resident_bytes();
        assert!(
            after < before + (kept - before) / 4,
            "given back: {before}, {kept}, then {after}"
        );
    }
}
