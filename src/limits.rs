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

// ---- queue ----

/// LMDB map size the queue opens with. This is address space, not disk: the data file only
/// grows as pages are written, so starting generously costs nothing.
pub const QUEUE_MAP_BYTES_INITIAL: usize = 256 << 20;
/// Largest map the queue grows to (doubling on `MDB_MAP_FULL`). Past it the queue answers
/// `QueueError::Full` and callers refuse new work.
pub const QUEUE_MAP_BYTES_MAX: usize = 16 << 30;
/// Named databases in the queue environment (18 used today; room for a few more).
pub const QUEUE_DBS_MAX: u32 = 24;
/// LMDB reader slots: concurrent read transactions across all threads.
pub const QUEUE_READERS_MAX: u32 = 126;
/// Most items one listing page (sessions, audit) returns; larger requests are clamped.
pub const QUEUE_PAGE_ITEMS_MAX: usize = 500;
/// Most records one filtered listing examines before returning a partial page with a cursor,
/// so a text search over years of history cannot hold a read transaction for long.
pub const QUEUE_SCAN_RECORDS_MAX: usize = 50_000;
/// Longest free text stored (audit messages, failure reasons), in bytes.
pub const QUEUE_TEXT_BYTES_MAX: usize = 8 << 10;
/// Longest identifier stored (session id, user name, protocol, token hash), in bytes.
pub const QUEUE_NAME_BYTES_MAX: usize = 256;
/// Longest file path or object key stored, in bytes.
pub const QUEUE_PATH_BYTES_MAX: usize = 4096;
/// Largest settings override document (TOML), in bytes.
pub const QUEUE_SETTINGS_BYTES_MAX: usize = 256 << 10;

const _: () = assert!(QUEUE_MAP_BYTES_INITIAL <= QUEUE_MAP_BYTES_MAX);
const _: () = assert!(QUEUE_MAP_BYTES_INITIAL.is_multiple_of(1 << 16));
const _: () = assert!(QUEUE_PAGE_ITEMS_MAX <= QUEUE_SCAN_RECORDS_MAX);
// Names are LMDB keys (string indexes); LMDB's default maximum key size is 511 bytes.
const _: () = assert!(QUEUE_NAME_BYTES_MAX < 511);

// ---- upload ----

// ---- ingest: tap, segments, spool ----

/// How long a client (and guacd) may take for the whole handshake, `select` to `ready`.
pub const TAP_HANDSHAKE_TIMEOUT_MS: u64 = 15_000;
/// How long connecting to guacd may take.
pub const TAP_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest element of a handshake instruction, in Unicode characters (connection parameters
/// such as SSH private keys are the largest).
pub const TAP_HANDSHAKE_ELEMENT_CHARS_MAX: usize = 64 * 1024;
/// Most elements in one handshake instruction (`args` / `connect` of RDP hold ~120).
pub const TAP_HANDSHAKE_ELEMENTS_MAX: usize = 1024;
/// Most bytes a whole handshake may take, per side.
pub const TAP_HANDSHAKE_BYTES_MAX: usize = 1024 * 1024;
/// Most concurrent connections through the tap; above it a client gets SERVER_BUSY.
pub const TAP_CONNECTIONS_MAX: usize = 1_000;
/// A relay direction yields its executor after this many chunks read back to back.
pub const TAP_CHUNKS_PER_YIELD: u32 = 4;
/// Read buffer per direction per connection.
pub const TAP_RELAY_BUFFER_BYTES: usize = 32 * 1024;
/// Longest element in the live stream (recorded sessions), in Unicode characters. guacd's own
/// blobs are at most 8064.
pub const TAP_STREAM_ELEMENT_CHARS_MAX: usize = 1024 * 1024;
/// Longest single instruction kept in a segment buffer before it is complete.
pub const TAP_STREAM_INSTRUCTION_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How often a live recorded session looks at the disk state (closes at critical).
pub const TAP_DISK_CHECK_INTERVAL_MS: u64 = 500;
/// How long the tap waits for guacd to finish the instruction in flight before it sends the
/// client an `error` (a closed session must end on an instruction boundary).
pub const TAP_DRAIN_TIMEOUT_MS: u64 = 1_000;
/// Distinct `select` values whose `args` list the tap remembers.
pub const TAP_ARGS_CACHE_ENTRIES_MAX: usize = 64;
/// Longest `recording-session-id` (it names a directory).
pub const TAP_SESSION_ID_CHARS_MAX: usize = 128;
/// Longest other session metadata value (user id, username, image name).
pub const TAP_META_VALUE_CHARS_MAX: usize = 512;
/// A segment's write buffer is flushed to the file at the first instruction boundary past this.
pub const SEGMENT_FLUSH_BYTES: usize = 64 * 1024;

const _: () = assert!(TAP_HANDSHAKE_ELEMENT_CHARS_MAX * 4 <= TAP_HANDSHAKE_BYTES_MAX);
/// Most bytes a segment buffer holds while the disk catches up; past it the session stops
/// reading from guacd until the write in flight finishes.
pub const SEGMENT_BACKLOG_BYTES_MAX: usize = 8 * 1024 * 1024;

const _: () = assert!(SEGMENT_FLUSH_BYTES <= TAP_STREAM_INSTRUCTION_BYTES_MAX);
const _: () = assert!(SEGMENT_FLUSH_BYTES < SEGMENT_BACKLOG_BYTES_MAX);
const _: () = assert!(TAP_SESSION_ID_CHARS_MAX <= TAP_META_VALUE_CHARS_MAX);

// ---- serve: HTTP ----

// ---- disk, config, status ----

/// Smallest hysteresis margin between entering and leaving a low-disk state.
pub const DISK_HYSTERESIS_BYTES_MIN: u64 = 16 * 1024 * 1024;
/// How often the disk watch samples free space.
pub const DISK_SAMPLE_INTERVAL_MS: u64 = 2_000;
/// How many recent errors the status board keeps.
pub const STATUS_ERRORS_MAX: usize = 32;
/// Longest error message the status board keeps (longer ones are cut).
pub const STATUS_ERROR_CHARS_MAX: usize = 500;
/// Largest config file accepted.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Free space counted per additional recorded user on the status page's estimate.
pub const STATUS_BYTES_PER_USER: u64 = 1_000_000_000;
