//! The display model, pure: layers, buffers, image streams, cursor; turns instructions into
//! frames. No I/O.
//!
//! The encoder feeds every parsed [`crate::guac::Instruction`] to [`Display::apply`]. A
//! [`Effect::Sync`] marks a frame boundary; at that point (and only if [`Display::is_dirty`])
//! it calls [`Display::flatten`] to get the composited [`Frame`]. A handler that fails returns a
//! [`RenderError`]: the caller logs it and keeps going (guacenc does the same); only the parser
//! can fail a stream. Pixels are premultiplied ARGB internally, like cairo in guacenc.
//!
//! Files: `display.rs` (the instruction handlers), `flatten.rs` (damage-tracked compositing),
//! `composite.rs` (pixel maths), `surface.rs` (rectangles of pixels), `path.rs` (vector paths),
//! `image.rs` (image streams), `layer.rs`, `mirror.rs` (deferred copies into buffers),
//! `snapshot.rs` (state carried across segments).

mod composite;
mod display;
mod flatten;
mod frame;
mod image;
mod layer;
mod mirror;
mod motion;
mod path;
mod snapshot;
mod surface;

pub use display::Display;
pub use frame::Frame;
pub use motion::Move;
pub use snapshot::DisplaySnapshot;
pub use surface::Rect;

use crate::error::Classify;
use crate::guac::DecodeError;

/// What applying one instruction means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing for the caller to do.
    None,
    /// `sync`: a frame boundary at guacd's timestamp (milliseconds, monotonic clock: use
    /// differences). Flatten here if [`Display::is_dirty`].
    Sync {
        /// guacd's timestamp.
        timestamp_ms: u64,
    },
    /// A recorded `mouse` with a timestamp: the pointer moved at this instant. guacenc renders
    /// a frame here too; the caller may treat it as a frame boundary (the pointer is part of the
    /// flattened frame) or wait for the next `sync`.
    Pointer {
        /// guacd's timestamp of the pointer event.
        timestamp_ms: u64,
    },
}

/// Why one instruction could not be applied. The display stays usable: log and continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The instruction's arguments are malformed.
    #[error("bad instruction: {0}")]
    Decode(#[from] DecodeError),
    /// A layer index beyond [`crate::limits::RENDER_LAYER_INDEX_MAX`].
    #[error("layer index {index} out of range")]
    LayerIndex {
        /// The index given.
        index: i64,
    },
    /// More layers and buffers than [`crate::limits::RENDER_LAYERS_MAX`].
    #[error("too many layers (max {max})")]
    TooManyLayers {
        /// The bound.
        max: usize,
    },
    /// A size beyond [`crate::limits::RENDER_LAYER_SIDE_PIXELS_MAX`] or negative.
    #[error("layer {index} size {width}x{height} out of range")]
    LayerSize {
        /// The layer.
        index: i32,
        /// Requested width.
        width: i64,
        /// Requested height.
        height: i64,
    },
    /// All layers together would exceed [`crate::limits::RENDER_TOTAL_PIXELS_MAX`].
    #[error("pixel budget of {max} pixels exceeded")]
    PixelBudget {
        /// The bound.
        max: u64,
    },
    /// More open streams than [`crate::limits::RENDER_STREAMS_MAX`].
    #[error("too many open streams (max {max})")]
    TooManyStreams {
        /// The bound.
        max: usize,
    },
    /// `blob`/`end` for a stream that is not open.
    #[error("unknown stream {stream}")]
    UnknownStream {
        /// The stream index.
        stream: i32,
    },
    /// A stream carries more than [`crate::limits::RENDER_STREAM_BYTES_MAX`].
    #[error("stream {stream} longer than {max_bytes} bytes")]
    StreamTooLarge {
        /// The stream index.
        stream: i32,
        /// The bound.
        max_bytes: usize,
    },
    /// A blob with characters outside base64.
    #[error("stream {stream}: blob is not base64")]
    BadBase64 {
        /// The stream index.
        stream: i32,
    },
    /// An image mimetype we cannot decode.
    #[error("stream {stream}: unsupported image type {mimetype:?}")]
    UnsupportedImage {
        /// The stream index.
        stream: i32,
        /// The mimetype (truncated).
        mimetype: String,
    },
    /// The image data does not decode (corrupt, or over the decoder limits).
    #[error("stream {stream}: image does not decode: {reason}")]
    ImageDecode {
        /// The stream index.
        stream: i32,
        /// The decoder's message.
        reason: String,
    },
    /// A path with more than [`crate::limits::RENDER_PATH_POINTS_MAX`] points.
    #[error("layer {index}: path too long")]
    PathTooLong {
        /// The layer.
        index: i32,
    },
    /// More nested `push` than [`crate::limits::RENDER_STATE_STACK_MAX`].
    #[error("layer {index}: too many nested push")]
    StateStack {
        /// The layer.
        index: i32,
    },
    /// A snapshot that cannot be restored.
    #[error("corrupt display snapshot: {reason}")]
    Snapshot {
        /// What is wrong.
        reason: String,
    },
}

impl Classify for RenderError {
    /// Rendering is deterministic: the same input fails the same way.
    fn is_transient(&self) -> bool {
        false
    }
}
