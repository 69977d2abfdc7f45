//! Segment -> H.264 MP4 clip and JPEG thumbnail.
//!
//! [`encode_recording`] reads a Guacamole recording (a segment), renders it with
//! [`crate::render::Display`], and writes an MP4 and a thumbnail. The pieces, in data order:
//!
//! - `timeline`: which frame boundaries become video frames, with which timestamps, and when a
//!   keyframe is due (variable frame durations: idle time costs nothing);
//! - `convert`: flattened RGB frame -> I420 at the output size (scaling, letterboxing, padding);
//! - `rate`: our rate control: a constant quantiser per frame, raised only as far as the bitrate
//!   cap needs (a sliding one-second window), and the scene-cut decision from what the stream
//!   says changed and moved;
//! - `x264`: a small safe wrapper over `x264-sys` (per-frame quantiser, one thread, forced IDR);
//! - `mux`: faststart MP4 with variable sample durations, streamed to disk;
//! - `thumb`: the JPEG thumbnail;
//! - `cli`: the `encode` sub-command, a drop-in for guacenc's flags.
//!
//! Does not own the encoder threads of the daemon (`worker.rs`) nor the queue: the daemon calls
//! [`encode_recording`] on a pinned thread and records the [`ClipReport`].

pub mod cli;
pub mod convert;
pub mod mux;
mod pipeline;
pub mod rate;
pub mod thumb;
pub mod timeline;
pub mod worker;
pub mod x264;

pub use pipeline::{
    ClipReport, encode_recording, encode_recording_with_events, encode_recording_x264_floor,
};
pub use worker::{EncodeWorker, SegmentEncoder, X264SegmentEncoder, state_path};

use crate::error::Classify;
use crate::limits::{
    VIDEO_BITRATE_BPS_MAX, VIDEO_BITRATE_BPS_MIN, VIDEO_FPS_MAX, VIDEO_FPS_MIN,
    VIDEO_HEIGHT_PX_MAX, VIDEO_KEYFRAME_FRAMES_DEFAULT, VIDEO_KEYFRAME_FRAMES_MAX,
    VIDEO_KEYFRAME_FRAMES_MIN, VIDEO_QP_DEFAULT, VIDEO_QP_MAX, VIDEO_QP_MIN, VIDEO_SIDE_PX_MIN,
    VIDEO_THREADS_MAX, VIDEO_WIDTH_PX_MAX,
};

/// x264 speed/quality preset. `Veryfast` is the default, by measurement on the sample
/// recordings (CPU s / bytes, three recordings): `ultrafast` saves ~30 % CPU but writes 45-85 %
/// more bytes, `superfast` saves ~10 % CPU for 10-15 % more bytes; on screen content most of
/// the time goes to fixed per-frame work, so slower presets buy little speed back. Those
/// figures predate the screen-content search that `x264::Encoder::open` adds to `veryfast` and
/// slower (umh search over 48 px, 2 references, trellis: -20 to -37 % bytes, +2 to +15 % CPU,
/// up to +40 % on one clip); `ultrafast` and `superfast` run as x264 defines them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// x264 `ultrafast`.
    Ultrafast,
    /// x264 `superfast`.
    Superfast,
    /// x264 `veryfast`.
    Veryfast,
    /// x264 `faster`.
    Faster,
    /// x264 `fast`.
    Fast,
    /// x264 `medium`.
    Medium,
}

impl Preset {
    /// x264's name for the preset.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ultrafast => "ultrafast",
            Self::Superfast => "superfast",
            Self::Veryfast => "veryfast",
            Self::Faster => "faster",
            Self::Fast => "fast",
            Self::Medium => "medium",
        }
    }
}

/// How clips are encoded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VideoSettings {
    /// Output width in pixels; `None`: the recording's native width (or from `height` with the
    /// native aspect). Odd values are padded to even.
    pub width: Option<u32>,
    /// Output height in pixels; `None` as for `width`.
    pub height: Option<u32>,
    /// Frame rate cap (frames are emitted only when the screen changed).
    pub fps: u32,
    /// Bitrate cap in bits per second: no window of `VIDEO_RATE_WINDOW_MS` holds more (see
    /// `rate`); static screens cost far less.
    pub bitrate_max_bps: u64,
    /// The P-frame quantiser while the cap allows it (lower is better and bigger); IDR frames
    /// get `VIDEO_IDR_QP_OFFSET` less.
    pub qp: i32,
    /// An IDR frame at least every this many encoded frames (`video.keyframe-frames`).
    pub keyframe_frames: u32,
    /// x264 preset.
    pub preset: Preset,
    /// Encoder threads; 1 (default) gives deterministic output, and the daemon runs one
    /// encoder per core.
    pub threads: u32,
}

/// Default frame rate cap.
pub const FPS_DEFAULT: u32 = 10;
/// Default bitrate cap, bits per second.
pub const BITRATE_MAX_BPS_DEFAULT: u64 = 2_000_000;
/// Default P-frame quantiser (see [`VIDEO_QP_DEFAULT`]).
pub const QP_DEFAULT: i32 = VIDEO_QP_DEFAULT;

