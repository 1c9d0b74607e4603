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

/// How often a pending acknowledgement checks whether its channel closed.
const CHANNEL_POLL_INTERVAL: Duration = Duration::from_millis(50);

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
/// open, or the acknowledgement was not sent before the channel closed or
/// within [`SETTLE_TIMEOUT`]. RabbitMQ then redelivers the message once the
/// channel is gone.
pub(crate) async fn settle(channel: &Channel, acker: &Acker, how: Settle) -> Result<(), ConsumeError> {
    if !channel.status().connected() {
        return Err(ConsumeError::ChannelClosed);
    }
    let sent = match how {
        Settle::Ack => bounded(channel, acker.ack(BasicAckOptions::default())).await?,
        Settle::Requeue => {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            bounded(channel, acker.nack(options)).await?
        }
        Settle::DeadLetterInQueue => bounded(channel, acker.reject(BasicRejectOptions { requeue: false })).await?,
    };
    if !sent {
        return Err(ConsumeError::ChannelClosed);
    }
    Ok(())
}

/// Waits for `operation` until it completes, `channel` stops being open, or
/// [`SETTLE_TIMEOUT`] passes.
async fn bounded<T>(channel: &Channel, operation: impl Future<Output = lapin::Result<T>>) -> Result<T, ConsumeError> {
    match wait_while_open(channel, operation).await {
        Waited::Done(result) => Ok(result?),
        Waited::ChannelGone => Err(ConsumeError::ChannelClosed),
        Waited::TimedOut => {
            tracing::warn!(timeout_s = SETTLE_TIMEOUT.as_secs(), "AMQP acknowledgement timed out");
            Err(ConsumeError::ChannelClosed)
        }
    }
}

/// The outcome of [`wait_while_open`].
pub(crate) enum Waited<T> {
    /// The operation completed.
    Done(lapin::Result<T>),
    /// The channel stopped being open first.
    ChannelGone,
    /// [`SETTLE_TIMEOUT`] passed first.
    TimedOut,
}

/// Waits for `operation` until it completes, `channel` stops being open, or
/// [`SETTLE_TIMEOUT`] passes.
///
/// NOTE: lapin 4.12 leaves an acknowledgement pending forever when the
/// connection failed just before it was sent (seen when the TCP connection
/// is cut), so the wait cannot rely on the operation failing by itself.
pub(crate) async fn wait_while_open<T>(
    channel: &Channel,
    operation: impl Future<Output = lapin::Result<T>>,
) -> Waited<T> {
    let channel_gone = async {
        while channel.status().connected() {
            tokio::time::sleep(CHANNEL_POLL_INTERVAL).await;
        }
    };
    tokio::select! {
        result = operation => Waited::Done(result),
        () = channel_gone => Waited::ChannelGone,
        () = tokio::time::sleep(SETTLE_TIMEOUT) => Waited::TimedOut,
    }
}
