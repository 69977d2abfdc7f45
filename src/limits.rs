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

// ---- events: typed text, clipboard, file transfers, titles ----

/// Clipboard text kept per clipboard event, bytes of UTF-8 (longer text is cut at a character
/// boundary and marked truncated).
pub const EVENTS_CLIPBOARD_TEXT_BYTES_MAX: usize = 64 * 1024;
/// A pause between key presses longer than this starts a new typed batch.
pub const EVENTS_TYPING_PAUSE_MS: u64 = 5_000;
/// A printable key counts as echoed when the screen changes within this long after it (and
/// before the next Enter, named key or combination).
pub const EVENTS_ECHO_WINDOW_MS: u64 = 1_000;
/// Key presses in one typed batch; a batch that reaches it is closed there.
pub const EVENTS_TYPED_BATCH_KEYS_MAX: usize = 4_096;
/// Events kept per clip; later ones are counted and dropped.
pub const EVENTS_PER_CLIP_MAX: usize = 100_000;
/// Seconds of activity kept per clip (a day; a clip is one segment, far shorter).
pub const EVENTS_ACTIVITY_SECONDS_MAX: usize = 24 * 3600;

const _: () = assert!(EVENTS_ECHO_WINDOW_MS < EVENTS_TYPING_PAUSE_MS);

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
/// Per-user streams (clipboard, file, pipe, body, argv) one direction of a recorded session may
/// have open at once (guacd allows 64 per user and 64 per connection).
pub const TAP_USER_STREAMS_MAX: usize = 256;
/// A connection with the id of a live recorded session waits this long for the earlier
/// connection to start ending (its client dropped) before it is recorded beside it (a second
/// tab).
pub const TAP_RECONNECT_WAIT_MS: u64 = 1_000;
/// ... and at most this long in all for the earlier connection to seal and hand over.
pub const TAP_RECONNECT_SEAL_WAIT_MS: u64 = 1_500;
/// How often a waiting reconnect looks again.
pub const TAP_RECONNECT_POLL_MS: u64 = 20;
/// Linked sessions (second tabs, `ID.2` ...) one session id may have live at once.
pub const TAP_LINKED_SESSIONS_MAX: u32 = 8;

const _: () = assert!(TAP_RECONNECT_WAIT_MS <= TAP_RECONNECT_SEAL_WAIT_MS);
const _: () = assert!(TAP_RECONNECT_SEAL_WAIT_MS < 2_000);

/// Distinct `select` values whose `args` list the tap remembers.
pub const TAP_ARGS_CACHE_ENTRIES_MAX: usize = 64;
/// Longest `recording-session-id` (it names a directory).
pub const TAP_SESSION_ID_CHARS_MAX: usize = 128;
/// Longest other session metadata value (user id, username, image name).
pub const TAP_META_VALUE_CHARS_MAX: usize = 512;
/// A segment's write buffer is flushed to the file at the first instruction boundary past this.
pub const SEGMENT_FLUSH_BYTES: usize = 64 * 1024;
/// ... and at least this often while it holds complete instructions, so a quiet session's last
/// drawing (less than a flush) reaches the disk within this time and survives a crash.
pub const SEGMENT_IDLE_FLUSH_MS: u64 = 1_000;

const _: () = assert!(TAP_HANDSHAKE_ELEMENT_CHARS_MAX * 4 <= TAP_HANDSHAKE_BYTES_MAX);

/// Most bytes a segment buffer holds while the disk catches up; past it the session stops
/// reading from guacd until the write in flight finishes.
pub const SEGMENT_BACKLOG_BYTES_MAX: usize = 8 * 1024 * 1024;

const _: () = assert!(SEGMENT_FLUSH_BYTES <= TAP_STREAM_INSTRUCTION_BYTES_MAX);
const _: () = assert!(SEGMENT_FLUSH_BYTES < SEGMENT_BACKLOG_BYTES_MAX);
const _: () = assert!(TAP_SESSION_ID_CHARS_MAX <= TAP_META_VALUE_CHARS_MAX);

