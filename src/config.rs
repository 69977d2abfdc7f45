//! Settings: a TOML file (kebab-case keys, unknown keys rejected) -> `RawConfig` -> validated
//! [`Config`]. Defaults are named functions, so a missing file gives embedded defaults that work
//! on a laptop: data under `./data`, clips in a local directory acting as the bucket, the tap on
//! 127.0.0.1:4822 and plain HTTP on loopback.
//!
//! The names follow Kasm Workspaces' global settings (object storage key/secret, upload
//! location, bitrate, framerate, width, height, retention period, queue length) plus the
//! appliance's own (disk floor, segment size, spool directory, listen addresses). Secrets live
//! in [`Secret`], whose `Debug` and `Display` print `***`.
//!
//! Each stage turns its part of [`Config`] into its own settings type; this module only checks
//! ranges and shapes and names the offending key in every error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::CONFIG_FILE_BYTES_MAX;
pub use crate::secret::Secret;
use crate::upload::RetentionSettings;

/// Where `serve` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/session-recorder/config.toml";

const MB: u64 = 1_000_000;

/// Valid ranges, inclusive. Outside them a setting is refused with its key named.
mod range {
    pub const BITRATE_KBPS: (u64, u64) = (100, 50_000);
    pub const FRAMERATE: (u64, u64) = (1, 60);
    pub const KEYFRAME_FRAMES: (u64, u64) = (
        crate::limits::VIDEO_KEYFRAME_FRAMES_MIN as u64,
        crate::limits::VIDEO_KEYFRAME_FRAMES_MAX as u64,
    );
    /// 0 means "native size"; otherwise this range.
    pub const DIMENSION: (u64, u64) = (16, 7680);
    pub const RETENTION_HOURS: (u64, u64) = (1, 24 * 365);
    pub const QUEUE_LENGTH: (u64, u64) = (1, 64);
    pub const DISK_FLOOR_MB: (u64, u64) = (10, 10_000_000);
    pub const SEGMENT_SIZE_MB: (u64, u64) = (1, 4_000);
    // ---- retention of raw segments and history ----
    /// 0 = delete raw segments as soon as their clips are confirmed in the bucket.
    pub const SEGMENT_RETENTION_HOURS: (u64, u64) = (0, 24 * 366);
    pub const HISTORY_RETENTION_DAYS: (u64, u64) = (1, 36_500);
    /// Under a week of audit log is no audit log.
    pub const AUDIT_RETENTION_DAYS: (u64, u64) = (7, 36_500);

    pub const FLEET_POLL_INTERVAL_S: (u64, u64) = (1, 3_600);
    pub const FLEET_RESCAN_INTERVAL_S: (u64, u64) = (1, 7 * 24 * 3_600);
    /// 0 (off) is accepted besides this range: under 64 KiB/s a clip takes hours.
    pub const FLEET_VERIFY_BYTES_PER_S: (u64, u64) = (64 << 10, 10 << 30);
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than any sane config.
    #[error("config file {path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type (toml's message names the
    /// key and line).
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file (or `<string>`).
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value out of range or of the wrong shape.
    #[error("invalid setting `{key}`: {message}")]
    Invalid {
        /// The key, dotted with its table: `video.framerate`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl crate::error::Classify for ConfigError {
    fn is_transient(&self) -> bool {
        // Only an unreadable file can heal by itself (e.g. a mount that comes up later).
        matches!(self, ConfigError::Read { .. })
    }
}

/// The file as written, before validation. Unknown keys are rejected by serde.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Queue database, clips, thumbnails and segments live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// guacd's `recording-path`, watched for recordings to import. Default `<data-dir>/spool`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Below this much free disk no new recorded session starts (MB, 10^6 bytes).
    #[serde(default = "default_disk_floor_mb")]
    pub disk_floor_mb: u64,
    /// Segment files roll at this size (MB).
    #[serde(default = "default_segment_size_mb")]
    pub segment_size_mb: u64,
    /// Hours a clip that cannot be uploaded is kept locally before it is expired.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// Encodes (and uploads) at once.
    #[serde(default = "default_queue_length")]
    pub queue_length: u64,
    // ---- retention of raw segments and history ----
    /// Hours a raw segment (and its `.state`) stays on disk after its clips are confirmed in
    /// the bucket.
    #[serde(default = "default_segment_retention_hours")]
    pub segment_retention_hours: u64,
    /// Days sessions, segments and clips stay in the history before they are purged.
    #[serde(default = "default_history_retention_days")]
    pub history_retention_days: u64,
    /// Days audit entries are kept before they are purged.
    #[serde(default = "default_audit_retention_days")]
    pub audit_retention_days: u64,
    /// Video settings.
    #[serde(default)]
    pub video: RawVideo,
    /// Object storage settings.
    #[serde(default)]
    pub storage: RawStorage,
    /// The Guacamole tap.
    #[serde(default)]
    pub tap: RawTap,
    /// The HTTP(S) server.
    #[serde(default)]
    pub http: RawHttp,
    /// Name of this appliance in fleet manifests and the fleet history. Default: the hostname.
    #[serde(default)]
    pub appliance_id: Option<String>,
    /// The history role: present = this instance indexes the fleet's manifests from the
    /// shared bucket and serves their history (the tap, encoders and uploads stay off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<RawFleet>,
    /// What is taken from recordings for search.
    #[serde(default)]
    pub search: SearchConfig,
}