impl Default for VideoSettings {
    fn default() -> Self {
        Self {
            width: None,
            height: None,
            fps: FPS_DEFAULT,
            bitrate_max_bps: BITRATE_MAX_BPS_DEFAULT,
            qp: QP_DEFAULT,
            keyframe_frames: VIDEO_KEYFRAME_FRAMES_DEFAULT,
            preset: Preset::Veryfast,
            threads: 1,
        }
    }
}

/// A setting outside its limits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// Width outside `VIDEO_SIDE_PX_MIN..=VIDEO_WIDTH_PX_MAX`.
    #[error("width {value} px is not between {min} and {max} px")]
    Width {
        /// Value given.
        value: u32,
        /// Lowest accepted.
        min: u32,
        /// Highest accepted.
        max: u32,
    },
    /// Height outside `VIDEO_SIDE_PX_MIN..=VIDEO_HEIGHT_PX_MAX`.
    #[error("height {value} px is not between {min} and {max} px")]
    Height {
        /// Value given.
        value: u32,
        /// Lowest accepted.
        min: u32,
        /// Highest accepted.
        max: u32,
    },
    /// Frame rate outside `VIDEO_FPS_MIN..=VIDEO_FPS_MAX`.
    #[error("{value} frames per second is not between {min} and {max}")]
    Fps {
        /// Value given.
        value: u32,
        /// Lowest accepted.
        min: u32,
        /// Highest accepted.
        max: u32,
    },
    /// Bitrate cap outside `VIDEO_BITRATE_BPS_MIN..=VIDEO_BITRATE_BPS_MAX`.
    #[error("bitrate {value} b/s is not between {min} and {max} b/s")]
    Bitrate {
        /// Value given.
        value: u64,
        /// Lowest accepted.
        min: u64,
        /// Highest accepted.
        max: u64,
    },
    /// Quantiser outside `VIDEO_QP_MIN..=VIDEO_QP_MAX`.
    #[error("quantiser {value} is not between {min} and {max}")]
    Qp {
        /// Value given.
        value: i32,
        /// Lowest accepted.
        min: i32,
        /// Highest accepted.
        max: i32,
    },
    /// Keyframe interval outside `VIDEO_KEYFRAME_FRAMES_MIN..=VIDEO_KEYFRAME_FRAMES_MAX`.
    #[error("keyframe-frames {value} out of range {min}..={max}")]
    KeyframeFrames {
        /// Value given.
        value: u32,
        /// Lowest accepted.
        min: u32,
        /// Highest accepted.
        max: u32,
    },
    /// Thread count outside `1..=VIDEO_THREADS_MAX`.
    #[error("threads {value} out of range 1..={max}")]
    Threads {
        /// Value given.
        value: u32,
        /// Highest accepted.
        max: u32,
    },
}

impl VideoSettings {
    /// Checks every field against its limits.
    ///
    /// # Errors
    /// The first [`SettingsError`] found.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(value) = self.width
            && !(VIDEO_SIDE_PX_MIN..=VIDEO_WIDTH_PX_MAX).contains(&value)
        {
            return Err(SettingsError::Width {
                value,
                min: VIDEO_SIDE_PX_MIN,
                max: VIDEO_WIDTH_PX_MAX,
            });
        }
        if let Some(value) = self.height
            && !(VIDEO_SIDE_PX_MIN..=VIDEO_HEIGHT_PX_MAX).contains(&value)
        {
            return Err(SettingsError::Height {
                value,
                min: VIDEO_SIDE_PX_MIN,
                max: VIDEO_HEIGHT_PX_MAX,
            });
        }
        if !(VIDEO_FPS_MIN..=VIDEO_FPS_MAX).contains(&self.fps) {
            return Err(SettingsError::Fps {
                value: self.fps,
                min: VIDEO_FPS_MIN,
                max: VIDEO_FPS_MAX,
            });
        }
        if !(VIDEO_BITRATE_BPS_MIN..=VIDEO_BITRATE_BPS_MAX).contains(&self.bitrate_max_bps) {
            return Err(SettingsError::Bitrate {
                value: self.bitrate_max_bps,
                min: VIDEO_BITRATE_BPS_MIN,
                max: VIDEO_BITRATE_BPS_MAX,
            });
        }
        if !(VIDEO_QP_MIN..=VIDEO_QP_MAX).contains(&self.qp) {
            return Err(SettingsError::Qp {
                value: self.qp,
                min: VIDEO_QP_MIN,
                max: VIDEO_QP_MAX,
            });
        }
        if !(VIDEO_KEYFRAME_FRAMES_MIN..=VIDEO_KEYFRAME_FRAMES_MAX).contains(&self.keyframe_frames)
        {
            return Err(SettingsError::KeyframeFrames {
                value: self.keyframe_frames,
                min: VIDEO_KEYFRAME_FRAMES_MIN,
                max: VIDEO_KEYFRAME_FRAMES_MAX,
            });
        }
        if !(1..=VIDEO_THREADS_MAX).contains(&self.threads) {
            return Err(SettingsError::Threads {
                value: self.threads,
                max: VIDEO_THREADS_MAX,
            });
        }
        Ok(())
    }

    /// The output size (before rounding up to even) for a recording whose native display is
    /// `native_w` x `native_h`: the configured size, the native one, or one side given and the
    /// other from the native aspect. Clamped to the limits.
    pub fn output_size(&self, native_w: u32, native_h: u32) -> (u32, u32) {
        assert!(native_w > 0, "native width must be known");
        assert!(native_h > 0, "native height must be known");
        let scaled = |a: u32, num: u32, den: u32| -> u32 {
            ((u64::from(a) * u64::from(num) + u64::from(den) / 2) / u64::from(den)) as u32
        };
        let (w, h) = match (self.width, self.height) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => (w, scaled(w, native_h, native_w)),
            (None, Some(h)) => (scaled(h, native_w, native_h), h),
            (None, None) => (native_w, native_h),
        };
        (
            w.clamp(VIDEO_SIDE_PX_MIN, VIDEO_WIDTH_PX_MAX),
            h.clamp(VIDEO_SIDE_PX_MIN, VIDEO_HEIGHT_PX_MAX),
        )
    }
}

