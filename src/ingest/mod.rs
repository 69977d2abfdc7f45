//! The guacd tap, segment writer, spool import and admission gate: where sessions enter the
//! pipeline.
//!
//! - [`tap`]: the transparent Guacamole relay in front of guacd ([`run_tap`]).
//! - [`handshake`]: handshake parsing, the `args`/`connect` rewrite, `error` instructions.
//! - [`scan`]: the allocation-free instruction-boundary scanner for the live stream.
//! - [`recorder`]: what of the live stream goes into a recording, and when segments roll.
//! - [`segment`]: segment files on disk, sealed in order on the blocking pool.
//! - [`admission`]: the fail-closed gate ([`AdmissionState`]).
//! - [`sink`]: the [`RecordingSink`] contract with the queue.
//! - [`spool`]: import of recordings guacd wrote itself.

pub mod admission;
pub mod handshake;
pub mod recorder;
pub mod scan;
pub mod segment;
pub mod sink;
pub mod spool;
pub mod tap;

pub use admission::{AdmissionState, Refusal};
pub use handshake::{RECORDING_PARAMS, StatusCode};
pub use sink::{RecordingSink, SessionMeta, SessionStart, SinkError};
pub use tap::{TapContext, TapError, TapSettings, run_tap};
