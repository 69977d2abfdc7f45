//! The encode pipeline for one recording: bytes -> parser -> display -> (at sampled frame
//! boundaries) flatten -> I420 -> x264 -> MP4, plus the thumbnail, written to temp files that are
//! renamed into place only on success.
//!
//! Frame boundaries are `sync` and timestamped `mouse` instructions (a pointer can move with no
//! `sync`). Instructions after a boundary are held back until the next boundary arrives, so the
//! timeline knows how long the current state stays on screen before deciding whether it is
//! sampled (see `timeline`). Called by the daemon's encoder workers and the `encode` CLI.
//!
//! Work follows change: the flatten's damaged rectangles drive the conversion, and the
//! macroblocks the conversion left alone are passed to x264 as unchanged (a repeat of the last
//! picture: all of them). What the stream moved (`copy` within the screen: scrolls, window
//! drags) is motion: it never makes a frame a scene cut, and the motion search is widened for
//! that frame when the move is longer than the usual range reaches. A converted change the
//! rate control cannot fit under the cap waits (`Pending`), merged with the next tick's, and
//! is encoded late rather than over the cap.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use super::convert::{Converter, I420, Region, SAD_UNKNOWN};
use super::mux::Mp4Writer;
use super::rate::{Decision, FramePlan, QP_BINS, RateControl, is_scene_cut};
use super::thumb::ThumbPicker;
use super::timeline::Timeline;
use super::x264::{Encoder, X264Params};
use super::{EncodeError, VideoSettings};
use crate::events::ClipEvents;
use crate::events::extract::{ExtractSettings, Extractor};
use crate::guac::{Instruction, Parser};
use crate::limits::{
    ENCODE_LOOKAHEAD_BYTES_MAX, ENCODE_READ_CHUNK_BYTES, ENCODE_RENDER_ERRORS_LOGGED_MAX,
    VIDEO_ME_RANGE_MOVE_PX_MAX, VIDEO_MOVED_COST_DIVISOR, VIDEO_NEW_MB_COST_MIN,
};
use crate::render::{Display, DisplaySnapshot, Move};

/// What one encoded clip contains.
#[derive(Debug, Clone)]
pub struct ClipReport {
    /// guacd timestamp of the first `sync` (ms, guacd's monotonic clock).
    pub first_sync_ms: u64,
    /// guacd timestamp of the last frame boundary encoded.
    pub last_sync_ms: u64,
    /// Video duration in ms: from the first `sync` to the end of the segment's span when
    /// given, else to half a frame period after the last boundary.
    pub duration_ms: u64,
    /// Frames encoded, keyframe repeats included.
    pub frames_encoded: u64,
    /// Of which IDR frames.
    pub keyframes: u64,
    /// Of the IDR frames, those that were scene cuts (most of the screen new).
    pub scene_cuts: u64,
    /// Frames in which the stream moved content within the screen (scrolls, drags).
    pub move_frames: u64,
    /// Ticks at which a changed picture waited for room under the bitrate cap.
    pub waits: u64,
    /// Their bytes (access units).
    pub move_frame_bytes: u64,
    /// Their CPU time inside x264, ns.
    pub move_frame_x264_ns: u64,
    /// CPU time spent inside x264 for the whole clip (thread CPU clock), ns.
    pub x264_ns: u64,
    /// The most bytes in any window of `VIDEO_RATE_WINDOW_MS` (ending at a frame).
    pub window_bytes_max: u64,
    /// Blobs of non-image streams (clipboard, file, audio...) skipped.
    pub other_stream_blobs: u64,
    /// Output picture size (even).
    pub width: u32,
    /// Output picture height (even).
    pub height: u32,
    /// Size of the MP4 in bytes.
    pub bytes_written: u64,
    /// Size of the thumbnail in bytes.
    pub thumb_bytes: u64,
    /// Bytes of the recording consumed.
    pub input_bytes: u64,
    /// Set when the recording ended mid-instruction: the byte offset of the incomplete tail.
    pub truncated_at: Option<u64>,
    /// Instructions the renderer rejected (logged, skipped).
    pub render_errors: u64,
    /// The display at the end, for the next segment of the same session.
    pub end_state: DisplaySnapshot,
    /// What was typed, copied, transferred and titled in the clip, and its activity.
    pub events: ClipEvents,
}

