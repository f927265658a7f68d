//! How far a stage has come, for whoever shows it: the `tripflow` command draws a bar per stage on
//! a terminal; the Lambdas and the tests show nothing (the default). The stages report bytes
//! (ingest) or rows (clean, transform, load) as they stream them, one stage at a time.

use std::fmt::Debug;

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Rows,
}

pub trait Progress: Send + Sync + Debug {
    /// `stage` starts; `total` when it is known beforehand.
    fn begin(&self, stage: &'static str, unit: Unit, total: Option<u64>);
    /// `done` more units are through.
    fn advance(&self, done: u64);
    /// The stage is over (finished or failed).
    fn end(&self);
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &'static str, _: Unit, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// Ends the stage's progress when dropped, however the stage leaves (an error, `?`, a signal).
pub struct StageProgress<'a> {
    progress: &'a dyn Progress,
}

impl<'a> StageProgress<'a> {
    pub fn begin(progress: &'a dyn Progress, stage: &'static str, unit: Unit, total: Option<u64>) -> Self {
        progress.begin(stage, unit, total);
        StageProgress { progress }
    }

    pub fn advance(&self, done: u64) {
        self.progress.advance(done);
    }
}

impl Drop for StageProgress<'_> {
    fn drop(&mut self) {
        self.progress.end();
    }
}