/// How often the spool watcher lists guacd's recording directory.
pub const SPOOL_POLL_INTERVAL_MS: u64 = 2_000;
/// Most recordings the spool watcher tracks (and imports) per poll; the rest wait.
pub const SPOOL_FILES_PER_POLL_MAX: usize = 256;
/// Largest sidecar `NAME.json` read; a larger one is treated as corrupt.
pub const SPOOL_SIDECAR_BYTES_MAX: u64 = 64 * 1024;
/// Read buffer of the spool import (parse and copy).
pub const SPOOL_READ_CHUNK_BYTES: usize = 256 * 1024;
/// How often the tap checks in the background that guacd accepts connections (a bare TCP
/// connect, which guacd does not log), so that guacd being down shows on the status page even
/// while no session arrives.
pub const TAP_UPSTREAM_PROBE_INTERVAL_MS: u64 = 10_000;
/// Longest guacd protocol name in `tap.protocols` (its plugins are `libguac-client-NAME`).
pub const TAP_PROTOCOL_NAME_CHARS_MAX: usize = 32;
/// After the tap ends a session it keeps reading (and dropping) what the client still sends,
/// until the client closes, for at most this long: closing with unread input would reset the
/// connection and discard what the client has not received yet, the closing `error` included.
pub const TAP_CLOSE_LINGER_MS: u64 = 5_000;
/// Read buffer of that lingering close (the client's input is small and dropped).
pub const TAP_LINGER_READ_BYTES: usize = 4096;
/// guacd silent this long on a recorded session: the tap sends it a `nop` (between the
/// client's instructions). guacd's parent process keeps a client's socket open after that
/// connection's own process died (a crash) until the client writes, so without it the tap saw
/// the end only at the client's next input; a live connection sends its keep-alive `nop`
/// every 5 s anyway and ignores the client's.
pub const TAP_GUACD_SILENCE_PROBE_MS: u64 = 2_000;

const _: () = assert!(TAP_UPSTREAM_PROBE_INTERVAL_MS > TAP_UPSTREAM_CONNECT_TIMEOUT_MS);
const _: () = assert!(LOG_REMINDER_INTERVAL_MS > SPOOL_POLL_INTERVAL_MS);

/// Bytes of a file or clipboard stream's opening instruction (mimetype, name) the tap keeps.
pub const TAP_STREAM_OPENER_BYTES_MAX: usize = 4 * 1024;

const _: () = assert!(EVENTS_CLIPBOARD_TEXT_BYTES_MAX < TAP_STREAM_INSTRUCTION_BYTES_MAX / 4);

// ---- queue ----

/// LMDB map size the queue opens with. This is address space, not disk: the data file only
/// grows as pages are written, so starting generously costs nothing.
pub const QUEUE_MAP_BYTES_INITIAL: usize = 256 << 20;
/// Largest map the queue grows to (doubling on `MDB_MAP_FULL`). Past it the queue answers
/// `QueueError::Full` and callers refuse new work.
pub const QUEUE_MAP_BYTES_MAX: usize = 16 << 30;
/// Named databases in the queue environment (`queue::DATABASES` and the old settings table),
/// with room to grow.
pub const QUEUE_DBS_MAX: u32 = 32;
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
const _: () = assert!(PURGE_SESSIONS_SCANNED_MAX <= QUEUE_SCAN_RECORDS_MAX);
const _: () = assert!(PURGE_AUDIT_PER_TXN_MAX <= QUEUE_SCAN_RECORDS_MAX);

// ---- queue: retention of raw segments, history purge ----

/// Interval between two sweeps of the retention thread (raw segments, bytes held, purge).
pub const RETENTION_SWEEP_INTERVAL_MS: u64 = 60_000;
/// Most segment records one raw-segment sweep examines (the next sweep goes on from there).
pub const RETENTION_SEGMENTS_PER_SWEEP_MAX: usize = 2_000;
/// Most files the walk that measures the bytes held by raw segments counts; past it the
/// figure is a lower bound (and says so).
pub const RETENTION_SEGMENT_FILES_COUNTED_MAX: usize = 200_000;
/// Most sessions one purge transaction deletes (with their segments, clips and indexes). Sized
/// so a write transaction stays under 10 ms at 1M records (scripts/bench-queue, `purge`).
pub const PURGE_SESSIONS_PER_TXN_MAX: usize = 256;
/// Most session records one purge batch examines (in a read transaction) to find candidates.
pub const PURGE_SESSIONS_SCANNED_MAX: usize = 4_096;
/// Most audit entries one purge transaction deletes.
pub const PURGE_AUDIT_PER_TXN_MAX: usize = 1_024;
/// Most purge transactions one sweep runs; a backlog (the first purge of a year-old
/// appliance) drains over several sweeps instead of holding the writer for minutes.
pub const PURGE_TXNS_PER_SWEEP_MAX: usize = 256;
/// Pause between two purge transactions, so other writers (tap, encoders) get the lock.
pub const PURGE_TXN_PAUSE_MS: u64 = 5;

const _: () = assert!(PURGE_SESSIONS_PER_TXN_MAX <= PURGE_SESSIONS_SCANNED_MAX);

// ---- encode ----

