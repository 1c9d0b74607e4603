//! NATS transport: signing publishers and verifying subscribers.
