//! The quality report: one self-contained HTML page per published version of a month,
//! `reports/<dataset>/<YYYY-MM>/quality.html`, beside the JSON reports. Written by the publish (and
//! by a restore), so both front doors leave one, and `tripflow report` points at it.
//!
//! It shows what a data engineer checks before trusting a month: the source, rows in, kept and
//! rejected per rule, trips per day, the speed distribution with the monthly average marked, the
//! weekly top 5 slow pickup zones with their names, the version history and the stage timings.
//! Charts are inline SVG drawn here; the page loads nothing from anywhere.

use std::fmt::Write;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::Client;

use crate::db::versions::{self, VersionInfo};
use crate::db::{self, WeeklySlowPickup, classify};
use crate::error::Result;
use crate::handoff::{INGEST, IngestOutput, Manifest, RejectCounts, RejectReason, VersionRecord};
use crate::storage::{Layout, ObjectInfo, ObjectStore, get_json, put_bytes};

/// Width of one bar of the speed distribution.
pub const SPEED_BUCKET_MPH: f64 = 2.0;
/// Bars of the speed distribution; the last one holds every faster trip.
pub const SPEED_BUCKETS: usize = 31;

/// What the report shows, gathered from the version record, the run's manifests and the database.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityFacts {
    pub source_id: String,
    pub version: i32,
    pub run_id: String,
    pub published_at: DateTime<Utc>,
    /// From the run's ingest manifest; `None` for versions published before it was kept.
    pub source: Option<IngestOutput>,
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_rejected: RejectCounts,
    pub rows_loaded: u64,
    pub trips_per_day: Vec<(NaiveDate, u64)>,
    /// Trips with a speed per [`SPEED_BUCKET_MPH`] bucket from 0, the last bucket open-ended.
    pub speed_buckets: Vec<u64>,
    pub avg_speed_mph: Option<f64>,
    pub weekly_top5: Vec<WeeklySlowPickup>,
    pub history: Vec<VersionInfo>,
    /// Wall-clock seconds per stage, from the run's start (in its id) and its manifests' times. In
    /// Step Functions a stage's figure includes the crawl before it.
    pub stage_seconds: Vec<(&'static str, f64)>,
}

/// Gathers the facts of `record`, the month's current version.
pub async fn gather(
    store: &dyn ObjectStore,
    client: &Client,
    layout: &Layout,
    record: &VersionRecord,
) -> Result<QualityFacts> {
    let source_id = layout.source_id();
    let ingest = Manifest::<IngestOutput>::read(
        store,
        &layout.run_report_key(&record.run_id, INGEST),
        INGEST,
        &source_id,
    )
    .await
    .ok();
    let clean = &record.clean.output;
    let trips_per_day = record
        .transform
        .objects
        .iter()
        .filter_map(|o| Some((crate::stages::load::partition_date(&o.object.key).ok()?, o.rows)))
        .collect();
    let answers = db::answers(client, &source_id).await?;
    let stage_seconds = stage_seconds(
        run_started_at(&record.run_id),
        [
            ingest.as_ref().map(span_of),
            Some(span_of(&record.clean)),
            Some(span_of(&record.transform)),
        ],
        record.published_at,
    );
    Ok(QualityFacts {
        source_id: source_id.clone(),
        version: record.version,
        run_id: record.run_id.clone(),
        published_at: record.published_at,
        source: ingest.map(|m| m.output),
        rows_in: clean.rows_in,
        rows_kept: clean.rows_kept,
        rows_rejected: clean.rows_rejected,
        rows_loaded: record.load.rows_loaded,
        trips_per_day,
        // Counted by transform as it wrote the files; recounted in SQL for versions from before.
        speed_buckets: match &record.transform.output.speed_buckets {
            counted if counted.len() == SPEED_BUCKETS => counted.clone(),
            _ => speed_buckets_in_database(client, &source_id).await?,
        },
        avg_speed_mph: answers.avg_speed_mph,
        weekly_top5: answers.weekly_top5,
        history: versions::history(client, &source_id).await?,
        stage_seconds,
    })
}

/// Renders the month's report and stores it; returns what was written.
pub async fn write(
    store: &dyn ObjectStore,
    client: &Client,
    layout: &Layout,
    record: &VersionRecord,
) -> Result<ObjectInfo> {
    let facts = gather(store, client, layout, record).await?;
    put_bytes(store, &layout.quality_report_key(), render(&facts).into()).await
}