/// Smallest output width or height in pixels (x264 needs at least one macroblock).
pub const VIDEO_SIDE_PX_MIN: u32 = 16;
/// Largest output width in pixels (H.264 level 5.1 frame size, 4096x2304).
pub const VIDEO_WIDTH_PX_MAX: u32 = 4096;
/// Largest output height in pixels.
pub const VIDEO_HEIGHT_PX_MAX: u32 = 2304;
/// Lowest frame (tick) rate.
pub const VIDEO_FPS_MIN: u32 = 1;
/// Highest frame (tick) rate.
pub const VIDEO_FPS_MAX: u32 = 60;
/// Lowest accepted bitrate cap in bits per second.
pub const VIDEO_BITRATE_BPS_MIN: u64 = 100_000;
/// Highest accepted bitrate cap in bits per second.
pub const VIDEO_BITRATE_BPS_MAX: u64 = 50_000_000;
/// Default for `video.keyframe-frames`: an IDR frame at least every this many *encoded* frames.
/// What a seek costs is the frames a player decodes from the previous keyframe, not the video
/// time between them; an idle screen encodes no frames, so it needs no keyframes either.
pub const VIDEO_KEYFRAME_FRAMES_DEFAULT: u32 = 50;
/// Fewest encoded frames between forced keyframes accepted in `video.keyframe-frames`.
pub const VIDEO_KEYFRAME_FRAMES_MIN: u32 = 10;
/// Most encoded frames between forced keyframes accepted in `video.keyframe-frames`.
pub const VIDEO_KEYFRAME_FRAMES_MAX: u32 = 300;
/// Length of the window over which the bitrate cap holds, in ms of video: the rate control
/// (`encode::rate`) keeps the bytes of every window this long under the cap.
pub const VIDEO_RATE_WINDOW_MS: u64 = 1_000;
/// Share of the cap (per mille) the rate control plans to use in a window: the margin absorbs
/// its misprediction of a frame's size (the issue allows a window 10 % over the cap).
pub const VIDEO_RATE_TARGET_PERMILLE: u64 = 900;
/// Quantiser range of the rate control: the finest and the coarsest it picks.
pub const VIDEO_QP_MIN: i32 = 10;
/// See [`VIDEO_QP_MIN`] (H.264's coarsest is 51; x264's constant-quantiser span is opened to
/// 10..=50, see `encode::x264`).
pub const VIDEO_QP_MAX: i32 = 50;
/// By how much a scheduled IDR frame's quantiser is below the P-frames'. 0: x264's default
/// ipratio (2.9 QP finer) makes an idle screen's only keyframe 74 kB instead of 49 kB at
/// 1024x768, and the fidelity instants stay >= 38.9 dB without it.
pub const VIDEO_IDR_QP_OFFSET: i32 = 0;
/// A frame whose new content (changed area not explained by a `copy` within the screen)
/// covers at least this share (per mille) of the picture is a scene cut: it is coded as an IDR
/// (x264's own scene-cut detection needs the lookahead this encoder does without). Scrolls and
/// window drags are moves, never scene cuts.
pub const VIDEO_SCENECUT_NEW_PERMILLE: u64 = 600;
/// A scene cut needs at least this many frames since the last IDR: a burst of new screens (a
/// `clear` and a redraw, a slide show) makes one keyframe, not one per frame (ssh-green made
/// three 100 kB IDRs in 300 ms and starved the fourth).
pub const VIDEO_SCENECUT_MIN_FRAMES: u32 = 12;
/// A changed macroblock whose difference (less the dead zone, `encode::convert`) reaches
/// this is new content for the scene-cut rule: 384 samples moved by ~10 on average.
pub const VIDEO_NEW_MB_COST_MIN: u64 = 384 * 10;
/// Content moved by a `copy` costs this fraction of its difference (the motion search finds
/// the vector; what remains is the residual of what was drawn after the move).
pub const VIDEO_MOVED_COST_DIVISOR: u64 = 8;
/// Largest motion-search range, in pixels, the encoder widens to for a frame in which the
/// stream moved content by more than [`VIDEO_ME_RANGE_PX`] (a scroll of many text lines).
pub const VIDEO_ME_RANGE_MOVE_PX_MAX: u32 = 256;
/// Moves (`copy` within a shown layer) remembered per frame for the scene-cut decision and the
/// search range; beyond that the frame's further moves count as new content.
pub const RENDER_MOVES_MAX: usize = 16;
/// Non-image streams (clipboard, pipe, file, audio, video, argv) tracked at once so that their
/// blobs are skipped silently; beyond that their blobs count as render errors.
pub const RENDER_OTHER_STREAMS_MAX: usize = 64;
/// x264 motion search range at least, in pixels (screen content: a scroll moves by whole text
/// lines of 15-20 px, several per frame; see `encode::x264` for the measurements).
pub const VIDEO_ME_RANGE_PX: u32 = 48;
/// x264 reference pictures at least (busy desktops alternate between windows), for pictures of
/// at most [`VIDEO_REFERENCES_AREA_PX_MAX`] pixels.
pub const VIDEO_REFERENCES: u32 = 2;
/// Above this many output pixels (1600x900) the preset's single reference is kept: each extra
/// reference is one more padded, half-pel-filtered picture inside x264 (~11 MiB at 1080p), and
/// with two the 1080p encode peaked at 76-80 MiB against the 75 MiB budget (65-69 with one).
pub const VIDEO_REFERENCES_AREA_PX_MAX: u64 = 1_440_000;
/// Default quantiser: the quality every frame is coded at while the bitrate cap allows it.
/// 27 rather than 26: -5 % to -10 % bytes; the lowest PSNR over the fidelity instants of the
/// shared recordings is 38.9 dB (ssh-green at 44.2 s).
pub const VIDEO_QP_DEFAULT: i32 = 27;
/// Encoder threads per clip, at most.
pub const VIDEO_THREADS_MAX: u32 = 16;
/// A frame encoded at this average quantiser or above was starved by the bitrate cap: if the
/// screen then stays still, the same picture is encoded again to refine it.
pub const VIDEO_REFINE_QP_MIN: i32 = 32;
/// Delay before such a refinement, in ms of video (the rate window has passed by then).
pub const VIDEO_REFINE_DELAY_MS: u64 = 1_000;
/// Refinements at most after one change of the screen.
pub const VIDEO_REFINES_MAX: u32 = 3;
/// Thumbnail width at most, in pixels.
pub const THUMB_WIDTH_PX_MAX: u32 = 320;
/// Samples the faststart `moov` room is sized for before a clip needs a one-off rewrite.
pub const MP4_MOOV_RESERVED_SAMPLES: usize = 1024;
/// A finished clip whose reserved `moov` room leaves more than this unused is rewritten
/// compact, if it is small (see [`MP4_COMPACT_REWRITE_BYTES_MAX`]).
pub const MP4_FREE_BYTES_MAX: usize = 4096;
/// Clips up to this size are rewritten compact (copying them once costs little; on a large
/// clip the reserved room is noise).
pub const MP4_COMPACT_REWRITE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Bytes read from a recording per read call.
pub const ENCODE_READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of instructions held back while waiting for the next frame boundary's timestamp;
/// beyond this the pending frame is encoded without knowing it (see `encode::timeline`).
pub const ENCODE_LOOKAHEAD_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Render errors logged one by one per clip; the rest are only counted.
pub const ENCODE_RENDER_ERRORS_LOGGED_MAX: u64 = 20;

