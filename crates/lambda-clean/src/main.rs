//! **tripflow-clean.** Invoked by the state machine's Clean task with ingest's output fields
//! (`dataset`, `period`, `raw_key`, `manifest_key`, optional `max_rejected_ratio`). Checks the raw
//! object against the ingest manifest, splits its rows into `clean/` and `quarantine/` (with a
//! `reject_reason`), writes the clean report, and returns counts and a `verdict` that the state
//! machine's Choice reads (`Ok` or `TooManyRejectedRows`).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use tripflow_aws::CleanInput;
use tripflow_aws::handlers::{StageState, handle_clean};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tripflow_aws::init_tracing();
    let state = StageState::from_env().await?;
    if let Some(s3) = &state.s3 {
        tripflow_aws::shutdown::abort_uploads_on_shutdown(s3.clone()).await;
    }
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<CleanInput>| async move {
        handle_clean(state, event.payload).await
    }))
    .await
}
