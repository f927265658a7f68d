//! The smallest Lambda that commits to a Delta table on S3 with delta-rs: open the table named in
//! the event and commit one add action. Its size is the floor of any function that publishes.
use deltalake_core::kernel::transaction::{CommitBuilder, TableReference};
use deltalake_core::kernel::{Action, Add};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    deltalake_aws::register_handlers(None);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let url = url::Url::parse(event.payload["table"].as_str().unwrap_or_default())?;
        let path = event.payload["path"].as_str().unwrap_or_default().to_string();
        let table = deltalake_core::DeltaTableBuilder::from_url(url)?.load().await?;
        let add = Add {
            path,
            size: 1,
            modification_time: 0,
            data_change: true,
            ..Default::default()
        };
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let done = CommitBuilder::default()
            .with_actions(vec![Action::Add(add)])
            .build(
                Some(table.snapshot()? as &dyn TableReference),
                table.log_store(),
                operation,
            )
            .await?;
        Ok::<Value, Error>(json!({ "version": done.version() }))
    }))
    .await
}
