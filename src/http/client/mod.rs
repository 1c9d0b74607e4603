//! Signing outbound calls: the request signer, its reqwest extension and its
//! tower layer for hyper clients; and the sealer of request bodies.

mod layer;
mod reqwest_ext;
mod sealer;
mod signer;

pub use layer::{HyperClient, SignFuture, SignLayer, SignService};
pub use reqwest_ext::RequestBuilderExt;
pub use sealer::{RequestSealer, SealRequestBuilderExt, SealRequestError};
pub use signer::{RequestSigner, SignRequestError};
