//! A stand-in for the Lambda service in front of moto, so moto's Step Functions interpreter runs our
//! real handlers in-process (see shared/local-aws.md).
//!
//! moto's interpreter calls every service at `http://localhost:$MOTO_PORT`. Start the [`Router`]
//! first, then moto with `MOTO_PORT=<router port>`, then [`Router::set_upstream`] to moto's own
//! endpoint. The router answers `POST /2015-03-31/functions/{name-or-ARN}/invocations` like Lambda
//! does (200 + `X-Amz-Executed-Version`, `X-Amz-Function-Error: Unhandled` with
//! `{"errorType","errorMessage"}` for a handler error, 404 `ResourceNotFoundException` for an unknown
//! function, a `x-amzn-RequestId` on every answer) and proxies everything else to moto verbatim.
//! Faults can be injected per function, and every invocation and proxied call is counted.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use lambda_runtime::Diagnostic;
use serde_json::{Value, json};

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, Diagnostic>> + Send>>;
type Handler = Arc<dyn Fn(Value) -> HandlerFuture + Send + Sync>;

/// An injected failure for one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The function itself failed: 200 + `X-Amz-Function-Error: Unhandled`; Step Functions names the
    /// error after `errorType` (e.g. our retryable `StorageUnavailable`).
    Unhandled { error_type: String },
    /// The Lambda service failed: HTTP 500 `ServiceException`, which Step Functions names
    /// `Lambda.ServiceException`. (The caller's SDK may retry a 500 itself before Step Functions sees
    /// it, consuming more than one fault.)
    ServiceException,
}

impl Fault {
    pub fn unhandled(error_type: &str) -> Self {
        Fault::Unhandled {
            error_type: error_type.to_string(),
        }
    }
}

#[derive(Default)]
struct Inner {
    handlers: Mutex<HashMap<String, Handler>>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    invocations: Mutex<HashMap<String, usize>>,
    /// One entry per proxied request: its `X-Amz-Target`, or `Action=` of a query-protocol body, or
    /// `METHOD path`.
    proxied: Mutex<Vec<String>>,
    upstream: Mutex<Option<String>>,
    next_id: AtomicU64,
    client: reqwest::Client,
}

