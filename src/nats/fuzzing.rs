//! The header checks of this transport's receivers, for `crate::fuzzing`.

use async_nats::HeaderMap;

use crate::envelope::Rejection;

/// Reads the token the way `VerifyingSubscriber` and the JetStream
/// `VerifyingConsumer` do: a sealed message is `wrong_type`, and a missing
/// or repeated `Trustwire-Token` header is `malformed`.
pub fn plain_token(headers: Option<&HeaderMap>) -> Result<&str, Rejection> {
    super::sealed::plain_token(headers)
}

/// Reads the token the way `OpeningSubscriber` and the JetStream
/// `OpeningConsumer` do: a plain message is `wrong_type`, and a missing or
/// repeated `Trustwire-Token` header is `malformed`.
pub fn sealed_token(headers: Option<&HeaderMap>) -> Result<&str, Rejection> {
    super::sealed::sealed_token(headers)
}

/// Builds the headers of the dead-lettered copy of a message whose headers
/// were `original`, rejected with reason code `code`, as the subscribers
/// do before they publish the copy to the dead-letter subject.
pub fn dead_letter_headers(original: Option<&HeaderMap>, code: &str, subject: &str) -> HeaderMap {
    super::headers::dead_letter_headers(
        original,
        code,
        &[(super::headers::ORIGINAL_SUBJECT_HEADER, subject.to_owned())],
    )
}
