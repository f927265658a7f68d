//! One reading of AWS SDK errors for every service we call: is it worth retrying, is the thing
//! absent, or was the request refused. Each SDK crate re-exports the same smithy `SdkError`, so one
//! function serves S3, Glue, Step Functions and Secrets Manager alike.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// What an SDK error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Throttling, 5xx, timeouts, connection failures: the same call may succeed later.
    Transient,
    /// The named resource does not exist (404, `NoSuchKey`, `EntityNotFoundException`, ...).
    NotFound,
    /// Access denied, malformed request, other 4xx: retrying the same call will not help.
    Rejected,
}

/// Service error codes that mean "slow down" or "try again" whatever HTTP status carried them.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServiceError",
    "InternalServiceException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "OperationAbortedException",
];

const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchKey",
    "NotFound",
    "NoSuchUpload",
    "EntityNotFoundException",
    "ResourceNotFoundException",
];

pub(crate) fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Class {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Class::Transient,
        SdkError::ConstructionFailure(_) => Class::Rejected,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            classify_service(service.err().code(), status)
        }
        // A future kind of failure: assume it may pass, the callers' retries are bounded.
        _ => Class::Transient,
    }
}

pub(crate) fn classify_service(code: Option<&str>, status: u16) -> Class {
    if code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) || status >= 500 || status == 429 {
        Class::Transient
    } else if code.is_some_and(|c| NOT_FOUND_CODES.contains(&c)) || status == 404 {
        Class::NotFound
    } else {
        Class::Rejected
    }
}

/// Codes that mean the service refused us for who we are or where we pointed it: permissions, a
/// missing or disabled bucket, bad credentials. A deployment problem; no retry fixes it.
const REFUSED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
];

/// Whether the service refused the caller (403, or one of [`REFUSED_CODES`]).
pub(crate) fn refused<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(service) => refused_service(service.err().code(), service.raw().status().as_u16()),
        _ => false,
    }
}

pub(crate) fn refused_service(code: Option<&str>, status: u16) -> bool {
    status == 403 || code.is_some_and(|c| REFUSED_CODES.contains(&c))
}

/// Which configured wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimedOut {
    /// Opening the connection (TCP and TLS).
    Connect,
    /// Waiting for the response after the request was sent.
    Read,
    /// One whole attempt of the operation.
    Attempt,
}

impl TimedOut {
    /// What was waited for, in words, and the limit configured for it.
    pub(crate) fn limit(self, config: Option<&aws_smithy_types::timeout::TimeoutConfig>) -> (&'static str, f64) {
        let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        match self {
            TimedOut::Connect => ("connecting", secs(config.and_then(|c| c.connect_timeout()))),
            TimedOut::Read => ("waiting for an answer", secs(config.and_then(|c| c.read_timeout()))),
            TimedOut::Attempt => ("one attempt", secs(config.and_then(|c| c.operation_attempt_timeout()))),
        }
    }
}

/// Whether the SDK gave up waiting, and on what. The operation and attempt timeouts surface as
/// `TimeoutError`; the connector's connect and read timeouts as a dispatch failure whose connector
/// error is a timeout, told apart by its message (smithy says "HTTP connect timeout occurred").
pub(crate) fn timed_out<E>(err: &SdkError<E, HttpResponse>) -> Option<TimedOut>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::TimeoutError(_) => Some(TimedOut::Attempt),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            let text = DisplayErrorContext(err).to_string().to_ascii_lowercase();
            Some(if text.contains("connect timeout") {
                TimedOut::Connect
            } else {
                TimedOut::Read
            })
        }
        _ => None,
    }
}

/// The HTTP status of a service error, if the service answered at all.
pub(crate) fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// One line for logs and error messages. A service error as status, code, message and request id
/// (its full debug form repeats the raw response); anything else as its whole source chain, since
/// `SdkError`'s own `Display` says only "dispatch failure".
pub(crate) fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let meta = service.err().meta();
            let headers = service.raw().headers();
            // S3 names it x-amz-request-id, the JSON services x-amzn-RequestId.
            let request_id = headers
                .get("x-amz-request-id")
                .or_else(|| headers.get("x-amzn-requestid"));
            format!(
                "HTTP {} {}: {} (request id {})",
                service.raw().status().as_u16(),
                meta.code().unwrap_or("no error code"),
                meta.message().unwrap_or("no message"),
                request_id.unwrap_or("unknown"),
            )
        }
        other => DisplayErrorContext(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_transient_whatever_the_status() {
        assert_eq!(classify_service(Some("SlowDown"), 503), Class::Transient);
        assert_eq!(classify_service(Some("ThrottlingException"), 400), Class::Transient);
        assert_eq!(classify_service(None, 500), Class::Transient);
        assert_eq!(classify_service(None, 429), Class::Transient);
    }

    #[test]
    fn missing_objects_are_not_found_and_other_client_errors_are_rejected() {
        assert_eq!(classify_service(Some("NoSuchKey"), 404), Class::NotFound);
        assert_eq!(classify_service(None, 404), Class::NotFound);
        assert_eq!(classify_service(Some("EntityNotFoundException"), 400), Class::NotFound);
        assert_eq!(classify_service(Some("AccessDenied"), 403), Class::Rejected);
        assert_eq!(classify_service(Some("InvalidArgument"), 400), Class::Rejected);
    }

    #[test]
    fn access_denied_missing_buckets_and_403_are_refusals() {
        assert!(refused_service(Some("AccessDenied"), 403));
        assert!(refused_service(None, 403));
        assert!(refused_service(Some("NoSuchBucket"), 404));
        assert!(!refused_service(Some("NoSuchKey"), 404));
        assert!(!refused_service(Some("SlowDown"), 503));
    }
}
