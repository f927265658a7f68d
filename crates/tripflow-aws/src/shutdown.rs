//! Graceful shutdown of the stage functions. When Lambda shuts an execution environment down (after
//! a timeout, or when scaling in) it sends the process SIGTERM and gives it 500 ms, but only if an
//! extension is registered. So the functions register a no-op internal extension at init, through
//! the Extensions API, and on SIGTERM abort the multipart uploads still open: the parts of a file a
//! stage was writing are never visible to readers, but they would be billed until the bucket's
//! lifecycle rule removes them a day later.
//!
//! Not `lambda_runtime::spawn_graceful_shutdown_handler`: it panics when the registration fails
//! (an emulator without the Extensions API, a local stand-in for the runtime API), and a function
//! must start there too. Here a failed registration is a warning and the function runs without the
//! hook.

use std::time::Duration;

use tracing::{info, warn};

use crate::s3::S3Store;

/// The name the extension registers under (unique within a function, no file in /opt/extensions).
pub const EXTENSION_NAME: &str = "tripflow-abort-uploads-on-shutdown";
/// What the hook may spend aborting uploads, within the 500 ms Lambda allows after SIGTERM.
const ABORT_BUDGET: Duration = Duration::from_millis(400);

/// Registers the extension with the Extensions API at `runtime_api` (`host:port`, the value of
/// `AWS_LAMBDA_RUNTIME_API`) and returns its identifier.
pub async fn register(runtime_api: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .post(format!("http://{runtime_api}/2020-01-01/extension/register"))
        .header("Lambda-Extension-Name", EXTENSION_NAME)
        .body(r#"{"events":[]}"#)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the Extensions API answered {}", response.status()));
    }
    response
        .headers()
        .get("Lambda-Extension-Identifier")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| "no Lambda-Extension-Identifier in the answer".to_string())
}

/// Called at init, before the runtime loop: from then on SIGTERM aborts the store's open uploads and
/// exits. Outside Lambda (`AWS_LAMBDA_RUNTIME_API` unset) it does nothing.
pub async fn abort_uploads_on_shutdown(store: S3Store) {
    let Ok(runtime_api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let id = match register(&runtime_api).await {
        Ok(id) => id,
        Err(err) => {
            warn!(error = %err, "no graceful shutdown: the extension could not register");
            return;
        }
    };
    // An extension ends the init phase by asking for its next event. Subscribed to none, it gets
    // none: the request stays open for the life of the environment.
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let _ = client
            .get(format!("http://{runtime_api}/2020-01-01/extension/event/next"))
            .header("Lambda-Extension-Identifier", id)
            .send()
            .await;
    });
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut sigterm) = signal(SignalKind::terminate()) else {
            return;
        };
        sigterm.recv().await;
        let aborted = tokio::time::timeout(ABORT_BUDGET, store.abort_in_flight()).await;
        info!(aborted = ?aborted.ok(), "SIGTERM: open uploads aborted, shutting down");
        std::process::exit(0);
    });
}