const _: () = assert!(VIDEO_SIDE_PX_MIN <= VIDEO_WIDTH_PX_MAX);
const _: () = assert!(VIDEO_SIDE_PX_MIN <= VIDEO_HEIGHT_PX_MAX);
const _: () = assert!(VIDEO_FPS_MIN >= 1 && VIDEO_FPS_MIN <= VIDEO_FPS_MAX);
const _: () = assert!(VIDEO_BITRATE_BPS_MIN < VIDEO_BITRATE_BPS_MAX);
const _: () = assert!(VIDEO_QP_MIN <= VIDEO_QP_DEFAULT && VIDEO_QP_DEFAULT <= VIDEO_QP_MAX);
const _: () = assert!(VIDEO_QP_MAX <= 50 && VIDEO_QP_MIN >= 10);
const _: () = assert!(VIDEO_KEYFRAME_FRAMES_MIN <= VIDEO_KEYFRAME_FRAMES_DEFAULT);
const _: () = assert!(VIDEO_KEYFRAME_FRAMES_DEFAULT <= VIDEO_KEYFRAME_FRAMES_MAX);
const _: () = assert!(VIDEO_RATE_TARGET_PERMILLE <= 1000 && VIDEO_SCENECUT_NEW_PERMILLE <= 1000);
const _: () = assert!(VIDEO_ME_RANGE_MOVE_PX_MAX >= VIDEO_ME_RANGE_PX);
const _: () = assert!(THUMB_WIDTH_PX_MAX >= VIDEO_SIDE_PX_MIN);
// Timescale = 1000 * fps units per second must fit the MP4 32-bit timescale.
const _: () = assert!(VIDEO_FPS_MAX as u64 * 1000 <= u32::MAX as u64);

