//! Every bound in the program as a named constant, grouped by the stage that enforces it, with
//! compile-time assertions between related limits. Names carry their unit last.

// ---- guac: protocol parser ----

// ---- render: display model ----

// ---- encode ----

// ---- queue ----

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