/// Encodes the recording read from `input` into `out_mp4` and `out_thumb`.
///
/// `start` is the display state at the start of this segment (the previous segment's
/// [`ClipReport::end_state`]), `None` for a session's first segment. `hold_until_ms` is how
/// long the segment's span lasts, ms after its first `sync` (the session ended, or the next
/// segment started, that long after it): the last picture stays on screen until then as one
/// long MP4 sample, no frame encoded for it. `None` (or a span shorter than the stream) ends
/// the clip half a frame after its last boundary. `progress` is called with
/// the number of input bytes consumed so far. Outputs are written to temp files beside them and
/// renamed on success; on error no output file is left (existing files are replaced only on
/// success).
///
/// A recording that ends mid-instruction (cut short) is encoded up to its last complete frame
/// boundary, logged with the offset, and reported in [`ClipReport::truncated_at`].
///
/// # Errors
/// [`EncodeError`]: invalid settings, unreadable or corrupt input (with the byte offset), no
/// frame at all, encoder or file failures.
pub fn encode_recording(
    input: &mut dyn Read,
    settings: &VideoSettings,
    start: Option<&DisplaySnapshot>,
    hold_until_ms: Option<u64>,
    out_mp4: &Path,
    out_thumb: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<ClipReport, EncodeError> {
    encode_recording_with_events(
        input,
        settings,
        ExtractSettings::default(),
        start,
        hold_until_ms,
        [out_mp4, out_thumb],
        progress,
    )
}

/// [`encode_recording`] with the events taken as `extract` says (the daemon passes
/// `search.mask-unechoed-input`); `outputs` are the MP4 and the thumbnail. The events are in
/// [`ClipReport::events`]; writing them is the caller's.
///
/// # Errors
/// As [`encode_recording`].
pub fn encode_recording_with_events(
    input: &mut dyn Read,
    settings: &VideoSettings,
    extract: ExtractSettings,
    start: Option<&DisplaySnapshot>,
    hold_until_ms: Option<u64>,
    outputs: [&Path; 2],
    progress: &mut dyn FnMut(u64),
) -> Result<ClipReport, EncodeError> {
    let [out_mp4, out_thumb] = outputs;
    settings.validate()?;
    let display = match start {
        Some(snapshot) => Display::from_snapshot(snapshot).map_err(EncodeError::Snapshot)?,
        None => Display::new(),
    };
    let tmp_mp4 = TempFile::beside(out_mp4);
    let tmp_thumb = TempFile::beside(out_thumb);
    let mut run = Run::new(settings, display, tmp_mp4.path.clone());
    run.extractor = Extractor::new(extract);
    run.hold_until_ms = hold_until_ms;
    run.read_all(input, progress)?;
    let done = run.finish(&tmp_thumb.path)?;
    tmp_mp4.commit(out_mp4)?;
    tmp_thumb.commit(out_thumb)?;
    Ok(done.0)
}

/// [`encode_recording`] for benchmarks, then the same x264 calls again (every picture, flag,
/// quantiser and search range kept in memory, so this needs the whole clip's pictures in RAM)
/// through a fresh encoder alone: returns the report and the CPU time of that replay in ns,
/// the floor of what any encoder around x264 could cost.
///
/// # Errors
/// As [`encode_recording`].
pub fn encode_recording_x264_floor(
    input: &mut dyn Read,
    settings: &VideoSettings,
    out_mp4: &Path,
    out_thumb: &Path,
) -> Result<(ClipReport, u64), EncodeError> {
    settings.validate()?;
    let tmp_mp4 = TempFile::beside(out_mp4);
    let tmp_thumb = TempFile::beside(out_thumb);
    let mut run = Run::new(settings, Display::new(), tmp_mp4.path.clone());
    run.capture = Some(Vec::new());
    run.read_all(input, &mut |_| {})?;
    let (report, capture) = run.finish(&tmp_thumb.path)?;
    tmp_mp4.commit(out_mp4)?;
    tmp_thumb.commit(out_thumb)?;
    let Some((params, frames)) = capture else {
        return Ok((report, 0));
    };
    let mut encoder = Encoder::open(&params)?;
    encoder.headers()?;
    let started = super::x264::thread_cpu_ns();
    for f in &frames {
        encoder.set_me_range(f.me_range)?;
        encoder.encode_changed(&f.picture, f.pts, f.idr, Some(&f.changed), Some(f.qp))?;
    }
    Ok((report, super::x264::thread_cpu_ns() - started))
}

/// One x264 call, kept for the floor replay.
struct Captured {
    picture: I420,
    pts: i64,
    idr: bool,
    changed: Vec<bool>,
    qp: i32,
    me_range: u32,
}

/// A temp file beside the final path, removed on drop unless committed.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    fn beside(target: &Path) -> Self {
        let name = target
            .file_name()
            .map_or_else(|| "clip".to_owned(), |n| n.to_string_lossy().into_owned());
        let path = target.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        Self {
            path,
            committed: false,
        }
    }

    fn commit(mut self, target: &Path) -> Result<(), EncodeError> {
        std::fs::rename(&self.path, target).map_err(|source| EncodeError::Io {
            path: target.to_owned(),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The encoder side, opened at the first emitted frame (when the output size is known).
struct Output {
    converter: Converter,
    picture: I420,
    /// A macroblock map with nothing changed (for repeats of the same picture).
    unchanged: Vec<bool>,
    encoder: Encoder,
    mp4: Mp4Writer,
    rate: RateControl,
    /// What the encoder was opened with (for the floor replay).
    params: X264Params,
    /// Macroblocks the last new picture coded.
    last_coded_mbs: u64,
    /// Per macroblock: the quantiser it was last coded at (as x264 judges its reference).
    mb_qp: Vec<i32>,
    /// Output pixels per display pixel, per mille (for move distances).
    scale_permille: u64,
    /// Changes converted into `picture` but not yet encoded (the rate control made them
    /// wait), merged with the next picture's.
    pending: Pending,
}

/// What waiting pictures changed, per macroblock and in all.
#[derive(Debug, Clone, Default)]
struct Pending {
    /// Some picture converted since the last encoded one changed something.
    any: bool,
    changed: Vec<bool>,
    /// Macroblocks whose content is new (not moved, not noise).
    new: Vec<bool>,
    cost: f64,
    moved: bool,
    me_range: u32,
}

impl Pending {
    fn new(mbs: usize) -> Self {
        Self {
            changed: vec![false; mbs],
            new: vec![false; mbs],
            ..Self::default()
        }
    }

    fn clear(&mut self) {
        self.any = false;
        self.changed.fill(false);
        self.new.fill(false);
        self.cost = 0.0;
        self.moved = false;
        self.me_range = 0;
    }
}

/// What the stream says about one new picture.
#[derive(Debug, Clone, Copy, Default)]
struct Change {
    /// Content moved within the screen.
    moved: bool,
    /// The frame is a scene cut.
    scene_cut: bool,
    /// The rate control's measure of the change.
    cost: f64,
}

/// Frame counters of a run, for the report.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    frames: u64,
    waits: u64,
    keyframes: u64,
    scene_cuts: u64,
    move_frames: u64,
    move_frame_bytes: u64,
    move_frame_x264_ns: u64,
    window_bytes_max: u64,
}

/// State of one encode run.
struct Run<'s> {
    settings: &'s VideoSettings,
    display: Display,
    parser: Parser,
    timeline: Timeline,
    mp4_path: PathBuf,
    output: Option<Output>,
    thumbs: ThumbPicker,
    /// Instructions after the current boundary, waiting for the next boundary's timestamp.
    held: Vec<Instruction>,
    held_bytes: u64,
    /// Video ms of the current boundary (the state on screen since then).
    current_ms: Option<u64>,
    /// The current state was already encoded without knowing its end (look-ahead overflow).
    current_decided: bool,
    last_boundary_ms: u64,
    counts: Counts,
    render_errors: u64,
    truncated_at: Option<u64>,
    input_bytes: u64,
    /// Every x264 call, when measuring the floor.
    capture: Option<Vec<Captured>>,
    /// Video ms until which the last picture stays on screen (the segment's span).
    hold_until_ms: Option<u64>,
    /// Takes the clip's events from each instruction as it is applied.
    extractor: Extractor,
}

impl<'s> Run<'s> {
    fn new(settings: &'s VideoSettings, display: Display, mp4_path: PathBuf) -> Self {
        Self {
            settings,
            display,
            parser: Parser::new(),
            timeline: Timeline::new(settings.fps, settings.keyframe_frames),
            mp4_path,
            output: None,
            thumbs: ThumbPicker::default(),
            held: Vec::new(),
            held_bytes: 0,
            current_ms: None,
            current_decided: false,
            last_boundary_ms: 0,
            counts: Counts::default(),
            render_errors: 0,
            truncated_at: None,
            input_bytes: 0,
            capture: None,
            hold_until_ms: None,
            extractor: Extractor::new(ExtractSettings::default()),
        }
    }

    /// Reads and processes the whole input.
    fn read_all(
        &mut self,
        input: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), EncodeError> {
        let mut chunk = vec![0u8; ENCODE_READ_CHUNK_BYTES];
        loop {
            let n = match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(EncodeError::Read {
                        offset: self.input_bytes,
                        source,
                    });
                }
            };
            self.input_bytes += n as u64;
            self.parser.push(&chunk[..n]);
            while let Some(instruction) = self.next_instruction()? {
                self.handle(instruction)?;
            }
            progress(self.input_bytes);
        }
        if self.parser.offset() < self.input_bytes {
            let offset = self.parser.offset();
            log::warn!(
                "event=recording_truncated offset={offset} bytes={} dropped_bytes={}",
                self.input_bytes,
                self.input_bytes - offset
            );
            self.truncated_at = Some(offset);
        }
        Ok(())
    }

    fn next_instruction(&mut self) -> Result<Option<Instruction>, EncodeError> {
        self.parser.next().map_err(|source| EncodeError::Corrupt {
            offset: source.offset(),
            source,
        })
    }

    /// One instruction: a frame boundary closes the held frame, anything else is held (or
    /// applied at once before the first boundary or after a look-ahead overflow).
    fn handle(&mut self, instruction: Instruction) -> Result<(), EncodeError> {
        let boundary = boundary_ms(&instruction);
        let is_sync = instruction.opcode == "sync";
        // A pointer event before the first sync is just state.
        let boundary = boundary.filter(|_| is_sync || self.timeline.started());
        let Some(timestamp_ms) = boundary else {
            if self.current_ms.is_some() && !self.current_decided {
                self.held_bytes += instruction.raw_len;
                self.held.push(instruction);
                if self.held_bytes > ENCODE_LOOKAHEAD_BYTES_MAX {
                    self.overflow()?;
                }
            } else {
                self.apply(&instruction);
            }
            return Ok(());
        };
        let next_ms = self.timeline.boundary(timestamp_ms);
        if let Some(current_ms) = self.current_ms
            && !self.current_decided
            && self.has_news()
            && let Some(pts) = self.timeline.sample_pts(current_ms, Some(next_ms))
        {
            self.emit(pts, current_ms, false)?;
        }
        for held in std::mem::take(&mut self.held) {
            self.apply(&held);
        }
        self.held_bytes = 0;
        self.apply(&instruction);
        self.current_ms = Some(next_ms);
        self.current_decided = false;
        self.last_boundary_ms = timestamp_ms;
        Ok(())
    }

    /// Too much held back: encode the current state now (at its first free tick), then apply
    /// what was held and stream the rest of this frame straight into the display.
    fn overflow(&mut self) -> Result<(), EncodeError> {
        let current_ms = self.current_ms.expect("only holding after a boundary");
        log::debug!("event=lookahead_overflow held_bytes={}", self.held_bytes);
        if self.has_news()
            && let Some(pts) = self.timeline.sample_pts(current_ms, None)
        {
            self.emit(pts, current_ms, false)?;
        }
        for held in std::mem::take(&mut self.held) {
            self.apply(&held);
        }
        self.held_bytes = 0;
        self.current_decided = true;
        Ok(())
    }

    /// Something to show: the display changed, or a converted change waits for room.
    fn has_news(&self) -> bool {
        self.display.is_dirty() || self.output.as_ref().is_some_and(|o| o.pending.any)
    }

    fn apply(&mut self, instruction: &Instruction) {
        let drawn_before = self.display.drawn_px();
        let applied = self.display.apply(instruction);
        let drawn = self.display.drawn_px() - drawn_before;
        self.extractor.instruction(instruction, drawn);
        if let Err(e) = applied {
            self.render_errors += 1;
            if self.render_errors <= ENCODE_RENDER_ERRORS_LOGGED_MAX {
                log::warn!(
                    "event=render_error offset={} opcode={} error=\"{e}\"",
                    instruction.offset,
                    instruction.opcode
                );
            }
        }
    }

    /// Renders, converts and encodes the display as the frame at `pts`; the rate control may
    /// make it wait (not when `last`: the clip's final state is always shown).
    fn emit(&mut self, pts: u64, at_ms: u64, last: bool) -> Result<(), EncodeError> {
        let (w, h) = self.display.size();
        if w == 0 || h == 0 {
            return Ok(()); // Nothing to show before the first `size`.
        }
        if self.output.is_none() {
            let mut out = open_output(self.settings, &self.timeline, w, h, &self.mp4_path)?;
            if pts > 0 {
                // The stream's clock ran before the display had a size (RDP: seconds): the
                // clip still starts at its first `sync`, black until the first picture, so
                // video time is session time.
                encode_blank_lead(&mut out, &mut self.counts, &mut self.capture)?;
            }
            self.output = Some(out);
        }
        self.repeat_refinements(pts)?;
        let (frame, damaged, moves) = self.display.flatten_changes();
        if self.thumbs.wants(at_ms) {
            self.thumbs.offer(frame, at_ms);
        }
        let out = self.output.as_mut().expect("opened above");
        // Only what the flatten recomposited can differ from the picture converted last time.
        out.converter.update(frame, damaged, &mut out.picture);
        let moved: Vec<Region> = moves
            .iter()
            .map(|m| out.converter.output_region(&m.to))
            .filter(|r| !r.is_empty())
            .collect();
        let me_range = move_me_range(moves, out.scale_permille, out.encoder.me_range_base());
        out.pending.merge(
            out.converter.changed_macroblocks(),
            out.converter.macroblock_cost(),
            out.converter.macroblock_activity(),
            &moved,
            out.converter.out_width(),
            me_range,
        );
        let due = self.timeline.needs_idr();
        let mbs = out.pending.changed.len() as u64;
        let new_mbs = out.pending.new.iter().filter(|&&n| n).count() as u64;
        // A scene cut is an IDR that was not due anyway (counted as such).
        let scene_cut = !due && is_scene_cut(new_mbs, mbs, self.timeline.frames_since_idr());
        let change = Change {
            moved: out.pending.moved,
            scene_cut,
            cost: out.pending.cost,
        };
        let idr = due || scene_cut;
        let plan = FramePlan {
            pts,
            idr,
            coded_mbs: if idr {
                mbs
            } else {
                out.pending.changed.iter().filter(|&&c| c).count() as u64
            },
            cost: if idr {
                out.converter.activity_total() as f64
            } else {
                change.cost
            },
            unchanged_by_qp: unchanged_by_qp(
                &out.pending.changed,
                &out.mb_qp,
                out.converter.macroblock_activity(),
            ),
        };
        let qp = match out.rate.choose(&plan, due) {
            Decision::Encode(qp) => qp,
            Decision::Wait if last => crate::limits::VIDEO_QP_MAX,
            Decision::Wait => {
                self.counts.waits += 1;
                log::trace!("event=frame_waits pts={pts} cost={:.0}", plan.cost);
                return Ok(());
            }
        };
        out.encoder.set_me_range(out.pending.me_range)?;
        out.last_coded_mbs = plan.coded_mbs;
        encode_one(
            out,
            &mut self.timeline,
            &plan,
            qp,
            Some(change),
            &mut self.counts,
            &mut self.capture,
        )?;
        out.pending.clear();
        Ok(())
    }

    /// Re-encodes the last picture wherever a refinement is due before `pts`.
    fn repeat_refinements(&mut self, pts: u64) -> Result<(), EncodeError> {
        let Some(out) = self.output.as_mut() else {
            return Ok(());
        };
        while let Some(due) = self.timeline.repeat_due(pts) {
            if out.pending.any {
                // The picture holds a change not yet encoded: that comes first.
                self.timeline.refine_skipped();
                break;
            }
            let idr = self.timeline.needs_idr();
            let plan = FramePlan {
                pts: due,
                idr,
                coded_mbs: out.last_coded_mbs,
                cost: if idr {
                    out.converter.activity_total() as f64
                } else {
                    0.0
                },
                unchanged_by_qp: unchanged_by_qp(
                    &out.unchanged,
                    &out.mb_qp,
                    out.converter.macroblock_activity(),
                ),
            };
            let Decision::Encode(qp) = out.rate.choose(&plan, idr) else {
                self.timeline.refine_skipped();
                break;
            };
            out.encoder.set_me_range(out.encoder.me_range_base())?;
            encode_one(
                out,
                &mut self.timeline,
                &plan,
                qp,
                None,
                &mut self.counts,
                &mut self.capture,
            )?;
        }
        Ok(())
    }

    /// Emits the final state, closes the MP4 and writes the thumbnail.
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
        thumb_path: &Path,
    ) -> Result<(ClipReport, Option<(X264Params, Vec<Captured>)>), EncodeError> {
        let Some(first_ms) = self.timeline.first_ms() else {
            return Err(EncodeError::NoFrames {
                bytes: self.input_bytes,
            });
        };
        let end_ms = self.timeline.last_video_ms();
        // Instructions after the last boundary never reached a frame: dropped.
        if !self.held.is_empty() {
            log::debug!("event=tail_dropped instructions={}", self.held.len());
        }
        // Their events still count (a key typed after the last frame).
        for held in &self.held {
            self.extractor.instruction(held, 0);
        }
        if self.has_news() || self.output.is_none() {
            let pts = self.timeline.final_pts(end_ms);
            self.emit(pts, end_ms, true)?;
        }
        let held_pts = self
            .hold_until_ms
            .map_or(0, |ms| ms * u64::from(self.settings.fps));
        let end_pts = self.timeline.end_pts(end_ms).max(held_pts);
        self.repeat_refinements(end_pts)?;
        let Some(out) = self.output.take() else {
            // Boundaries but never a display size: nothing was ever visible.
            return Err(EncodeError::NoFrames {
                bytes: self.input_bytes,
            });
        };
        let (width, height) = (out.picture.width(), out.picture.height());
        let x264_ns = out.encoder.cpu_ns();
        drop(out.encoder);
        let bytes_written = out.mp4.finish(end_pts)?;
        let thumb_bytes = write_thumb(self.thumbs, end_ms, thumb_path)?;
        if self.render_errors > ENCODE_RENDER_ERRORS_LOGGED_MAX {
            log::warn!("event=render_errors count={}", self.render_errors);
        }
        if self.display.other_stream_blobs() > 0 {
            log::debug!(
                "event=other_streams_skipped blobs={}",
                self.display.other_stream_blobs()
            );
        }
        let capture = self.capture.take().map(|frames| (out.params, frames));
        let extractor = std::mem::replace(
            &mut self.extractor,
            Extractor::new(ExtractSettings::default()),
        );
        let report = ClipReport {
            first_sync_ms: first_ms,
            last_sync_ms: self.last_boundary_ms,
            duration_ms: self.timeline.pts_to_ms(end_pts),
            frames_encoded: self.counts.frames,
            keyframes: self.counts.keyframes,
            scene_cuts: self.counts.scene_cuts,
            move_frames: self.counts.move_frames,
            waits: self.counts.waits,
            move_frame_bytes: self.counts.move_frame_bytes,
            move_frame_x264_ns: self.counts.move_frame_x264_ns,
            x264_ns,
            window_bytes_max: self.counts.window_bytes_max,
            other_stream_blobs: self.display.other_stream_blobs(),
            width,
            height,
            bytes_written,
            thumb_bytes,
            input_bytes: self.input_bytes,
            truncated_at: self.truncated_at,
            render_errors: self.render_errors,
            end_state: self.display.snapshot(),
            events: extractor.finish(),
        };
        Ok((report, capture))
    }
}

