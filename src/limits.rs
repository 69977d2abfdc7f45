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

// ---- serve: HTTP ----

/// Largest request head (request line + headers) the front accepts; more is answered 431.
pub const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most header lines in one request; more is answered 431.
pub const HTTP_HEADERS_MAX: usize = 64;
/// Largest request body (login and settings forms); more is answered 413.
pub const HTTP_BODY_BYTES_MAX: u64 = 64 * 1024;
/// Longest request target (path + query); longer is answered 414.
pub const HTTP_TARGET_CHARS_MAX: usize = 4 * 1024;
/// Open client connections at once; more are answered 503 and closed.
pub const HTTP_CONNECTIONS_MAX: usize = 256;
/// Request-handling worker threads (the configured count is clamped to this).
pub const HTTP_WORKERS_MAX: usize = 16;
/// A request head must arrive completely within this time (slow-loris guard).
pub const HTTP_HEAD_TIMEOUT_MS: u64 = 10_000;
/// A keep-alive connection with no request for this long is closed.
pub const HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;
/// A stalled write to the client (it stopped reading) is abandoned after this long.
pub const HTTP_WRITE_TIMEOUT_MS: u64 = 60_000;
/// Web login sessions last this long.
pub const HTTP_LOGIN_SESSION_MS: u64 = 8 * 3_600_000;
/// Longest external session id accepted in a URL.
pub const HTTP_SESSION_ID_CHARS_MAX: usize = 128;
/// Longest user name.
pub const HTTP_USER_NAME_CHARS_MAX: usize = 64;
/// Shortest password accepted for a local account.
pub const HTTP_PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted (argon2 input).
pub const HTTP_PASSWORD_CHARS_MAX: usize = 256;
/// Rows on one history or audit page.
pub const HTTP_PAGE_ROWS_MAX: usize = 50;
/// Clips in one session's zip download.
pub const HTTP_ZIP_ENTRIES_MAX: usize = 10_000;
/// Repeated plays of the same clip by the same user within this window write one audit entry.
pub const HTTP_PLAY_AUDIT_WINDOW_MS: u64 = 60_000;
/// Entries kept in the play-audit de-duplication memory.
pub const HTTP_PLAY_AUDIT_ENTRIES_MAX: usize = 4_096;
/// Lifetime of a presigned URL the player may be redirected to.
pub const HTTP_PRESIGN_EXPIRY_S: u32 = 300;
/// Largest thumbnail served.
pub const HTTP_THUMB_BYTES_MAX: u64 = 4 * 1024 * 1024;

const _: () = assert!(HTTP_TARGET_CHARS_MAX < HTTP_HEAD_BYTES_MAX);
const _: () = assert!(HTTP_HEAD_TIMEOUT_MS <= HTTP_IDLE_TIMEOUT_MS);
const _: () = assert!(HTTP_PASSWORD_CHARS_MIN < HTTP_PASSWORD_CHARS_MAX);

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