/// Sleep of an encoder thread that found nothing to do.
pub const ENCODE_IDLE_POLL_MS: u64 = 250;
/// Sleep of an encoder thread after a transient error (queue full, disk full).
pub const ENCODE_BACKOFF_MS: u64 = 5_000;
/// Encode attempts of one segment before it is quarantined for good.
pub const ENCODE_ATTEMPTS_MAX: u32 = 3;

const _: () = assert!(ENCODE_ATTEMPTS_MAX >= 1);

// ---- upload ----

/// S3's hard limit on the length of an object key, in bytes of UTF-8.
pub const S3_KEY_BYTES_MAX: usize = 1024;
/// Longest text one template variable may contribute to a key after sanitising; longer values
/// (a hostile username, a huge image name) are truncated on a character boundary.
pub const TEMPLATE_VALUE_BYTES_MAX: usize = 96;
/// A local-directory store's temp file older than this is a leftover of a crash mid-write and
/// is removed when the store is opened. Writes take seconds, and other processes (`doctor`,
/// `status`) may open the store while the daemon writes, so fresh temp files are left alone.
pub const LOCAL_STORE_TMP_STALE_S: u64 = 3_600;
/// Longest upload location string accepted from the settings.
pub const UPLOAD_LOCATION_BYTES_MAX: usize = 2048;
/// Part size of multipart uploads; files up to this size go up in one PUT.
pub const UPLOAD_PART_BYTES: u64 = 16 * 1024 * 1024;
/// S3 refuses parts smaller than 5 MiB (except the last one).
pub const UPLOAD_PART_BYTES_MIN: u64 = 5 * 1024 * 1024;
/// Parts of one multipart upload in flight at once (memory: this many parts of
/// `UPLOAD_PART_BYTES` buffered; lets a store verify parts on several cores and fills a
/// high-latency link).
pub const UPLOAD_PARTS_IN_FLIGHT_MAX: usize = 2;
/// Largest clip file the uploader accepts (S3's single-object limit is 5 TiB; a clip is
/// one segment of ~150 MB, so anything near this is a bug upstream).
pub const UPLOAD_OBJECT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// Fixed part of every object-store request timeout.
pub const STORE_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Slowest link the upload timeout allows for: a transfer of N bytes may take
/// `STORE_REQUEST_TIMEOUT_MS + N / UPLOAD_THROUGHPUT_BYTES_PER_S_MIN` seconds before it is
/// abandoned as a (transient) timeout.
pub const UPLOAD_THROUGHPUT_BYTES_PER_S_MIN: u64 = 256 * 1024;
/// Longest a streamed GET may wait for its next chunk from the store.
pub const STORE_READ_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Chunks buffered between the S3 runtime thread and a blocking reader of a GET.
pub const STORE_READ_CHUNKS_BUFFERED: usize = 4;
/// Most keys one listing request returns (S3's own maximum).
pub const STORE_LIST_PAGE_KEYS_MAX: usize = 1_000;
/// Longest small object (`put_bytes`: manifests, thumbnails, probes) kept in memory.
pub const STORE_PUT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest validity of a presigned GET URL (S3 refuses more than 7 days).
pub const PRESIGN_EXPIRY_S_MAX: u32 = 7 * 24 * 3600;
/// First retry delay after a transient upload failure; doubles each attempt.
pub const UPLOAD_RETRY_BASE_MS: u64 = 2_000;
/// Ceiling of the exponential backoff for transient failures.
pub const UPLOAD_RETRY_TRANSIENT_CAP_MS: u64 = 5 * 60 * 1000;
/// Fixed slow retry after a permanent failure (bad key, missing bucket): fixing the settings
/// heals the queue within this delay without a restart.
pub const UPLOAD_RETRY_PERMANENT_MS: u64 = 5 * 60 * 1000;
/// Random spread added to every retry delay, in per-mille of the delay.
pub const UPLOAD_RETRY_JITTER_PERMILLE: u64 = 250;
/// Most uploads in flight at once.
pub const UPLOADS_CONCURRENT_MAX: usize = 8;
/// Longest retention of a clip that never made it to the store, in hours (one year).
pub const UPLOAD_RETENTION_HOURS_MAX: u64 = 24 * 366;
/// Interval of the upload worker's housekeeping (expiry, slow retry of parked clips, local
/// copies left after a crash, manifests of sessions that closed after their last upload).
pub const UPLOAD_HOUSEKEEPING_INTERVAL_MS: u64 = 30_000;
/// Most clips one housekeeping pass handles per kind of work (the next pass takes the rest).
pub const UPLOAD_SWEEP_CLIPS_MAX: usize = 256;
/// Longest an idle upload thread sleeps before looking at the queue again.
pub const UPLOAD_IDLE_POLL_MS: u64 = 1_000;
/// Longest the idle manifest worker sleeps before looking at the queue again.
pub const MANIFEST_IDLE_POLL_MS: u64 = 1_000;
/// Most clips listed in one per-session manifest.
pub const MANIFEST_CLIPS_MAX: usize = 100_000;
/// Most superseded fleet manifest keys one session's filing record holds while their deletes
/// are owed (a store that refuses deletes makes them pile up: past this, no new version is
/// filed until they are gone).
pub const FLEET_SUPERSEDED_KEYS_MAX: usize = 256;
/// Longest `appliance-id`.
pub const APPLIANCE_ID_BYTES_MAX: usize = 128;
/// Longest manifest prefix (leaves room for the version file name under the key limit).
pub const FLEET_PREFIX_BYTES_MAX: usize = 256;
/// Map size of the history role's index (virtual; the file grows with what is stored:
/// ~1 KiB per session).
pub const FLEET_INDEX_MAP_BYTES: usize = 8 << 30;
/// Databases in the history role's index.
pub const FLEET_INDEX_DBS_MAX: u32 = 8;
/// Most sessions one history page request looks at (filters that match little stop here and
/// offer an "older" link to go on).
pub const FLEET_LIST_SCAN_ROWS_MAX: usize = 20_000;
/// How far back in write time an incremental poll re-lists, for appliances whose clocks lag.
pub const FLEET_POLL_LOOKBACK_MS: u64 = 10 * 60 * 1000;
/// Threads fetching and checking manifests in one pass.
pub const FLEET_FETCH_THREADS: usize = 8;
/// Largest fleet manifest the history role reads (a manifest lists ~300 bytes per clip).
pub const FLEET_MANIFEST_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes the history role's clip verifier reads (and hashes) between two pacing decisions.
pub const FLEET_VERIFY_CHUNK_BYTES: usize = 64 * 1024;

