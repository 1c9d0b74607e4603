//! The request a token is bound to: the method and the canonical target.

use http::{Method, Uri};

use crate::envelope::{Binding, InvalidBinding};

/// Returns the binding of a request: its method, and the path and query of
/// its URI in canonical form (see [`crate::envelope::canonical_target`]).
///
/// Only the path and query count: the scheme and authority of an
/// absolute-form URI are ignored, and a URI without a path binds `/`.
///
/// ```
/// use http::{Method, Uri};
/// use trustwire::Binding;
/// use trustwire::http::request_binding;
///
/// let uri: Uri = "https://payments.internal/v1/charges?b=2&a=1".parse()?;
/// let binding = request_binding(&Method::POST, &uri)?;
/// assert_eq!(binding, Binding::http("POST", "/v1/charges?a=1&b=2")?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn request_binding(method: &Method, uri: &Uri) -> Result<Binding, InvalidBinding> {
    let target = uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    Binding::http(method.as_str(), target)
}

/// Returns the binding of a `reqwest` request from its URL.
pub(crate) fn url_binding(method: &Method, url: &url::Url) -> Result<Binding, InvalidBinding> {
    match url.query() {
        Some(query) => Binding::http(method.as_str(), &format!("{}?{query}", url.path())),
        None => Binding::http(method.as_str(), url.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_uri_binds_path_and_query() {
        let uri: Uri = "http://example.test:8080/a/%7eb?z=1&y".parse().unwrap();
        assert_eq!(
            request_binding(&Method::GET, &uri).unwrap(),
            Binding::http("GET", "/a/~b?y&z=1").unwrap()
        );
    }

    #[test]
    fn uri_without_path_binds_root() {
        let uri: Uri = "http://example.test".parse().unwrap();
        assert_eq!(
            request_binding(&Method::GET, &uri).unwrap(),
            Binding::http("GET", "/").unwrap()
        );
    }

    #[test]
    fn asterisk_form_rejected() {
        let uri: Uri = "*".parse().unwrap();
        assert!(request_binding(&Method::OPTIONS, &uri).is_err());
    }

    #[test]
    fn url_and_uri_bind_alike() {
        let url = url::Url::parse("http://example.test/v1/x?b=%2f&a").unwrap();
        let uri: Uri = url.as_str().parse().unwrap();
        assert_eq!(
            url_binding(&Method::PUT, &url).unwrap(),
            request_binding(&Method::PUT, &uri).unwrap()
        );
    }
}
