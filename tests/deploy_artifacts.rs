//! Checks on `statemachine.asl.json` and `template.yaml` that the linters cannot make: every Lambda
//! task retries the transient errors (and only those) with jittered backoff, every error ends in a
//! notification and then in a Fail state named for it, every `${...}` placeholder is filled by the
//! template, and README.md shows the state machine as it is now.
//!
//! The README diagram is generated here from the ASL. After changing the state machine, refresh it
//! with `UPDATE_DIAGRAM=1 cargo test -p tripflow-tests --test deploy_artifacts`.
//!
//! `scripts/check-deploy-artifacts.sh` runs cfn-lint, `sam validate --lint`, statelint and checkov;
//! the tests that really execute the ASL (in moto) live with the pipeline tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

const LAMBDA_INVOKE: &str = "arn:aws:states:::lambda:invoke";
const SNS_PUBLISH: &str = "arn:aws:states:::sns:publish";
const START_CRAWLER: &str = "arn:aws:states:::aws-sdk:glue:startCrawler";
const GET_CRAWLER: &str = "arn:aws:states:::aws-sdk:glue:getCrawler";

/// Lambda's own transient failures (the service, its SDK client, throttling).
const LAMBDA_SERVICE_ERRORS: [&str; 4] = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
];
/// The error names our functions raise for conditions that may pass on their own.
const RETRYABLE_ERRORS: &[&str] = tripflow::error::RETRYABLE_ERROR_NAMES;

/// The error names our functions raise for conditions a retry would only repeat.
fn non_retryable_errors() -> Vec<&'static str> {
    tripflow::error::ERROR_NAMES
        .iter()
        .copied()
        .filter(|name| !RETRYABLE_ERRORS.contains(name))
        .collect()
}

/// Where a run that failed with an error must end: the Fail state named for what went wrong, or
/// `StageFailed` for everything without a name of its own.
const FAIL_STATE_FOR: [(&str, &str); 29] = [
    ("ChecksumMismatch", "ChecksumMismatch"),
    ("SchemaDrift", "SchemaDrift"),
    ("NotParquet", "NotParquet"),
    ("TruncatedParquet", "NotParquet"),
    ("TooManyRejectedRows", "TooManyRejectedRows"),
    ("LoadCountMismatch", "LoadCountMismatch"),
    ("IntegrityError", "IntegrityError"),
    ("EmptySource", "EmptySource"),
    ("SuspiciousShrink", "SuspiciousShrink"),
    ("CrawlerFailed", "CrawlerFailed"),
    ("CorruptSource", "CorruptSource"),
    ("SourceTooLarge", "StageFailed"),
    ("ParquetWriteFailed", "StageFailed"),
    ("StorageRefused", "StageFailed"),
    ("UnknownPeriod", "StageFailed"),
    ("InvalidInput", "StageFailed"),
    ("ObjectNotFound", "StageFailed"),
    ("DatabaseError", "StageFailed"),
    ("StorageUnavailable", "StageFailed"),
    ("CatalogUnavailable", "StageFailed"),
    ("Timeout", "StageFailed"),
    ("SourceUnavailable", "StageFailed"),
    ("DatabaseUnavailable", "StageFailed"),
    ("Interrupted", "StageFailed"),
    ("ConcurrentRun", "StageFailed"),
    ("Lambda.ServiceException", "StageFailed"),
    ("Sandbox.Timedout", "StageFailed"),
    ("States.TaskFailed", "StageFailed"),
    ("States.Timeout", "StageFailed"),
];

/// The stage contract: which function, what it is given, where its result goes and what it holds.
struct Stage {
    name: &'static str,
    function: &'static str,
    payload: &'static str,
    output: &'static [&'static str],
}

const STAGES: [Stage; 4] = [
    Stage {
        name: "ingest",
        function: "${IngestFunctionArn}",
        payload: "$",
        output: &[
            "verdict",
            "dataset",
            "period",
            "run_id",
            "source",
            "raw_key",
            "manifest_key",
            "size_bytes",
            "md5",
            "md5_verified",
            "rows",
            "row_groups",
            "schema_variant",
            "allow_shrink",
        ],
    },
    Stage {
        name: "clean",
        function: "${CleanFunctionArn}",
        payload: "$.ingest",
        output: &[
            "verdict",
            "dataset",
            "period",
            "clean_key",
            "quarantine_key",
            "manifest_key",
            "rows_in",
            "rows_kept",
            "rows_rejected",
            "rejected_ratio",
            "max_rejected_ratio",
        ],
    },
    Stage {
        name: "transform",
        function: "${TransformFunctionArn}",
        payload: "$.clean",
        output: &[
            "verdict",
            "dataset",
            "period",
            "curated_prefix",
            "manifest_key",
            "rows_curated",
            "partitions",
            "location_ids_swapped",
        ],
    },
    Stage {
        name: "load",
        function: "${LoadFunctionArn}",
        payload: "$.transform",
        output: &[
            "verdict",
            "dataset",
            "period",
            "source_id",
            "rows_curated",
            "rows_loaded",
            "rows_replaced",
            "table",
        ],
    },
];

const DIAGRAM_BEGIN: &str = "<!-- statemachine-diagram:begin -->";
const DIAGRAM_END: &str = "<!-- statemachine-diagram:end -->";

