//! Object stores, upload locations, retries and retention.