const _: () = assert!(UPLOAD_PART_BYTES >= UPLOAD_PART_BYTES_MIN);
const _: () = assert!(UPLOAD_RETRY_BASE_MS <= UPLOAD_RETRY_TRANSIENT_CAP_MS);
const _: () = assert!(TEMPLATE_VALUE_BYTES_MAX * 4 < S3_KEY_BYTES_MAX);
const _: () = assert!(UPLOAD_RETRY_JITTER_PERMILLE <= 1000);
// Permanent failures must retry slowly: fixing settings is a human-speed event.
const _: () = assert!(UPLOAD_RETRY_PERMANENT_MS >= 60_000);

/// Nice value of the upload threads (encoders run at 0): uploads wait for CPU, encodes do not.
pub const UPLOAD_THREAD_NICE: i32 = 10;

// ---- search index ----

/// Writer heap of the search index (tantivy's indexing buffer; its floor is 15 MB).
pub const SEARCH_WRITER_HEAP_BYTES: usize = 32 * 1024 * 1024;
/// Characters of a search hit's snippet.
pub const SEARCH_SNIPPET_CHARS_MAX: usize = 160;
/// Deepest hit a search pages to (offset): past it, narrow the search.
pub const SEARCH_HITS_OFFSET_MAX: usize = 10_000;
/// Matches a search counts exactly; past it the page says "more than" this many (a phrase
/// that occurs millions of times would otherwise be read whole for its count).
pub const SEARCH_HITS_COUNTED_MAX: usize = 10_000;
/// Events listed in one session's event pane.
pub const SEARCH_EVENTS_PER_SESSION_MAX: usize = 5_000;
/// Hits per page of the search page and API.
pub const SEARCH_PAGE_HITS_DEFAULT: usize = 20;
/// Most hits per page a caller may ask for.
pub const SEARCH_PAGE_HITS_MAX: usize = 100;
/// Clips the indexing worker indexes in one tick (the rest wait for the next).
pub const SEARCH_CLIPS_PER_TICK_MAX: usize = 200;
/// Pause of the indexing worker between ticks.
pub const SEARCH_TICK_INTERVAL_MS: u64 = 5_000;

const _: () = assert!(SEARCH_WRITER_HEAP_BYTES >= 15_000_000);
const _: () = assert!(SEARCH_PAGE_HITS_DEFAULT <= SEARCH_PAGE_HITS_MAX);
const _: () = assert!(SEARCH_HITS_OFFSET_MAX <= SEARCH_HITS_COUNTED_MAX);

