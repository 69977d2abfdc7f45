//! Every bound in the program as a named constant, grouped by the stage that enforces it, with
//! compile-time assertions between related limits. Names carry their unit last.

// ---- guac: protocol parser ----

/// Longest element value, in Unicode code points. guacd's blobs are at most 8064 characters;
/// clipboard, `args` and file-name elements stay far below this.
pub const GUAC_ELEMENT_CHARS_MAX: usize = 1 << 20;
/// Most elements (opcode included) in one instruction.
pub const GUAC_ELEMENTS_MAX: usize = 1024;
/// Longest instruction on the wire, in bytes (UTF-8 uses at most 4 bytes per code point).
pub const GUAC_INSTRUCTION_BYTES_MAX: usize = 4 * GUAC_ELEMENT_CHARS_MAX + 64 * 1024;

const _: () = assert!(GUAC_INSTRUCTION_BYTES_MAX >= 4 * GUAC_ELEMENT_CHARS_MAX);
const _: () = assert!(GUAC_ELEMENT_CHARS_MAX >= 8064, "guacd blobs must fit");

// ---- render: display model ----

/// Largest layer or buffer index magnitude accepted (`|index| <= this`); guacd allocates small
/// indices from pools.
pub const RENDER_LAYER_INDEX_MAX: i32 = 65_536;
/// Most layers plus buffers allocated at the same time.
pub const RENDER_LAYERS_MAX: usize = 4096;
/// Largest width or height of a layer, buffer or image, in pixels (8K displays fit).
pub const RENDER_LAYER_SIDE_PIXELS_MAX: u32 = 8192;
/// Total pixels over all layers, buffers and the cursor (4 bytes each): 512 MiB, so a hostile
/// stream cannot make an encoder worker take more than that (plus one frame).
pub const RENDER_TOTAL_PIXELS_MAX: u64 = 128 * 1024 * 1024;
/// Most image streams open at the same time.
pub const RENDER_STREAMS_MAX: usize = 256;
/// Most decoded (binary) bytes one image stream may carry.
pub const RENDER_STREAM_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most bytes an image decoder may allocate for one image.
pub const RENDER_DECODE_ALLOC_BYTES_MAX: u64 = 384 * 1024 * 1024;
/// Most points in one layer's path (after flattening arcs and curves).
pub const RENDER_PATH_POINTS_MAX: usize = 1 << 16;
/// Deepest `push` stack of drawing states per layer.
pub const RENDER_STATE_STACK_MAX: usize = 64;
/// Deepest layer nesting honoured when flattening (deeper or cyclic parents are not drawn).
pub const RENDER_LAYER_DEPTH_MAX: usize = 32;

const _: () = assert!(
    (RENDER_LAYER_SIDE_PIXELS_MAX as u64) * (RENDER_LAYER_SIDE_PIXELS_MAX as u64)
        <= RENDER_TOTAL_PIXELS_MAX,
    "one maximal layer must fit the pixel budget"
);
const _: () = assert!(RENDER_STREAM_BYTES_MAX as u64 <= RENDER_DECODE_ALLOC_BYTES_MAX);

// ---- encode ----

/// Smallest output width or height in pixels (x264 needs at least one macroblock).
pub const VIDEO_SIDE_MIN_PX: u32 = 16;
/// Largest output width in pixels (H.264 level 5.1 frame size, 4096x2304).
pub const VIDEO_WIDTH_MAX_PX: u32 = 4096;
/// Largest output height in pixels.
pub const VIDEO_HEIGHT_MAX_PX: u32 = 2304;
/// Lowest frame (tick) rate.
pub const VIDEO_FPS_MIN: u32 = 1;
/// Highest frame (tick) rate.
pub const VIDEO_FPS_MAX: u32 = 60;
/// Lowest accepted bitrate cap in bits per second.
pub const VIDEO_BITRATE_MIN_BPS: u64 = 100_000;
/// Highest accepted bitrate cap in bits per second.
pub const VIDEO_BITRATE_MAX_BPS: u64 = 50_000_000;
/// Longest stretch of video time without an IDR frame (seeking granularity).
pub const VIDEO_KEYFRAME_INTERVAL_MAX_MS: u64 = 5_000;
/// x264 CRF range accepted in settings (0 is lossless, 51 the worst).
pub const VIDEO_CRF_MIN: f32 = 0.0;
/// See [`VIDEO_CRF_MIN`].
pub const VIDEO_CRF_MAX: f32 = 51.0;
/// Encoder threads per clip, at most.
pub const VIDEO_THREADS_MAX: u32 = 16;
/// A frame encoded at this average quantiser or above was starved by the bitrate cap: if the
/// screen then stays still, the same picture is encoded again to refine it.
pub const VIDEO_REFINE_QP_MIN: i32 = 32;
/// Delay before such a refinement, in ms of video (the VBV buffer refills in one second).
pub const VIDEO_REFINE_DELAY_MS: u64 = 1_000;
/// Refinements at most after one change of the screen.
pub const VIDEO_REFINES_MAX: u32 = 3;
/// Thumbnail width at most, in pixels.
pub const THUMB_WIDTH_MAX_PX: u32 = 320;
/// Samples the faststart `moov` room is sized for before a clip needs a one-off rewrite.
pub const MP4_MOOV_RESERVED_SAMPLES: usize = 1024;
/// Bytes read from a recording per read call.
pub const ENCODE_READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of instructions held back while waiting for the next frame boundary's timestamp;
/// beyond this the pending frame is encoded without knowing it (see `encode::timeline`).
pub const ENCODE_LOOKAHEAD_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Render errors logged one by one per clip; the rest are only counted.
pub const ENCODE_RENDER_ERRORS_LOGGED_MAX: u64 = 20;

const _: () = assert!(VIDEO_SIDE_MIN_PX <= VIDEO_WIDTH_MAX_PX);
const _: () = assert!(VIDEO_SIDE_MIN_PX <= VIDEO_HEIGHT_MAX_PX);
const _: () = assert!(VIDEO_FPS_MIN >= 1 && VIDEO_FPS_MIN <= VIDEO_FPS_MAX);
const _: () = assert!(VIDEO_BITRATE_MIN_BPS < VIDEO_BITRATE_MAX_BPS);
const _: () = assert!(VIDEO_CRF_MIN < VIDEO_CRF_MAX);
const _: () = assert!(VIDEO_KEYFRAME_INTERVAL_MAX_MS >= 1_000);
const _: () = assert!(THUMB_WIDTH_MAX_PX >= VIDEO_SIDE_MIN_PX);
// Timescale = 1000 * fps units per second must fit the MP4 32-bit timescale.
const _: () = assert!(VIDEO_FPS_MAX as u64 * 1000 <= u32::MAX as u64);

// ---- queue ----

// ---- upload ----

// ---- ingest: tap, segments, spool ----

// ---- serve: HTTP ----