// ------------------------------------------------------------------------------------------------
// Reading the artifacts

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn read(name: &str) -> String {
    let path = repo_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn asl() -> Value {
    serde_json::from_str(&read("statemachine.asl.json")).expect("statemachine.asl.json is JSON")
}

fn template() -> String {
    read("template.yaml")
}

fn states(machine: &Value) -> &Map<String, Value> {
    machine["States"]
        .as_object()
        .expect("a state machine or branch has States")
}

fn kind(state: &Value) -> &str {
    state["Type"].as_str().expect("every state has a Type")
}

fn resource(state: &Value) -> &str {
    state["Resource"].as_str().unwrap_or("")
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    Next,
    Choice,
    Catch,
}

/// The transitions out of a state, in the order the ASL lists them.
fn successors(state: &Value) -> Vec<(String, Edge, String)> {
    let mut out = Vec::new();
    if let Some(next) = state["Next"].as_str() {
        out.push((next.to_string(), Edge::Next, String::new()));
    }
    for rule in state["Choices"].as_array().into_iter().flatten() {
        out.push((
            rule["Next"].as_str().expect("a choice rule has Next").to_string(),
            Edge::Choice,
            describe(rule),
        ));
    }
    if let Some(default) = state["Default"].as_str() {
        out.push((default.to_string(), Edge::Choice, "otherwise".to_string()));
    }
    for catcher in state["Catch"].as_array().into_iter().flatten() {
        let errors = strings(&catcher["ErrorEquals"]);
        let label = if errors == ["States.ALL"] {
            "any error".to_string()
        } else {
            errors.join(", ")
        };
        out.push((
            catcher["Next"].as_str().expect("a catcher has Next").to_string(),
            Edge::Catch,
            label,
        ));
    }
    out
}

/// The state names of one scope (the machine or a branch), depth first from StartAt, first
/// transition first: the way on (Next, then the first choice) before the ways out. Arrays keep their
/// order in JSON, objects may not: walking the transitions keeps the diagram stable.
fn ordered(machine: &Value) -> Vec<String> {
    let all = states(machine);
    let mut stack = vec![machine["StartAt"].as_str().expect("StartAt").to_string()];
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    while let Some(name) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let state = all
            .get(&name)
            .unwrap_or_else(|| panic!("a transition leads to {name:?}, which is not a state"));
        stack.extend(
            successors(state)
                .into_iter()
                .rev()
                .map(|(next, _, _)| next)
                .filter(|n| !seen.contains(n)),
        );
        order.push(name);
    }
    let mut unreached: Vec<String> = all.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    unreached.sort();
    order.extend(unreached);
    order
}

/// A state with the Parallel states around it (outermost first).
struct Found<'a> {
    name: String,
    state: &'a Value,
    parents: Vec<&'a Value>,
}

fn all_states(machine: &Value) -> Vec<Found<'_>> {
    fn walk<'a>(machine: &'a Value, parents: &[&'a Value], out: &mut Vec<Found<'a>>) {
        for name in ordered(machine) {
            let state = &states(machine)[&name];
            out.push(Found {
                name,
                state,
                parents: parents.to_vec(),
            });
            for branch in state["Branches"].as_array().into_iter().flatten() {
                let mut inner = parents.to_vec();
                inner.push(state);
                walk(branch, &inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(machine, &[], &mut out);
    out
}

fn lambda_tasks(machine: &Value) -> Vec<Found<'_>> {
    all_states(machine)
        .into_iter()
        .filter(|f| kind(f.state) == "Task" && resource(f.state) == LAMBDA_INVOKE)
        .collect()
}

fn stage_task<'a>(machine: &'a Value, stage: &Stage) -> (String, &'a Value) {
    let found = lambda_tasks(machine)
        .into_iter()
        .find(|f| f.state["Parameters"]["FunctionName"] == stage.function)
        .unwrap_or_else(|| panic!("no Lambda task invokes {}", stage.function));
    (found.name, found.state)
}

fn catches_everything(state: &Value) -> bool {
    state["Catch"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| strings(&c["ErrorEquals"]).contains(&"States.ALL"))
}

/// The placeholder names used in a text: `${Name}`.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').expect("a placeholder is closed");
        found.insert(after[..end].to_string());
        rest = &after[end..];
    }
    found
}

/// The keys of the `DefinitionSubstitutions` map in template.yaml, read as text: the lines below it
/// that are indented deeper than it.
fn definition_substitutions(template: &str) -> BTreeSet<String> {
    let mut lines = template.lines().skip_while(|l| l.trim() != "DefinitionSubstitutions:");
    let header = lines.next().expect("template.yaml has DefinitionSubstitutions");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let depth = indent(header);
    lines
        .take_while(|l| l.trim().is_empty() || indent(l) > depth)
        .filter_map(|l| l.trim().split_once(':').map(|(key, _)| key.to_string()))
        .filter(|key| !key.is_empty() && !key.starts_with('#'))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// A small interpreter for the parts of the ASL that decide where a run ends: Choice rules, Pass
// states, and the notification task. A path that does not resolve panics, as Step Functions
// would fail the execution with States.Runtime, which no Catch catches.

fn get_path<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let rest = path.strip_prefix('$')?;
    rest.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(data, |value, key| value.get(key))
}

fn set_path(data: &mut Value, path: &str, value: Value) {
    let keys: Vec<&str> = path
        .strip_prefix('$')
        .expect("a path starts with $")
        .split('.')
        .filter(|s| !s.is_empty())
        .collect();
    let Some((last, parents)) = keys.split_last() else {
        *data = value;
        return;
    };
    let mut target = data;
    for key in parents {
        target = target
            .get_mut(*key)
            .unwrap_or_else(|| panic!("ResultPath {path}: {key} is missing"));
    }
    target
        .as_object_mut()
        .unwrap_or_else(|| panic!("ResultPath {path} does not point into an object"))
        .insert(last.to_string(), value);
}

