//! Every bound in the program as a named constant, grouped by the stage that enforces it, with
//! compile-time assertions between related limits. Names carry their unit last.

// ---- guac: protocol parser ----

// ---- render: display model ----

// ---- encode ----

// ---- queue ----

/// LMDB map size the queue opens with. This is address space, not disk: the data file only
/// grows as pages are written, so starting generously costs nothing.
pub const QUEUE_MAP_BYTES_INITIAL: usize = 256 << 20;
/// Largest map the queue grows to (doubling on `MDB_MAP_FULL`). Past it the queue answers
/// `QueueError::Full` and callers refuse new work.
pub const QUEUE_MAP_BYTES_MAX: usize = 16 << 30;
/// Named databases in the queue environment (17 used today; room for a few more).
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

// ---- app: daemon wiring, encoder workers, spool import ----

/// How often the spool watcher lists guacd's recording directory.
pub const SPOOL_POLL_INTERVAL_MS: u64 = 2_000;
/// Most recordings the spool watcher tracks (and imports) per poll; the rest wait.
pub const SPOOL_FILES_PER_POLL_MAX: usize = 256;
/// Largest sidecar `NAME.json` read; a larger one is treated as corrupt.
pub const SPOOL_SIDECAR_BYTES_MAX: u64 = 64 * 1024;
/// Read buffer of the spool import (parse and copy).
pub const SPOOL_READ_CHUNK_BYTES: usize = 256 * 1024;
/// Sleep of an encoder thread that found nothing to do.
pub const ENCODE_IDLE_POLL_MS: u64 = 250;
/// Sleep of an encoder thread after a transient error (queue full, disk full).
pub const ENCODE_BACKOFF_MS: u64 = 5_000;
/// Encode attempts of one segment before it is quarantined for good.
pub const ENCODE_ATTEMPTS_MAX: u32 = 3;
/// How long a stopping daemon waits for encoders to finish their current segment before it
/// abandons them (the segment is redone after restart).
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// A supervised loop silent for this long stops the systemd watchdog pings. Long enough for
/// the slowest progress step of one encode.
pub const WATCHDOG_LOOP_SILENCE_MS_MAX: u64 = 120_000;

const _: () = assert!(ENCODE_IDLE_POLL_MS < WATCHDOG_LOOP_SILENCE_MS_MAX);
const _: () = assert!(SPOOL_POLL_INTERVAL_MS < WATCHDOG_LOOP_SILENCE_MS_MAX);
const _: () = assert!(ENCODE_ATTEMPTS_MAX >= 1);
