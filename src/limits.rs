//! Every bound in the program as a named constant, grouped by the stage that enforces it, with
//! compile-time assertions between related limits. Names carry their unit last.

// ---- guac: protocol parser ----

// ---- render: display model ----

// ---- encode ----

// ---- queue ----

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

// ---- doctor ----

/// How long `doctor` waits to connect to guacd, and then for its answer to `select`.
pub const DOCTOR_GUACD_TIMEOUT_MS: u64 = 3_000;
/// Most bytes of guacd's first instruction `doctor` reads before calling the answer garbage.
pub const DOCTOR_GUACD_REPLY_BYTES_MAX: usize = 64 * 1024;
/// Size of the frame `doctor` encodes to prove x264 works (pixels on a side; even, tiny).
pub const DOCTOR_X264_FRAME_PX: u32 = 64;
