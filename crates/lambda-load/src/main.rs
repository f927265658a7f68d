//! **tripflow-load.** Invoked by the state machine's Load task with `dataset`, `period` and the
//! transform `manifest_key`. Optionally checks the Glue curated table against the curated schema
//! (`SchemaDrift`), then loads the curated rows into PostgreSQL as a new version of the source and
//! swaps it in (the previous version kept, detached), and returns the loaded and replaced counts. The connection (from
//! `DATABASE_URL` or the Secrets Manager secret) is opened at init and reopened when it was closed.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use tripflow_aws::LoadInput;
use tripflow_aws::handlers::{LoadState, handle_load};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tripflow_aws::init_tracing();
    let state = LoadState::from_env().await?;
    if let Some(s3) = &state.stage.s3 {
        tripflow_aws::shutdown::abort_uploads_on_shutdown(s3.clone()).await;
    }
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<LoadInput>| async move {
        handle_load(state, event.payload).await
    }))
    .await
}
