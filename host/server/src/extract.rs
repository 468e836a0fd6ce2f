//! Request extractors whose rejections are [`ApiError`]s: a request the API
//! cannot read gets a JSON answer naming the field, parameter or part at
//! fault, worked out from where deserializing stopped (not from serde's text).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A JSON object body, deserialized into `T`. An empty body reads as `{}`, so
/// a request whose fields all have defaults may be sent without one. Anything
/// but an object is refused (400, field `body`); a value that does not fit
/// names its field (`"field": "variables.region"`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(body) = RawBody::from_request(request, state).await?;
        json_object(&body).map(JsonBody)
    }
}

/// Parse `body` as one JSON object into `T` (empty: `{}`).
fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("body", format!("the request body is not JSON: {e}"))
        })?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "body",
            format!(
                "the request body must be a JSON object, not {}",
                json_kind(&value)
            ),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = at_fault(e.path(), "body");
        ApiError::bad_request(&field, format!("`{field}`: {}", e.inner()))
    })
}

/// The kind of a JSON value, with its article, for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where deserializing stopped, or `whole` when it stopped at the top.
fn at_fault(path: &serde_path_to_error::Path, whole: &str) -> String {
    match path.iter().next() {
        None => whole.to_string(),
        Some(_) => path.to_string(),
    }
}

/// The query string, deserialized into `T`. A parameter that does not fit
/// (`?limit=lots`, `?offset=-1`) or is unknown names itself in the 400.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs = form_urlencoded::parse(query.as_bytes());
        serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs))
            .map(QueryParams)
            .map_err(|e| {
                let parameter = at_fault(e.path(), "query");
                ApiError::bad_request(
                    &parameter,
                    format!("query parameter `{parameter}`: {}", e.inner()),
                )
            })
    }
}

/// The request body's bytes. A body above the route's limit is a JSON 413
/// (the `read_body` middleware usually refuses it first, with the limit).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this route's limit",
                ),
                status => ApiError::new(status, rejection.body_text()).field("body"),
            })
    }
}

/// Parameters of the URL path (`/pipelines/{name}`), as axum's `Path` reads
/// them; one that cannot be read (not UTF-8 once decoded) is a JSON 400.
pub struct UrlPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for UrlPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| UrlPath(value))
            .map_err(|rejection| {
                ApiError::new(rejection.status(), rejection.body_text()).field("path")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        variables: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        count: Option<u32>,
    }

    /// The status, field and message of a refused body.
    fn refused(body: &str) -> (StatusCode, String, String) {
        let error = json_object::<Sample>(body.as_bytes()).unwrap_err();
        let (status, body) = (error.status, *error.body);
        (status, body.field.unwrap(), body.error)
    }

    #[test]
    fn an_empty_body_reads_as_an_empty_object() {
        let request: Sample = json_object(b" \n").unwrap();
        assert!(request.variables.is_empty() && request.count.is_none());
        let request: Sample = json_object(br#"{"count": 3}"#).unwrap();
        assert_eq!(request.count, Some(3));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        for (body, kind) in [
            ("[]", "an array"),
            ("null", "null"),
            ("5", "a number"),
            (r#""x""#, "a string"),
        ] {
            let (status, field, message) = refused(body);
            assert_eq!((status, field.as_str()), (StatusCode::BAD_REQUEST, "body"));
            assert!(message.ends_with(&format!("not {kind}")), "{message}");
        }
        let (_, field, message) = refused("{");
        assert_eq!(field, "body");
        assert!(message.contains("not JSON"), "{message}");
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_field() {
        let (_, field, message) = refused(r#"{"variables": {"region": 5}}"#);
        assert_eq!(field, "variables.region");
        assert!(message.contains("invalid type"), "{message}");
        assert_eq!(refused(r#"{"variables": 5}"#).1, "variables");
        assert_eq!(refused(r#"{"count": -1}"#).1, "count");
        let (_, field, message) = refused(r#"{"colour": "red"}"#);
        assert_eq!(field, "colour");
        assert!(message.contains("unknown field"), "{message}");
    }
}
