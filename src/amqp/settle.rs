//! Settling deliveries (ack, nack, reject) with a bound on how long the
//! broker client may take.

use std::future::Future;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Acker, Channel};

use super::consumer::ConsumeError;

/// Maximum wait for an acknowledgement to be sent or a dead-lettered copy
/// to be confirmed. Both take milliseconds on a working connection.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to settle a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// `basic.ack`: processed or dead-lettered.
    Ack,
    /// `basic.nack` with `requeue = true`: one more attempt.
    Requeue,
    /// `basic.reject` with `requeue = false`: to the queue's dead-letter exchange.
    DeadLetterInQueue,
}

/// Settles the delivery behind `acker` on `channel`.
///
/// Returns [`ConsumeError::ChannelClosed`] when the channel is no longer
/// open or the acknowledgement was not sent within [`SETTLE_TIMEOUT`]:
/// RabbitMQ then redelivers the message once the channel is gone.
pub(crate) async fn settle(channel: &Channel, acker: &Acker, how: Settle) -> Result<(), ConsumeError> {
    // NOTE: lapin 4.12 can leave an acknowledgement pending forever when the
    // connection failed just before it was sent, so the channel state is
    // checked first and the wait is bounded.
    if !channel.status().connected() {
        return Err(ConsumeError::ChannelClosed);
    }
    let sent = match how {
        Settle::Ack => bounded(acker.ack(BasicAckOptions::default())).await?,
        Settle::Requeue => {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            bounded(acker.nack(options)).await?
        }
        Settle::DeadLetterInQueue => bounded(acker.reject(BasicRejectOptions { requeue: false })).await?,
    };
    if !sent {
        return Err(ConsumeError::ChannelClosed);
    }
    Ok(())
}

/// Waits at most [`SETTLE_TIMEOUT`] for `operation`.
async fn bounded<T>(operation: impl Future<Output = lapin::Result<T>>) -> Result<T, ConsumeError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(
                timeout_s = SETTLE_TIMEOUT.as_secs(),
                "AMQP acknowledgement or confirm timed out"
            );
            Err(ConsumeError::ChannelClosed)
        }
    }
}
