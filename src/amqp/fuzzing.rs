//! The header checks of this transport's consumers, for `crate::fuzzing`.

use lapin::BasicProperties;

use super::headers::token_from;
use super::sealed::{reject_sealed, require_sealed};
use crate::envelope::Rejection;

/// Reads the token the way a plain `VerifyingConsumer` does: the
/// `trustwire-token` header must be one UTF-8 long string (`malformed`
/// otherwise), then a sealed delivery is `wrong_type`. The consumer checks
/// the exchange and routing key between the two, which this skips.
pub fn plain_token(properties: &BasicProperties) -> Result<&str, Rejection> {
    let token = token_from(properties)?;
    reject_sealed(properties)?;
    Ok(token)
}

/// Reads the token the way `VerifyingConsumer::opening` does: the same
/// token check, then a plain delivery (no marker) is `wrong_type`.
pub fn sealed_token(properties: &BasicProperties) -> Result<&str, Rejection> {
    let token = token_from(properties)?;
    require_sealed(properties)?;
    Ok(token)
}