/// The report of the month's current version, read back from its version record: what
/// `tripflow report` writes for a month published before reports existed.
pub async fn write_current(store: &dyn ObjectStore, client: &Client, layout: &Layout) -> Result<ObjectInfo> {
    let current: crate::handoff::LoadOutput = get_json(store, &layout.report_key(crate::handoff::LOAD)).await?;
    let record: VersionRecord = get_json(store, &layout.version_key(current.version)).await?;
    write(store, client, layout, &record).await
}

/// The [`SPEED_BUCKET_MPH`] bucket a speed falls in, of `buckets`, the last one open-ended: the same
/// buckets as [`speed_buckets_in_database`]. Transform counts them as it writes
/// ([`crate::answers::TotalsTally::counting_speeds`]); null speeds (no distance) count nowhere.
pub fn speed_bucket(speed_mph: f64, buckets: usize) -> usize {
    ((speed_mph / SPEED_BUCKET_MPH).floor().max(0.0) as usize).min(buckets.saturating_sub(1))
}

/// The speed distribution of `source_id`'s current version, counted by PostgreSQL.
pub async fn speed_buckets_in_database(client: &Client, source_id: &str) -> Result<Vec<u64>> {
    let rows = client
        .query(
            "SELECT least(floor(speed_mph / $2)::int, $3::int) AS bucket, count(*) \
             FROM tripflow.trips WHERE source_id = $1 AND speed_mph IS NOT NULL GROUP BY 1 ORDER BY 1",
            &[&source_id, &SPEED_BUCKET_MPH, &(SPEED_BUCKETS as i32 - 1)],
        )
        .await
        .map_err(classify)?;
    let mut buckets = vec![0u64; SPEED_BUCKETS];
    for row in rows {
        let (bucket, count): (i32, i64) = (row.get(0), row.get(1));
        if let Some(slot) = usize::try_from(bucket).ok().and_then(|b| buckets.get_mut(b)) {
            *slot = u64::try_from(count).unwrap_or(0);
        }
    }
    Ok(buckets)
}

/// A run id starts with its start time (`20210401T120000Z-…`).
fn run_started_at(run_id: &str) -> Option<DateTime<Utc>> {
    let stamp = run_id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// When one stage began (if its manifest recorded it) and ended.
type StageSpan<'a> = (Option<&'a str>, &'a str);

fn span_of<T>(manifest: &Manifest<T>) -> StageSpan<'_> {
    (manifest.started_at.as_deref(), manifest.created_at.as_str())
}

