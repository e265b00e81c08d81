//! Small `application/problem+json` (RFC 9457) answers for everything the proxy refuses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::ProxyBody;

/// Builds a problem response. `extra` fields are merged into the JSON object.
pub fn problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    request_id: &str,
    extra: Option<serde_json::Value>,
) -> Response<ProxyBody> {
    let mut body = serde_json::json!({
        "type": format!("https://ordo.dev/problems/{}", status.as_u16()),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "requestId": request_id,
    });
    if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (extra, body.as_object_mut()) {
        obj.extend(extra);
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(super::headers::X_REQUEST_ID, v);
    }
    resp
}