/// The timestamp of a frame boundary: `sync` and `mouse` carrying a timestamp.
fn boundary_ms(instruction: &Instruction) -> Option<u64> {
    let arg = match instruction.opcode.as_str() {
        "sync" => instruction.args.first(),
        "mouse" => instruction.args.get(3),
        _ => None,
    }?;
    arg.parse().ok()
}

fn open_output(
    settings: &VideoSettings,
    timeline: &Timeline,
    native_w: u32,
    native_h: u32,
    mp4_path: &Path,
) -> Result<Output, EncodeError> {
    let (content_w, content_h) = settings.output_size(native_w, native_h);
    let converter = Converter::new(content_w, content_h);
    let params = X264Params {
        width: converter.out_width(),
        height: converter.out_height(),
        fps: settings.fps,
        timebase_den: timeline.timescale(),
        qp: settings.qp,
        preset: settings.preset.as_str(),
        threads: settings.threads,
    };
    let mut encoder = Encoder::open(&params)?;
    let headers = encoder.headers()?;
    let timescale = NonZeroU32::new(timeline.timescale()).expect("fps >= 1");
    let mp4 = Mp4Writer::create(mp4_path, timescale, &headers.sps, &headers.pps)?;
    log::debug!(
        "event=encoder_open native={native_w}x{native_h} output={}x{} fps={} qp={} cap_bps={} \
         keyframe_frames={}",
        params.width,
        params.height,
        params.fps,
        params.qp,
        settings.bitrate_max_bps,
        settings.keyframe_frames
    );
    let units_per_ms = u64::from(timeline.timescale()) / 1000;
    // Moves are measured on the display; the picture may be scaled (the larger ratio: a
    // letterboxed side is not scaled more than the other).
    let scale_permille = (u64::from(content_w) * 1000 / u64::from(native_w))
        .max(u64::from(content_h) * 1000 / u64::from(native_h));
    let mbs = converter.changed_macroblocks().len();
    Ok(Output {
        picture: converter.new_picture(),
        unchanged: vec![false; mbs],
        converter,
        encoder,
        mp4,
        rate: RateControl::new(settings.qp, settings.bitrate_max_bps, units_per_ms),
        params,
        last_coded_mbs: 0,
        mb_qp: vec![crate::limits::VIDEO_QP_MAX; mbs],
        scale_permille,
        pending: Pending::new(mbs),
    })
}