/// The router; its server task stops when this is dropped.
pub struct Router {
    port: u16,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Router {
    /// Listens on a free port of 127.0.0.1. Call [`Router::set_upstream`] before the first request
    /// that has to reach moto.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the router");
        let port = listener.local_addr().expect("router address").port();
        let inner = Arc::new(Inner::default());
        let served = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(inner.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Router { port, inner, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where everything but Lambda invocations goes (moto's own endpoint, `http://127.0.0.1:A`).
    pub fn set_upstream(&self, endpoint: &str) {
        *self.inner.upstream.lock().unwrap() = Some(endpoint.trim_end_matches('/').to_string());
    }

    /// Answers invocations of `function` (a name; ARNs resolve to their name) with `handler`.
    pub fn register<F, Fut>(&self, function: &str, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Diagnostic>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |payload| Box::pin(handler(payload)));
        self.inner
            .handlers
            .lock()
            .unwrap()
            .insert(function.to_string(), handler);
    }

    /// Makes the next `n` invocations of `function` fail with `fault` (before the handler runs).
    pub fn fail_next(&self, function: &str, n: usize, fault: Fault) {
        let mut faults = self.inner.faults.lock().unwrap();
        let queue = faults.entry(function.to_string()).or_default();
        queue.extend(std::iter::repeat_n(fault, n));
    }

    /// Invocations of `function` so far, failed ones included.
    pub fn invocations(&self, function: &str) -> usize {
        self.inner
            .invocations
            .lock()
            .unwrap()
            .get(function)
            .copied()
            .unwrap_or(0)
    }

    /// Every proxied request so far (see [`Inner::proxied`]).
    pub fn proxied(&self) -> Vec<String> {
        self.inner.proxied.lock().unwrap().clone()
    }

    /// Proxied requests whose `X-Amz-Target`/`Action` is `target` (`AWSGlue.GetCrawler`, `Publish`).
    pub fn proxied_count(&self, target: &str) -> usize {
        self.inner
            .proxied
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == target)
            .count()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The function name in an invocation path, if the path is one.
fn invoked_function(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/2015-03-31/functions/")?;
    let encoded = rest.strip_suffix("/invocations")?;
    let decoded = percent_decode(encoded);
    let name = if decoded.starts_with("arn:") {
        decoded.split(':').nth(6)?.to_string()
    } else {
        decoded.split(':').next()?.to_string()
    };
    Some(name)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn response(status: StatusCode, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    for (name, value) in headers {
        resp.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    resp
}

impl Inner {
    fn request_id(&self) -> String {
        format!("tripflow-router-{:08}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let request_id = self.request_id();
        if req.method() == hyper::Method::POST
            && let Some(function) = invoked_function(req.uri().path())
        {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return self.invoke(&function, &body, request_id).await;
        }
        self.proxy(req, request_id).await
    }

    async fn invoke(&self, function: &str, body: &[u8], request_id: String) -> Response<Full<Bytes>> {
        let id = ("x-amzn-RequestId", request_id);
        let Some(handler) = self.handlers.lock().unwrap().get(function).cloned() else {
            let body = json!({"Type": "User", "message": format!("Function not found: {function}")});
            return response(
                StatusCode::NOT_FOUND,
                &[
                    id,
                    ("x-amzn-ErrorType", "ResourceNotFoundException".into()),
                    ("content-type", "application/json".into()),
                ],
                body.to_string(),
            );
        };
        *self
            .invocations
            .lock()
            .unwrap()
            .entry(function.to_string())
            .or_default() += 1;
        let fault = self
            .faults
            .lock()
            .unwrap()
            .get_mut(function)
            .and_then(VecDeque::pop_front);
        let version = ("X-Amz-Executed-Version", "$LATEST".to_string());
        let json_type = ("content-type", "application/json".to_string());
        let unhandled = |error_type: &str, message: &str| {
            response(
                StatusCode::OK,
                &[
                    id.clone(),
                    version.clone(),
                    json_type.clone(),
                    ("X-Amz-Function-Error", "Unhandled".into()),
                ],
                json!({"errorType": error_type, "errorMessage": message}).to_string(),
            )
        };
        match fault {
            Some(Fault::Unhandled { error_type }) => return unhandled(&error_type, "injected by the test router"),
            Some(Fault::ServiceException) => {
                return response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &[
                        id.clone(),
                        json_type.clone(),
                        ("x-amzn-ErrorType", "ServiceException".into()),
                    ],
                    json!({"Type": "Service", "message": "injected by the test router"}).to_string(),
                );
            }
            None => {}
        }
        let payload: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return unhandled("InvalidPayload", &e.to_string()),
        };
        match handler(payload).await {
            Ok(out) => response(
                StatusCode::OK,
                &[id.clone(), version.clone(), json_type.clone()],
                out.to_string(),
            ),
            Err(diag) => unhandled(&diag.error_type, &diag.error_message),
        }
    }

    async fn proxy(&self, req: Request<Incoming>, request_id: String) -> Response<Full<Bytes>> {
        let upstream = self.upstream.lock().unwrap().clone();
        let Some(upstream) = upstream else {
            return response(
                StatusCode::BAD_GATEWAY,
                &[("x-amzn-RequestId", request_id)],
                "router has no upstream",
            );
        };
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let label = match parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            Some(target) => target.to_string(),
            None => std::str::from_utf8(&body)
                .ok()
                .and_then(|b| b.split('&').find_map(|kv| kv.strip_prefix("Action=")))
                .map(str::to_string)
                .unwrap_or_else(|| format!("{} {}", parts.method, parts.uri.path())),
        };
        self.proxied.lock().unwrap().push(label);
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut headers = parts.headers.clone();
        for hop in ["host", "connection", "transfer-encoding", "content-length"] {
            headers.remove(hop);
        }
        let sent = self
            .client
            .request(parts.method.clone(), format!("{upstream}{path}"))
            .headers(headers)
            .body(body)
            .send()
            .await;
        let upstream_resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return response(
                    StatusCode::BAD_GATEWAY,
                    &[("x-amzn-RequestId", request_id)],
                    format!("proxy: {e}"),
                );
            }
        };
        let status = upstream_resp.status();
        let mut resp_headers = upstream_resp.headers().clone();
        let bytes = upstream_resp.bytes().await.unwrap_or_default();
        for hop in ["connection", "transfer-encoding", "content-length"] {
            resp_headers.remove(hop);
        }
        if !resp_headers.contains_key("x-amzn-requestid") {
            resp_headers.insert(
                "x-amzn-RequestId",
                HeaderValue::from_str(&request_id).expect("request id"),
            );
        }
        let mut resp = Response::new(Full::new(bytes));
        *resp.status_mut() = status;
        *resp.headers_mut() = resp_headers;
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_paths_name_the_function_whether_by_name_or_arn() {
        assert_eq!(
            invoked_function("/2015-03-31/functions/tripflow-ingest/invocations").as_deref(),
            Some("tripflow-ingest")
        );
        assert_eq!(
            invoked_function("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Atripflow-load/invocations")
                .as_deref(),
            Some("tripflow-load")
        );
        assert_eq!(
            invoked_function("/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:tripflow-clean:$LATEST/invocations")
                .as_deref(),
            Some("tripflow-clean")
        );
        assert_eq!(invoked_function("/2015-03-31/functions/x"), None);
        assert_eq!(invoked_function("/"), None);
    }
}
