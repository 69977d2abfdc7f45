//! Screen text by OCR, after the encode: a clip's segment is rendered again (no x264), and at
//! each quiet moment (no change for [`moments::QUIET_MS`]) the rectangles that changed since the
//! last read are cropped, made grey, inverted when dark, upscaled, read by Tesseract
//! ([`tesseract`]), deduplicated against the words already on screen ([`dedup`]) and returned
//! as [`EventDetail::ScreenText`] events at the moment's offset from the clip's start (its video
//! time: guacd's first `sync`).
//!
//! The pointer is not drawn (`mouse` and `cursor` are skipped): it is not text, and a moving
//! pointer would keep the screen from ever being quiet. Files: `moments.rs` (when and what to
//! read, pure), `prepare.rs` (the picture Tesseract reads, pure), `dedup.rs` (what is already
//! on screen, pure), `tesseract.rs` (the child process), `worker.rs` (the low-priority job
//! writing `<clip>.ocr.events.json`), `cli.rs` (the `ocr` sub-command). Called by the daemon's
//! OCR worker and the CLI; uses `render` and `events`, nothing of `encode`.

pub mod cli;
pub mod dedup;
pub mod moments;
pub mod prepare;
pub mod tesseract;
pub mod worker;

use std::io::Read;

use crate::error::Classify;
use crate::events::{Event, EventDetail};
use crate::guac::Parser;
use crate::limits::ENCODE_READ_CHUNK_BYTES;
use crate::render::{Display, DisplaySnapshot, Effect, Rect};
use dedup::{Line, OnScreen, Word};
use moments::{LastPicture, Moment, Moments};
use tesseract::Tesseract;
pub use worker::{
    OCR_BACKOFF_MS, OCR_IDLE_POLL_MS, OCR_NICE, OCR_STATUS_SOURCE, OcrJob, OcrSource, OcrWorker,
    Tick, ocr_events_path,
};

/// Why a clip's screen text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// `tesseract` is not installed (`apt-get install tesseract-ocr tesseract-ocr-eng`).
    #[error("tesseract is not installed (apt-get install tesseract-ocr tesseract-ocr-eng)")]
    TesseractMissing,
    /// Tesseract started but failed.
    #[error("tesseract: {0}")]
    Tesseract(String),
    /// Reading the recording failed.
    #[error("reading recording at byte {offset}: {source}")]
    Read {
        /// Bytes consumed before the failure.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// The recording is corrupt at `offset`.
    #[error("recording corrupt at byte {offset}: {source}")]
    Corrupt {
        /// Byte offset where the stream broke.
        offset: u64,
        /// The parser's diagnosis.
        source: crate::guac::ParseError,
    },
    /// The starting display state could not be restored.
    #[error("bad starting display state: {0}")]
    Snapshot(crate::render::RenderError),
    /// Writing the events object failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Classify for OcrError {
    /// A missing Tesseract may be installed and a failing one may recover (memory, a signal);
    /// the recording itself fails the same way every time.
    fn is_transient(&self) -> bool {
        match self {
            OcrError::TesseractMissing | OcrError::Tesseract(_) => true,
            OcrError::Io { source, .. } => source.is_transient(),
            OcrError::Read { .. } | OcrError::Corrupt { .. } | OcrError::Snapshot(_) => false,
        }
    }
}

/// What reading one recording found and cost.
#[derive(Debug, Default)]
pub struct OcrReport {
    /// The screen text events, in time order, offsets from the first `sync`.
    pub events: Vec<Event>,
    /// Quiet moments read.
    pub moments: u64,
    /// Regions read.
    pub regions: u64,
    /// Screen pixels read (before upscaling).
    pub pixels_read: u64,
    /// Tesseract calls.
    pub tesseract_calls: u64,
    /// Instructions the renderer rejected (skipped).
    pub render_errors: u64,
}

/// Renders the recording read from `input` (starting from display state `start`, the previous
/// segment's end, or blank) and reads its screen text at quiet moments. `between_moments` is
/// called before each Tesseract call (the worker waits there while encodes are queued).
///
/// # Errors
/// [`OcrError`]: unreadable or corrupt input, a bad start state, Tesseract missing or failing.
pub fn read_recording(
    input: &mut dyn Read,
    start: Option<&DisplaySnapshot>,
    tesseract: &Tesseract,
    between_moments: &mut dyn FnMut(),
) -> Result<OcrReport, OcrError> {
    let mut display = match start {
        Some(s) => Display::from_snapshot(s).map_err(OcrError::Snapshot)?,
        None => Display::new(),
    };
    let mut run = Run {
        tesseract,
        between_moments,
        moments: Moments::new(),
        last: LastPicture::new(),
        on_screen: OnScreen::new(),
        report: OcrReport::default(),
    };
    let mut render_errors = 0;
    replay(
        input,
        &mut display,
        &mut render_errors,
        &mut |display, now_ms| run.frame_boundary(display, now_ms),
    )?;
    run.report.render_errors = render_errors;
    let screen = screen_of(&display);
    if let Some(moment) = run.moments.finish(screen) {
        run.read(&display, moment)?;
    }
    Ok(run.report)
}

