//! The transient/permanent split shared by every stage's error enum.
//!
//! Each stage (parser, renderer, encoder, queue, upload, tap, HTTP) has its own typed error enum
//! in its own module; they all implement [`Classify`] so that retry decisions, session refusals
//! and the status page use the classification and never the message text.

/// Whether trying the same operation again later can succeed.
pub trait Classify {
    /// True when the cause may go away on its own (timeouts, 5xx, a full disk being cleaned,
    /// connection refused): the caller retries with backoff. False when retrying the same input
    /// can never work (corrupt recording, bad credentials, invalid settings): the caller parks
    /// the work, reports it, and only a change of input or settings can heal it.
    fn is_transient(&self) -> bool;
}

impl Classify for std::io::Error {
    fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(
            self.kind(),
            Interrupted
                | WouldBlock
                | TimedOut
                | ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | StorageFull
                | QuotaExceeded
                | ResourceBusy
                | OutOfMemory
        )
    }
}
