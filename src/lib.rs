//! session-recorder: records Guacamole sessions at the connection proxy and turns them into
//! H.264 MP4 clips in S3-compatible storage.
//!
//! The module tree is the pipeline, in the order data flows through it:
//!
//! - [`ingest`]: the Guacamole tap in front of guacd, the rolling segment writer, the spool
//!   import of recordings guacd wrote itself, and the admission gate that refuses sessions that
//!   cannot be recorded.
//! - [`queue`]: the durable LMDB queue (heed + postcard). LMDB transactions never leave it; the
//!   history role's own index (`fleet::index`) is the one other LMDB environment.
//! - [`encode`]: segment -> H.264 MP4 clip + JPEG thumbnail, on pinned encoder threads.
//! - [`upload`]: object stores (embedded local directory, S3 through the minio crate), location
//!   templates, retries and retention.
//! - [`manifest`]: the manifests owed in the queue -> signed fleet manifests and per-session
//!   manifests in the bucket, beside the clips.
//! - [`fleet`]: the history role that indexes the signed manifests of a whole fleet of
//!   appliances.
//! - [`serve`]: the HTTP(S) status page, session history, playback, downloads and audit log.
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
pub mod manifest;
pub mod ocr;
pub mod queue;
pub mod render;
pub mod search;
pub mod secret;
pub mod serve;
pub mod status;
pub mod upload;
