//! The clip's JPEG thumbnail: the frame shown at about a third of the clip, at most
//! [`THUMB_WIDTH_PX_MAX`] wide.
//!
//! The clip's length is only known at its end and frames are not kept, so [`ThumbPicker`] keeps
//! small downscaled copies of frames at geometrically spaced video times (each checkpoint 25 %
//! later than the previous) and drops those that can no longer be the nearest to a third of the
//! clip: a handful of 320-pixel images at any time, whatever the clip length. A third rather
//! than the last frame: session ends are often a logout or a blank screen.
//!
//! Called by the pipeline for each emitted frame and once at the end; writes through `image`.

use std::io::Write;

use image::ImageEncoder;
use image::codecs::jpeg::JpegEncoder;

use super::convert::scale_to_rgb8;
use crate::limits::THUMB_WIDTH_PX_MAX;
use crate::render::Frame;

/// JPEG quality of thumbnails.
const THUMB_JPEG_QUALITY: u8 = 80;

/// A small RGB8 image.
#[derive(Debug, Clone)]
pub struct Thumb {
    /// Video time of the frame it shows, ms.
    pub at_ms: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Packed RGB8.
    pub rgb: Vec<u8>,
}

impl Thumb {
    /// `frame` reduced to at most [`THUMB_WIDTH_PX_MAX`] wide, aspect kept.
    pub fn of(frame: &Frame, at_ms: u64) -> Self {
        let width = frame.width.min(THUMB_WIDTH_PX_MAX);
        let height = ((u64::from(frame.height) * u64::from(width) + u64::from(frame.width) / 2)
            / u64::from(frame.width))
        .max(1) as u32;
        Self {
            at_ms,
            width,
            height,
            rgb: scale_to_rgb8(frame, width, height),
        }
    }

    /// Encodes the thumbnail as JPEG into `out`.
    ///
    /// # Errors
    /// The `image` crate's error when encoding or writing fails.
    pub fn write_jpeg(&self, out: impl Write) -> Result<(), image::ImageError> {
        JpegEncoder::new_with_quality(out, THUMB_JPEG_QUALITY).write_image(
            &self.rgb,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )
    }
}

/// Keeps candidate thumbnails so that the one nearest a third of the clip is available at the
/// end.
#[derive(Debug, Default)]
pub struct ThumbPicker {
    candidates: Vec<Thumb>,
    next_checkpoint_ms: u64,
}

impl ThumbPicker {
    /// Whether a frame at `at_ms` should be offered (so callers skip the downscale otherwise).
    pub fn wants(&self, at_ms: u64) -> bool {
        self.candidates.is_empty() || at_ms >= self.next_checkpoint_ms
    }

    /// Offers a frame shown from `at_ms` (video ms, increasing).
    pub fn offer(&mut self, frame: &Frame, at_ms: u64) {
        if !self.wants(at_ms) {
            return;
        }
        self.candidates.push(Thumb::of(frame, at_ms));
        self.next_checkpoint_ms = (at_ms + at_ms / 4).max(at_ms + 1_000);
        // The clip lasts at least `at_ms`, so its third is at least `at_ms / 3`: of the
        // candidates before that, only the latest can still be the nearest.
        let third = at_ms / 3;
        let before = self.candidates.iter().filter(|c| c.at_ms < third).count();
        if before > 1 {
            self.candidates.drain(..before - 1);
        }
    }

    /// The candidate nearest a third of a clip of `duration_ms`.
    pub fn pick(self, duration_ms: u64) -> Option<Thumb> {
        let third = duration_ms / 3;
        // A candidate shows its frame until the next one's time: pick the last one that
        // started at or before the third (the frame on screen then), else the first.
        let index = self
            .candidates
            .iter()
            .rposition(|c| c.at_ms <= third)
            .unwrap_or(0);
        self.candidates.into_iter().nth(index)
    }

    /// Number of candidates held (memory bound check in tests).
    pub fn held(&self) -> usize {
        self.candidates.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_near_a_third_and_holds_few_candidates() {
        let mut picker = ThumbPicker::default();
        let frame = Frame::filled(1280, 800, 0x336699);
        let mut max_held = 0;
        for s in 0..3_600u64 {
            picker.offer(&frame, s * 1_000);
            max_held = max_held.max(picker.held());
        }
        assert!(max_held <= 8, "held {max_held}");
        let thumb = picker.pick(3_600_000).expect("a thumbnail");
        assert!(
            (900_000..=1_200_000).contains(&thumb.at_ms),
            "at {} ms",
            thumb.at_ms
        );
        assert_eq!((thumb.width, thumb.height), (320, 200));
    }

    #[test]
    fn jpeg_decodes_back_to_the_same_size() {
        let thumb = Thumb::of(&Frame::filled(100, 50, 0xff0000), 0);
        let mut bytes = Vec::new();
        thumb.write_jpeg(&mut bytes).expect("jpeg");
        let img = image::load_from_memory(&bytes).expect("decodes");
        assert_eq!((img.width(), img.height()), (100, 50));
    }
}
