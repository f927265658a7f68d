//! The human-readable run summary.

use std::fmt::Write;

use tripflow::db::Answers;
use tripflow::db::versions::VersionInfo;
use tripflow::pipeline::RunSummary;
use tripflow::quality::thousands;
use tripflow::stages::clean::RejectReason;

pub fn summary_text(s: &RunSummary) -> String {
    let mut out = String::new();
    let r = &s.rows_rejected;
    let t = &s.stage_seconds;
    let _ = writeln!(out, "tripflow run: {} from {}", s.source_id, s.source);
    let _ = writeln!(
        out,
        "  md5         {} ({})",
        s.md5,
        if s.ingest.md5_verified {
            "verified"
        } else {
            "computed, nothing to verify against"
        }
    );
    let _ = writeln!(out, "  schema      {}", s.ingest.schema_variant);
    let _ = writeln!(out, "  rows in     {}", thousands(s.rows_in));
    let _ = writeln!(out, "  kept        {}", thousands(s.rows_kept));
    // Every rule that rejected something, in rule order; the JSON summary has all of them.
    let by_rule: Vec<String> = RejectReason::ALL
        .iter()
        .filter(|&&reason| r.get(reason) > 0)
        .map(|&reason| format!("{} {}", reason.as_str(), thousands(r.get(reason))))
        .collect();
    let _ = writeln!(
        out,
        "  rejected    {} ({:.3}%){}{}",
        thousands(r.total()),
        s.clean.rejected_ratio * 100.0,
        if by_rule.is_empty() { "" } else { ": " },
        by_rule.join(", ")
    );
    let _ = writeln!(
        out,
        "  curated     {} rows in {} daily partitions ({} location IDs swapped)",
        thousands(s.rows_curated),
        s.transform.partitions,
        thousands(s.transform.location_ids_swapped)
    );
    let _ = writeln!(
        out,
        "  loaded      {} rows into {} as version {} (replaced {}, kept detached)",
        thousands(s.rows_loaded),
        s.load.table,
        s.load.version,
        thousands(s.load.rows_replaced)
    );
    if !s.load.lake.is_empty() {
        let tables: Vec<String> = s
            .load
            .lake
            .iter()
            .map(|c| format!("{} v{}", c.table.trim_end_matches('/'), c.delta_version))
            .collect();
        let _ = writeln!(out, "  published   Delta tables {}", tables.join(", "));
    }
    let _ = writeln!(
        out,
        "  time        ingest {:.2}s, clean {:.2}s, transform {:.2}s, load {:.2}s, queries {:.2}s",
        t.ingest, t.clean, t.transform, t.load, t.queries
    );
    if let Some(bytes) = s.peak_rss_bytes {
        let _ = writeln!(
            out,
            "  peak memory {:.0} MiB resident",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    out.push_str(&answers_text(
        &s.source_id,
        &Answers {
            avg_speed_mph: s.avg_speed_mph,
            weekly_top5: s.weekly_top5.clone(),
        },
    ));
    if let Some(path) = &s.quality_report {
        let _ = writeln!(out, "quality report: {path}");
    }
    out
}

pub fn answers_text(source_id: &str, answers: &Answers) -> String {
    let mut out = String::new();
    match answers.avg_speed_mph {
        Some(speed) => {
            let _ = writeln!(
                out,
                "{source_id}: average speed {speed:.3} mph (total distance / total time, valid trips)"
            );
        }
        None => {
            let _ = writeln!(out, "{source_id}: no valid trips loaded");
        }
    }
    let _ = writeln!(out, "  top 5 pickup locations by trips slower than that, per ISO week:");
    let mut week = None;
    for w in &answers.weekly_top5 {
        let heading = if week == Some(w.week) {
            String::new()
        } else {
            format!("week {:>2}", w.week)
        };
        week = Some(w.week);
        let place = match (&w.pu_zone, &w.pu_borough) {
            (Some(zone), Some(borough)) => format!("{zone}, {borough}"),
            _ => "(not in the zone lookup)".to_string(),
        };
        let _ = writeln!(
            out,
            "    {heading:<7}  {}. {:>3} {place:<42} {:>9} slow trips",
            w.rank,
            w.pu_location_id,
            thousands(w.slow_trips.max(0) as u64)
        );
    }
    out
}

/// The versions of one month, newest first, the current one marked.
pub fn history_text(source_id: &str, versions: &[VersionInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "versions of {source_id}, newest first (* current)");
    let _ = writeln!(
        out,
        "  {:>7}  {:<20}  {:>11}  {:>9}  {:<32}  state",
        "version", "created (UTC)", "rows", "avg mph", "source md5"
    );
    for v in versions {
        let _ = writeln!(
            out,
            "{} {:>7}  {:<20}  {:>11}  {:>9}  {:<32}  {}",
            if v.current { "*" } else { " " },
            v.version,
            v.created_at.format("%Y-%m-%d %H:%M:%S"),
            v.rows_loaded
                .map_or("-".to_string(), |r| thousands(u64::try_from(r).unwrap_or(0))),
            v.avg_speed_mph.map_or("-".to_string(), |s| format!("{s:.3}")),
            v.source_md5.as_deref().unwrap_or("-"),
            v.state
        );
    }
    out
}

pub fn restored_text(restored: &tripflow::handoff::Restored) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} is at version {} again (was {})",
        restored.source_id,
        restored.version,
        restored.previous_version.map_or("none".to_string(), |v| v.to_string())
    );
    for commit in &restored.commits {
        let _ = writeln!(
            out,
            "  {:<20} Delta version {}{}",
            commit.table,
            commit.delta_version,
            if commit.already_live {
                " (already current)".to_string()
            } else {
                format!(" (+{} files, -{} files)", commit.files_added, commit.files_removed)
            }
        );
    }
    let _ = writeln!(
        out,
        "  rows kept {}, average speed {}",
        thousands(restored.rows_kept),
        restored
            .avg_speed_mph
            .map_or("-".to_string(), |s| format!("{s:.3} mph"))
    );
    out
}