// ---- serve: HTTP, login throttle, streams ----

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
/// Clip plays, clip downloads and session zips streaming at once, each written by its own
/// streaming thread so slow clients never hold a request worker; one more is answered 503 with
/// `Retry-After`. A stalled client keeps its slot at most `HTTP_WRITE_TIMEOUT_MS`.
pub const HTTP_STREAMS_MAX: usize = 8;
/// `Retry-After` of the 503 sent when every streaming slot is taken.
pub const HTTP_STREAMS_RETRY_AFTER_S: u32 = 15;
/// A request head must arrive completely within this time (slow-loris guard).
pub const HTTP_HEAD_TIMEOUT_MS: u64 = 10_000;
/// A keep-alive connection with no request for this long is closed.
pub const HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;
/// A stalled write to the client (it stopped reading) is abandoned after this long.
pub const HTTP_WRITE_TIMEOUT_MS: u64 = 60_000;
/// Kernel send buffer of each client socket (the kernel doubles it for bookkeeping). Fixed so
/// a client that stops reading cannot absorb megabytes that look like progress to the write
/// timeout, and kernel memory stays bounded per connection. Throughput ceiling: this much
/// per round trip (10 MB/s at 50 ms).
pub const HTTP_SEND_BUFFER_BYTES: usize = 512 * 1024;
/// Web login sessions last this long.
pub const HTTP_LOGIN_SESSION_MS: u64 = 8 * 3_600_000;
/// Longest session address accepted in a URL: an external session id, or in a fleet history
/// `ID@APPLIANCE` (a session id as long as the tap takes, `@`, the longest `appliance-id`).
pub const HTTP_SESSION_ID_CHARS_MAX: usize = TAP_SESSION_ID_CHARS_MAX + 1 + APPLIANCE_ID_BYTES_MAX;
/// Longest user name.
pub const HTTP_USER_NAME_CHARS_MAX: usize = 64;
/// Longest API token label (longer ones are cut).
pub const HTTP_TOKEN_LABEL_CHARS_MAX: usize = 64;
/// Shortest password accepted for a local account.
pub const HTTP_PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted (argon2 input).
pub const HTTP_PASSWORD_CHARS_MAX: usize = 256;
/// Rows on one history or audit page.
pub const HTTP_PAGE_ROWS_MAX: usize = 50;
/// Rows on a history page whose URL names no `limit`.
pub const HTTP_PAGE_ROWS_DEFAULT: usize = 25;

const _: () = assert!(HTTP_PAGE_ROWS_DEFAULT <= HTTP_PAGE_ROWS_MAX);

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
const _: () = assert!(HTTP_STREAMS_MAX >= 1);
// Every stream holds a client connection: the streams must not be able to take them all.
const _: () = assert!(HTTP_STREAMS_MAX < HTTP_CONNECTIONS_MAX / 2);
// A retry must be possible before a stalled stream is certain to be released.
const _: () = assert!((HTTP_STREAMS_RETRY_AFTER_S as u64) * 1000 <= HTTP_WRITE_TIMEOUT_MS);

/// Failed logins (per user name, and per client address) allowed before backoff starts.
pub const HTTP_LOGIN_FAILURES_FREE: u32 = 5;
/// First backoff after `HTTP_LOGIN_FAILURES_FREE` failures; doubles with each further one.
pub const HTTP_LOGIN_BACKOFF_BASE_MS: u64 = 2_000;
/// Longest backoff.
pub const HTTP_LOGIN_BACKOFF_MS_MAX: u64 = 15 * 60 * 1000;
/// Failures older than this are forgotten (the count starts again).
pub const HTTP_LOGIN_FAILURE_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Most user names and addresses the throttle remembers; when full, the oldest is dropped.
pub const HTTP_LOGIN_THROTTLE_ENTRIES_MAX: usize = 4_096;
/// Streams (playbacks, downloads, zips) one user may run at once, out of `HTTP_STREAMS_MAX`.
pub const HTTP_STREAMS_PER_USER_MAX: usize = 3;
/// Longest a stream may hold its slot, whatever its throughput.
pub const HTTP_STREAM_LIFE_MS_MAX: u64 = 2 * 3_600_000;
/// After `HTTP_STREAM_GRACE_MS`, a stream whose average throughput falls below this is ended:
/// a reader trickling bytes just fast enough to dodge `HTTP_WRITE_TIMEOUT_MS` would otherwise
/// keep a slot for hours. Far below playback speed at the lowest bitrate setting (100 kbit/s).
pub const HTTP_STREAM_BYTES_PER_S_MIN: u64 = 4 * 1024;
/// Time a stream gets before its throughput is judged (seeks, a paused video's buffer).
pub const HTTP_STREAM_GRACE_MS: u64 = 120_000;

