//! The picture Tesseract reads, pure: the regions of a frame cropped, made grey, inverted when
//! mostly dark (Tesseract reads dark text on light), upscaled [`UPSCALE`]x bicubic (screen text
//! has an x-height of 6 to 9 px, Tesseract wants 20 to 30) and stacked into one image, one
//! region under the other, so one Tesseract call reads a whole moment. No I/O; called by
//! [`super::read_recording`].

use image::GrayImage;
use image::imageops::{FilterType, resize};

use crate::render::{Frame, Rect};

/// Upscale factor (2x bicubic reads best; 3x and nearest-neighbour read worse).
pub const UPSCALE: u32 = 2;
/// White space around and between the stacked regions, in stacked pixels.
pub const STACK_GAP_PX: u32 = 24;
/// The tallest stacked image made; regions beyond it wait for the next image (pixels).
pub const STACK_HEIGHT_PX_MAX: u32 = 8192;

/// One region's place in the stacked image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The screen rectangle.
    pub region: Rect,
    /// Its top row in the stacked image.
    pub top: u32,
}

impl Placed {
    /// Whether a box at stacked row `y` (its centre) belongs to this region.
    pub fn holds_row(&self, y: u32) -> bool {
        y >= self.top && y < self.top + self.region.h as u32 * UPSCALE
    }

    /// A box in stacked pixels (left, top, width, height) as a screen rectangle.
    pub fn to_screen(&self, left: u32, top: u32, width: u32, height: u32) -> Rect {
        let x = i64::from(left.saturating_sub(STACK_GAP_PX) / UPSCALE);
        let y = i64::from(top.saturating_sub(self.top) / UPSCALE);
        Rect::new(
            self.region.x + x,
            self.region.y + y,
            i64::from(width.div_ceil(UPSCALE)),
            i64::from(height.div_ceil(UPSCALE)),
        )
    }
}

/// Stacks `regions` of `frame` (each inside the frame) into images of at most
/// [`STACK_HEIGHT_PX_MAX`] rows; returns each image with where its regions are.
pub fn stack(frame: &Frame, regions: &[Rect]) -> Vec<(GrayImage, Vec<Placed>)> {
    let mut out = Vec::new();
    let mut batch: Vec<(Rect, GrayImage)> = Vec::new();
    let mut height = STACK_GAP_PX;
    for &region in regions {
        let image = prepare(frame, region);
        let h = image.height() + STACK_GAP_PX;
        if !batch.is_empty() && height + h > STACK_HEIGHT_PX_MAX {
            out.push(compose(std::mem::take(&mut batch)));
            height = STACK_GAP_PX;
        }
        height += h;
        batch.push((region, image));
    }
    if !batch.is_empty() {
        out.push(compose(batch));
    }
    out
}

fn compose(batch: Vec<(Rect, GrayImage)>) -> (GrayImage, Vec<Placed>) {
    let width = batch.iter().map(|(_, i)| i.width()).max().unwrap_or(1) + 2 * STACK_GAP_PX;
    let height = batch
        .iter()
        .map(|(_, i)| i.height() + STACK_GAP_PX)
        .sum::<u32>()
        + STACK_GAP_PX;
    let mut out = GrayImage::from_pixel(width, height, image::Luma([255]));
    let mut placed = Vec::with_capacity(batch.len());
    let mut top = STACK_GAP_PX;
    for (region, image) in batch {
        image::imageops::replace(&mut out, &image, i64::from(STACK_GAP_PX), i64::from(top));
        placed.push(Placed { region, top });
        top += image.height() + STACK_GAP_PX;
    }
    (out, placed)
}

/// One region: cropped, grey, dark text on light, upscaled.
pub fn prepare(frame: &Frame, region: Rect) -> GrayImage {
    let screen = Rect::new(0, 0, frame.width.into(), frame.height.into());
    let r = region.intersect(&screen);
    assert!(!r.is_empty(), "region outside the frame");
    let (w, h) = (r.w as u32, r.h as u32);
    let mut gray = GrayImage::new(w, h);
    let mut dark = 0u64;
    for y in 0..h {
        for x in 0..w {
            let p = frame.pixel(r.x as u32 + x, r.y as u32 + y);
            let (red, green, blue) = ((p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff);
            let luma = ((red * 299 + green * 587 + blue * 114) / 1000) as u8;
            dark += u64::from(luma < 128);
            gray.put_pixel(x, y, image::Luma([luma]));
        }
    }
    if dark * 2 > u64::from(w) * u64::from(h) {
        image::imageops::invert(&mut gray);
    }
    resize(&gray, w * UPSCALE, h * UPSCALE, FilterType::CatmullRom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dark_region_is_inverted_and_a_light_one_is_not() {
        let mut frame = Frame::filled(40, 20, 0x000000);
        for x in 20..40 {
            for y in 0..20 {
                frame.pixels[y * 40 + x] = 0xffffff;
            }
        }
        let dark = prepare(&frame, Rect::new(0, 0, 20, 20));
        let light = prepare(&frame, Rect::new(20, 0, 20, 20));
        assert_eq!(dark.dimensions(), (40, 40));
        assert_eq!(
            dark.get_pixel(5, 5).0[0],
            255,
            "black background made white"
        );
        assert_eq!(light.get_pixel(5, 5).0[0], 255, "white stays white");
    }

    #[test]
    fn stacked_regions_map_back_to_the_screen() {
        let frame = Frame::filled(100, 100, 0xffffff);
        let regions = [Rect::new(10, 10, 50, 10), Rect::new(0, 60, 30, 20)];
        let images = stack(&frame, &regions);
        assert_eq!(images.len(), 1);
        let (image, placed) = &images[0];
        assert_eq!(image.width(), 100 + 2 * STACK_GAP_PX);
        assert_eq!(image.height(), STACK_GAP_PX * 3 + 20 + 40);
        assert_eq!(placed[1].top, STACK_GAP_PX * 2 + 20);
        assert!(placed[1].holds_row(placed[1].top + 39));
        assert!(!placed[0].holds_row(placed[1].top));
        let word = placed[1].to_screen(STACK_GAP_PX + 4, placed[1].top + 2, 20, 16);
        assert_eq!(word, Rect::new(2, 61, 10, 8));
    }
}