/// The texture of the macroblocks not `changed`, by the quantiser in `mb_qp` they were last
/// coded at.
fn unchanged_by_qp(changed: &[bool], mb_qp: &[i32], activity: &[u32]) -> [f64; QP_BINS] {
    let mut bins = [0.0; QP_BINS];
    for ((&c, &q), &a) in changed.iter().zip(mb_qp).zip(activity) {
        if !c {
            bins[q.clamp(0, QP_BINS as i32 - 1) as usize] += f64::from(a);
        }
    }
    bins
}

/// The motion-search range a picture with `moves` (display coordinates) needs, output px:
/// never below the encoder's base range.
fn move_me_range(moves: &[Move], scale_permille: u64, me_range_base: u32) -> u32 {
    // x264's uneven-multi-hexagon search reaches the whole range sideways but half of it
    // vertically; scrolls are vertical. Neighbouring macroblocks then pick the vector up as
    // a predictor, so reaching it once per area is enough.
    let reach = moves
        .iter()
        .map(|m| {
            let dx = m.dx.unsigned_abs() * scale_permille / 1000;
            let dy = m.dy.unsigned_abs() * scale_permille / 1000;
            dx.max(2 * dy) + 8
        })
        .max()
        .unwrap_or(0);
    u32::try_from(reach)
        .unwrap_or(u32::MAX)
        .clamp(me_range_base, VIDEO_ME_RANGE_MOVE_PX_MAX.max(me_range_base))
}

