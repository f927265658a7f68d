//! Every sample event in `events/` parses into its function's input type. The files serve
//! `sam local invoke -e`, `cargo lambda invoke --data-file` and this test; a file whose name matches
//! no function, or whose fields the function would not read, fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tripflow_aws::trigger::{TriggerEvent, created_objects, skip_reason};
use tripflow_aws::{CleanInput, IngestInput, LoadInput, TransformInput};

fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

/// Parses `json` as `T` and checks that every field of the file is one `T` has: serde would
/// otherwise ignore a misspelt optional field and the sample would test less than it claims.
fn parse_strict<T: DeserializeOwned + Serialize>(name: &str, json: &Value) -> T {
    let parsed: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let round_trip = serde_json::to_value(&parsed).unwrap();
    if let (Some(given), Some(known)) = (json.as_object(), round_trip.as_object()) {
        for field in given.keys() {
            assert!(
                known.contains_key(field),
                "{name}: field {field:?} is not read by the function"
            );
        }
    }
    parsed
}

fn check_trigger(name: &str, json: &Value) {
    let event: TriggerEvent = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (created, _ignored) = created_objects(&event).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(!created.is_empty(), "{name}: reports no created object");
    let skipped = created.iter().any(|o| skip_reason(o, Some("tripflow-data")).is_some());
    let should_skip = name.contains("outside-landing") || name.contains("not-tlc");
    assert_eq!(
        skipped, should_skip,
        "{name}: skip decision does not match the case the name promises"
    );
}

#[test]
fn every_sample_event_parses_into_its_functions_input() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(events_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected a sample for every function and case, found {}",
        files.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let function = name.split(['-', '.']).next().unwrap_or_default().to_string();
        match function.as_str() {
            "trigger" => check_trigger(&name, &json),
            "ingest" => {
                let input: IngestInput = parse_strict(&name, &json);
                assert!(
                    input.source.starts_with("s3://tripflow-data/landing/") || input.source.starts_with("https://"),
                    "{name}: a Lambda ingests s3:// objects of its bucket or https:// URLs"
                );
            }
            "clean" => drop(parse_strict::<CleanInput>(&name, &json)),
            "transform" => drop(parse_strict::<TransformInput>(&name, &json)),
            "load" => drop(parse_strict::<LoadInput>(&name, &json)),
            _ => panic!("{name}: no function is called {function:?}; name samples events/<function>-<case>.json"),
        }
        seen.insert(function);
    }
    let all: std::collections::BTreeSet<String> = ["trigger", "ingest", "clean", "transform", "load"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, all, "every function needs at least one sample event");
}
