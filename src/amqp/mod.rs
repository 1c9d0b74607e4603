//! RabbitMQ transport: signing publishers and verifying consumers.