/// `[search]`: what is taken from recordings for search (valid as parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SearchConfig {
    /// Store printable keys the screen did not echo (a terminal password prompt) as `•••` and
    /// a count instead of their text.
    #[serde(default = "default_true")]
    pub mask_unechoed_input: bool,
    /// Read screen text by OCR (Tesseract) in a low-priority job after each encode. Off by
    /// default: it costs several times the encode's CPU (scripts/bench-ocr).
    #[serde(default)]
    pub ocr: bool,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            mask_unechoed_input: true,
            ocr: false,
        }
    }
}

/// `[fleet]`: the history role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFleet {
    /// Where the appliances' manifests are: `s3://BUCKET@ENDPOINT[:PORT]/PREFIX`,
    /// `s3://BUCKET/PREFIX` or `file:///DIR/PREFIX`. Credentials, region and TLS come from
    /// `[storage]`.
    pub index: String,
    /// Hex ed25519 public keys (as `doctor` prints them on each appliance) whose manifests are
    /// trusted; any other manifest shows as "integrity: failed".
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Seconds between polls of the bucket for new manifests.
    #[serde(default = "default_fleet_poll_interval_s")]
    pub poll_interval_s: u64,
    /// Seconds between full re-reads of the bucket (edited manifests, deleted clips).
    #[serde(default = "default_fleet_rescan_interval_s")]
    pub rescan_interval_s: u64,
    /// Bytes per second the background verifier may read from the bucket to hash each clip
    /// once against its manifest's SHA-256; 0 turns it off.
    #[serde(default = "default_fleet_verify_bytes_per_s")]
    pub verify_bytes_per_s: u64,
}

/// `[video]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVideo {
    /// Cap on the video bitrate, kbit/s.
    #[serde(default = "default_bitrate_kbps")]
    pub bitrate_kbps: u64,
    /// Frames per second.
    #[serde(default = "default_framerate")]
    pub framerate: u64,
    /// An IDR frame at least every this many encoded frames (what a seek decodes at most).
    #[serde(default = "default_keyframe_frames")]
    pub keyframe_frames: u64,
    /// Output width in pixels; 0 keeps the session's own size.
    #[serde(default)]
    pub width: u64,
    /// Output height in pixels; 0 keeps the session's own size.
    #[serde(default)]
    pub height: u64,
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStorage {
    /// `s3://BUCKET/...mp4`, `s3://BUCKET@ENDPOINT[:PORT]/...mp4` or `file:///dir/...mp4`.
    /// Default: a local directory `<data-dir>/bucket` with [`DEFAULT_KEY_TEMPLATE`].
    #[serde(default)]
    pub upload_location: Option<String>,
    /// S3 access key.
    #[serde(default)]
    pub object_storage_key: Secret,
    /// S3 secret key.
    #[serde(default)]
    pub object_storage_secret: Secret,
    /// S3 region.
    #[serde(default)]
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint (lab MinIO only).
    #[serde(default)]
    pub allow_http: bool,
    /// PEM bundle of CAs trusted for the endpoint (on-prem private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Path-style addressing (`host/bucket/key`), needed by most on-prem stores.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Key prefix of the signed fleet manifests in the bucket (read by a history role).
    #[serde(default = "default_manifest_prefix")]
    pub manifest_prefix: String,
}

/// `[tap]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTap {
    /// Run the tap at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where clients connect (where they expected guacd).
    #[serde(default = "default_tap_listen")]
    pub listen: String,
    /// The real guacd.
    #[serde(default = "default_tap_upstream")]
    pub upstream: String,
    /// Record the client's `key` events too.
    #[serde(default)]
    pub record_keys: bool,
    /// Record sessions whose connection does not say `recording-required` (fail closed).
    #[serde(default = "default_true")]
    pub record_by_default: bool,
    /// Protocols whose `args` the tap asks guacd for at start (and when guacd is back), so
    /// that a refused session of these never reaches guacd. guacd logs each such question as
    /// a failed handshake; other protocols are learned from their first real session.
    #[serde(default = "default_tap_protocols")]
    pub protocols: Vec<String>,
}

/// `[http]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHttp {
    /// Run the HTTP server at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Listen address.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// PEM certificate chain for HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP when no certificate is configured. Without it, a config with no
    /// certificate is refused, unless the listen address is loopback.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// IANA time zone the pages show times and date filters in; the appliance's own zone
    /// (`TZ`, `/etc/localtime`) when unset.
    #[serde(default)]
    pub display_timezone: Option<String>,
}

