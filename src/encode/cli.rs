//! The `encode` sub-command: a drop-in for guacenc's flags,
//! `encode [-s WxH] [-r BITRATE] [--fps N] [-f] [-o OUT] FILE...`.
//!
//! Writes `FILE.mp4` (and the thumbnail `FILE.jpg` and the events object `FILE.events.json`)
//! beside each input unless `-o` names the output (one input only; `--events` names the events
//! object). Refuses to overwrite unless `-f`. Shows a progress bar only when
//! stdout is a terminal. Wired into `main.rs` by the lead; everything else is in
//! [`super::encode_recording`].

use std::fs::File;
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};

use super::{EncodeError, Preset, VideoSettings};
use crate::error::Classify;

/// Arguments of `encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// Output size WIDTHxHEIGHT (default: the recording's native size). The picture is scaled
    /// with its aspect kept and letterboxed; odd sizes are padded to even.
    #[arg(short = 's', long = "size", value_name = "WxH", value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Bitrate cap in bits per second (static screens use far less).
    #[arg(short = 'r', long = "bitrate", value_name = "BITRATE",
          default_value_t = super::BITRATE_MAX_BPS_DEFAULT)]
    pub bitrate: u64,
    /// Frame rate cap.
    #[arg(long = "fps", value_name = "N", default_value_t = super::FPS_DEFAULT)]
    pub fps: u32,
    /// Quantiser of P-frames while the bitrate cap allows (lower is better and bigger; IDR
    /// frames are coded a little finer).
    #[arg(long = "qp", default_value_t = super::QP_DEFAULT)]
    pub qp: i32,
    /// A keyframe at least every N encoded frames (what a seek decodes at most).
    #[arg(long = "keyframe-frames", value_name = "N",
          default_value_t = crate::limits::VIDEO_KEYFRAME_FRAMES_DEFAULT)]
    pub keyframe_frames: u32,
    /// x264 preset.
    #[arg(long = "preset", value_enum, default_value_t = Preset::Veryfast)]
    pub preset: Preset,
    /// Benchmarks: after encoding, run the same frames through x264 alone and print that CPU
    /// time (keeps every picture of the clip in memory).
    #[arg(long = "x264-floor", hide = true)]
    pub x264_floor: bool,
    /// Overwrite existing output files.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// The events object's path (only with a single input; default: beside the MP4 as
    /// `.events.json`).
    #[arg(long = "events", value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// Mask printable keys the screen did not echo (`search.mask-unechoed-input`).
    #[arg(long = "mask-unechoed-input", value_name = "BOOL", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub mask_unechoed_input: bool,
    /// Output MP4 path (only with a single input); the thumbnail goes beside it as `.jpg`.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Recordings to encode.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// Why the `encode` command failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeCliError {
    /// `-o` with more than one input.
    #[error("-o and --events need exactly one input file, got {count}")]
    OutputWithManyInputs {
        /// Inputs given.
        count: usize,
    },
    /// The output exists and `-f` was not given.
    #[error("{path} exists (use -f to overwrite)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The input cannot be opened.
    #[error("{path}: {source}")]
    Open {
        /// The input.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoding one input failed.
    #[error("{path}: {source}")]
    Encode {
        /// The input.
        path: PathBuf,
        /// The cause.
        source: EncodeError,
    },
    /// The events object cannot be written.
    #[error("{path}: {source}")]
    WriteEvents {
        /// The events object.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Several inputs failed (each was reported on stderr).
    #[error("{failed} of {total} recordings failed")]
    Several {
        /// Inputs that failed.
        failed: usize,
        /// Inputs given.
        total: usize,
    },
}

impl Classify for EncodeCliError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Open { source, .. } => source.is_transient(),
            Self::Encode { source, .. } => source.is_transient(),
            Self::WriteEvents { source, .. } => source.is_transient(),
            Self::OutputWithManyInputs { .. } | Self::Exists { .. } | Self::Several { .. } => false,
        }
    }
}

/// Parses `WIDTHxHEIGHT`.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {text:?}"))?;
    let num = |s: &str| s.trim().parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
    Ok((num(w)?, num(h)?))
}

impl EncodeArgs {
    /// The video settings these flags ask for.
    pub fn settings(&self) -> VideoSettings {
        VideoSettings {
            width: self.size.map(|s| s.0),
            height: self.size.map(|s| s.1),
            fps: self.fps,
            bitrate_max_bps: self.bitrate,
            qp: self.qp,
            keyframe_frames: self.keyframe_frames,
            preset: self.preset,
            ..VideoSettings::default()
        }
    }
}

