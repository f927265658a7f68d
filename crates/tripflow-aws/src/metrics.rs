//! Metrics of every stage invocation in CloudWatch Embedded Metric Format (EMF): one JSON line on
//! stdout per invocation, which CloudWatch Logs turns into metrics of the namespace `tripflow` with
//! the dimensions `stage` and `dataset`, without an API call or an agent. The dashboard and alarms of
//! `template.yaml` are built on these names.
//!
//! | metric | unit | stages |
//! |---|---|---|
//! | `RowsIn` | Count | ingest, clean |
//! | `RowsKept`, `RowsRejected`, `RejectedShare`, `Rejected_<reason>` | Count (share: None) | clean |
//! | `RowsCurated`, `Partitions` | Count | transform |
//! | `RowsLoaded`, `RowsReplaced` | Count | load |
//! | `BytesRead`, `BytesWritten` | Bytes | ingest |
//! | `Seconds` | Seconds | every stage, failed or not |
//! | `Failures`, `Failures_<ErrorName>` | Count | a failed invocation |

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tripflow::stages::clean::{CleanOutput, RejectReason};
use tripflow::stages::ingest::IngestOutput;
use tripflow::stages::load::LoadOutput;
use tripflow::stages::transform::TransformOutput;

pub const NAMESPACE: &str = "tripflow";

/// One value of an invocation's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

fn count(name: impl Into<String>, value: u64) -> Metric {
    Metric {
        name: name.into(),
        value: value as f64,
        unit: "Count",
    }
}

fn bytes(name: &str, value: u64) -> Metric {
    Metric {
        name: name.to_string(),
        value: value as f64,
        unit: "Bytes",
    }
}

/// The EMF document of one invocation.
pub fn document(stage: &str, dataset: &str, metrics: &[Metric], timestamp_ms: i64) -> Value {
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|m| json!({"Name": m.name, "Unit": m.unit}))
        .collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["stage", "dataset"]],
                "Metrics": definitions,
            }],
        }),
    );
    root.insert("stage".into(), json!(stage));
    root.insert("dataset".into(), json!(dataset));
    for m in metrics {
        root.insert(m.name.clone(), json!(m.value));
    }
    Value::Object(root)
}

/// What an invocation measured, by stage.
pub trait Measured {
    fn dataset(&self) -> &str;
    fn metrics(&self) -> Vec<Metric>;
}

impl Measured for IngestOutput {
    fn dataset(&self) -> &str {
        &self.dataset
    }
    fn metrics(&self) -> Vec<Metric> {
        vec![
            count("RowsIn", self.rows),
            bytes("BytesRead", self.size_bytes),
            bytes("BytesWritten", self.size_bytes),
        ]
    }
}

impl Measured for CleanOutput {
    fn dataset(&self) -> &str {
        &self.dataset
    }
    fn metrics(&self) -> Vec<Metric> {
        let mut metrics = vec![
            count("RowsIn", self.rows_in),
            count("RowsKept", self.rows_kept),
            count("RowsRejected", self.rows_rejected.total()),
            Metric {
                name: "RejectedShare".into(),
                value: self.rejected_ratio,
                unit: "None",
            },
        ];
        for reason in RejectReason::ALL {
            metrics.push(count(
                format!("Rejected_{}", reason.as_str()),
                self.rows_rejected.get(reason),
            ));
        }
        metrics
    }
}

impl Measured for TransformOutput {
    fn dataset(&self) -> &str {
        &self.dataset
    }
    fn metrics(&self) -> Vec<Metric> {
        vec![
            count("RowsCurated", self.rows_curated),
            count("Partitions", self.partitions as u64),
        ]
    }
}

impl Measured for LoadOutput {
    fn dataset(&self) -> &str {
        &self.dataset
    }
    fn metrics(&self) -> Vec<Metric> {
        vec![
            count("RowsLoaded", self.rows_loaded),
            count("RowsReplaced", self.rows_replaced),
        ]
    }
}

/// Where EMF lines go: stdout in a function (CloudWatch Logs reads it), memory in tests.
#[derive(Debug, Clone, Default)]
pub enum MetricsSink {
    #[default]
    Stdout,
    Memory(Arc<Mutex<Vec<String>>>),
}

impl MetricsSink {
    pub fn memory() -> Self {
        MetricsSink::Memory(Arc::default())
    }

    /// The lines emitted so far (memory sink only).
    pub fn lines(&self) -> Vec<String> {
        match self {
            MetricsSink::Stdout => Vec::new(),
            MetricsSink::Memory(lines) => lines.lock().map(|l| l.clone()).unwrap_or_default(),
        }
    }

    fn emit(&self, document: &Value) {
        let line = document.to_string();
        match self {
            MetricsSink::Stdout => println!("{line}"),
            MetricsSink::Memory(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        }
    }

    /// Emits the metrics of one invocation of `stage`: its outcome's counts, or its failure by
    /// error name, and its duration either way.
    pub fn record<T: Measured>(
        &self,
        stage: &str,
        fallback_dataset: &str,
        result: &Result<T, tripflow::Error>,
        seconds: f64,
    ) {
        let (dataset, mut metrics) = match result {
            Ok(output) => (output.dataset().to_string(), output.metrics()),
            Err(err) => (
                fallback_dataset.to_string(),
                vec![count("Failures", 1), count(format!("Failures_{}", err.name()), 1)],
            ),
        };
        metrics.push(Metric {
            name: "Seconds".into(),
            value: seconds,
            unit: "Seconds",
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.emit(&document(stage, &dataset, &metrics, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_declares_each_metric_with_its_value_at_the_top_level() {
        let doc = document("clean", "yellow", &[count("RowsIn", 7), bytes("BytesRead", 9)], 1_000);
        let declared = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "tripflow");
        assert_eq!(declared["Dimensions"], json!([["stage", "dataset"]]));
        assert_eq!(declared["Metrics"][1], json!({"Name": "BytesRead", "Unit": "Bytes"}));
        assert_eq!(
            (doc["stage"].clone(), doc["dataset"].clone()),
            (json!("clean"), json!("yellow"))
        );
        assert_eq!(
            (doc["RowsIn"].clone(), doc["BytesRead"].clone()),
            (json!(7.0), json!(9.0))
        );
        assert_eq!(doc["_aws"]["Timestamp"], 1_000);
    }
}
