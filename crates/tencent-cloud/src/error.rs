//! Errors and their classes (tencent-vpc-api.md §2.5). Every API error carries the action,
//! the code, the message and the RequestId; no error ever carries a secret.

use crate::credentials::CredentialError;
use std::time::Duration;

/// An error returned by the API in the response envelope (always HTTP 200).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action}: {code}: {message} (RequestId {request_id})")]
pub struct ApiError {
    pub action: String,
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, internal errors, transport failures: retry with backoff.
    Retryable,
    /// Stale timestamp or credentials: refresh (re-sign, re-fetch role credentials), retry once.
    RefreshThenRetry,
    /// Our request or permissions are wrong, or a quota is full: do not retry.
    Fatal,
    /// `InvalidParameterValue.Duplicate` on create: the route may already exist; re-describe.
    Duplicate,
    /// `ResourceNotFound`: on delete it means done; on create the table is gone.
    NotFound,
    /// `UnsupportedOperation.RecordNotExists` on replace: the RouteId is stale; re-describe.
    StaleRecord,
}

/// Classify an API error code.
pub fn classify_code(code: &str) -> ErrorClass {
    let family = |f: &str| code == f || code.strip_prefix(f).is_some_and(|r| r.starts_with('.'));
    if family("RequestLimitExceeded")
        || family("InternalError")
        || family("ServiceUnavailable")
        || family("ResourceUnavailable")
    {
        ErrorClass::Retryable
    } else if matches!(
        code,
        "AuthFailure.SignatureExpire" | "AuthFailure.TokenFailure" | "AuthFailure.SecretIdNotFound"
    ) {
        ErrorClass::RefreshThenRetry
    } else if code == "InvalidParameterValue.Duplicate" {
        ErrorClass::Duplicate
    } else if family("ResourceNotFound") {
        ErrorClass::NotFound
    } else if code == "UnsupportedOperation.RecordNotExists" {
        ErrorClass::StaleRecord
    } else {
        ErrorClass::Fatal
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{action}: HTTP status {status} from {host}")]
    HttpStatus {
        action: String,
        host: String,
        status: u16,
    },
    #[error("{action}: request to {host} failed")]
    Transport {
        action: String,
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{action}: no response from {host} within {after:?}")]
    Timeout {
        action: String,
        host: String,
        after: Duration,
    },
    #[error("{action}: unexpected response: {message}{}", request_id.as_ref().map(|r| format!(" (RequestId {r})")).unwrap_or_default())]
    Decode {
        action: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("{action}")]
    Credentials {
        action: String,
        #[source]
        source: CredentialError,
    },
    #[error("{action}: cannot encode request: {message}")]
    Encode { action: String, message: String },
    #[error("building the HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Api(e) => classify_code(&e.code),
            Error::HttpStatus { .. } | Error::Transport { .. } | Error::Timeout { .. } => {
                ErrorClass::Retryable
            }
            Error::Credentials { source, .. } if source.is_transient() => ErrorClass::Retryable,
            Error::Decode { .. }
            | Error::Credentials { .. }
            | Error::Encode { .. }
            | Error::HttpClient(_) => ErrorClass::Fatal,
        }
    }

    /// The API error code, when the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(e) => Some(&e.code),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Api(e) => Some(&e.request_id),
            Error::Decode { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// True when the request certainly did not reach the API's handler, so even a
    /// non-idempotent action (CreateRoutes, DeleteRoutes) may be sent again.
    pub fn not_processed(&self) -> bool {
        match self {
            Error::Api(e) => {
                e.code.starts_with("RequestLimitExceeded") || e.code.starts_with("AuthFailure")
            }
            Error::Transport { source, .. } => source.is_connect(),
            Error::Credentials { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_research() {
        use ErrorClass::*;
        for (code, class) in [
            ("RequestLimitExceeded", Retryable),
            ("RequestLimitExceeded.UinLimitExceeded", Retryable),
            ("InternalError", Retryable),
            ("InternalError.ModuleError", Retryable),
            ("ServiceUnavailable", Retryable),
            ("ResourceUnavailable", Retryable),
            ("AuthFailure.SignatureExpire", RefreshThenRetry),
            ("AuthFailure.TokenFailure", RefreshThenRetry),
            ("AuthFailure.SignatureFailure", Fatal),
            ("AuthFailure.UnauthorizedOperation", Fatal),
            ("UnauthorizedOperation", Fatal),
            ("InvalidParameter.Coexist", Fatal),
            ("InvalidParameterValue.VpcCidrConflict", Fatal),
            ("LimitExceeded", Fatal),
            ("UnsupportedRegion", Fatal),
            ("InvalidParameterValue.Duplicate", Duplicate),
            ("ResourceNotFound", NotFound),
            ("UnsupportedOperation.RecordNotExists", StaleRecord),
            ("Something.Nobody.Documented", Fatal),
            ("InternalErrorish", Fatal),
        ] {
            assert_eq!(classify_code(code), class, "{code}");
        }
    }

    #[test]
    fn api_error_names_everything() {
        let e = ApiError {
            action: "CreateRoutes".into(),
            code: "LimitExceeded".into(),
            message: "route table rtb-1 is full (50/50)".into(),
            request_id: "req-1".into(),
        };
        assert_eq!(
            e.to_string(),
            "CreateRoutes: LimitExceeded: route table rtb-1 is full (50/50) (RequestId req-1)"
        );
    }
}
