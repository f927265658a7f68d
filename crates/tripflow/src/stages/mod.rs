//! The four stages. Each has a typed `Input` and `Output` (the JSON Step Functions passes between
//! states) and one `run` function; the Lambda front doors and `tripflow run` call the same `run`.

pub mod clean;
pub mod ingest;
pub mod load;
pub mod transform;

use std::sync::Arc;

use crate::config::PipelineConfig;
use crate::db::versions::Sessions;
pub use crate::handoff::Verdict;
use crate::progress::{Progress, Silent};
use crate::storage::ObjectStore;

/// What every stage needs: where the zones are and how the pipeline is configured. Built once per
/// process (Lambda init, or `tripflow` start-up).
#[derive(Debug, Clone)]
pub struct StageContext {
    pub store: Arc<dyn ObjectStore>,
    pub config: PipelineConfig,
    /// Where the stages report how far they are ([`Silent`] unless a front door shows it).
    pub progress: Arc<dyn Progress>,
    /// Opens load's further database sessions, one per COPY stream beyond the first
    /// ([`crate::db::versions::stage_version`]); without it load copies on its one session.
    pub sessions: Option<Arc<dyn Sessions>>,
    /// Called before the load of a run that goes through every stage in one process (`tripflow
    /// run`; a Lambda runs one stage and exits). The command gives its allocator's freed pages back
    /// there: what transform freed and the allocator still keeps would otherwise stack onto load's
    /// first buffers, and make the run's peak.
    pub before_load: Option<fn()>,
}

impl StageContext {
    pub fn new(store: Arc<dyn ObjectStore>, config: PipelineConfig) -> Self {
        StageContext {
            store,
            config,
            progress: Arc::new(Silent),
            sessions: None,
            before_load: None,
        }
    }

    pub fn with_sessions(mut self, sessions: Arc<dyn Sessions>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    pub fn with_before_load(mut self, before_load: fn()) -> Self {
        self.before_load = Some(before_load);
        self
    }

    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }
}