const _: () = assert!(HTTP_STREAMS_PER_USER_MAX >= 1);
const _: () = assert!(HTTP_STREAMS_PER_USER_MAX < HTTP_STREAMS_MAX);
const _: () = assert!(HTTP_LOGIN_BACKOFF_BASE_MS <= HTTP_LOGIN_BACKOFF_MS_MAX);
const _: () = assert!(HTTP_LOGIN_BACKOFF_MS_MAX <= HTTP_LOGIN_FAILURE_WINDOW_MS);
const _: () = assert!(HTTP_STREAM_GRACE_MS < HTTP_STREAM_LIFE_MS_MAX);
const _: () = assert!(HTTP_WRITE_TIMEOUT_MS <= HTTP_STREAM_GRACE_MS);

// ---- disk watch, config file, status board ----

/// Smallest hysteresis margin between entering and leaving a low-disk state.
pub const DISK_HYSTERESIS_BYTES_MIN: u64 = 16 * 1024 * 1024;
/// How often the disk watch samples free space.
pub const DISK_SAMPLE_INTERVAL_MS: u64 = 2_000;
/// glibc malloc arenas the daemon allows (glibc's own default is eight per core): fewer arenas
/// hold less freed memory between sessions.
pub const MALLOC_ARENAS_MAX: i32 = 2;
/// How often the housekeeping thread gives the allocator's free pages back to the kernel.
pub const MALLOC_TRIM_INTERVAL_MS: u64 = 10_000;
/// How many recent errors the status board keeps.
pub const STATUS_ERRORS_MAX: usize = 32;
/// Longest error message the status board keeps (longer ones are cut).
pub const STATUS_ERROR_CHARS_MAX: usize = 500;
/// Largest config file accepted.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Free space counted per additional recorded user on the status page's estimate.
pub const STATUS_BYTES_PER_USER: u64 = 1_000_000_000;
/// One point of the status page's trend charts covers this long (its worst values).
pub const STATUS_TREND_SAMPLE_MS: u64 = 5 * 60 * 1000;
/// Trend points kept in memory (24 h of 5-minute points); older ones are dropped.
pub const STATUS_TREND_SAMPLES_MAX: usize = 288;

const _: () = assert!(STATUS_TREND_SAMPLE_MS * STATUS_TREND_SAMPLES_MAX as u64 == 86_400_000);

// ---- app: daemon wiring, shutdown, watchdog ----

/// How often the reload thread looks at the shutdown flag between SIGHUPs.
pub const RELOAD_POLL_MS: u64 = 500;
/// How long a stopping daemon waits for encoders to finish their current segment before it
/// abandons them (the segment is redone after restart).
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// A supervised loop silent for this long stops the systemd watchdog pings. Long enough for
/// the slowest progress step of one encode.
pub const WATCHDOG_LOOP_SILENCE_MS_MAX: u64 = 120_000;

const _: () = assert!(ENCODE_IDLE_POLL_MS < WATCHDOG_LOOP_SILENCE_MS_MAX);
const _: () = assert!(SPOOL_POLL_INTERVAL_MS < WATCHDOG_LOOP_SILENCE_MS_MAX);

/// Read buffer of start-up recovery, scanning a crashed session's segment files for their
/// last complete frame.
pub const RECOVER_READ_CHUNK_BYTES: usize = 256 * 1024;

const _: () = assert!(RETENTION_SWEEP_INTERVAL_MS < WATCHDOG_LOOP_SILENCE_MS_MAX);

/// A condition that stays (e.g. the spool paused by a full disk) is logged when it starts and
/// ends, and reminded of at most this often in between.
pub const LOG_REMINDER_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// Longest path of a unix socket (`sun_path` holds 108 bytes, NUL included); a runtime
/// directory whose socket path would be longer falls back to the temporary directory.
pub const UNIX_SOCKET_PATH_BYTES_MAX: usize = 107;

// ---- doctor ----

/// How long `doctor` waits to connect to guacd, and then for its answer to `select`.
pub const DOCTOR_GUACD_TIMEOUT_MS: u64 = 3_000;
/// Most bytes of guacd's first instruction `doctor` reads before calling the answer garbage.
pub const DOCTOR_GUACD_REPLY_BYTES_MAX: usize = 64 * 1024;
/// Size of the frame `doctor` encodes to prove x264 works (pixels on a side; even, tiny).
pub const DOCTOR_X264_FRAME_PX: u32 = 64;