/// The key template used when no upload location is configured.
pub const DEFAULT_KEY_TEMPLATE: &str =
    "{user_id}/{session_id}/clip-{clip_index}-{timestamp_ms}.mp4";

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_disk_floor_mb() -> u64 {
    500
}
fn default_segment_size_mb() -> u64 {
    150
}
fn default_retention_hours() -> u64 {
    24
}
fn default_queue_length() -> u64 {
    2
}
fn default_segment_retention_hours() -> u64 {
    24
}
fn default_history_retention_days() -> u64 {
    365
}
fn default_audit_retention_days() -> u64 {
    730
}
fn default_bitrate_kbps() -> u64 {
    2_000
}
fn default_framerate() -> u64 {
    10
}
fn default_keyframe_frames() -> u64 {
    u64::from(crate::limits::VIDEO_KEYFRAME_FRAMES_DEFAULT)
}
fn default_manifest_prefix() -> String {
    "manifests".into()
}
fn default_fleet_poll_interval_s() -> u64 {
    30
}
fn default_fleet_rescan_interval_s() -> u64 {
    3_600
}
/// 4 MiB/s: a 150 MB clip in under a minute, ~350 GB a day, without crowding playback.
fn default_fleet_verify_bytes_per_s() -> u64 {
    4 << 20
}
fn default_true() -> bool {
    true
}
fn default_tap_listen() -> String {
    "127.0.0.1:4822".into()
}
fn default_tap_upstream() -> String {
    "127.0.0.1:4823".into()
}
fn default_tap_protocols() -> Vec<String> {
    ["vnc", "rdp", "ssh"].map(String::from).to_vec()
}
fn default_http_listen() -> String {
    "127.0.0.1:8480".into()
}

impl Default for RawVideo {
    fn default() -> Self {
        Self {
            bitrate_kbps: default_bitrate_kbps(),
            framerate: default_framerate(),
            keyframe_frames: default_keyframe_frames(),
            width: 0,
            height: 0,
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            upload_location: None,
            object_storage_key: Secret::default(),
            object_storage_secret: Secret::default(),
            region: None,
            allow_http: false,
            ca_file: None,
            path_style: None,
            manifest_prefix: default_manifest_prefix(),
        }
    }
}

impl Default for RawTap {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_tap_listen(),
            upstream: default_tap_upstream(),
            record_keys: false,
            record_by_default: true,
            protocols: default_tap_protocols(),
        }
    }
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_http_listen(),
            tls_cert: None,
            tls_key: None,
            allow_plain_http: false,
            display_timezone: None,
        }
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        // An empty document gives every named default; the same path a file takes.
        toml::from_str("").expect("the empty config must parse")
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Queue database, clips, thumbnails and live segments.
    pub data_dir: PathBuf,
    /// Directory watched for guacd's own recordings.
    pub spool_dir: PathBuf,
    /// Disk floor in bytes.
    pub disk_floor_bytes: u64,
    /// Segment roll size in bytes.
    pub segment_bytes_max: u64,
    /// How long a clip waits for its upload before it expires (`retention-hours`), hours.
    pub retention_hours: u64,
    /// Encodes (and uploads) at once.
    pub queue_length: usize,
    /// Retention of raw segments and history.
    pub retention: RetentionSettings,
    /// Video settings.
    pub video: VideoConfig,
    /// Object storage.
    pub storage: StorageConfig,
    /// The tap.
    pub tap: TapConfig,
    /// HTTP(S).
    pub http: HttpConfig,
    /// This appliance's name in fleet manifests.
    pub appliance_id: String,
    /// The history role's settings, when this instance is one.
    pub fleet: Option<FleetConfig>,
    /// `[search]`.
    pub search: SearchConfig,
}

/// Validated `[fleet]`.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The index location as written (for people).
    pub index: String,
    /// The store holding the manifests (and the clips they list).
    pub target: crate::upload::StoreTarget,
    /// Key prefix of the manifests (no trailing `/`; may be empty).
    pub prefix: String,
    /// Trusted public keys.
    pub trusted_keys: crate::manifest::signed::TrustedKeys,
    /// The same keys as hex, for the status page.
    pub trusted_keys_hex: Vec<String>,
    /// Poll interval.
    pub poll_interval_ms: u64,
    /// Full rescan interval.
    pub rescan_interval_ms: u64,
    /// Pace of the background clip verifier; 0 = off.
    pub verify_bytes_per_s: u64,
}

/// Validated `[video]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoConfig {
    /// Bitrate cap, bits/s.
    pub bitrate_bps: u64,
    /// Frames per second.
    pub fps: u32,
    /// An IDR frame at least every this many encoded frames.
    pub keyframe_frames: u32,
    /// Output size; `None` keeps the session's own size.
    pub size: Option<(u32, u32)>,
}

/// Validated `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The upload location (template included).
    pub upload_location: String,
    /// Access key.
    pub key: Secret,
    /// Secret key.
    pub secret: Secret,
    /// Region (default `us-east-1`).
    pub region: String,
    /// Plain HTTP allowed.
    pub allow_http: bool,
    /// CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Path-style addressing; `None` = the store's default for the endpoint.
    pub path_style: Option<bool>,
    /// Key prefix of fleet manifests (no leading or trailing `/`).
    pub manifest_prefix: String,
}

/// Validated `[tap]`.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// Run the tap.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// guacd's address, `host:port`.
    pub upstream: String,
    /// Record `key` events.
    pub record_keys: bool,
    /// Record sessions that do not say whether recording is required.
    pub record_by_default: bool,
    /// Protocols whose `args` are learned from guacd up front.
    pub protocols: Vec<String>,
}

/// Validated `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Run the server.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate and key for HTTPS; `None` = plain HTTP (allowed explicitly or on loopback).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The zone of every time and date on the pages.
    pub display_timezone: crate::clock::DisplayZone,
}

