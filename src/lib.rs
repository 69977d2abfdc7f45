//! session-recorder: records Guacamole sessions at the connection proxy and turns them into
//! H.264 MP4 clips in S3-compatible storage.
//!
//! The module tree is the pipeline, in the order data flows through it:
//!
//! - [`ingest`]: the Guacamole tap in front of guacd, the rolling segment writer, the spool
//!   import of recordings guacd wrote itself, and the admission gate that refuses sessions that
//!   cannot be recorded.
//! - [`queue`]: the durable LMDB queue (heed + postcard). The only module that touches LMDB.
//! - [`encode`]: segment -> H.264 MP4 clip + JPEG thumbnail, on pinned encoder threads.
//! - [`upload`]: object stores (embedded local directory, S3 through the minio crate), location
//!   templates, retries and retention.
//! - [`serve`]: the HTTP(S) status page, session history, playback, downloads and audit log.
//! - [`fleet`]: signed per-session manifests in the shared bucket, and the history role that
//!   indexes them for a whole fleet of appliances.
//!
//! Three pure modules do no I/O at all: [`guac`] (the protocol: parser and typed instructions),
//! [`render`] (the display model that turns instructions into frames) and [`events`] (what was
//! typed, copied, transferred and shown, and the stored events object of a clip).
//!
//! Cross-cutting pieces: [`config`] (validated settings), [`config_edit`] (the settings page's
//! comment-keeping, atomic edits of the config file, the one source of truth), [`limits`]
//! (every bound as a named
//! constant), [`clock`] and [`disk`] (behind traits so tests can simulate time and free space),
//! [`status`] (the snapshot board workers publish to and the HTTP side reads), [`lifecycle`]
//! (the shutdown signal and watchdog heartbeats every loop takes), [`durable`] (temp + fsync +
//! rename writes), and [`app`] (builds the context and wires the daemon together; nothing below
//! it imports from it).

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod app;
pub mod clock;
pub mod config;
pub mod config_edit;
pub mod disk;
pub mod doctor;
pub mod durable;
pub mod encode;
pub mod error;
pub mod events;
pub mod fleet;
pub mod guac;
pub mod ingest;
pub mod lifecycle;
pub mod limits;
pub mod ocr;
pub mod queue;
pub mod render;
pub mod serve;
pub mod status;
pub mod upload;
