//! Signing `reqwest` requests.

use reqwest::{Request, RequestBuilder};

use super::signer::{RequestSigner, SignRequestError};
use crate::http::target::url_binding;

impl RequestSigner {
    /// Signs a built `reqwest` request in place, replacing any token header
    /// it already has.
    ///
    /// The body must be bytes, as `.body(..)` sets it from bytes or a string.
    /// `.json(..)` and `.form(..)` also set bytes, where those reqwest
    /// features are on. A streaming body fails with
    /// [`SignRequestError::StreamingBody`].
    pub fn sign_reqwest(&self, request: &mut Request) -> Result<(), SignRequestError> {
        let binding = url_binding(request.method(), request.url())?;
        let body = match request.body() {
            None => &[][..],
            Some(body) => body.as_bytes().ok_or(SignRequestError::StreamingBody)?,
        };
        let value = self.header_value(binding, body)?;
        request.headers_mut().insert(self.header_name().clone(), value);
        Ok(())
    }
}

/// Signing for `reqwest::RequestBuilder`. Call it last, after the body and
/// query are set, because the token binds them.
pub trait RequestBuilderExt: Sized {
    /// Builds the request, signs it with `signer` and returns a builder
    /// ready to `send`.
    fn sign_with(self, signer: &RequestSigner) -> Result<RequestBuilder, SignRequestError>;
}

impl RequestBuilderExt for RequestBuilder {
    fn sign_with(self, signer: &RequestSigner) -> Result<RequestBuilder, SignRequestError> {
        let (client, request) = self.build_split();
        let mut request = request.map_err(SignRequestError::Request)?;
        signer.sign_reqwest(&mut request)?;
        Ok(RequestBuilder::from_parts(client, request))
    }
}
