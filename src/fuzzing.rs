//! Entry points for the fuzz targets in `fuzz/`, which cannot reach the
//! crate's private transport code. Compiled only with the `fuzzing`
//! feature. Not part of the public API: no stability promise.
//!
//! Each function runs the same checks, in the same order, as the receiver
//! named in its documentation, and returns the same rejections.

/// Header extraction of the NATS subscribers and JetStream consumers.
#[cfg(feature = "nats")]
pub mod nats {
    pub use crate::nats::fuzzing::{dead_letter_headers, plain_token, sealed_token};
}

/// Header extraction of the RabbitMQ consumers.
#[cfg(feature = "amqp")]
pub mod amqp {
    pub use crate::amqp::fuzzing::{plain_token, sealed_token};
}
