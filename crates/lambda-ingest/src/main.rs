//! **tripflow-ingest.** Invoked by the state machine's Ingest task with `{"source": "s3://<bucket>/landing/…"
//! | "https://…", "expected_md5": …, "period": …}` (the trigger's execution input). Streams the source
//! into `raw/`, verifying its MD5, Parquet framing and schema, writes the ingest manifest to
//! `reports/`, and returns keys, size, MD5 and row counts. Errors come back named
//! (`ChecksumMismatch`, `NotParquet`, `TruncatedParquet`, `SchemaDrift`, `StorageUnavailable`, ...).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use tripflow_aws::IngestInput;
use tripflow_aws::handlers::{StageState, handle_ingest};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tripflow_aws::init_tracing();
    let state = StageState::from_env().await?;
    if let Some(s3) = &state.s3 {
        tripflow_aws::shutdown::abort_uploads_on_shutdown(s3.clone()).await;
    }
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<IngestInput>| async move {
        handle_ingest(state, event.payload).await
    }))
    .await
}