impl Config {
    /// The tap's settings, with the named default limits.
    pub fn tap_settings(&self) -> crate::ingest::TapSettings {
        use crate::limits::{
            TAP_CONNECTIONS_MAX, TAP_HANDSHAKE_TIMEOUT_MS, TAP_UPSTREAM_PROBE_INTERVAL_MS,
        };
        use std::time::Duration;
        crate::ingest::TapSettings {
            upstream: self.tap.upstream.clone(),
            record_keys: self.tap.record_keys,
            record_by_default: self.tap.record_by_default,
            segments_dir: self.data_dir.join("segments"),
            segment_bytes_max: self.segment_bytes_max,
            handshake_timeout: Duration::from_millis(TAP_HANDSHAKE_TIMEOUT_MS),
            connections_max: TAP_CONNECTIONS_MAX,
            protocols: self.tap.protocols.clone(),
            upstream_probe_interval: Duration::from_millis(TAP_UPSTREAM_PROBE_INTERVAL_MS),
        }
    }

    /// Loads `path`; when `path` is `None` and the default file does not exist, the embedded
    /// defaults. An explicitly named file that is missing is an error.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown key, invalid value.
    pub fn load(path: Option<&Path>) -> Result<(Self, RawConfig), ConfigError> {
        let raw = match path {
            Some(p) => RawConfig::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                RawConfig::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => RawConfig::default(),
        };
        Ok((raw.validate()?, raw))
    }

    /// The file [`Config::load`] reads for `path`: `path` itself, else the default file when
    /// it exists; `None` = the embedded defaults.
    pub fn file_in_use(path: Option<&Path>) -> Option<PathBuf> {
        match path {
            Some(p) => Some(std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        }
    }

    /// Whether the daemon applies a change of `key` (dotted, as in the file) while it runs,
    /// on `systemctl reload` or a save from the settings page; any other key waits for a
    /// restart (listen addresses, directories, queue length, segment size, the tap's
    /// addresses and protocols...).
    pub fn applies_without_restart(key: &str) -> bool {
        (key.starts_with("video.") || key.starts_with("storage."))
            && key != "storage.manifest-prefix"
            || matches!(
                key,
                "retention-hours"
                    | "segment-retention-hours"
                    | "history-retention-days"
                    | "audit-retention-days"
                    | "disk-floor-mb"
                    | "tap.record-keys"
                    | "tap.record-by-default"
            )
    }

    /// Parses and validates a TOML string.
    ///
    /// # Errors
    /// Bad TOML, unknown key, invalid value.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        RawConfig::from_toml(text, Path::new("<string>"))?.validate()
    }
}

impl RawConfig {
    /// Reads and parses a file (no validation).
    ///
    /// # Errors
    /// Unreadable, too large, bad TOML or unknown keys.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(&read_text(path)?, path)
    }

    /// Parses TOML text (no validation).
    ///
    /// # Errors
    /// Bad TOML or unknown keys.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// The TOML form with both secrets replaced by `***`, for showing to people.
    pub fn to_masked_toml(&self) -> String {
        let mut copy = self.clone();
        for s in [
            &mut copy.storage.object_storage_key,
            &mut copy.storage.object_storage_secret,
        ] {
            if !s.is_empty() {
                *s = Secret::new("***");
            }
        }
        toml::to_string_pretty(&copy).unwrap_or_default()
    }

    /// Checks every value and builds the validated [`Config`].
    ///
    /// # Errors
    /// The first invalid value, naming its key.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let data_dir = non_empty_path("data-dir", &self.data_dir)?;
        let spool_dir = match &self.spool_dir {
            Some(p) => non_empty_path("spool-dir", p)?,
            None => data_dir.join("spool"),
        };
        let disk_floor_mb = in_range("disk-floor-mb", self.disk_floor_mb, range::DISK_FLOOR_MB)?;
        let segment_mb = in_range(
            "segment-size-mb",
            self.segment_size_mb,
            range::SEGMENT_SIZE_MB,
        )?;
        let retention_h = in_range(
            "retention-hours",
            self.retention_hours,
            range::RETENTION_HOURS,
        )?;
        let queue_length = in_range("queue-length", self.queue_length, range::QUEUE_LENGTH)?;
        let retention = self.validate_retention(retention_h)?;
        let appliance_id = validate_appliance_id(self.appliance_id.as_deref())?;
        let storage = self.storage.validate(&data_dir)?;
        let fleet = match &self.fleet {
            Some(f) => Some(f.validate(&storage)?),
            None => None,
        };
        Ok(Config {
            data_dir: data_dir.clone(),
            spool_dir,
            disk_floor_bytes: disk_floor_mb * MB,
            segment_bytes_max: segment_mb * MB,
            retention_hours: retention_h,
            queue_length: queue_length as usize,
            retention,
            video: self.video.validate()?,
            storage,
            tap: self.tap.validate()?,
            http: self.http.validate()?,
            appliance_id,
            fleet,
            search: self.search,
        })
    }
}

