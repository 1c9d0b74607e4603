//! Verifying inbound calls: the layer, its service and future, and the
//! extractor that hands the verified caller to handlers.

mod extractor;
mod future;
mod layer;

pub use extractor::{Caller, MissingCaller};
pub use future::VerifyFuture;
pub use layer::{DEFAULT_MAX_BODY_BYTES, VerifyLayer, VerifyService};
