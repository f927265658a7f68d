//! **tripflow-trigger.** Invoked asynchronously by an S3 event notification or an EventBridge
//! "Object Created" rule on the bucket. For each new `landing/<dataset>_tripdata_YYYY-MM.parquet` it
//! starts one execution of the pipeline state machine, named after bucket, key and version so a
//! duplicate notification starts nothing new, with the ingest input
//! `{"source": "s3://…", "expected_md5": …, "period": null}`. Everything else is skipped with a log line.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use tripflow_aws::handlers::{TriggerState, handle_trigger};
use tripflow_aws::trigger::TriggerEvent;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tripflow_aws::init_tracing();
    let state = TriggerState::from_env().await?;
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<TriggerEvent>| async move {
        handle_trigger(state, event.payload).await
    }))
    .await
}
