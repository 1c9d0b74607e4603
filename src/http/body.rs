//! Bodies: buffering a request body up to a limit, and the response body of
//! a service that sends some responses itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;

use super::BoxError;

/// Why a body could not be buffered.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The body, or its `Content-Length`, is above the limit.
    TooLarge,
    /// Reading the body failed.
    Read(BoxError),
}

/// Reads a whole body, failing as soon as it grows past `limit` bytes. A
/// `Content-Length` above the limit fails before any byte is read.
pub(crate) async fn collect_limited<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }

    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(err) => Err(BodyError::Read(err)),
    }
}

pin_project! {
    /// The response body of [`super::VerifyService`]: the inner service's
    /// body, or the short body of a response the layer sent itself.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Local { body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn local(body: Full<Bytes>) -> Self {
        Self {
            kind: Kind::Local { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                ))),
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Local { body } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Local { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_within_limit_collected() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let bytes = collect_limited(&HeaderMap::new(), body, 10).await.unwrap();
        assert_eq!(&bytes[..], b"0123456789");
    }

    #[tokio::test]
    async fn body_over_limit_rejected() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let result = collect_limited(&HeaderMap::new(), body, 9).await;
        assert!(matches!(result, Err(BodyError::TooLarge)), "{result:?}");
    }

    #[tokio::test]
    async fn declared_length_over_limit_rejected() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "11".parse().unwrap());
        let result = collect_limited(&headers, Full::new(Bytes::new()), 10).await;
        assert!(matches!(result, Err(BodyError::TooLarge)), "{result:?}");
    }
}
