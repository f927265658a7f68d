//! **tripflow-transform.** Invoked by the state machine's Transform task with clean's output fields
//! (`dataset`, `period`, `clean_key`, `manifest_key`). Checks the clean object against its manifest,
//! swaps the known-swapped location IDs, derives duration, speed and ISO week, writes Parquet
//! partitioned by pickup date under `curated/<dataset>/`, and returns the curated prefix, row and
//! partition counts and the transform manifest's key.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use tripflow_aws::TransformInput;
use tripflow_aws::handlers::{StageState, handle_transform};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tripflow_aws::init_tracing();
    let state = StageState::from_env().await?;
    if let Some(s3) = &state.s3 {
        tripflow_aws::shutdown::abort_uploads_on_shutdown(s3.clone()).await;
    }
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<TransformInput>| async move {
        handle_transform(state, event.payload).await
    }))
    .await
}