impl Pending {
    /// Adds one converted picture's change: its `changed` macroblocks with their `cost` and
    /// `activity` (the converter's), the output regions the stream `moved` content into, in a
    /// picture `width` px wide, and the search range it needs.
    ///
    /// A macroblock costs the smaller of its difference and its texture: new content is coded
    /// intra when that is cheaper (a flat colour over a photo costs little, whatever the
    /// difference).
    fn merge(
        &mut self,
        changed: &[bool],
        cost: &[u32],
        activity: &[u32],
        moved: &[Region],
        width: u32,
        me_range: u32,
    ) {
        let cols = width.div_ceil(16) as usize;
        let inside = |i: usize| {
            let (x, y) = ((i % cols) as u32 * 16, (i / cols) as u32 * 16);
            moved
                .iter()
                .any(|r| x >= r.x && y >= r.y && x + 16 <= r.x + r.w && y + 16 <= r.y + r.h)
        };
        for (i, ((&c, &k), &act)) in changed.iter().zip(cost).zip(activity).enumerate() {
            if !c {
                continue;
            }
            self.any = true;
            self.changed[i] = true;
            let k = if k == SAD_UNKNOWN {
                u64::from(act)
            } else {
                u64::from(k.min(act))
            };
            // Moved content is found by the motion search: what remains is the residual.
            if !moved.is_empty() && inside(i) {
                self.cost += (k / VIDEO_MOVED_COST_DIVISOR) as f64;
            } else {
                self.cost += k as f64;
                self.new[i] |= k >= VIDEO_NEW_MB_COST_MIN;
            }
        }
        self.moved |= !moved.is_empty();
        self.me_range = self.me_range.max(me_range);
    }
}

