//! Signing outbound calls: the request signer, its reqwest extension and its
//! tower layer for hyper clients.

mod layer;
mod reqwest_ext;
mod signer;

pub use layer::{HyperClient, SignFuture, SignLayer, SignService};
pub use reqwest_ext::RequestBuilderExt;
pub use signer::{RequestSigner, SignRequestError};
