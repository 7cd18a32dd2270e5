//! The REST error: every refusal is an RFC 9457 problem (`application/problem+json`:
//! `type`, `title`, `status`, `detail`, and Proxima's stable `error` code).
//!
//! Handlers return [`ApiError`]; this is the one place where errors become HTTP
//! responses, so codes and shapes cannot drift between routes.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response: an RFC 9457 problem details object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The problem type, a URI naming the code: `urn:proxima:problem:<error>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The status's reason phrase (`Unprocessable Entity`, …).
    pub title: &'static str,
    /// The HTTP status code, as sent.
    pub status: u16,
    /// What was wrong and where: which field, which element, why.
    pub detail: String,
    /// A stable, machine-readable code (`malformed_json`, `invalid_field`, …).
    pub error: &'static str,
}

/// The media type of error bodies (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A refused request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<Duration>,
    /// The check that refused, for the audit record (default: by status).
    rule: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            rule: None,
        }
    }

    /// The same refusal, naming the check that made it in its audit record.
    pub fn with_rule(self, rule: &'static str) -> Self {
        Self {
            rule: Some(rule),
            ..self
        }
    }

    /// The check that refused, if the refusal named one.
    pub fn rule(&self) -> Option<&'static str> {
        self.rule
    }

    /// 400: the body is not JSON (or not NDJSON / Arrow IPC).
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_body", detail)
    }

    /// 400: a field the API does not define.
    pub fn unknown_field(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unknown_field", detail)
    }

    /// 422: well-formed, but a value is wrong (type, format, range).
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
    }

    /// 422: an idempotency key used before with another body.
    pub fn key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency-Key: this key was used within 24 h with another body; use a new key for a new request",
        )
    }

    /// 401: no credentials, or credentials that are not valid.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: authenticated, but the role may not call the route.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 405: the route exists, not with this method.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail)
    }

    /// 409: conflicts with what is stored (a MAC registered twice, a revoked device).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 413: body or batch larger than the server accepts.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", detail)
    }

    /// 415: a content type the route does not take.
    pub fn unsupported_media(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail)
    }

    /// 429: the caller is over its rate limit; retry after `wait`.
    pub fn rate_limited(wait: Duration, from: &str) -> Self {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        Self {
            retry_after: Some(Duration::from_secs(seconds)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests from {from}; retry after {seconds} s"),
            )
        }
    }

    /// 503: the server cannot take the request now (not ready, shutting down).
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// 503 with `Retry-After`: the server cannot take the request for a while.
    pub fn unavailable_for(detail: impl Into<String>, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::unavailable(detail)
        }
    }

    /// 503 with `Retry-After: 1`: a bounded resource is busy; the client should come back.
    pub fn busy(detail: impl Into<String>) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::unavailable(detail)
        }
    }

    /// A login refused before its password was checked: 429 (too many attempts) or 503
    /// (every hash slot busy), with Retry-After either way.
    pub fn login_refused(refused: &proxima_engine::login::LoginRefused) -> Self {
        let (status, code) = match refused {
            proxima_engine::login::LoginRefused::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            proxima_engine::login::LoginRefused::Busy => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        Self {
            retry_after: Some(refused.retry_after()),
            ..Self::new(status, code, refused.to_string())
        }
    }

    /// 500: a failure of the server, logged with its cause; the client sees no internals.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(target: "proxima::http", %error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}; nothing of this request was acknowledged"),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What was wrong, as the client reads it.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            problem_type: format!("urn:proxima:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: self.detail,
            error: self.code,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&wait.as_secs().to_string()).expect("digits are a valid header"),
            );
        }
        response
    }
}

/// Result alias of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