impl RawConfig {
    /// The retention settings, each in range and consistent with `retention-hours` (the local
    /// clip retention, in hours): history must outlive every clip and segment it describes.
    fn validate_retention(&self, clip_retention_h: u64) -> Result<RetentionSettings, ConfigError> {
        const HOUR_MS: u64 = 3_600_000;
        let seg_h = in_range(
            "segment-retention-hours",
            self.segment_retention_hours,
            range::SEGMENT_RETENTION_HOURS,
        )?;
        let history_d = in_range(
            "history-retention-days",
            self.history_retention_days,
            range::HISTORY_RETENTION_DAYS,
        )?;
        let audit_d = in_range(
            "audit-retention-days",
            self.audit_retention_days,
            range::AUDIT_RETENTION_DAYS,
        )?;
        let history_h = history_d * 24;
        if history_h <= clip_retention_h {
            return Err(invalid(
                "history-retention-days",
                &format!(
                    "{history_d} days is not longer than retention-hours ({clip_retention_h} h): \
                     the history of clips still waiting for their upload would be purged"
                ),
            ));
        }
        if history_h <= seg_h {
            return Err(invalid(
                "segment-retention-hours",
                &format!(
                    "{seg_h} h is not shorter than history-retention-days ({history_d} days): \
                     raw segments would outlive their history"
                ),
            ));
        }
        Ok(RetentionSettings {
            segment_ms: seg_h * HOUR_MS,
            history_ms: history_h * HOUR_MS,
            audit_ms: audit_d * 24 * HOUR_MS,
        })
    }
}

impl RawVideo {
    fn validate(&self) -> Result<VideoConfig, ConfigError> {
        let kbps = in_range("video.bitrate-kbps", self.bitrate_kbps, range::BITRATE_KBPS)?;
        let fps = in_range("video.framerate", self.framerate, range::FRAMERATE)?;
        let keyframe_frames = in_range(
            "video.keyframe-frames",
            self.keyframe_frames,
            range::KEYFRAME_FRAMES,
        )?;
        let size = match (self.width, self.height) {
            (0, 0) => None,
            (0, _) | (_, 0) => {
                return Err(invalid(
                    "video.width",
                    "width and height must both be 0 (native size) or both be set",
                ));
            }
            (w, h) => Some((
                in_range("video.width", w, range::DIMENSION)? as u32,
                in_range("video.height", h, range::DIMENSION)? as u32,
            )),
        };
        let video = VideoConfig {
            bitrate_bps: kbps * 1000,
            fps: fps as u32,
            keyframe_frames: keyframe_frames as u32,
            size,
        };
        // The encoder's own check: it knows its limits (an H.264 level caps the frame size).
        video.encoder_settings().validate().map_err(|e| {
            use crate::encode::SettingsError as E;
            let key = match e {
                E::Width { .. } => "video.width",
                E::Height { .. } => "video.height",
                E::Fps { .. } => "video.framerate",
                E::Bitrate { .. } => "video.bitrate-kbps",
                E::KeyframeFrames { .. } => "video.keyframe-frames",
                E::Qp { .. } | E::Threads { .. } => "video",
            };
            invalid(key, &format!("the encoder refuses it: {e}"))
        })?;
        Ok(video)
    }
}

impl VideoConfig {
    /// The encoder's settings for these values (one x264 thread, so that a redone encode
    /// after a crash gives the same bytes).
    pub fn encoder_settings(&self) -> crate::encode::VideoSettings {
        crate::encode::VideoSettings {
            width: self.size.map(|(w, _)| w),
            height: self.size.map(|(_, h)| h),
            fps: self.fps,
            bitrate_max_bps: self.bitrate_bps,
            keyframe_frames: self.keyframe_frames,
            threads: 1,
            ..crate::encode::VideoSettings::default()
        }
    }
}

impl StorageConfig {
    /// The upload stage's settings for this `[storage]` table. Path-style addressing is the
    /// default because the on-premises stores the appliance mostly talks to (MinIO, Garage,
    /// Ceph) need it, and AWS still accepts it.
    pub fn upload_settings(&self) -> crate::upload::UploadSettings {
        crate::upload::UploadSettings {
            location: self.upload_location.clone(),
            access_key: self.key.expose().to_string(),
            secret_key: self.secret.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            ca_file: self.ca_file.clone(),
            path_style: self.path_style.unwrap_or(true),
        }
    }
}

impl RawStorage {
    fn validate(&self, data_dir: &Path) -> Result<StorageConfig, ConfigError> {
        let upload_location = match &self.upload_location {
            Some(loc) => loc.trim().to_string(),
            None => format!(
                "file://{}/{DEFAULT_KEY_TEMPLATE}",
                absolute(&data_dir.join("bucket")).display()
            ),
        };
        let key = "storage.upload-location";
        if !(upload_location.starts_with("s3://") || upload_location.starts_with("file://")) {
            return Err(invalid(key, "must start with s3:// or file://"));
        }
        if !upload_location.ends_with(".mp4") {
            return Err(invalid(key, "must end with .mp4"));
        }
        let is_s3 = upload_location.starts_with("s3://");
        if is_s3 && (self.object_storage_key.is_empty() || self.object_storage_secret.is_empty()) {
            return Err(invalid(
                "storage.object-storage-key",
                "an s3:// upload location needs object-storage-key and object-storage-secret",
            ));
        }
        if let Some(ca) = &self.ca_file
            && let Err(e) = std::fs::read(ca)
        {
            return Err(invalid(
                "storage.ca-file",
                &format!("{} cannot be read: {e}", ca.display()),
            ));
        }
        let storage = StorageConfig {
            upload_location,
            key: self.object_storage_key.clone(),
            secret: self.object_storage_secret.clone(),
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            allow_http: self.allow_http,
            ca_file: self.ca_file.clone(),
            path_style: self.path_style,
            manifest_prefix: validate_manifest_prefix(&self.manifest_prefix)?,
        };
        // The upload stage's own check of the location, template and credentials.
        storage
            .upload_settings()
            .validate()
            .map_err(|e| invalid(&storage_key(e.field), &e.problem))?;
        Ok(storage)
    }
}