/// Seconds per stage: each from its own start where its manifest has one, else from the previous
/// stage's end (the first from the run's start); load and publish from transform's end.
fn stage_seconds(
    run_started: Option<DateTime<Utc>>,
    spans: [Option<StageSpan<'_>>; 3],
    published: DateTime<Utc>,
) -> Vec<(&'static str, f64)> {
    let parse = |t: &str| DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc));
    let mut previous_end = run_started;
    let mut seconds = Vec::new();
    for (stage, span) in ["ingest", "clean", "transform"].into_iter().zip(spans) {
        let Some((started, ended)) = span else {
            previous_end = None;
            continue;
        };
        let end = parse(ended);
        if let (Some(from), Some(to)) = (started.and_then(parse).or(previous_end), end) {
            seconds.push((stage, (to - from).num_milliseconds().max(0) as f64 / 1000.0));
        }
        previous_end = end;
    }
    if let Some(from) = previous_end {
        seconds.push((
            "load and publish",
            (published - from).num_milliseconds().max(0) as f64 / 1000.0,
        ));
    }
    seconds
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;color:#1f2937;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2.2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
.sub{color:#6b7280;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1.2rem 0}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:.7rem 1rem;min-width:140px}
.card .v{font-size:1.4rem;font-weight:600}.card .k{color:#6b7280;font-size:.85rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}td,th{padding:.25rem .7rem;border-bottom:1px solid #f3f4f6;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tr.current td{font-weight:600}
.weeks{display:flex;flex-wrap:wrap;gap:1.5rem}.weeks table{min-width:320px}
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#374151}code{font-size:.85rem}
";

/// The page: self-contained, no script, no external resource.
pub fn render(f: &QualityFacts) -> String {
    let mut html = String::new();
    let rejected = f.rows_rejected.total();
    let avg = f.avg_speed_mph.map_or_else(|| "-".to_string(), |a| format!("{a:.2}"));
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tripflow quality: {id} v{v}</title><style>{STYLE}</style></head><body>\
         <h1>Quality report: {id}</h1>\
         <p class=\"sub\">version {v}, published {published}, run <code>{run}</code></p>",
        id = escape(&f.source_id),
        v = f.version,
        published = f.published_at.format("%Y-%m-%d %H:%M:%S UTC"),
        run = escape(&f.run_id),
    );
    let _ = write!(html, "<div class=\"cards\">");
    for (value, label) in [
        (thousands(f.rows_in), "rows in"),
        (thousands(f.rows_kept), "rows kept"),
        (
            format!("{} ({:.2}%)", thousands(rejected), percent(rejected, f.rows_in)),
            "rows rejected",
        ),
        (thousands(f.rows_loaded), "rows loaded"),
        (format!("{avg} mph"), "average speed"),
    ] {
        let _ = write!(
            html,
            "<div class=\"card\"><div class=\"v\">{}</div><div class=\"k\">{label}</div></div>",
            escape(&value)
        );
    }
    let _ = write!(html, "</div>");

    html.push_str("<h2>Source</h2>");
    match &f.source {
        Some(s) => {
            let _ = write!(
                html,
                "<table><tr><th>file</th><td>{}</td></tr><tr><th>MD5</th><td><code>{}</code> ({})</td></tr>\
                 <tr><th>schema</th><td>{}</td></tr><tr><th>rows</th><td>{} in {} row groups, {} bytes</td></tr></table>",
                escape(&s.source),
                escape(&s.md5),
                if s.md5_verified {
                    "verified"
                } else {
                    "computed, nothing to verify against"
                },
                escape(&s.schema_variant),
                thousands(s.rows),
                s.row_groups,
                thousands(s.size_bytes),
            );
        }
        None => html.push_str("<p>The run's ingest manifest is gone; the source is not known.</p>"),
    }

    html.push_str("<h2>Rows rejected, by rule</h2><p class=\"sub\">Each rejected row is counted once, under the first rule it breaks; quarantine holds every one with its reason.</p>");
    let rules: Vec<(String, u64)> = RejectReason::ALL
        .iter()
        .map(|&r| (r.as_str().to_string(), f.rows_rejected.get(r)))
        .collect();
    html.push_str(&horizontal_bars(&rules));

    html.push_str("<h2>Trips per day</h2>");
    let days: Vec<(String, u64)> = f
        .trips_per_day
        .iter()
        .map(|(d, n)| (d.format("%m-%d").to_string(), *n))
        .collect();
    html.push_str(&columns(&days, None));

    let _ = write!(
        html,
        "<h2>Speed distribution</h2><p class=\"sub\">Kept trips with a distance, by average speed, {SPEED_BUCKET_MPH} mph per bar; \
         the line marks the month's average ({avg} mph, total distance over total time).</p>"
    );
    let speeds: Vec<(String, u64)> = f
        .speed_buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let from = i as f64 * SPEED_BUCKET_MPH;
            let label = if i + 1 == f.speed_buckets.len() {
                format!("{from:.0}+")
            } else {
                format!("{from:.0}")
            };
            (label, *n)
        })
        .collect();
    let marker = f
        .avg_speed_mph
        .map(|a| (a / SPEED_BUCKET_MPH, format!("average {avg} mph")));
    html.push_str(&columns(&speeds, marker));

    html.push_str("<h2>Weekly top 5 slow pickup zones</h2><p class=\"sub\">Per ISO week, the pickup zones with the most trips slower than the month's average.</p><div class=\"weeks\">");
    let mut weeks: Vec<i32> = f.weekly_top5.iter().map(|w| w.week).collect();
    weeks.dedup();
    for week in weeks {
        let _ = write!(
            html,
            "<table><tr><th colspan=\"4\">week {week}</th></tr><tr><th class=\"n\">#</th><th>zone</th><th>borough</th><th class=\"n\">slow trips</th></tr>"
        );
        for row in f.weekly_top5.iter().filter(|w| w.week == week) {
            let _ = write!(
                html,
                "<tr><td class=\"n\">{}</td><td>{} ({})</td><td>{}</td><td class=\"n\">{}</td></tr>",
                row.rank,
                escape(row.pu_zone.as_deref().unwrap_or("unknown zone")),
                row.pu_location_id,
                escape(row.pu_borough.as_deref().unwrap_or("-")),
                thousands(u64::try_from(row.slow_trips).unwrap_or(0)),
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</div>");

    html.push_str("<h2>Versions</h2><table><tr><th class=\"n\">version</th><th>published</th><th>source MD5</th><th class=\"n\">rows</th><th class=\"n\">avg mph</th><th>state</th></tr>");
    for v in &f.history {
        let _ = write!(
            html,
            "<tr{}><td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            if v.current { " class=\"current\"" } else { "" },
            v.version,
            v.created_at.format("%Y-%m-%d %H:%M:%S"),
            escape(v.source_md5.as_deref().unwrap_or("-")),
            v.rows_loaded
                .map_or_else(|| "-".into(), |r| thousands(u64::try_from(r).unwrap_or(0))),
            v.avg_speed_mph.map_or_else(|| "-".into(), |a| format!("{a:.2}")),
            escape(&v.state),
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Stage timings</h2><p class=\"sub\">Wall-clock seconds from the run's manifests; in Step Functions a stage's time includes the crawl before it.</p><table>");
    for (stage, seconds) in &f.stage_seconds {
        let _ = write!(html, "<tr><th>{stage}</th><td class=\"n\">{seconds:.1} s</td></tr>");
    }
    html.push_str("</table></body></html>\n");
    html
}

/// One labelled horizontal bar per item, its count at its end.
fn horizontal_bars(items: &[(String, u64)]) -> String {
    let (label_w, bar_w, row_h) = (190.0, 560.0, 22.0);
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let height = row_h * items.len() as f64 + 8.0;
    let mut svg = format!(
        "<svg width=\"{w}\" height=\"{height}\" role=\"img\">",
        w = label_w + bar_w + 90.0
    );
    for (i, (label, n)) in items.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let w = (*n as f64 / max * bar_w).max(if *n > 0 { 1.0 } else { 0.0 });
        let _ = write!(
            svg,
            "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{label}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bh}\" fill=\"#dc2626\"/>\
             <text x=\"{cx:.1}\" y=\"{ty}\">{count}</text>",
            tx = label_w - 8.0,
            ty = y + 13.0,
            label = escape(label),
            bh = row_h - 6.0,
            cx = label_w + w + 6.0,
            count = thousands(*n),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Vertical bars with labels below, thinned out to stay readable; `marker` draws a dashed line at a
/// position measured in bars (2.5 = halfway into the third bar) with its caption.
fn columns(items: &[(String, u64)], marker: Option<(f64, String)>) -> String {
    let (left, top, plot_h, plot_w) = (60.0, 24.0, 220.0, 960.0);
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let slot = plot_w / items.len().max(1) as f64;
    let mut svg = format!(
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\">",
        w = left + plot_w + 10.0,
        h = top + plot_h + 40.0
    );
    // The axis: zero and the largest count.
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\" stroke=\"#9ca3af\"/>\
         <text x=\"{lx}\" y=\"{base}\" text-anchor=\"end\">0</text><text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{max}</text>",
        base = top + plot_h,
        right = left + plot_w,
        lx = left - 6.0,
        ty = top + 4.0,
        max = thousands(max as u64),
    );
    let every = items.len().div_ceil(16).max(1);
    for (i, (label, n)) in items.iter().enumerate() {
        let h = *n as f64 / max * plot_h;
        let x = left + i as f64 * slot;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#2563eb\"><title>{label}: {count}</title></rect>",
            y = top + plot_h - h,
            w = (slot - 2.0).max(1.0),
            label = escape(label),
            count = thousands(*n),
        );
        if i % every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{cx:.1}\" y=\"{ly}\" text-anchor=\"middle\">{label}</text>",
                cx = x + slot / 2.0,
                ly = top + plot_h + 16.0,
                label = escape(label),
            );
        }
    }
    if let Some((position, caption)) = marker {
        let x = left + position.clamp(0.0, items.len() as f64) * slot;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{base}\" stroke=\"#dc2626\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\" fill=\"#dc2626\" style=\"fill:#dc2626;font-weight:600\">{caption}</text>",
            base = top + plot_h,
            tx = x + 6.0,
            ty = top + 12.0,
            caption = escape(&caption),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> QualityFacts {
        let mut rejected = RejectCounts::default();
        rejected.add(RejectReason::OutsidePeriod);
        rejected.add(RejectReason::OutsidePeriod);
        rejected.add(RejectReason::ImplausibleSpeed);
        QualityFacts {
            source_id: "yellow/2021-03".into(),
            version: 2,
            run_id: "20261201T030000Z-0a1b2c3d".into(),
            published_at: DateTime::parse_from_rfc3339("2026-12-01T03:00:09Z")
                .unwrap()
                .with_timezone(&Utc),
            source: None,
            rows_in: 1_000_003,
            rows_kept: 1_000_000,
            rows_rejected: rejected,
            rows_loaded: 1_000_000,
            trips_per_day: vec![(NaiveDate::from_ymd_opt(2021, 3, 1).unwrap(), 31_000)],
            speed_buckets: vec![5, 10, 0, 1],
            avg_speed_mph: Some(12.3456),
            weekly_top5: vec![WeeklySlowPickup {
                week: 9,
                rank: 1,
                pu_location_id: 161,
                slow_trips: 3_602,
                pu_borough: Some("Manhattan".into()),
                pu_zone: Some("Midtown Center & <East>".into()),
            }],
            history: Vec::new(),
            stage_seconds: vec![("ingest", 1.5)],
        }
    }

    #[test]
    fn the_page_carries_the_figures_and_escapes_names() {
        let html = render(&facts());
        for expected in [
            "yellow/2021-03",
            "1,000,003",
            "12.35 mph",
            "average 12.35 mph",
            "outside_period",
            "Midtown Center &amp; &lt;East&gt; (161)",
            "3,602",
            "ingest",
        ] {
            assert!(html.contains(expected), "{expected} missing");
        }
        assert!(!html.contains("<East>"));
        assert!(
            !html.contains("<script") && !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
        assert_eq!(html.matches("<svg").count(), 3);
    }

    #[test]
    fn stage_times_come_from_the_run_start_and_the_manifests() {
        let started = run_started_at("20261201T030000Z-0a1b2c3d");
        assert_eq!(
            started,
            Some(
                DateTime::parse_from_rfc3339("2026-12-01T03:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        let published = DateTime::parse_from_rfc3339("2026-12-01T03:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        // Old manifests without a start: each stage from the end of the one before.
        let seconds = stage_seconds(
            started,
            [
                Some((None, "2026-12-01T03:00:01.500Z")),
                Some((None, "2026-12-01T03:00:04Z")),
                Some((None, "2026-12-01T03:00:06Z")),
            ],
            published,
        );
        assert_eq!(
            seconds,
            [
                ("ingest", 1.5),
                ("clean", 2.5),
                ("transform", 2.0),
                ("load and publish", 4.0)
            ]
        );
        // With starts (a crawl between clean and transform is not transform's time).
        let seconds = stage_seconds(
            started,
            [
                Some((Some("2026-12-01T03:00:00.800Z"), "2026-12-01T03:00:01Z")),
                Some((Some("2026-12-01T03:00:01Z"), "2026-12-01T03:00:02Z")),
                Some((Some("2026-12-01T03:00:05Z"), "2026-12-01T03:00:06Z")),
            ],
            published,
        );
        assert_eq!(
            seconds,
            [
                ("ingest", 0.2),
                ("clean", 1.0),
                ("transform", 1.0),
                ("load and publish", 4.0)
            ]
        );
        assert_eq!(run_started_at("not-a-run"), None);
    }

    #[test]
    fn speeds_fall_in_two_mph_buckets_the_last_open_ended() {
        let buckets = [0.0, 1.99, 2.0, 61.0, 1e6].map(|speed| speed_bucket(speed, SPEED_BUCKETS));
        assert_eq!(buckets, [0, 0, 1, SPEED_BUCKETS - 1, SPEED_BUCKETS - 1]);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_930_000), "1,930,000");
    }
}