/// Why a recording could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The settings are outside their limits.
    #[error("invalid video settings: {0}")]
    Settings(#[from] SettingsError),
    /// Reading the recording failed.
    #[error("reading recording at byte {offset}: {source}")]
    Read {
        /// Bytes consumed before the failure.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// The recording is not a Guacamole stream, or is corrupt at `offset`.
    #[error("recording corrupt at byte {offset}: {source}")]
    Corrupt {
        /// Byte offset where the stream broke.
        offset: u64,
        /// The parser's diagnosis.
        source: crate::guac::ParseError,
    },
    /// The recording holds no frame boundary (`sync`), so there is nothing to show.
    #[error("no frame in recording ({bytes} bytes read)")]
    NoFrames {
        /// Bytes read.
        bytes: u64,
    },
    /// The starting display state could not be restored.
    #[error("bad starting display state: {0}")]
    Snapshot(crate::render::RenderError),
    /// x264 failed.
    #[error("x264: {0}")]
    X264(#[from] x264::X264Error),
    /// Writing the MP4 failed.
    #[error("mp4: {0}")]
    Mux(#[from] mux::MuxError),
    /// Encoding the thumbnail failed.
    #[error("thumbnail: {0}")]
    Thumbnail(#[from] image::ImageError),
    /// A file operation on the outputs failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Classify for EncodeError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Read { source, .. } | Self::Io { source, .. } => source.is_transient(),
            Self::Mux(e) => e.is_transient(),
            Self::Thumbnail(image::ImageError::IoError(e)) => e.is_transient(),
            Self::Settings(_)
            | Self::Corrupt { .. }
            | Self::NoFrames { .. }
            | Self::Snapshot(_)
            | Self::X264(_)
            | Self::Thumbnail(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        VideoSettings::default().validate().expect("defaults valid");
    }

    #[test]
    fn absurd_settings_are_typed_errors() {
        let zero_fps = VideoSettings {
            fps: 0,
            ..Default::default()
        };
        assert!(matches!(
            zero_fps.validate(),
            Err(SettingsError::Fps { value: 0, .. })
        ));
        let huge = VideoSettings {
            width: Some(100_000),
            height: Some(100_000),
            ..Default::default()
        };
        assert!(matches!(
            huge.validate(),
            Err(SettingsError::Width { value: 100_000, .. })
        ));
        let lossless = VideoSettings {
            qp: 0,
            ..Default::default()
        };
        assert!(matches!(
            lossless.validate(),
            Err(SettingsError::Qp { value: 0, .. })
        ));
        for keyframe_frames in [9, 301] {
            let s = VideoSettings {
                keyframe_frames,
                ..Default::default()
            };
            assert!(matches!(
                s.validate(),
                Err(SettingsError::KeyframeFrames { .. })
            ));
        }
        let low_rate = VideoSettings {
            bitrate_max_bps: 1,
            ..Default::default()
        };
        assert!(matches!(
            low_rate.validate(),
            Err(SettingsError::Bitrate { .. })
        ));
    }

    #[test]
    fn one_side_given_keeps_native_aspect() {
        let s = VideoSettings {
            width: Some(640),
            ..Default::default()
        };
        assert_eq!(s.output_size(1280, 800), (640, 400));
        let s = VideoSettings {
            height: Some(360),
            ..Default::default()
        };
        assert_eq!(s.output_size(1366, 768), (640, 360));
        assert_eq!(VideoSettings::default().output_size(1023, 767), (1023, 767));
    }
}