/// Feeds the recording read from `input` to `display`, without the pointer (`mouse` and
/// `cursor` are skipped), and calls `at_sync` at each `sync` with the time since the first one;
/// instructions the renderer rejects are counted in `render_errors` and skipped.
fn replay(
    input: &mut dyn Read,
    display: &mut Display,
    render_errors: &mut u64,
    at_sync: &mut dyn FnMut(&mut Display, u64) -> Result<(), OcrError>,
) -> Result<(), OcrError> {
    let mut parser = Parser::new();
    let mut first_sync_ms: Option<u64> = None;
    let mut chunk = vec![0u8; ENCODE_READ_CHUNK_BYTES];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                let offset = parser.offset() + parser.pending_bytes() as u64;
                return Err(OcrError::Read { offset, source });
            }
        };
        parser.push(&chunk[..n]);
        while let Some(instruction) = parser.next().map_err(|source| OcrError::Corrupt {
            offset: source.offset(),
            source,
        })? {
            if instruction.opcode == "mouse" || instruction.opcode == "cursor" {
                continue;
            }
            match display.apply(&instruction) {
                Ok(Effect::Sync { timestamp_ms }) => {
                    let first = *first_sync_ms.get_or_insert(timestamp_ms);
                    at_sync(display, timestamp_ms.saturating_sub(first))?;
                }
                Ok(_) => {}
                Err(_) => *render_errors += 1,
            }
        }
    }
}

fn screen_of(display: &Display) -> Rect {
    let f = display.frame();
    Rect::new(0, 0, f.width.into(), f.height.into())
}

/// State of one OCR run.
struct Run<'a> {
    tesseract: &'a Tesseract,
    between_moments: &'a mut dyn FnMut(),
    moments: Moments,
    last: LastPicture,
    on_screen: OnScreen,
    report: OcrReport,
}

impl Run<'_> {
    /// At a `sync` at video time `now_ms`: the frame shown until now is read when it was
    /// quiet long enough, then the new frame is composited and its changes noted.
    fn frame_boundary(&mut self, display: &mut Display, now_ms: u64) -> Result<(), OcrError> {
        if let Some(moment) = self.moments.due(now_ms, screen_of(display)) {
            self.read(display, moment)?;
        }
        if display.is_dirty() {
            let (frame, damaged) = display.flatten_damaged();
            let changed = self.last.changed(frame, damaged);
            self.moments.changed(now_ms, &changed);
        }
        Ok(())
    }

    /// Reads one moment's regions off the current frame.
    fn read(&mut self, display: &Display, moment: Moment) -> Result<(), OcrError> {
        let frame = display.frame();
        self.report.moments += 1;
        let rects: Vec<Rect> = moment.regions.iter().map(|&(r, _)| r).collect();
        for (image, placed) in prepare::stack(frame, &rects) {
            (self.between_moments)();
            let words = self.tesseract.read(&image)?;
            self.report.tesseract_calls += 1;
            for p in &placed {
                self.report.regions += 1;
                self.report.pixels_read += (p.region.w * p.region.h) as u64;
                let mine: Vec<Word> = words
                    .iter()
                    .filter(|w| p.holds_row(w.top + w.height / 2))
                    .map(|w| Word {
                        rect: p.to_screen(w.left, w.top, w.width, w.height),
                        text: w.text.clone(),
                    })
                    .collect();
                let news = self.on_screen.read(p.region, into_lines(mine));
                if news.is_empty() {
                    continue;
                }
                let r = p.region;
                let at_ms = moment
                    .regions
                    .iter()
                    .find(|(region, _)| *region == r)
                    .map_or(0, |&(_, t)| t);
                self.report.events.push(Event {
                    offset_ms: at_ms,
                    detail: EventDetail::ScreenText {
                        text: news.join("\n"),
                        region: [r.x as u32, r.y as u32, r.w as u32, r.h as u32],
                    },
                });
            }
        }
        // Regions of one moment changed at different times: keep the events in time order.
        self.report.events.sort_by_key(|e| e.offset_ms);
        Ok(())
    }
}

/// Words grouped into lines: a word whose vertical centre lies within a line's rows joins it;
/// lines top to bottom, words left to right.
pub fn into_lines(mut words: Vec<Word>) -> Vec<Line> {
    words.sort_by_key(|w| (w.rect.y, w.rect.x));
    let mut lines: Vec<(i64, i64, Line)> = Vec::new();
    for w in words {
        let centre = w.rect.y + w.rect.h / 2;
        match lines
            .iter_mut()
            .find(|(top, bottom, _)| centre >= *top && centre < *bottom)
        {
            Some((_, _, line)) => line.push(w),
            None => lines.push((w.rect.y, w.rect.y + w.rect.h.max(1), vec![w])),
        }
    }
    lines
        .into_iter()
        .map(|(_, _, mut line)| {
            line.sort_by_key(|w| w.rect.x);
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(x: i64, y: i64, text: &str) -> Word {
        Word {
            rect: Rect::new(x, y, 30, 14),
            text: text.into(),
        }
    }

    #[test]
    fn words_are_grouped_into_lines_left_to_right() {
        let lines = into_lines(vec![w(100, 21, "b"), w(0, 40, "c"), w(0, 20, "a")]);
        let text: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.iter().map(|w| w.text.as_str()).collect())
            .collect();
        assert_eq!(text, vec![vec!["a", "b"], vec!["c"]]);
    }
}