/// The `[storage]` key of an upload settings field.
fn storage_key(field: &str) -> String {
    match field {
        "location" => "storage.upload-location".into(),
        "access-key" => "storage.object-storage-key".into(),
        "secret-key" => "storage.object-storage-secret".into(),
        other => format!("storage.{other}"),
    }
}

fn validate_manifest_prefix(prefix: &str) -> Result<String, ConfigError> {
    let key = "storage.manifest-prefix";
    let p = prefix.trim().trim_matches('/');
    if p.is_empty() {
        return Err(invalid(
            key,
            "must not be empty (manifests need their own prefix)",
        ));
    }
    crate::upload::store::check_key(p).map_err(|e| invalid(key, &e.to_string()))?;
    if p.len() > crate::limits::FLEET_PREFIX_BYTES_MAX {
        return Err(invalid(key, "is too long"));
    }
    Ok(p.to_string())
}

/// The text of the config file at `path`, bounded by [`CONFIG_FILE_BYTES_MAX`] (the loader and
/// the settings page's editor read it the same way).
///
/// # Errors
/// [`ConfigError::Read`] or [`ConfigError::TooLarge`].
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            max: CONFIG_FILE_BYTES_MAX,
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

/// The machine's host name: the default `appliance-id`.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn validate_appliance_id(id: Option<&str>) -> Result<String, ConfigError> {
    let key = "appliance-id";
    let id = match id {
        Some(id) => id.trim().to_string(),
        // A host name this program did not choose must not stop the daemon: odd characters
        // become '-', and it is cut to the limit.
        None => system_hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .take(crate::limits::APPLIANCE_ID_BYTES_MAX)
            .collect(),
    };
    if id.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if id.len() > crate::limits::APPLIANCE_ID_BYTES_MAX {
        return Err(invalid(key, "is longer than 128 bytes"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            key,
            "may hold only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(id)
}

impl RawFleet {
    fn validate(&self, storage: &StorageConfig) -> Result<FleetConfig, ConfigError> {
        let key = "fleet.index";
        let index = self.index.trim().trim_end_matches('/').to_string();
        if !(index.starts_with("s3://") || index.starts_with("file://")) {
            return Err(invalid(key, "must start with s3:// or file://"));
        }
        if index.starts_with("s3://") && (storage.key.is_empty() || storage.secret.is_empty()) {
            return Err(invalid(
                key,
                "an s3:// index needs storage.object-storage-key and object-storage-secret",
            ));
        }
        if index.contains('{') {
            return Err(invalid(key, "the prefix may not hold {variables}"));
        }
        // The upload location parser knows bucket@endpoint forms; a dummy clip name after the
        // prefix makes the index a location, and the template left before it is the prefix.
        const DUMMY: &str = "{session_id}-{clip_index}.mp4";
        let mut settings = storage.upload_settings();
        settings.location = format!("{index}/{DUMMY}");
        let location = settings.validate().map_err(|e| invalid(key, &e.problem))?;
        let prefix = location
            .template
            .as_str()
            .strip_suffix(DUMMY)
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        if self.trusted_keys.is_empty() {
            return Err(invalid(
                "fleet.trusted-keys",
                "list at least one appliance public key (session-recorder doctor prints it)",
            ));
        }
        let trusted_keys = crate::manifest::signed::TrustedKeys::from_hex(&self.trusted_keys)
            .map_err(|e| invalid("fleet.trusted-keys", &e))?;
        let poll = in_range(
            "fleet.poll-interval-s",
            self.poll_interval_s,
            range::FLEET_POLL_INTERVAL_S,
        )?;
        let rescan = in_range(
            "fleet.rescan-interval-s",
            self.rescan_interval_s,
            range::FLEET_RESCAN_INTERVAL_S,
        )?;
        Ok(FleetConfig {
            index,
            target: location.target,
            prefix,
            trusted_keys,
            trusted_keys_hex: self
                .trusted_keys
                .iter()
                .map(|k| k.trim().to_lowercase())
                .collect(),
            poll_interval_ms: poll * 1000,
            rescan_interval_ms: rescan * 1000,
            verify_bytes_per_s: match self.verify_bytes_per_s {
                0 => 0,
                v => in_range(
                    "fleet.verify-bytes-per-s",
                    v,
                    range::FLEET_VERIFY_BYTES_PER_S,
                )?,
            },
        })
    }
}

impl RawTap {
    fn validate(&self) -> Result<TapConfig, ConfigError> {
        let listen = socket_addr("tap.listen", &self.listen)?;
        let upstream = self.upstream.trim();
        match upstream.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err(invalid(
                    "tap.upstream",
                    "must be HOST:PORT, e.g. 127.0.0.1:4823",
                ));
            }
        }
        if self.enabled && upstream == self.listen.trim() {
            return Err(invalid(
                "tap.upstream",
                "must differ from tap.listen (the tap would connect to itself)",
            ));
        }
        let protocols = tap_protocols(&self.protocols)?;
        Ok(TapConfig {
            enabled: self.enabled,
            listen,
            upstream: upstream.to_string(),
            record_keys: self.record_keys,
            record_by_default: self.record_by_default,
            protocols,
        })
    }
}

