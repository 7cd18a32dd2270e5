//! Reading request bodies: size limits, content types, and JSON with errors that name the field.
//!
//! Bodies are parsed in two steps so that every refusal says where: first the
//! syntax (a malformed body is a 400), then each object into its typed form
//! with `serde_path_to_error` (an unknown field is a 400, a wrong type a 422,
//! both naming the element and field).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};

/// Reads a body of at most `limit` bytes; a longer one is a 413.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::too_large(format!(
            "the body is larger than the limit of {limit} bytes (--max-body)"
        ))
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum reports http-body-util's LengthLimitError ("length limit exceeded").
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cause {
            if c.to_string().contains("length limit exceeded") {
                return too_large();
            }
            cause = c.source();
        }
        ApiError::malformed(format!("could not read the body: {e}"))
    })
}

/// The media type of the request (without parameters), lowercased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Refuses a request whose content type is not JSON (415).
pub fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    match media_type(headers).as_deref() {
        Some("application/json") => Ok(()),
        Some(other) => Err(ApiError::unsupported_media(format!(
            "content type '{other}' is not accepted here; send application/json"
        ))),
        None => Err(ApiError::unsupported_media("no Content-Type; send application/json")),
    }
}

/// Parses JSON syntax (400 if malformed).
pub fn parse_json(bytes: &[u8]) -> ApiResult<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))
}

/// Deserialises one object; `place` names it in errors (`observations[3]`, `body`, `line 7`).
pub fn typed<T: DeserializeOwned>(value: serde_json::Value, place: &str) -> ApiResult<T> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let at = if path == "." || path.is_empty() {
            place.to_string()
        } else {
            format!("{place}.{path}")
        };
        if inner.starts_with("unknown field") {
            ApiError::unknown_field(format!("{at}: {inner}"))
        } else {
            ApiError::invalid(format!("{at}: {inner}"))
        }
    })
}

/// Parses a whole body straight into `T` (no intermediate JSON tree); `place` prefixes
/// the path in errors (`observations` + `[3].duration_s`). Malformed JSON is a 400, an
/// unknown field a 400, any other mismatch a 422.
pub fn typed_body<T: DeserializeOwned>(bytes: &[u8], place: &str) -> ApiResult<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = match path.as_str() {
            "." | "" => place.to_string(),
            p if p.starts_with('[') => format!("{place}{p}"),
            p => format!("{place}.{p}"),
        };
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ApiError::malformed(format!("the body is not valid JSON: {message}")),
            serde_json::error::Category::Data if message.starts_with("unknown field") => {
                ApiError::unknown_field(format!("{at}: {message}"))
            }
            serde_json::error::Category::Data => ApiError::invalid(format!("{at}: {message}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// Parses an RFC 3339 time (`2026-11-30T08:15:00Z`).
pub fn parse_time(text: &str, place: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(format!(
                "{place}: '{text}' is not an RFC 3339 time such as 2026-11-30T08:15:00Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        duration_s: i64,
        mac: String,
    }

    #[test]
    fn errors_name_the_place_and_field() {
        let err = typed::<Sample>(serde_json::json!({"duration_s": "x", "mac": "m"}), "observations[2]").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let err = typed::<Sample>(serde_json::json!({"duration_s": 1, "mac": "m", "name": "Bob"}), "body").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(parse_json(b"[{").is_err());
        assert!(parse_time("yesterday", "x").is_err());
        assert_eq!(
            parse_time("2026-11-30T08:15:00+01:00", "x").unwrap().to_rfc3339(),
            "2026-11-30T07:15:00+00:00"
        );
    }
}
