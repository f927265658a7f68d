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

/// The HTTP status of a service error, if the service answered at all.
pub(crate) fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The error's code (`AccessDenied`, `NoSuchBucket`, ...), when the service sent one.
pub(crate) fn code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    match err {
        SdkError::ServiceError(service) => service.err().code().map(str::to_string),
        _ => None,
    }
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
}