/// Encodes the current picture as planned, at quantiser `qp`: a new picture when `change` is
/// given (the macroblocks of `out.pending` changed), else a repeat of the last one (a
/// refinement).
fn encode_one(
    out: &mut Output,
    timeline: &mut Timeline,
    plan: &FramePlan,
    qp: i32,
    change: Option<Change>,
    counts: &mut Counts,
    capture: &mut Option<Vec<Captured>>,
) -> Result<(), EncodeError> {
    let pts = plan.pts;
    let pts_i64 = i64::try_from(pts).expect("pts fits i64");
    let repeat = change.is_none();
    // Tell x264 which macroblocks it need not analyse: all of a repeat (the same picture
    // again), else those no waiting or new change touched.
    let changed = if repeat {
        &out.unchanged[..]
    } else {
        &out.pending.changed[..]
    };
    if let Some(frames) = capture {
        frames.push(Captured {
            picture: out.picture.clone(),
            pts: pts_i64,
            idr: plan.idr,
            changed: changed.to_vec(),
            qp,
            me_range: out.encoder.me_range(),
        });
    }
    let x264_before = out.encoder.cpu_ns();
    let Some(encoded) =
        out.encoder
            .encode_changed(&out.picture, pts_i64, plan.idr, Some(changed), Some(qp))?
    else {
        // zerolatency + no B-frames: x264 never holds a frame back.
        unreachable!("x264 delayed a frame despite zerolatency");
    };
    assert_eq!(encoded.pts, pts_i64, "x264 returned another frame");
    let bytes = encoded.data.len() as u64;
    let keyframe = encoded.keyframe;
    out.mp4.push(encoded.data, pts, keyframe)?;
    let x264_ns = out.encoder.cpu_ns() - x264_before;
    out.rate.coded(plan, qp, bytes);
    // What x264 now holds: an IDR codes everything, a P-frame what changed and, again, what
    // was coarser than its quantiser.
    for (q, &c) in out.mb_qp.iter_mut().zip(changed) {
        if plan.idr || c || *q > qp {
            *q = qp;
        }
    }
    // The quantiser asked for: x264's reported average differs where it skipped macroblocks.
    timeline.encoded(pts, keyframe, repeat, qp);
    counts.frames += 1;
    counts.keyframes += u64::from(keyframe);
    counts.window_bytes_max = counts.window_bytes_max.max(out.rate.window_bytes_used());
    if let Some(change) = change {
        counts.scene_cuts += u64::from(keyframe && change.scene_cut);
        if change.moved {
            counts.move_frames += 1;
            counts.move_frame_bytes += bytes;
            counts.move_frame_x264_ns += x264_ns;
        }
    }
    log::trace!(
        "event=frame pts={pts} idr={keyframe} qp={qp} bytes={bytes} repeat={repeat} \
         moved={} x264_us={} cost={:.0}",
        change.is_some_and(|c| c.moved),
        x264_ns / 1000,
        plan.cost
    );
    Ok(())
}

/// Encodes the black picture the output was opened with as an IDR at pts 0, outside the
/// timeline: the first real picture is still the clip's first keyframe by the count, so it is
/// coded as the scene it is rather than as a huge P-frame after black.
fn encode_blank_lead(
    out: &mut Output,
    counts: &mut Counts,
    capture: &mut Option<Vec<Captured>>,
) -> Result<(), EncodeError> {
    let qp = crate::limits::VIDEO_QP_MAX;
    if let Some(frames) = capture {
        frames.push(Captured {
            picture: out.picture.clone(),
            pts: 0,
            idr: true,
            changed: out.unchanged.clone(),
            qp,
            me_range: out.encoder.me_range(),
        });
    }
    let Some(encoded) = out
        .encoder
        .encode_changed(&out.picture, 0, true, None, Some(qp))?
    else {
        unreachable!("x264 delayed a frame despite zerolatency");
    };
    let bytes = encoded.data.len() as u64;
    out.mp4.push(encoded.data, 0, encoded.keyframe)?;
    let plan = FramePlan {
        pts: 0,
        idr: true,
        coded_mbs: out.unchanged.len() as u64,
        cost: 0.0,
        unchanged_by_qp: [0.0; QP_BINS],
    };
    out.rate.coded(&plan, qp, bytes);
    counts.frames += 1;
    counts.keyframes += 1;
    Ok(())
}

