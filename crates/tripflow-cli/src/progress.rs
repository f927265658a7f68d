//! Progress bars on a terminal: one per stage, drawn on stderr by indicatif while `tripflow run` or
//! `demo` works (bytes for ingest, rows for clean, transform and load), each left in place, filled,
//! when its stage ends. Log lines printed meanwhile are written between redraws, so they never tear
//! a bar.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tripflow::progress::{Progress, Unit};

#[derive(Debug, Clone)]
pub struct Bars {
    multi: MultiProgress,
    current: Arc<Mutex<Option<ProgressBar>>>,
    /// Whether any bar was shown (a run refused before ingest streams draws none).
    drawn: Arc<std::sync::atomic::AtomicBool>,
}

impl Bars {
    pub fn on_stderr() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            current: Arc::default(),
            drawn: Arc::default(),
        }
    }

    /// Ends the last stage's bar if a failure left it open, and moves below the bars, which leave
    /// the cursor at the end of their last line. Once: later calls do nothing until a bar is drawn.
    pub fn leave(&self) {
        self.end();
        if self.drawn.swap(false, std::sync::atomic::Ordering::Relaxed) {
            eprintln!();
        }
    }

    fn style(unit: Unit, total_known: bool) -> ProgressStyle {
        let template = match (unit, total_known) {
            (Unit::Bytes, true) => {
                "{prefix:>9.bold} [{bar:36.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {elapsed:>4}"
            }
            (Unit::Bytes, false) => "{prefix:>9.bold} {spinner} {bytes:>10} {bytes_per_sec:>12} {elapsed:>4}",
            (Unit::Rows, true) => {
                "{prefix:>9.bold} [{bar:36.cyan/blue}] {human_pos:>10}/{human_len:<10} rows {elapsed:>4}"
            }
            (Unit::Rows, false) => "{prefix:>9.bold} {spinner} {human_pos:>10} rows {elapsed:>4}",
        };
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }
}

impl Progress for Bars {
    fn begin(&self, stage: &'static str, unit: Unit, total: Option<u64>) {
        let bar = self
            .multi
            .add(ProgressBar::new(total.unwrap_or(0)).with_style(Self::style(unit, total.is_some())));
        bar.set_prefix(stage);
        self.drawn.store(true, std::sync::atomic::Ordering::Relaxed);
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut current) = self.current.lock()
            && let Some(previous) = current.replace(bar)
        {
            previous.finish();
        }
    }

    fn advance(&self, done: u64) {
        if let Ok(current) = self.current.lock()
            && let Some(bar) = current.as_ref()
        {
            bar.inc(done);
        }
    }

    fn end(&self) {
        if let Ok(mut current) = self.current.lock()
            && let Some(bar) = current.take()
        {
            bar.finish();
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Bars {
    type Writer = BetweenBars;

    /// A log writer that prints between redraws of the bars.
    fn make_writer(&'a self) -> Self::Writer {
        BetweenBars {
            multi: self.multi.clone(),
            line: Vec::new(),
        }
    }
}

/// Collects one log event and prints it, on drop, with the bars out of the way.
pub struct BetweenBars {
    multi: MultiProgress,
    line: Vec<u8>,
}

impl Write for BetweenBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BetweenBars {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.multi.suspend(|| {
                let _ = std::io::stderr().write_all(&line);
            });
        }
    }
}
