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

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::CONFIG_FILE_BYTES_MAX;

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

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
fn default_bitrate_kbps() -> u64 {
    2_000
}
fn default_framerate() -> u64 {
    10
}
fn default_keyframe_frames() -> u64 {
    u64::from(crate::limits::VIDEO_KEYFRAME_FRAMES_DEFAULT)
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

impl Default for RawTap {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_tap_listen(),
            upstream: default_tap_upstream(),
            record_keys: false,
            record_by_default: true,
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
    /// Retention period in milliseconds.
    pub retention_ms: u64,
    /// Encodes (and uploads) at once.
    pub queue_length: usize,
    /// Video settings.
    pub video: VideoConfig,
    /// Object storage.
    pub storage: StorageConfig,
    /// The tap.
    pub tap: TapConfig,
    /// HTTP(S).
    pub http: HttpConfig,
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
}

impl Config {
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
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::from_toml(&text, path)
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
        Ok(Config {
            data_dir: data_dir.clone(),
            spool_dir,
            disk_floor_bytes: disk_floor_mb * MB,
            segment_bytes_max: segment_mb * MB,
            retention_ms: retention_h * 3_600_000,
            queue_length: queue_length as usize,
            video: self.video.validate()?,
            storage: self.storage.validate(&data_dir)?,
            tap: self.tap.validate()?,
            http: self.http.validate()?,
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
        Ok(VideoConfig {
            bitrate_bps: kbps * 1000,
            fps: fps as u32,
            keyframe_frames: keyframe_frames as u32,
            size,
        })
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
            && !ca.is_file()
        {
            return Err(invalid(
                "storage.ca-file",
                &format!("{} is not a readable file", ca.display()),
            ));
        }
        Ok(StorageConfig {
            upload_location,
            key: self.object_storage_key.clone(),
            secret: self.object_storage_secret.clone(),
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            allow_http: self.allow_http,
            ca_file: self.ca_file.clone(),
            path_style: self.path_style,
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
        Ok(TapConfig {
            enabled: self.enabled,
            listen,
            upstream: upstream.to_string(),
            record_keys: self.record_keys,
            record_by_default: self.record_by_default,
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
        Ok(HttpConfig {
            enabled: self.enabled,
            listen,
            tls,
        })
    }
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
            &format!("{value} is outside the allowed range {lo}..={hi}"),
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
        assert_eq!(c.retention_ms, 24 * 3_600_000);
        assert_eq!(c.queue_length, 2);
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
        assert_eq!(err_key("retention-hours = 0"), "retention-hours");
        assert_eq!(err_key("[tap]\nlisten = \"nonsense\""), "tap.listen");
        assert_eq!(err_key("[tap]\nupstream = \"host\""), "tap.upstream");
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
    }

    #[test]
    fn secrets_never_print() {
        let raw = RawConfig::from_toml(
            "[storage]\nupload-location = \"s3://b/{session_id}-{clip_index}.mp4\"\nobject-storage-key = \"AKIAKEY\"\nobject-storage-secret = \"hunter2\"",
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