fn write_thumb(thumbs: ThumbPicker, duration_ms: u64, path: &Path) -> Result<u64, EncodeError> {
    let io = |source| EncodeError::Io {
        path: path.to_owned(),
        source,
    };
    let thumb = thumbs
        .pick(duration_ms)
        .expect("a frame was emitted, so a thumbnail candidate exists");
    let mut file = BufWriter::new(File::create(path).map_err(io)?);
    thumb.write_jpeg(&mut file)?;
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(file.metadata().map_err(io)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::VIDEO_SCENECUT_MIN_FRAMES;
    use crate::render::Rect;

    fn sync(ts: u64) -> String {
        let t = ts.to_string();
        format!("4.sync,{}.{t},1.0;", t.len())
    }

    fn rect_fill(x: u32, rgb: (u8, u8, u8)) -> String {
        let xs = x.to_string();
        let (r, g, b) = (rgb.0.to_string(), rgb.1.to_string(), rgb.2.to_string());
        format!(
            "4.rect,1.0,{}.{xs},1.0,2.10,2.10;5.cfill,2.14,1.0,{}.{r},{}.{g},{}.{b},3.255;",
            xs.len(),
            r.len(),
            g.len(),
            b.len()
        )
    }

    fn run(stream: &str, settings: &VideoSettings) -> Result<ClipReport, EncodeError> {
        let dir = tempfile::tempdir().unwrap();
        let mp4 = dir.path().join("c.mp4");
        let jpg = dir.path().join("c.jpg");
        let report = encode_recording(
            &mut stream.as_bytes(),
            settings,
            None,
            None,
            &mp4,
            &jpg,
            &mut |_| {},
        );
        if report.is_ok() {
            assert!(mp4.exists() && jpg.exists());
        } else {
            assert!(!mp4.exists() && !jpg.exists(), "no output on error");
        }
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            leftovers,
            if report.is_ok() { 2 } else { 0 },
            "no temp files left"
        );
        report
    }

    #[test]
    fn idle_time_costs_no_frames() {
        // One change, then 60 s idle (a sync every second), then one more change.
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        s += &rect_fill(0, (255, 0, 0));
        s += &sync(1_000);
        for t in (2_000..61_000).step_by(1_000) {
            s += &sync(t);
        }
        s += &rect_fill(10, (0, 255, 0));
        s += &sync(61_000);
        s += &sync(61_100);
        let r = run(&s, &VideoSettings::default()).expect("encodes");
        // Frames: t=0, the change at 60 s: no keyframe repeats through the idle minute.
        assert_eq!(r.frames_encoded, 2, "frames");
        assert_eq!(r.keyframes, 1, "a still screen needs no keyframe");
        assert_eq!(r.duration_ms, 60_100 + 50);
        assert_eq!((r.width, r.height), (64, 48));
    }

    #[test]
    fn keyframes_come_every_keyframe_frames_encoded_frames() {
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        for i in 0..45_u64 {
            s += &rect_fill((i % 5) as u32 * 10, (i as u8 * 5, 0, 0));
            s += &sync(i * 100);
        }
        s += &sync(4_600);
        let settings = VideoSettings {
            keyframe_frames: 10,
            ..VideoSettings::default()
        };
        let r = run(&s, &settings).expect("encodes");
        assert_eq!(r.frames_encoded, 45);
        // Frames 0, 10, 20, 30, 40; small changes are no scene cuts.
        assert_eq!(r.keyframes, 5);
        assert_eq!(r.scene_cuts, 0);
    }

    #[test]
    fn a_scroll_is_a_move_and_a_new_screen_a_scene_cut() {
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        // Rows of different colours, so that a scroll changes pixels.
        for (y, shade) in [(0, 30), (16, 90), (32, 150)] {
            let (yl, sl) = (y.to_string().len(), shade.to_string().len());
            s += &format!(
                "4.rect,1.0,1.0,{yl}.{y},2.64,2.16;5.cfill,2.14,1.0,{sl}.{shade},2.10,2.10,3.255;"
            );
        }
        s += &sync(0);
        // Scroll the whole screen up by 8 rows and draw the new bottom line.
        s += "4.copy,1.0,1.0,1.8,2.64,2.40,2.12,1.0,1.0,1.0;";
        s += &rect_fill(0, (1, 200, 3));
        s += &sync(100);
        // Small changes until a scene cut may come.
        let mut t = 200;
        for i in 0..VIDEO_SCENECUT_MIN_FRAMES {
            s += &rect_fill((i % 5) * 10, (i as u8 * 7, 0, 0));
            s += &sync(t);
            t += 100;
        }
        // A whole new screen of texture (a flat fill would be cheap, no scene cut): 8x8
        // cells of alternating colours.
        for cy in 0..6_u32 {
            for cx in 0..8_u32 {
                let (x, y) = ((cx * 8).to_string(), (cy * 8).to_string());
                let v = if (cx + cy) % 2 == 0 { "3.250" } else { "1.5" };
                s += &format!(
                    "4.rect,1.0,{}.{x},{}.{y},1.8,1.8;5.cfill,2.14,1.0,{v},{v},{v},3.255;",
                    x.len(),
                    y.len()
                );
            }
        }
        s += &sync(t);
        s += &sync(t + 100);
        let r = run(&s, &VideoSettings::default()).expect("encodes");
        assert_eq!(r.frames_encoded, 3 + u64::from(VIDEO_SCENECUT_MIN_FRAMES));
        assert_eq!(r.move_frames, 1);
        assert_eq!(r.keyframes, 2, "the first frame and the new screen");
        assert_eq!(r.scene_cuts, 1);
    }

    #[test]
    fn a_screen_redrawn_unchanged_costs_no_frame_content() {
        // The same picture drawn again and again (a VNC server re-sending it): after the
        // first, those frames are no change for the scene-cut rule.
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        for t in 0..30 {
            s += "4.rect,1.0,1.0,1.0,2.64,2.48;5.cfill,2.14,1.0,2.90,2.10,2.10,3.255;";
            s += &sync(t * 100);
        }
        let r = run(&s, &VideoSettings::default()).expect("encodes");
        assert_eq!(r.keyframes, 1, "no scene cut for an unchanged redraw");
    }

    #[test]
    fn moved_macroblocks_are_motion_and_the_search_widens() {
        let scroll = Move {
            to: Rect::new(0, 0, 100, 90),
            dx: 0,
            dy: -60,
        };
        assert_eq!(
            move_me_range(&[scroll], 1000, 48),
            128,
            "twice the vertical move, plus a margin"
        );
        assert_eq!(
            move_me_range(&[], 1000, 48),
            48,
            "never below the base range"
        );
        assert_eq!(move_me_range(&[scroll], 500, 16), 68, "scaled to half size");
        // A 64x32 picture: 4x2 macroblocks, all changed a lot; the top row was moved into.
        let mut p = Pending::new(8);
        let cost = [10_000_u32; 8];
        let moved = [Region::new(0, 0, 64, 16)];
        p.merge(&[true; 8], &cost, &[20_000; 8], &moved, 64, 40);
        assert!(p.any && p.moved);
        assert_eq!(p.new, [false, false, false, false, true, true, true, true]);
        let want = 4.0 * 10_000.0 + 4.0 * (10_000 / VIDEO_MOVED_COST_DIVISOR) as f64;
        assert!((p.cost - want).abs() < 1e-6, "{}", p.cost);
        // A waiting change stays when the next picture changes nothing more.
        p.merge(&[false; 8], &[0; 8], &[0; 8], &[], 64, 16);
        assert_eq!(p.cost, want, "nothing more");
        assert_eq!(p.me_range, 40);
        assert!(p.changed.iter().all(|&c| c));
        p.clear();
        assert!(!p.any && p.cost == 0.0);
    }

    fn run_held(stream: &str, hold_until_ms: u64) -> (ClipReport, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (mp4, jpg) = (dir.path().join("c.mp4"), dir.path().join("c.jpg"));
        let report = encode_recording(
            &mut stream.as_bytes(),
            &VideoSettings::default(),
            None,
            Some(hold_until_ms),
            &mp4,
            &jpg,
            &mut |_| {},
        )
        .expect("encodes");
        (report, std::fs::read(&mp4).unwrap())
    }

    #[test]
    fn a_still_tail_is_held_to_the_end_of_the_span_at_no_frame_cost() {
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        s += &rect_fill(0, (255, 0, 0));
        s += &sync(1_000);
        s += &rect_fill(10, (0, 255, 0));
        s += &sync(1_400);
        let short = run(&s, &VideoSettings::default()).expect("encodes");
        assert_eq!(
            short.duration_ms,
            400 + 50,
            "no span: half a frame after the end"
        );
        let (held, _) = run_held(&s, 40_500);
        assert_eq!(held.duration_ms, 40_500, "the whole span");
        assert_eq!(
            held.frames_encoded, short.frames_encoded,
            "holding costs no frame"
        );
        let (not_cut, _) = run_held(&s, 100);
        assert_eq!(
            not_cut.duration_ms, 450,
            "a span shorter than the stream cuts nothing"
        );
    }

    #[test]
    fn a_display_sized_late_starts_black_at_the_first_sync() {
        // guacd's first sync comes 1.45 s before the display has a size (RDP).
        let mut s = sync(10_000);
        s += &sync(10_700);
        s += "4.size,1.0,2.64,2.48;";
        s += &rect_fill(0, (255, 0, 0));
        s += &sync(11_450);
        s += &sync(12_000);
        let r = run(&s, &VideoSettings::default()).expect("encodes");
        assert_eq!(r.duration_ms, 2_000 + 50, "video time 0 is the first sync");
        assert_eq!(r.frames_encoded, 2, "a black lead, then the picture");
        assert_eq!(r.keyframes, 2, "the first picture is a keyframe of its own");
    }

    #[test]
    fn truncated_tail_is_reported_not_failed() {
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        s += &sync(0);
        s += &rect_fill(0, (1, 2, 3));
        s += &sync(500);
        let cut = s.len() as u64;
        s += "4.rect,1.0,1.0,1.0,2.1";
        let r = run(&s, &VideoSettings::default()).expect("encodes");
        assert_eq!(r.truncated_at, Some(cut));
    }

    #[test]
    fn garbage_in_the_middle_names_the_offset() {
        let mut s = String::from("4.size,1.0,2.64,2.48;");
        s += &sync(0);
        let at = s.len() as u64;
        s += "x!garbage;";
        s += &sync(100);
        match run(&s, &VideoSettings::default()) {
            Err(EncodeError::Corrupt { offset, .. }) => assert_eq!(offset, at),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn no_sync_is_no_frames() {
        let s = "4.size,1.0,2.64,2.48;";
        assert!(matches!(
            run(s, &VideoSettings::default()),
            Err(EncodeError::NoFrames { .. })
        ));
    }
}
