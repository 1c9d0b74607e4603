//! The responses that the layer and the gateway send themselves: terse
//! status, challenge and reason code, with the detail left to the logs.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::envelope::Rejection;

/// Reason code of a request that carries no token or credential.
pub(crate) const MISSING_TOKEN: &str = "missing_token";

/// Reason code of a request whose target cannot be canonicalised.
pub(crate) const INVALID_TARGET: &str = "invalid_target";

/// Reason code of a body above the size limit.
pub(crate) const BODY_TOO_LARGE: &str = "body_too_large";

/// Reason code of a body that could not be read.
pub(crate) const BODY_UNREADABLE: &str = "body_unreadable";

/// Builds the response to a rejected token: 403 for a policy denial, 401
/// with `WWW-Authenticate: Bearer error="invalid_token"` for everything else.
/// With `detailed`, the body also carries the rejection's detail.
pub(crate) fn rejection(rejection: &Rejection, detailed: bool) -> Response<Full<Bytes>> {
    let body = if detailed {
        format!("{}: {}\n", rejection.code(), rejection.detail())
    } else {
        format!("{}\n", rejection.code())
    };

    if rejection.reason().is_policy_denial() {
        return forbidden(rejection.code(), body);
    }
    unauthorized(rejection.code(), body)
}

/// Builds a 401 with `error="invalid_token"` and the reason code as the description.
pub(crate) fn invalid_token(code: &'static str) -> Response<Full<Bytes>> {
    unauthorized(code, format!("{code}\n"))
}

/// Builds a 401 whose challenge has no error code, as RFC 6750 section 3.1
/// recommends when the request carries no credential at all. The body is `code`.
pub(crate) fn missing_credential(code: &str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::UNAUTHORIZED, format!("{code}\n"));
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Builds a 403 with `error="insufficient_scope"` and the reason code.
pub(crate) fn forbidden(code: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::FORBIDDEN, body);
    insert_challenge(&mut response, "insufficient_scope", code);
    response
}

/// Builds a 413 for a body above the limit.
pub(crate) fn too_large() -> Response<Full<Bytes>> {
    text(StatusCode::PAYLOAD_TOO_LARGE, format!("{BODY_TOO_LARGE}\n"))
}

/// Builds a 400 with a reason code.
pub(crate) fn bad_request(code: &'static str) -> Response<Full<Bytes>> {
    text(StatusCode::BAD_REQUEST, format!("{code}\n"))
}

fn unauthorized(code: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::UNAUTHORIZED, body);
    insert_challenge(&mut response, "invalid_token", code);
    response
}

/// Reason codes are fixed lowercase words, so they need no quoting rules.
fn insert_challenge(response: &mut Response<Full<Bytes>>, error: &str, code: &str) {
    let challenge = format!("Bearer error=\"{error}\", error_description=\"{code}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
