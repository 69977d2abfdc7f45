//! The guacd tap, segment writer, spool import and admission gate: where sessions enter the
//! pipeline.
//!
//! - [`tap`]: the transparent Guacamole relay in front of guacd ([`run_tap`]).
//! - [`handshake`]: handshake parsing, the `args`/`connect` rewrite, `error` instructions.
//! - [`scan`]: the allocation-free instruction-boundary scanner for the live stream.
//! - [`recorder`]: what of the live stream goes into a recording, and when segments roll.
//! - [`streams`]: the per-user streams (clipboard, files, pipes, argv) left out of it.
//! - [`segment`]: segment files on disk, sealed in order on the blocking pool.
//! - [`recover`]: start-up recovery of sessions a crash left open (files cut to a frame).
//! - [`admission`]: the fail-closed gate ([`AdmissionState`]).
//! - [`sink`]: the [`RecordingSink`] contract with the queue.
//! - [`spool`]: import of recordings guacd wrote itself.
//!
//! Wiring (the daemon, in `app.rs`):
//!
//! ```text
//! let admission = Arc::new(AdmissionState::new());   // refuses until the disk watch reports
//! let ctx = TapContext::new(TapSettings::from_config(&config), admission.clone(),
//!                           sink /* Arc<dyn RecordingSink>: the queue */, clock, Some(board));
//! // on one LocalExecutor (ex: Rc<LocalExecutor<'static>>), shutdown: a channel closed at stop
//! // guacd's reachability (status, metrics) and the `args` of the configured protocols:
//! ex.spawn(watch_upstream(ctx.clone(), shutdown_rx.clone())).detach();
//! ex.spawn(async move { run_tap(ctx, listener, ex2, shutdown_rx).await });
//! // disk watch: admission.set_disk_state(state) on every sample;
//! // config/queue health: admission.set_settings_problem(..) / set_queue_problem(..);
//! // GET /api/v1/admission: admission_report(&admission) -> Ok = 200, Err(reason) = 503.
//! ```

pub mod admission;
pub mod handshake;
pub mod recorder;
pub mod recover;
pub mod scan;
pub mod segment;
pub mod sink;
pub mod spool;
pub mod stream_events;
pub mod streams;
pub mod tap;

pub use admission::{AdmissionState, Refusal, admission_report};
pub use handshake::{RECORDING_PARAMS, StatusCode};
pub use sink::{RecordingSink, SessionMeta, SessionStart, SinkError};
pub use tap::{
    RecordingFlags, TapContext, TapError, TapSettings, learn_args, run_tap, watch_upstream,
};
