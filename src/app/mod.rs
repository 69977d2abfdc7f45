//! Wiring of the daemon: builds the context, recovers the queue, starts executors, encoders,
//! uploaders and the HTTP server; handles shutdown.

pub mod lifecycle;
pub mod logger;
