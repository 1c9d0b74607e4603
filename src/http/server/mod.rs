//! Verifying inbound calls: the layer, its service and future, and the
//! extractor that hands the verified caller to handlers; and the layer that
//! opens sealed request bodies.

mod extractor;
mod future;
mod layer;
mod open;

pub use extractor::{Caller, MissingCaller};
pub use future::VerifyFuture;
pub use layer::{DEFAULT_MAX_BODY_BYTES, VerifyLayer, VerifyService};
pub use open::{OpenLayer, OpenService};
