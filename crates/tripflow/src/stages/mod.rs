//! The four stages. Each has a typed `Input` and `Output` (the JSON Step Functions passes between
//! states) and one `run` function; the Lambda front doors and `tripflow run` call the same `run`.

pub mod clean;
pub mod ingest;
pub mod load;
pub mod transform;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::storage::ObjectStore;

/// What every stage needs: where the zones are and how the pipeline is configured. Built once per
/// process (Lambda init, or `tripflow` start-up).
#[derive(Debug, Clone)]
pub struct StageContext {
    pub store: Arc<dyn ObjectStore>,
    pub config: PipelineConfig,
}

impl StageContext {
    pub fn new(store: Arc<dyn ObjectStore>, config: PipelineConfig) -> Self {
        StageContext { store, config }
    }
}

/// A stage's judgement of its input. Hard failures are errors; a verdict is what the state machine's
/// Choice states read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Ok,
    TooManyRejectedRows,
}
