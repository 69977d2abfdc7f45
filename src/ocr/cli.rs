//! The `ocr` sub-command: `ocr [--json OUT] FILE` reads a recording's screen text as the daemon's
//! OCR job does and prints its screen text events (`offset_ms`, region, text), or writes them
//! as an events object. `--ground-truth` instead prints the distinct words of the pictures on
//! screen every [`GROUND_TRUTH_VISIBLE_MS`] of the session, each read whole (the benchmark's
//! reference; `--frames DIR` also saves those pictures as PNG to check them by eye). Wired into
//! `main.rs`; the reading is [`super::read_recording`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use super::tesseract::Tesseract;
use super::{OcrError, prepare};
use crate::events::{ClipEvents, EventDetail, format};
use crate::render::{Display, Rect};

/// The ground truth reads the picture on screen every this many ms of session.
pub const GROUND_TRUTH_VISIBLE_MS: u64 = 2000;

/// Arguments of `ocr`.
#[derive(Debug, Clone, clap::Args)]
pub struct OcrArgs {
    /// Write the events as an events object here instead of printing them.
    #[arg(long = "json", value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Print the ground-truth word list instead (whole pictures, one every 2 s of session).
    #[arg(long = "ground-truth")]
    pub ground_truth: bool,
    /// With --ground-truth: save the pictures read as PNG files in this directory.
    #[arg(long = "frames", value_name = "DIR", requires = "ground_truth")]
    pub frames: Option<PathBuf>,
    /// The recording.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `ocr`.
///
/// # Errors
/// [`OcrError`]: the recording cannot be read, Tesseract is missing or fails, the output cannot
/// be written.
pub fn run(args: &OcrArgs) -> Result<(), OcrError> {
    let tesseract = Tesseract::default();
    tesseract.check()?;
    let file = File::open(&args.file).map_err(|source| OcrError::Io {
        path: args.file.clone(),
        source,
    })?;
    let mut input = BufReader::with_capacity(256 * 1024, file);
    if args.ground_truth {
        for word in ground_truth(&mut input, &tesseract, args.frames.as_deref())? {
            println!("{word}");
        }
        return Ok(());
    }
    let report = super::read_recording(&mut input, None, &tesseract, &mut || {})?;
    eprintln!(
        "moments={} regions={} pixels_read={} tesseract_calls={} events={} render_errors={}",
        report.moments,
        report.regions,
        report.pixels_read,
        report.tesseract_calls,
        report.events.len(),
        report.render_errors
    );
    if let Some(out) = &args.json {
        let events = ClipEvents {
            events: report.events,
            ..ClipEvents::default()
        };
        return std::fs::write(out, format::to_bytes(&events)).map_err(|source| OcrError::Io {
            path: out.clone(),
            source,
        });
    }
    for e in &report.events {
        if let EventDetail::ScreenText { text, region } = &e.detail {
            let [x, y, w, h] = region;
            println!(
                "{}\t{x},{y},{w},{h}\t{}",
                e.offset_ms,
                text.replace('\n', " | ")
            );
        }
    }
    Ok(())
}

/// The distinct words of the pictures on screen every [`GROUND_TRUTH_VISIBLE_MS`] of the
/// session (so every word shown that long is on at least one of them), each picture read
/// whole (2x, the same Tesseract settings).
///
/// # Errors
/// As [`super::read_recording`].
pub fn ground_truth(
    input: &mut dyn Read,
    tesseract: &Tesseract,
    frames: Option<&std::path::Path>,
) -> Result<BTreeSet<String>, OcrError> {
    let mut display = Display::new();
    let mut words = BTreeSet::new();
    let mut next_sample_ms = 0u64;
    let mut read_since_flatten = false;
    let mut pictures = 0u32;
    let mut read_picture = |display: &Display, at: u64| -> Result<(), OcrError> {
        let f = display.frame();
        let screen = Rect::new(0, 0, f.width.into(), f.height.into());
        if let Some(dir) = frames {
            pictures += 1;
            save_png(f, &dir.join(format!("{pictures:03}-{at:06}ms.png")))?;
        }
        for (image, _) in prepare::stack(f, &[screen]) {
            words.extend(tesseract.read(&image)?.into_iter().map(|w| w.text));
        }
        Ok(())
    };
    let mut render_errors = 0;
    super::replay(
        input,
        &mut display,
        &mut render_errors,
        &mut |display, now| {
            while next_sample_ms < now {
                if !read_since_flatten {
                    read_picture(display, next_sample_ms)?;
                    read_since_flatten = true;
                }
                next_sample_ms += GROUND_TRUTH_VISIBLE_MS;
            }
            if display.is_dirty() {
                display.flatten();
                read_since_flatten = false;
            }
            Ok(())
        },
    )?;
    if !read_since_flatten {
        read_picture(&display, next_sample_ms)?;
    }
    Ok(words)
}

fn save_png(frame: &crate::render::Frame, path: &std::path::Path) -> Result<(), OcrError> {
    let rgb: Vec<u8> = frame
        .pixels
        .iter()
        .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
        .collect();
    let image = image::RgbImage::from_raw(frame.width, frame.height, rgb).expect("frame size");
    image.save(path).map_err(|e| OcrError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })
}