/// Runs `encode`.
///
/// # Errors
/// [`EncodeCliError`]: bad flag combination, existing outputs without `-f`, or a failed input
/// (all inputs are attempted; the error summarises).
pub fn run(args: &EncodeArgs) -> Result<(), EncodeCliError> {
    if (args.output.is_some() || args.events.is_some()) && args.files.len() != 1 {
        return Err(EncodeCliError::OutputWithManyInputs {
            count: args.files.len(),
        });
    }
    let settings = args.settings();
    if let Err(source) = settings.validate() {
        return Err(EncodeCliError::Encode {
            path: args.files[0].clone(),
            source: source.into(),
        });
    }
    let mut errors = Vec::new();
    for input in &args.files {
        let mp4 = args
            .output
            .clone()
            .unwrap_or_else(|| with_suffix(input, "mp4"));
        let events = args
            .events
            .clone()
            .unwrap_or_else(|| mp4.with_extension("events.json"));
        let outputs = Outputs {
            mp4: &mp4,
            events: &events,
        };
        if let Err(e) = encode_one(input, outputs, &settings, args) {
            log::error!(
                "event=encode_failed input={} error=\"{e}\"",
                input.display()
            );
            errors.push(e);
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        failed => Err(EncodeCliError::Several {
            failed,
            total: args.files.len(),
        }),
    }
}

/// `path` with `.ext` appended (`a.guac` -> `a.guac.mp4`), as guacenc does.
fn with_suffix(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// Where one input's outputs go (the thumbnail beside the MP4).
#[derive(Debug, Clone, Copy)]
struct Outputs<'a> {
    mp4: &'a Path,
    events: &'a Path,
}

fn encode_one(
    input: &Path,
    outputs: Outputs<'_>,
    settings: &VideoSettings,
    args: &EncodeArgs,
) -> Result<(), EncodeCliError> {
    let Outputs { mp4, events } = outputs;
    let thumb = mp4.with_extension("jpg");
    for out in [mp4, thumb.as_path(), events] {
        if !args.force && out.exists() {
            return Err(EncodeCliError::Exists {
                path: out.to_owned(),
            });
        }
    }
    let open_err = |source| EncodeCliError::Open {
        path: input.to_owned(),
        source,
    };
    let file = File::open(input).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    let bar = std::io::stdout()
        .is_terminal()
        .then(|| progress_bar(len, input));
    let mut reader = BufReader::new(file);
    let started = std::time::Instant::now();
    let encode_err = |source| EncodeCliError::Encode {
        path: input.to_owned(),
        source,
    };
    let mut floor_ns = None;
    let report = if args.x264_floor {
        let (report, ns) = super::encode_recording_x264_floor(&mut reader, settings, mp4, &thumb)
            .map_err(encode_err)?;
        floor_ns = Some(ns);
        report
    } else {
        let extract = crate::events::extract::ExtractSettings {
            mask_unechoed_input: args.mask_unechoed_input,
        };
        super::encode_recording_with_events(
            &mut reader,
            settings,
            extract,
            None,
            None,
            [mp4, &thumb],
            &mut |done| {
                if let Some(bar) = &bar {
                    bar.set_position(done);
                }
            },
        )
        .map_err(encode_err)?
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let events_bytes = crate::events::format::to_bytes(&report.events);
    std::fs::write(events, &events_bytes).map_err(|source| EncodeCliError::WriteEvents {
        path: events.to_owned(),
        source,
    })?;
    println!(
        "{} -> {} ({}x{}, {:.1} s, {} frames, {} keyframes, {} bytes, encoded in {:.2} s{})",
        input.display(),
        mp4.display(),
        report.width,
        report.height,
        report.duration_ms as f64 / 1000.0,
        report.frames_encoded,
        report.keyframes,
        report.bytes_written,
        started.elapsed().as_secs_f64(),
        report
            .truncated_at
            .map(|o| format!(", truncated at byte {o}"))
            .unwrap_or_default()
    );
    // Where the time went and what the cap saw, for scripts/bench-encode.
    println!(
        "  x264 {:.3} s of CPU; {} scene cuts; moves: {} frames, {} bytes, x264 {:.3} s; \
         busiest 1 s window {} bytes",
        report.x264_ns as f64 / 1e9,
        report.scene_cuts,
        report.move_frames,
        report.move_frame_bytes,
        report.move_frame_x264_ns as f64 / 1e9,
        report.window_bytes_max
    );
    println!(
        "  events: {} in {} bytes ({})",
        report.events.events.len(),
        events_bytes.len(),
        events.display()
    );
    if let Some(ns) = floor_ns {
        println!(
            "  x264 floor {:.3} s (the same frames through x264 alone)",
            ns as f64 / 1e9
        );
    }
    Ok(())
}

fn progress_bar(len: u64, input: &Path) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(input.display().to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_flag_parses_guacenc_syntax() {
        assert_eq!(parse_size("640x360"), Ok((640, 360)));
        assert_eq!(parse_size("1023X767"), Ok((1023, 767)));
        assert!(parse_size("640").is_err());
        assert!(parse_size("ax3").is_err());
    }

    #[test]
    fn output_name_appends_the_extension() {
        assert_eq!(
            with_suffix(Path::new("/r/a.guac"), "mp4"),
            PathBuf::from("/r/a.guac.mp4")
        );
    }
}