/// Parameters (or a Message) with `key.$` paths resolved against `data`. Intrinsic functions and
/// context paths become placeholders: what matters here is that every input path exists.
fn render(template: &Value, data: &Value) -> Value {
    match template {
        Value::Object(fields) => {
            let mut out = Map::new();
            for (key, value) in fields {
                if let Some(key) = key.strip_suffix(".$") {
                    let expr = value.as_str().expect("a .$ field holds a path");
                    let resolved = if expr.starts_with("States.") {
                        // The intrinsic's own arguments must resolve too.
                        let arguments = expr
                            .split([',', '(', ')', ' '])
                            .filter(|t| t.starts_with("$.") || *t == "$");
                        for path in arguments {
                            assert!(
                                get_path(data, path).is_some(),
                                "{expr}: {path} is missing from {data}: States.Runtime"
                            );
                        }
                        Value::String(format!("<{expr}>"))
                    } else if expr.starts_with("$$.") {
                        Value::String(format!("<{expr}>"))
                    } else {
                        get_path(data, expr)
                            .unwrap_or_else(|| panic!("{expr} is missing from {data}: States.Runtime"))
                            .clone()
                    };
                    out.insert(key.to_string(), resolved);
                } else {
                    out.insert(key.clone(), render(value, data));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn compare(rule: &Value, data: &Value) -> bool {
    if let Some(all) = rule["And"].as_array() {
        return all.iter().all(|r| compare(r, data));
    }
    if let Some(any) = rule["Or"].as_array() {
        return any.iter().any(|r| compare(r, data));
    }
    if rule.get("Not").is_some() {
        return !compare(&rule["Not"], data);
    }
    let path = rule["Variable"].as_str().expect("a comparison has Variable");
    let value = get_path(data, path);
    if let Some(present) = rule["IsPresent"].as_bool() {
        return value.is_some() == present;
    }
    let value = value.unwrap_or_else(|| panic!("Choice on {path}, missing from {data}: States.Runtime"));
    let number = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("{path} = {v} is not a number"));
    let other_path = |op: &str| {
        let p = rule[op].as_str().expect("a ...Path operator holds a path");
        get_path(data, p).unwrap_or_else(|| panic!("{p} is missing from {data}: States.Runtime"))
    };
    let fields = rule.as_object().expect("a rule is an object");
    let op = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "Variable" | "Next" | "Comment"))
        .expect("an operator");
    match op.as_str() {
        "StringEquals" => value.as_str() == rule[op].as_str(),
        "BooleanEquals" => value.as_bool() == rule[op].as_bool(),
        "IsNull" => value.is_null() == rule[op].as_bool().expect("IsNull takes a boolean"),
        "NumericEquals" => number(value) == number(&rule[op]),
        "NumericGreaterThan" => number(value) > number(&rule[op]),
        "NumericGreaterThanEquals" => number(value) >= number(&rule[op]),
        "NumericLessThan" => number(value) < number(&rule[op]),
        "NumericLessThanEquals" => number(value) <= number(&rule[op]),
        "NumericEqualsPath" => number(value) == number(other_path(op)),
        "StringEqualsPath" => value.as_str() == other_path(op).as_str(),
        other => panic!("this test does not know the Choice operator {other}: teach compare()"),
    }
}

fn choose(state: &Value, data: &Value) -> String {
    state["Choices"]
        .as_array()
        .expect("a Choice has Choices")
        .iter()
        .find(|rule| compare(rule, data))
        .map(|rule| rule["Next"].as_str().expect("Next").to_string())
        .or_else(|| state["Default"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no choice matches {data} and there is no Default: States.NoChoiceMatched"))
}

fn apply_result(data: &mut Value, state: &Value, result: Value) {
    match state.get("ResultPath") {
        Some(Value::Null) => {}
        Some(Value::String(path)) => set_path(data, path, result),
        None => *data = result,
        Some(other) => panic!("ResultPath {other} is neither a path nor null"),
    }
}

/// Where a run goes from `start` (a top-level state on the failure path) when every task there
/// succeeds: the final state's name, how many notifications it sent, and the data at the end.
struct Ending {
    state: String,
    notifications: Vec<Value>,
    data: Value,
}

fn run_to_end(machine: &Value, start: &str, mut data: Value) -> Ending {
    let all = states(machine);
    let mut name = start.to_string();
    let mut notifications = Vec::new();
    for _ in 0..50 {
        let state = &all[&name];
        let next = |s: &Value| s["Next"].as_str().expect("Next").to_string();
        match kind(state) {
            "Choice" => name = choose(state, &data),
            "Pass" => {
                let result = match (state.get("Parameters"), state.get("Result")) {
                    (Some(parameters), _) => render(parameters, &data),
                    (None, Some(result)) => result.clone(),
                    (None, None) => data.clone(),
                };
                apply_result(&mut data, state, result);
                name = next(state);
            }
            "Task" if resource(state) == SNS_PUBLISH => {
                notifications.push(render(&state["Parameters"], &data));
                apply_result(&mut data, state, json!({"MessageId": "m-1"}));
                name = next(state);
            }
            "Fail" | "Succeed" => {
                return Ending {
                    state: name,
                    notifications,
                    data,
                };
            }
            other => panic!("{name} ({other}) is not expected between a verdict or a Catch and the end of the run"),
        }
    }
    panic!("no end within 50 states of {start}")
}

/// What a Catch leaves in the state: the error object at its ResultPath.
fn caught(state: &Value, error: &str, mut data: Value) -> (String, Value) {
    let catcher = state["Catch"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            strings(&c["ErrorEquals"])
                .iter()
                .any(|e| *e == error || *e == "States.ALL")
        })
        .unwrap_or_else(|| panic!("no Catch for {error}"));
    let result = json!({"Error": error, "Cause": format!("{{\"errorType\":\"{error}\",\"errorMessage\":\"test\"}}")});
    apply_result(&mut data, catcher, result);
    (catcher["Next"].as_str().expect("Next").to_string(), data)
}

fn execution_input() -> Value {
    json!({"source": "s3://bucket/landing/yellow_tripdata_2021-03.parquet", "expected_md5": null, "period": null})
}

/// The execution state after `upto` stages succeeded, with plausible contract outputs.
fn state_after(upto: usize) -> Value {
    let mut data = execution_input();
    let outputs = [
        json!({"verdict": "Ok", "dataset": "yellow", "period": "2021-03", "source": data["source"],
            "run_id": "20210401T000000Z-0a1b2c3d",
            "raw_key": "raw/yellow/2021-03/run=20210401T000000Z-0a1b2c3d/yellow_tripdata_2021-03.parquet",
            "manifest_key": "reports/yellow/2021-03/runs/20210401T000000Z-0a1b2c3d/ingest.json", "size_bytes": 1000, "md5": "ab",
            "md5_verified": false, "rows": 100, "row_groups": 1, "schema_variant": "2021", "allow_shrink": false}),
        json!({"verdict": "Ok", "dataset": "yellow", "period": "2021-03",
            "clean_key": "clean/yellow/period=2021-03/part-20210401T000000Z-0a1b2c3d.parquet",
            "quarantine_key": "quarantine/yellow/period=2021-03/part-20210401T000000Z-0a1b2c3d.parquet",
            "manifest_key": "reports/yellow/2021-03/runs/20210401T000000Z-0a1b2c3d/clean.json", "rows_in": 100, "rows_kept": 98,
            "rows_rejected": {"null_timestamp": 1, "non_positive_duration": 1, "outside_period": 0},
            "rejected_ratio": 0.02, "max_rejected_ratio": 0.05}),
        json!({"verdict": "Ok", "dataset": "yellow", "period": "2021-03", "curated_prefix": "curated/yellow/",
            "manifest_key": "reports/yellow/2021-03/runs/20210401T000000Z-0a1b2c3d/transform.json", "rows_curated": 98, "partitions": 31,
            "location_ids_swapped": 3}),
        json!({"verdict": "Ok", "dataset": "yellow", "period": "2021-03", "source_id": "yellow/2021-03",
            "rows_curated": 98, "rows_loaded": 98, "rows_replaced": 0, "table": "tripflow.trips"}),
    ];
    for (stage, output) in STAGES.iter().zip(outputs).take(upto) {
        data[stage.name] = output;
    }
    data
}

// ------------------------------------------------------------------------------------------------
// The Mermaid diagram

fn node_id(name: &str) -> String {
    // Prefixed so that no state name can collide with Mermaid's keywords (`end`, `graph`, ...).
    format!(
        "s_{}",
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    )
}

fn label(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// A Choice rule in a few words, for edge labels.
fn describe(rule: &Value) -> String {
    let join = |rules: &Value, word: &str| {
        strings_of(rules)
            .into_iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join(&format!(" {word} "))
    };
    if rule.get("And").is_some() {
        return join(&rule["And"], "and");
    }
    if rule.get("Or").is_some() {
        return join(&rule["Or"], "or");
    }
    if rule.get("Not").is_some() {
        let inner = &rule["Not"];
        if let (Some(var), Some(value)) = (inner["Variable"].as_str(), inner["StringEquals"].as_str()) {
            return format!("{} != {value}", short(var));
        }
        return format!("not ({})", describe(inner));
    }
    let var = short(rule["Variable"].as_str().unwrap_or("?"));
    let fields = rule.as_object().map(|f| f.iter()).into_iter().flatten();
    for (op, value) in fields {
        let shown = match value {
            Value::String(s) if op.ends_with("Path") => short(s),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let op = op.strip_suffix("Path").unwrap_or(op);
        let text = match op {
            "Variable" | "Next" | "Comment" => continue,
            "StringEquals" | "NumericEquals" | "BooleanEquals" | "TimestampEquals" => format!("{var} = {shown}"),
            "NumericGreaterThan" | "StringGreaterThan" | "TimestampGreaterThan" => format!("{var} > {shown}"),
            "NumericGreaterThanEquals" | "StringGreaterThanEquals" => format!("{var} >= {shown}"),
            "NumericLessThan" | "StringLessThan" | "TimestampLessThan" => format!("{var} < {shown}"),
            "NumericLessThanEquals" | "StringLessThanEquals" => format!("{var} <= {shown}"),
            "IsPresent" if shown == "false" => format!("{var} absent"),
            "IsPresent" => format!("{var} present"),
            "IsNull" if shown == "false" => format!("{var} not null"),
            "IsNull" => format!("{var} null"),
            other => format!("{var} {other} {shown}"),
        };
        return text;
    }
    var
}

fn strings_of(rules: &Value) -> Vec<&Value> {
    rules.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn short(path: &str) -> String {
    path.trim_start_matches('$').trim_start_matches('.').to_string()
}

fn task_kind(state: &Value) -> String {
    let resource = resource(state);
    let api = resource.strip_prefix("arn:aws:states:::").unwrap_or(resource);
    api.strip_prefix("aws-sdk:").unwrap_or(api).to_string()
}

/// The state machine as a Mermaid flowchart: states as nodes (shape by type), Next and Choice
/// transitions as solid arrows, Catch transitions as dotted ones, Parallel branches as subgraphs.
fn mermaid(machine: &Value) -> String {
    struct Out {
        nodes: String,
        edges: Vec<String>,
        fails: Vec<String>,
        succeeds: Vec<String>,
    }
    fn scope(machine: &Value, depth: usize, out: &mut Out) {
        let indent = "    ".repeat(depth);
        for name in ordered(machine) {
            let state = &states(machine)[&name];
            let id = node_id(&name);
            let text = label(&name);
            match kind(state) {
                "Parallel" => {
                    writeln!(out.nodes, "{indent}subgraph {id}[\"{text} (parallel)\"]").unwrap();
                    for (i, branch) in state["Branches"].as_array().expect("Branches").iter().enumerate() {
                        writeln!(
                            out.nodes,
                            "{indent}    subgraph {id}_branch{}[\"branch {}\"]",
                            i + 1,
                            i + 1
                        )
                        .unwrap();
                        scope(branch, depth + 2, out);
                        writeln!(out.nodes, "{indent}    end").unwrap();
                    }
                    writeln!(out.nodes, "{indent}end").unwrap();
                }
                "Task" => writeln!(out.nodes, "{indent}{id}[\"{text}<br/>{}\"]", label(&task_kind(state))).unwrap(),
                "Choice" => writeln!(out.nodes, "{indent}{id}{{\"{text}\"}}").unwrap(),
                "Pass" => writeln!(out.nodes, "{indent}{id}[/\"{text}\"/]").unwrap(),
                "Wait" => writeln!(out.nodes, "{indent}{id}>\"{text}\"]").unwrap(),
                "Succeed" => {
                    writeln!(out.nodes, "{indent}{id}([\"{text}\"])").unwrap();
                    out.succeeds.push(id.clone());
                }
                "Fail" => {
                    writeln!(out.nodes, "{indent}{id}([\"{text}\"])").unwrap();
                    out.fails.push(id.clone());
                }
                other => writeln!(out.nodes, "{indent}{id}[\"{text} ({other})\"]").unwrap(),
            }
            for (next, edge, text) in successors(state) {
                let arrow = if edge == Edge::Catch { "-.->" } else { "-->" };
                let text = if text.is_empty() {
                    String::new()
                } else {
                    format!("|\"{}\"|", label(&text))
                };
                out.edges.push(format!("{id} {arrow}{text} {}", node_id(&next)));
            }
        }
    }
    let mut out = Out {
        nodes: String::new(),
        edges: Vec::new(),
        fails: Vec::new(),
        succeeds: Vec::new(),
    };
    scope(machine, 1, &mut out);
    let start = node_id(machine["StartAt"].as_str().expect("StartAt"));
    let mut text = String::from("flowchart TD\n");
    text.push_str("    %% Generated from statemachine.asl.json by tests/deploy_artifacts.rs; do not edit.\n");
    text.push_str("    start_((start))\n");
    text.push_str(&out.nodes);
    writeln!(text, "    start_ --> {start}").unwrap();
    for edge in &out.edges {
        writeln!(text, "    {edge}").unwrap();
    }
    text.push_str("    classDef fail fill:#fde2e1,stroke:#c62828\n");
    text.push_str("    classDef succeed fill:#e3f5e1,stroke:#2e7d32\n");
    if !out.fails.is_empty() {
        writeln!(text, "    class {} fail", out.fails.join(",")).unwrap();
    }
    if !out.succeeds.is_empty() {
        writeln!(text, "    class {} succeed", out.succeeds.join(",")).unwrap();
    }
    text
}

fn diagram_block(machine: &Value) -> String {
    format!("{DIAGRAM_BEGIN}\n```mermaid\n{}```\n{DIAGRAM_END}", mermaid(machine))
}

// ------------------------------------------------------------------------------------------------
// Retries and catches

#[test]
fn every_lambda_task_retries_service_errors_with_jitter() {
    let machine = asl();
    let tasks = lambda_tasks(&machine);
    assert_eq!(tasks.len(), STAGES.len(), "one Lambda task per stage");
    for task in tasks {
        let name = &task.name;
        let parameters = &task.state["Parameters"];
        let function = parameters["FunctionName"].as_str().unwrap_or("");
        assert!(
            function.starts_with("${") && function.ends_with('}'),
            "{name}: FunctionName comes from a substitution"
        );
        assert!(
            parameters.get("Payload.$").is_some(),
            "{name}: Payload.$ passes state data"
        );
        let retriers = task.state["Retry"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no Retry"));
        for error in LAMBDA_SERVICE_ERRORS.iter().chain(RETRYABLE_ERRORS) {
            let retrier = retriers
                .iter()
                .find(|r| strings(&r["ErrorEquals"]).contains(error))
                .unwrap_or_else(|| panic!("{name} does not retry {error}"));
            assert_eq!(
                retrier["JitterStrategy"], "FULL",
                "{name}: {error} retried without full jitter"
            );
            let backoff = retrier["BackoffRate"]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {error} has no BackoffRate"));
            assert!(backoff > 1.0, "{name}: {error} backs off by {backoff}");
            let attempts = retrier["MaxAttempts"].as_u64().unwrap_or(3);
            assert!((2..=6).contains(&attempts), "{name}: {error} retried {attempts} times");
            let interval = retrier["IntervalSeconds"].as_u64().unwrap_or(1);
            assert!(interval <= 5, "{name}: {error} first waits {interval} s");
        }
    }
}

/// The one non-retryable error the state machine does retry: an ingest that found its month held by
/// another execution waits for it (the CLI, with no one to wait for it, says so and stops).
const WAITS_FOR_THE_MONTH: (&str, &str) = ("Ingest", "ConcurrentRun");

#[test]
fn an_execution_that_finds_its_month_held_waits_longer_than_a_lease_can_last() {
    let machine = asl();
    for task in lambda_tasks(&machine) {
        let retriers: Vec<&Value> = task.state["Retry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| strings(&r["ErrorEquals"]).contains(&"ConcurrentRun"))
            .collect();
        if task.name != WAITS_FOR_THE_MONTH.0 {
            assert!(
                retriers.is_empty(),
                "{}: only ingest, before the run wrote anything, waits",
                task.name
            );
            continue;
        }
        let [retrier] = retriers[..] else {
            panic!("Ingest retries ConcurrentRun in one retrier: {retriers:?}");
        };
        assert_eq!(
            retrier["JitterStrategy"], "NONE",
            "a jittered wait may end before the lease does"
        );
        let (mut interval, rate) = (
            retrier["IntervalSeconds"].as_f64().unwrap(),
            retrier["BackoffRate"].as_f64().unwrap(),
        );
        let max_delay = retrier["MaxDelaySeconds"].as_f64().unwrap_or(f64::MAX);
        let mut waited = 0.0;
        for _ in 0..retrier["MaxAttempts"].as_u64().unwrap() {
            waited += interval.min(max_delay);
            interval *= rate;
        }
        let lease_s = tripflow::lease::DEFAULT_TTL.as_secs_f64();
        assert!(
            waited > lease_s,
            "Ingest waits {waited} s for a held month; a holder that died frees it after {lease_s} s"
        );
    }
}

#[test]
fn lambda_tasks_never_retry_errors_a_retry_would_only_repeat() {
    let machine = asl();
    for task in lambda_tasks(&machine) {
        for retrier in task.state["Retry"].as_array().into_iter().flatten() {
            for error in strings(&retrier["ErrorEquals"]) {
                if (task.name.as_str(), error) == WAITS_FOR_THE_MONTH {
                    continue;
                }
                assert!(
                    !non_retryable_errors().contains(&error) && !matches!(error, "States.ALL" | "States.TaskFailed"),
                    "{} retries {error}, which fails the same way every time",
                    task.name
                );
            }
        }
    }
}

#[test]
fn every_task_has_a_catch_for_any_error() {
    let machine = asl();
    for found in all_states(&machine).iter().filter(|f| kind(f.state) == "Task") {
        // Inside a Parallel branch the Parallel state's Catch handles what the task's does not.
        let covered = catches_everything(found.state) || found.parents.iter().any(|p| catches_everything(p));
        assert!(
            covered,
            "{}: an error there would end the run without a notification",
            found.name
        );
        if found.parents.is_empty() {
            assert!(found.state.get("Catch").is_some(), "{} has no Catch", found.name);
        }
    }
    for found in all_states(&machine).iter().filter(|f| kind(f.state) == "Parallel") {
        assert!(
            catches_everything(found.state),
            "{}: a failed branch would end the run unnoticed",
            found.name
        );
    }
}

#[test]
fn every_failure_path_notifies_before_it_fails() {
    let machine = asl();
    let top = states(&machine);
    let publishers: Vec<&String> = top
        .iter()
        .filter(|(_, s)| resource(s) == SNS_PUBLISH)
        .map(|(n, _)| n)
        .collect();
    assert!(!publishers.is_empty(), "no sns:publish task");
    for name in &publishers {
        let parameters = &top[name.as_str()]["Parameters"];
        assert_eq!(
            parameters["TopicArn"], "${FailureTopicArn}",
            "{name} publishes to the failure topic"
        );
        let message = parameters.to_string();
        assert!(
            message.contains("$$.Execution.Id"),
            "{name}: the message names the execution"
        );
        assert!(message.contains("$.failure"), "{name}: the message carries the error");
    }
    // Walk the top level from StartAt without passing through a notification: no Fail state may be
    // reachable that way.
    let start = machine["StartAt"].as_str().unwrap().to_string();
    let mut seen = HashSet::from([start.clone()]);
    let mut queue = VecDeque::from([start]);
    while let Some(name) = queue.pop_front() {
        let state = &top[&name];
        assert_ne!(kind(state), "Fail", "{name} is reachable without a notification");
        if resource(state) == SNS_PUBLISH {
            continue;
        }
        for (next, _, _) in successors(state) {
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
}

#[test]
fn every_state_and_every_fail_state_is_reachable() {
    let machine = asl();
    // State names are unique across the whole machine, branches included.
    fn reach(machine: &Value, reached: &mut BTreeSet<String>) {
        let start = machine["StartAt"].as_str().expect("StartAt").to_string();
        let mut queue = VecDeque::from([start]);
        while let Some(name) = queue.pop_front() {
            if !reached.insert(name.clone()) {
                continue;
            }
            let state = &states(machine)[&name];
            queue.extend(successors(state).into_iter().map(|(next, _, _)| next));
            for branch in state["Branches"].as_array().into_iter().flatten() {
                reach(branch, reached);
            }
        }
    }
    let mut reached = BTreeSet::new();
    reach(&machine, &mut reached);
    let mut fails = 0;
    for found in all_states(&machine) {
        assert!(reached.contains(&found.name), "{} can never run", found.name);
        fails += usize::from(kind(found.state) == "Fail");
    }
    assert!(fails > 0, "no Fail state at all");
}

#[test]
fn every_fail_state_is_named_for_its_error_and_says_why() {
    let machine = asl();
    for (name, state) in states(&machine).iter().filter(|(_, s)| kind(s) == "Fail") {
        assert_eq!(state["Error"], name.as_str(), "{name}: Error must be the state's name");
        assert!(
            state["Cause"].as_str().is_some_and(|c| c.len() > 10),
            "{name} needs a Cause"
        );
    }
    // A Fail inside a Parallel branch only hands its error to the Parallel's Catch: that error needs
    // a top-level Fail state of its own name.
    let top = states(&machine);
    for found in all_states(&machine)
        .iter()
        .filter(|f| !f.parents.is_empty() && kind(f.state) == "Fail")
    {
        let error = found.state["Error"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no Error", found.name));
        assert!(
            top.get(error).is_some_and(|s| kind(s) == "Fail"),
            "{}: no Fail state named {error}",
            found.name
        );
    }
}

#[test]
fn a_failed_stage_ends_in_the_fail_state_named_for_its_error_after_one_notification() {
    let machine = asl();
    for (i, stage) in STAGES.iter().enumerate() {
        let (task_name, task) = stage_task(&machine, stage);
        for (error, expected) in FAIL_STATE_FOR {
            let (next, data) = caught(task, error, state_after(i));
            let ending = run_to_end(&machine, &next, data);
            assert_eq!(ending.state, expected, "{task_name} failing with {error}");
            assert_eq!(
                ending.notifications.len(),
                1,
                "{task_name} failing with {error}: one notification"
            );
            let failure = &ending.data["failure"];
            assert_eq!(failure["Error"], error, "{task_name}: the failure keeps its error name");
            assert_eq!(failure["stage"], stage.name, "{task_name}: the failure names its stage");
            assert_eq!(
                ending.notifications[0]["Message"]["failure"], *failure,
                "{task_name}: the message carries it"
            );
        }
    }
}

#[test]
fn a_failed_crawl_ends_in_crawler_failed_after_one_notification() {
    let machine = asl();
    let top = states(&machine);
    let catalogs: Vec<(&String, &Value)> = top.iter().filter(|(_, s)| kind(s) == "Parallel").collect();
    assert_eq!(catalogs.len(), 3, "raw, clean and curated+aurora catalog steps");
    for (name, state) in catalogs {
        for (error, expected) in [
            ("CrawlerFailed", "CrawlerFailed"),
            ("CorruptSource", "CorruptSource"),
            ("SourceTooLarge", "StageFailed"),
            ("ParquetWriteFailed", "StageFailed"),
            ("StorageRefused", "StageFailed"),
            ("Glue.EntityNotFoundException", "StageFailed"),
        ] {
            let (next, data) = caught(state, error, state_after(1));
            let ending = run_to_end(&machine, &next, data);
            assert_eq!(ending.state, expected, "{name} failing with {error}");
            assert_eq!(ending.notifications.len(), 1, "{name}: one notification");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The stage contract and the verdict checks

#[test]
fn each_stage_gets_the_previous_result_and_keeps_its_own_under_its_name() {
    let machine = asl();
    for stage in &STAGES {
        let (name, task) = stage_task(&machine, stage);
        assert_eq!(task["Parameters"]["Payload.$"], stage.payload, "{name}: input");
        assert_eq!(task["ResultPath"], format!("$.{}", stage.name), "{name}: ResultPath");
        // Only the contract's fields enter the state: Lambda's envelope (StatusCode, headers) stays out.
        let selector = task["ResultSelector"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no ResultSelector"));
        let selected: BTreeSet<&str> = selector.keys().map(|k| k.strip_suffix(".$").unwrap_or(k)).collect();
        let contract: BTreeSet<&str> = stage.output.iter().copied().collect();
        assert_eq!(
            selected, contract,
            "{name}: ResultSelector vs the {} output contract",
            stage.name
        );
        for (key, path) in selector {
            let field = key.strip_suffix(".$").unwrap_or(key);
            assert_eq!(path, &format!("$.Payload.{field}"), "{name}: {key}");
        }
    }
}

#[test]
fn verdict_checks_let_good_results_through_and_send_bad_ones_to_their_fail_state() {
    let machine = asl();
    let top = states(&machine);
    let check_after = |stage: &Stage| {
        let (name, task) = stage_task(&machine, stage);
        let next = task["Next"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no Next"))
            .to_string();
        assert_eq!(
            kind(&top[&next]),
            "Choice",
            "{name} is followed by a check of its result"
        );
        next
    };
    let [ingest, clean, _transform, load] = &STAGES;
    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("ingest ok", check_after(ingest), state_after(1), "go"),
        (
            "ingest without rows",
            check_after(ingest),
            with(state_after(1), "/ingest/rows", json!(0)),
            "EmptySource",
        ),
        (
            "ingest verdict names an error",
            check_after(ingest),
            with(state_after(1), "/ingest/verdict", json!("ChecksumMismatch")),
            "ChecksumMismatch",
        ),
        ("clean ok", check_after(clean), state_after(2), "go"),
        (
            "clean rejected too many rows",
            check_after(clean),
            with(state_after(2), "/clean/verdict", json!("TooManyRejectedRows")),
            "TooManyRejectedRows",
        ),
        ("load ok", check_after(load), state_after(4), "succeed"),
        (
            "load lost rows",
            check_after(load),
            with(state_after(4), "/load/rows_loaded", json!(97)),
            "LoadCountMismatch",
        ),
    ];
    for (case, check, data, expected) in cases {
        let next = choose(&top[&check], &data);
        match expected {
            // Onwards: the next stage or the crawl after this one, never the failure side.
            "go" => assert!(
                matches!(kind(&top[&next]), "Task" | "Parallel"),
                "{case}: {check} chose {next}"
            ),
            "succeed" => assert_eq!(kind(&top[&next]), "Succeed", "{case}: {check} chose {next}"),
            fail => {
                let ending = run_to_end(&machine, &next, data);
                assert_eq!(ending.state, fail, "{case}");
                assert_eq!(ending.notifications.len(), 1, "{case}: one notification");
            }
        }
    }
}

fn with(mut data: Value, pointer: &str, value: Value) -> Value {
    *data
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} is not in the test data")) = value;
    data
}

// ------------------------------------------------------------------------------------------------
// Crawlers

#[test]
fn crawlers_are_polled_until_ready_and_one_already_running_is_waited_for() {
    let machine = asl();
    let starts: Vec<Found<'_>> = all_states(&machine)
        .into_iter()
        .filter(|f| resource(f.state) == START_CRAWLER)
        .collect();
    let mut crawlers = BTreeSet::new();
    for start in &starts {
        let parent = start
            .parents
            .last()
            .unwrap_or_else(|| panic!("{} runs inside a Parallel branch", start.name));
        let branch = parent["Branches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| states(b).contains_key(&start.name))
            .unwrap();
        let scope = states(branch);
        let crawler = start.state["Parameters"]["Name"].as_str().unwrap();
        crawlers.insert(crawler.to_string());
        let running = start.state["Catch"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| strings(&c["ErrorEquals"]).contains(&"Glue.CrawlerRunningException"))
            .unwrap_or_else(|| panic!("{}: a crawler already running is an error", start.name));
        let wait = start.state["Next"].as_str().unwrap();
        assert_eq!(
            running["Next"], wait,
            "{}: a running crawler is waited for like a started one",
            start.name
        );
        assert_eq!(kind(&scope[wait]), "Wait");
        let get = scope[wait]["Next"].as_str().unwrap();
        assert_eq!(resource(&scope[get]), GET_CRAWLER, "{wait} is followed by GetCrawler");
        assert_eq!(
            scope[get]["Parameters"]["Name"], crawler,
            "{get} polls the crawler {crawler}"
        );
        let check = scope[get]["Next"].as_str().unwrap();
        let ready_path = format!("{}.Crawler.State", scope[get]["ResultPath"].as_str().unwrap());
        let mut data = json!({"crawler_poll_seconds": 1});
        set_path(
            &mut data,
            scope[get]["ResultPath"].as_str().unwrap(),
            json!({"Crawler": {"State": "RUNNING"}}),
        );
        assert_eq!(
            choose(&scope[check], &data),
            wait,
            "{check}: RUNNING waits again ({ready_path})"
        );
        for (last, ends) in [("SUCCEEDED", "Succeed"), ("FAILED", "Fail")] {
            let crawl = json!({"Crawler": {"State": "READY", "LastCrawl": {"Status": last}}});
            set_path(&mut data, scope[get]["ResultPath"].as_str().unwrap(), crawl);
            assert_eq!(
                kind(&scope[&choose(&scope[check], &data)]),
                ends,
                "{check}: READY after {last}"
            );
        }
    }
    let expected: BTreeSet<String> = [
        "RawCrawlerName",
        "CleanCrawlerName",
        "CuratedCrawlerName",
        "AuroraCrawlerName",
    ]
    .iter()
    .map(|n| format!("${{{n}}}"))
    .collect();
    assert_eq!(crawlers, expected, "each crawler runs once");
}

// ------------------------------------------------------------------------------------------------
// The template

#[test]
fn every_placeholder_in_the_asl_is_substituted_by_the_template() {
    let asl_text = read("statemachine.asl.json");
    let used = placeholders(&asl_text);
    let substituted = definition_substitutions(&template());
    let missing: Vec<&String> = used.difference(&substituted).collect();
    assert!(
        missing.is_empty(),
        "template.yaml's DefinitionSubstitutions lacks {missing:?}"
    );
    let unused: Vec<&String> = substituted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "DefinitionSubstitutions has entries the ASL never uses: {unused:?}"
    );
}

#[test]
fn the_template_builds_each_function_from_a_workspace_binary() {
    let template = template();
    let binaries: Vec<&str> = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Binary: "))
        .map(str::trim)
        .collect();
    assert_eq!(binaries.len(), 5, "trigger, ingest, clean, transform and load");
    assert_eq!(
        template.matches("BuildMethod: rust-cargolambda").count(),
        binaries.len()
    );
    let crates = std::fs::read_dir(repo_root().join("crates")).expect("crates/");
    let manifests: Vec<String> = crates
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("Cargo.toml")).ok())
        .collect();
    for binary in binaries {
        let declared = format!("name = \"{binary}\"");
        assert!(
            manifests.iter().any(|m| m.contains(&declared)),
            "no crate under crates/ builds {binary}"
        );
    }
    for setting in [
        "Runtime: provided.al2023",
        "Architectures: [arm64]",
        "Handler: bootstrap",
        "Tracing: Active",
        "LogFormat: JSON",
    ] {
        assert!(template.contains(setting), "template.yaml's Globals lack {setting}");
    }
}

/// The keys of a top-level section of template.yaml (`Parameters`, `Outputs`), read as text.
fn template_section_keys(template: &str, section: &str) -> Vec<String> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in template.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            inside = line.trim_end() == format!("{section}:");
        } else if inside
            && line.starts_with("  ")
            && !line.starts_with("   ")
            && let Some((key, _)) = line.trim().split_once(':')
        {
            keys.push(key.to_string());
        }
    }
    keys
}

#[test]
fn the_deploy_guide_lists_every_template_parameter_and_output() {
    let template = template();
    let guide = read("docs/deploy.md");
    for section in ["Parameters", "Outputs"] {
        let keys = template_section_keys(&template, section);
        assert!(keys.len() > 10, "template.yaml's {section} were not found");
        for key in keys {
            assert!(
                guide.contains(&format!("| `{key}` |")),
                "docs/deploy.md's tables lack the {section} entry {key}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The README diagram

#[test]
fn readme_shows_the_current_state_machine_diagram() {
    let block = diagram_block(&asl());
    let path = repo_root().join("README.md");
    let readme = std::fs::read_to_string(&path).ok();
    let current = readme.as_deref().and_then(|text| {
        let begin = text.find(DIAGRAM_BEGIN)?;
        let end = text[begin..].find(DIAGRAM_END)? + begin + DIAGRAM_END.len();
        Some((begin, end))
    });
    if std::env::var_os("UPDATE_DIAGRAM").is_some_and(|v| v == "1") {
        let updated = match (&readme, current) {
            (Some(text), Some((begin, end))) => format!("{}{block}{}", &text[..begin], &text[end..]),
            (Some(text), None) => format!("{}\n{block}\n", text.trim_end()),
            (None, _) => format!("## Architecture\n\n{block}\n"),
        };
        std::fs::write(&path, updated).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let hint = "run `UPDATE_DIAGRAM=1 cargo test -p tripflow-tests --test deploy_artifacts` and commit README.md";
    let text = readme.unwrap_or_else(|| panic!("README.md is missing: {hint}"));
    let (begin, end) =
        current.unwrap_or_else(|| panic!("README.md has no {DIAGRAM_BEGIN} ... {DIAGRAM_END} block: {hint}"));
    assert_eq!(
        &text[begin..end],
        block,
        "README.md's state machine diagram is out of date: {hint}"
    );
}

#[test]
fn the_diagram_shows_every_state_and_transition() {
    let machine = asl();
    let diagram = mermaid(&machine);
    for found in all_states(&machine) {
        let id = node_id(&found.name);
        let declares = |line: &str| {
            let line = line.trim_start();
            let line = line.strip_prefix("subgraph ").unwrap_or(line);
            line.strip_prefix(id.as_str())
                .is_some_and(|rest| rest.starts_with(['[', '{', '(', '>']))
        };
        assert!(diagram.lines().any(declares), "{} is not drawn", found.name);
        for (next, edge, _) in successors(found.state) {
            let arrow = if edge == Edge::Catch { "-.->" } else { "-->" };
            let drawn = diagram.lines().any(|l| {
                let l = l.trim();
                l.starts_with(&format!("{id} {arrow}")) && l.ends_with(&format!(" {}", node_id(&next)))
            });
            assert!(drawn, "{} -> {next} is not drawn", found.name);
        }
    }
    assert_eq!(
        diagram.matches("subgraph").count(),
        3 + 4,
        "3 Parallel states holding 4 branches"
    );
}

/// The text of one resource of template.yaml: its `  Name:` line and the indented lines below it.
fn resource_block(template: &str, name: &str) -> String {
    let header = format!("  {name}:");
    let mut lines = template.lines().skip_while(|l| *l != header);
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("template.yaml has no resource {name}"));
    let body: Vec<&str> = lines.take_while(|l| l.is_empty() || l.starts_with("    ")).collect();
    format!("{first}\n{}", body.join("\n"))
}

fn number_after(block: &str, key: &str) -> f64 {
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in:\n{block}"))
}

#[test]
fn alarms_notify_the_failure_topic_and_the_dashboard_and_athena_queries_are_deployed() {
    let template = template();
    let alarms = [
        "FailedExecutionsAlarm",
        "RejectedShareAlarm",
        "TriggerDeadLetterAlarm",
        "IngestDurationAlarm",
        "CleanDurationAlarm",
        "TransformDurationAlarm",
        "LoadDurationAlarm",
    ];
    for alarm in alarms {
        let block = resource_block(&template, alarm);
        assert!(block.contains("Type: AWS::CloudWatch::Alarm"), "{block}");
        assert!(
            block.contains("AlarmActions: [!Ref FailureTopic]"),
            "{alarm} notifies no one"
        );
    }
    assert!(resource_block(&template, "FailedExecutionsAlarm").contains("Value: !Ref StateMachine"));
    assert!(resource_block(&template, "RejectedShareAlarm").contains("Threshold: !Ref MaxRejectedRatio"));
    assert!(resource_block(&template, "TriggerDeadLetterAlarm").contains("!GetAtt TriggerDeadLetterQueue.QueueName"));
    // A stage alarms at 80% of its function's timeout (Lambda's Duration is in milliseconds).
    for stage in ["Ingest", "Clean", "Transform", "Load"] {
        let timeout_s = number_after(&resource_block(&template, &format!("{stage}Function")), "Timeout:");
        let alarm = resource_block(&template, &format!("{stage}DurationAlarm"));
        assert!(alarm.contains(&format!("Value: !Ref {stage}Function")), "{alarm}");
        assert_eq!(number_after(&alarm, "Threshold:"), timeout_s * 0.8 * 1000.0, "{stage}");
    }

    // The dashboard shows each stage's duration and rows, every reject rule, the executions.
    let dashboard = resource_block(&template, "Dashboard");
    assert!(dashboard.contains("Type: AWS::CloudWatch::Dashboard"));
    for stage in ["ingest", "clean", "transform", "load"] {
        assert!(
            dashboard.contains(&format!("\"{stage}\"")),
            "no {stage} on the dashboard"
        );
    }
    for reason in tripflow::stages::clean::RejectReason::ALL {
        assert!(
            dashboard.contains(&format!("Rejected_{}", reason.as_str())),
            "{}",
            reason.as_str()
        );
    }
    for metric in [
        "ExecutionsSucceeded",
        "ExecutionsFailed",
        "RowsLoaded",
        "RowsCurated",
        "RowsKept",
    ] {
        assert!(dashboard.contains(metric), "no {metric} on the dashboard");
    }

    // Athena: a workgroup with encrypted results, and the analysts' questions as named queries over
    // the tables the crawlers (and the zones table) create.
    let workgroup = resource_block(&template, "AthenaWorkGroup");
    assert!(
        workgroup.contains("EncryptionOption: SSE_KMS") && workgroup.contains("EnforceWorkGroupConfiguration: true")
    );
    let queries = [
        ("MonthlyAverageSpeedQuery", vec!["curated_yellow"]),
        (
            "WeeklySlowPickupsQuery",
            vec!["curated_yellow", "zones", "pu_zone", "pu_borough"],
        ),
        ("RejectsByReasonQuery", vec!["quarantine_yellow", "reject_reason"]),
    ];
    for (name, needs) in queries {
        let block = resource_block(&template, name);
        assert!(block.contains("Type: AWS::Athena::NamedQuery") && block.contains("WorkGroup: !Ref AthenaWorkGroup"));
        for needed in needs {
            assert!(block.contains(needed), "{name} does not use {needed}");
        }
    }
    for (crawler, prefix) in [("CuratedCrawler", "curated_"), ("QuarantineCrawler", "quarantine_")] {
        let block = resource_block(&template, crawler);
        assert!(
            block.contains(&format!("TablePrefix: {prefix}")) && block.contains("DeltaTargets:"),
            "{block}"
        );
    }
    assert!(resource_block(&template, "ZonesTable").contains("Name: zones"));
}