impl RawHttp {
    fn validate(&self) -> Result<HttpConfig, ConfigError> {
        let listen = socket_addr("http.listen", &self.listen)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                for (key, p) in [("http.tls-cert", c), ("http.tls-key", k)] {
                    if !p.is_file() {
                        return Err(invalid(
                            key,
                            &format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
                Some((c.clone(), k.clone()))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "http.tls-key",
                    "tls-cert is set but tls-key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "http.tls-cert",
                    "tls-key is set but tls-cert is not",
                ));
            }
        };
        if self.enabled && tls.is_none() && !self.allow_plain_http && !listen.ip().is_loopback() {
            return Err(invalid(
                "http.allow-plain-http",
                "no tls-cert/tls-key configured for a non-loopback listen address; configure \
                 HTTPS or set allow-plain-http = true",
            ));
        }
        let display_timezone = match &self.display_timezone {
            Some(name) => crate::clock::DisplayZone::named(name)
                .map_err(|why| invalid("http.display-timezone", &why))?,
            None => crate::clock::DisplayZone::system(),
        };
        Ok(HttpConfig {
            enabled: self.enabled,
            listen,
            tls,
            display_timezone,
        })
    }
}

/// `tap.protocols`: guacd protocol names (its plugins are `libguac-client-NAME`), each at most
/// once, bounded like the tap's args cache.
fn tap_protocols(names: &[String]) -> Result<Vec<String>, ConfigError> {
    let key = "tap.protocols";
    if names.len() > crate::limits::TAP_ARGS_CACHE_ENTRIES_MAX {
        return Err(invalid(
            key,
            "lists more protocols than the tap keeps args for",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = name.trim();
        let valid = (1..=crate::limits::TAP_PROTOCOL_NAME_CHARS_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(invalid(
                key,
                "each entry must be a guacd protocol name such as \"vnc\", \"rdp\" or \"ssh\"",
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn in_range(key: &str, value: u64, (lo, hi): (u64, u64)) -> Result<u64, ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            &format!("{value} is not between {lo} and {hi}"),
        ))
    }
}

fn non_empty_path(key: &str, p: &Path) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() {
        Err(invalid(key, "must not be empty"))
    } else {
        Ok(p.to_path_buf())
    }
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(key, &format!("`{s}` is not an IP:PORT address")))
}

/// `p` made absolute against the current directory, without touching the filesystem.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_ocr_is_off_by_default_and_can_be_switched_on() {
        assert!(!Config::from_toml("").unwrap().search.ocr);
        let on = Config::from_toml("[search]\nocr = true\n").unwrap();
        assert!(on.search.ocr);
        assert!(Config::from_toml("[search]\nocr = 1\n").is_err());
    }

    #[test]
    fn fleet_section_is_validated() {
        let pk = hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .as_bytes(),
        );
        let ok = format!(
            "appliance-id = \"history-1\"\n[storage]\nobject-storage-key = \"k\"\n\
             object-storage-secret = \"s\"\n[fleet]\nindex = \"s3://rec@10.0.0.5:3900/fleet/manifests\"\n\
             trusted-keys = [\"{pk}\"]\n"
        );
        let c = Config::from_toml(&ok).unwrap();
        assert_eq!(c.appliance_id, "history-1");
        let f = c.fleet.unwrap();
        assert_eq!(f.prefix, "fleet/manifests");
        assert_eq!(f.trusted_keys.len(), 1);
        assert_eq!(f.verify_bytes_per_s, default_fleet_verify_bytes_per_s());
        assert!(
            matches!(f.target, crate::upload::StoreTarget::S3 { ref bucket, .. } if bucket == "rec")
        );
        let off = Config::from_toml(&format!("{ok}verify-bytes-per-s = 0\n")).unwrap();
        assert_eq!(off.fleet.unwrap().verify_bytes_per_s, 0);
        for (bad, named) in [
            (ok.replace(&pk, "abc"), "fleet.trusted-keys"),
            (ok.replace(&format!("\"{pk}\""), ""), "fleet.trusted-keys"),
            (ok.replace("s3://rec@", "http://rec@"), "fleet.index"),
            (ok.replace("manifests", "{user_id}"), "fleet.index"),
            (ok.replace("history-1", "a b"), "appliance-id"),
            (
                format!("{ok}verify-bytes-per-s = 1000\n"),
                "fleet.verify-bytes-per-s",
            ),
        ] {
            let e = Config::from_toml(&bad).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
        let no_keys = ok.replace("object-storage-key = \"k\"", "");
        assert!(
            Config::from_toml(&no_keys)
                .unwrap_err()
                .to_string()
                .contains("fleet.index")
        );
        // Without a [fleet] section, an appliance; its id defaults to the host name.
        let c = Config::from_toml("").unwrap();
        assert!(c.fleet.is_none());
        assert!(!c.appliance_id.is_empty());
        assert_eq!(c.storage.manifest_prefix, "manifests");
    }

    fn err_key(text: &str) -> String {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(e) => format!("other: {e}"),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let c = Config::from_toml("").expect("defaults validate");
        assert_eq!(c.disk_floor_bytes, 500 * MB);
        assert_eq!(c.segment_bytes_max, 150 * MB);
        assert_eq!(c.retention_hours, 24);
        assert_eq!(c.queue_length, 2);
        assert_eq!(c.retention.segment_ms, 24 * 3_600_000);
        assert_eq!(c.retention.history_ms, 365 * 24 * 3_600_000);
        assert_eq!(c.retention.audit_ms, 730 * 24 * 3_600_000);
        assert_eq!(c.video.fps, 10);
        assert_eq!(c.video.keyframe_frames, 50);
        assert_eq!(c.video.bitrate_bps, 2_000_000);
        assert!(c.storage.upload_location.starts_with("file:///"));
        assert!(c.http.tls.is_none());
        assert_eq!(c.spool_dir, PathBuf::from("./data/spool"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Config::from_toml("queue-lenght = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue-lenght"), "{e}");
        let e = Config::from_toml("[video]\nfps = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fps"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        assert_eq!(err_key("queue-length = 0"), "queue-length");
        assert_eq!(err_key("[video]\nframerate = 1000"), "video.framerate");
        assert_eq!(
            err_key("[video]\nkeyframe-frames = 9"),
            "video.keyframe-frames"
        );
        assert_eq!(
            err_key("[video]\nkeyframe-frames = 301"),
            "video.keyframe-frames"
        );
        assert_eq!(
            Config::from_toml("[video]\nkeyframe-frames = 300")
                .expect("in range")
                .video
                .keyframe_frames,
            300
        );
        assert_eq!(err_key("[video]\nwidth = 1280"), "video.width");
        assert_eq!(
            err_key("[video]\nwidth = 100000\nheight = 10"),
            "video.width"
        );
        // The encoder's own limit (H.264 level 5.1: 4096x2304), not only the config's range.
        assert_eq!(
            err_key("[video]\nwidth = 5120\nheight = 2880"),
            "video.width"
        );
        assert_eq!(
            err_key("[video]\nwidth = 4096\nheight = 2880"),
            "video.height"
        );
        assert_eq!(err_key("[video]\nwidth = 4096\nheight = 2304"), "ok");
        assert_eq!(err_key("retention-hours = 0"), "retention-hours");
        assert_eq!(err_key("[tap]\nlisten = \"nonsense\""), "tap.listen");
        assert_eq!(err_key("[tap]\nupstream = \"host\""), "tap.upstream");
        assert_eq!(err_key("[tap]\nprotocols = [\"$join\"]"), "tap.protocols");
        assert_eq!(err_key("[tap]\nprotocols = [\"\"]"), "tap.protocols");
        assert_eq!(
            err_key("[storage]\nupload-location = \"s3://b/x.mp4\""),
            "storage.object-storage-key"
        );
        assert_eq!(
            err_key("[storage]\nupload-location = \"ftp://b/x.mp4\""),
            "storage.upload-location"
        );
        assert_eq!(
            err_key("[http]\nlisten = \"0.0.0.0:443\""),
            "http.allow-plain-http"
        );
        assert_eq!(
            err_key("[http]\ntls-cert = \"/nonexistent\""),
            "http.tls-key"
        );
        assert_eq!(
            err_key("[http]\ndisplay-timezone = \"Europe/Nowhere\""),
            "http.display-timezone"
        );
    }

    #[test]
    fn absurd_retention_settings_are_refused_with_a_reason() {
        let msg = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert_eq!(
            err_key("history-retention-days = 0"),
            "history-retention-days"
        );
        assert_eq!(
            err_key("history-retention-days = 100000"),
            "history-retention-days"
        );
        assert_eq!(err_key("audit-retention-days = 1"), "audit-retention-days");
        assert_eq!(
            err_key("audit-retention-days = 99999999"),
            "audit-retention-days"
        );
        assert_eq!(
            err_key("segment-retention-hours = 9000"),
            "segment-retention-hours"
        );
        // Consistency with the local clip retention and between the two.
        let e = msg("retention-hours = 72\nhistory-retention-days = 3");
        assert!(
            e.contains("history-retention-days") && e.contains("retention-hours (72 h)"),
            "{e}"
        );
        let e = msg("history-retention-days = 2\nsegment-retention-hours = 48");
        assert!(
            e.contains("segment-retention-hours") && e.contains("outlive"),
            "{e}"
        );
        // Edges that are fine: immediate deletion of raw segments, a short history.
        let c = Config::from_toml("segment-retention-hours = 0\nhistory-retention-days = 2")
            .expect("valid");
        assert_eq!(c.retention.segment_ms, 0);
        assert_eq!(c.retention.history_ms, 2 * 86_400_000);
    }

    #[test]
    fn secrets_never_print() {
        let raw = RawConfig::from_toml(
            "[storage]\nupload-location = \"s3://bkt/{session_id}-{clip_index}.mp4\"\nobject-storage-key = \"AKIAKEY\"\nobject-storage-secret = \"hunter2\"",
            Path::new("t"),
        )
        .unwrap();
        let c = raw.validate().unwrap();
        let dbg = format!("{c:?} {raw:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("AKIAKEY"), "{dbg}");
        let masked = raw.to_masked_toml();
        assert!(!masked.contains("hunter2"));
        assert_eq!(c.storage.secret.expose(), "hunter2");
    }
}
