//! A premultiplied ARGB pixel surface and the clipped rectangle operations on it: fill, copy
//! (overlap-safe within one surface), composite from foreign pixels, transfer. Knows nothing
//! about layers, paths or the protocol.

use super::composite::{self, MASK_OVER, MASK_SRC};

/// An integer rectangle; `w` and `h` may be zero (empty). Coordinates are `i64` so that sums of
/// protocol `i32`s never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: i64,
    /// Top edge.
    pub y: i64,
    /// Width (>= 0).
    pub w: i64,
    /// Height (>= 0).
    pub h: i64,
}

impl Rect {
    /// A rectangle; negative sizes become empty.
    pub fn new(x: i64, y: i64, w: i64, h: i64) -> Self {
        Self {
            x,
            y,
            w: w.max(0),
            h: h.max(0),
        }
    }

    /// True when it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.w <= 0 || self.h <= 0
    }

    /// The common part of two rectangles (possibly empty).
    pub fn intersect(&self, o: &Rect) -> Rect {
        let x0 = self.x.max(o.x);
        let y0 = self.y.max(o.y);
        let x1 = (self.x + self.w).min(o.x + o.w);
        let y1 = (self.y + self.h).min(o.y + o.h);
        Rect::new(x0, y0, x1 - x0, y1 - y0)
    }

    /// The smallest rectangle holding both (an empty side is ignored).
    pub fn union(&self, o: &Rect) -> Rect {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        let x0 = self.x.min(o.x);
        let y0 = self.y.min(o.y);
        let x1 = (self.x + self.w).max(o.x + o.w);
        let y1 = (self.y + self.h).max(o.y + o.h);
        Rect::new(x0, y0, x1 - x0, y1 - y0)
    }

    /// Moved by (`dx`, `dy`).
    pub fn offset(&self, dx: i64, dy: i64) -> Rect {
        Rect {
            x: self.x + dx,
            y: self.y + dy,
            ..*self
        }
    }
}

/// Premultiplied ARGB pixels, row-major, `width * height` of them.
///
/// The surface also remembers whether it is known to be wholly opaque, so that *over* from it
/// (copies of the screen into buffers, scrolling, painting a layer into the frame) can be a
/// plain copy. The drawing methods keep that knowledge up to date; code that writes `pixels`
/// directly must call [`Surface::forget_opacity`] afterwards.
#[derive(Debug, Clone, Default)]
pub struct Surface {
    /// Width in pixels (0 = no pixels).
    pub width: u32,
    /// Height in pixels (0 = no pixels).
    pub height: u32,
    /// `width * height` premultiplied ARGB pixels.
    pub pixels: Vec<u32>,
    /// What is known about the alpha of `pixels`.
    opacity: Opacity,
}

/// Whether every pixel of a surface is opaque, as far as known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opacity {
    /// Every pixel has alpha 255.
    Opaque,
    /// Not known; pixel `hint` was not opaque when last looked at (checked first next time).
    Unknown {
        /// Index of a pixel likely not opaque.
        hint: usize,
    },
}

impl Default for Opacity {
    fn default() -> Self {
        Self::Unknown { hint: 0 }
    }
}

impl PartialEq for Surface {
    /// Same size and pixels (what is known about opacity is a cache, not content).
    fn eq(&self, o: &Self) -> bool {
        self.width == o.width && self.height == o.height && self.pixels == o.pixels
    }
}

impl Eq for Surface {}

/// A surface smaller than this many times a copied area is scanned for opacity at the copy.
const OPACITY_SCAN_AREA_RATIO: u64 = 8;

impl Surface {
    /// A transparent surface.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width as usize * height as usize],
            opacity: Opacity::default(),
        }
    }

    /// True when every pixel is known to be opaque (no scan: see [`Surface::check_opaque`]).
    pub fn known_opaque(&self) -> bool {
        self.opacity == Opacity::Opaque
    }

    /// Forgets what is known about opacity (after writing `pixels` directly).
    pub fn forget_opacity(&mut self) {
        self.opacity = Opacity::default();
    }

    /// True when every pixel is opaque; scans (once per change) when not known, stopping at
    /// the first pixel that is not.
    pub fn check_opaque(&mut self) -> bool {
        let hint = match self.opacity {
            Opacity::Opaque => return true,
            Opacity::Unknown { hint } => hint,
        };
        if self.pixels.get(hint).is_some_and(|&p| p < 0xFF00_0000) {
            return false;
        }
        const CHUNK: usize = 64;
        for (c, chunk) in self.pixels.chunks(CHUNK).enumerate() {
            if chunk.iter().fold(0xFF00_0000, |acc, p| acc & p) < 0xFF00_0000 {
                let at = chunk.iter().position(|&p| p < 0xFF00_0000).unwrap_or(0);
                self.opacity = Opacity::Unknown {
                    hint: c * CHUNK + at,
                };
                return false;
            }
        }
        self.opacity = Opacity::Opaque;
        true
    }

    /// Like [`check_opaque`](Surface::check_opaque), but scans only when the surface is not
    /// much larger than `area` pixels (so a small copy never pays for a big scan).
    pub fn check_opaque_for(&mut self, area: u64) -> bool {
        if self.known_opaque() {
            return true;
        }
        if self.area() > area.saturating_mul(OPACITY_SCAN_AREA_RATIO) {
            return false;
        }
        self.check_opaque()
    }

    /// Records a write through `mask` of a source that is (`src_opaque`) or may not be opaque:
    /// *over* onto an opaque surface and opaque *src* keep it opaque; anything else may not.
    pub(super) fn note_write(&mut self, mask: u8, src_opaque: bool) {
        let keeps = mask == MASK_OVER || (mask == MASK_SRC && src_opaque);
        if !keeps && self.opacity == Opacity::Opaque {
            self.opacity = Opacity::default();
        }
    }

    /// Pixel count.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The whole surface as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, i64::from(self.width), i64::from(self.height))
    }

    /// Changes the size, keeping the overlapping top-left contents; new pixels are transparent.
    pub fn resize(&mut self, width: u32, height: u32) {
        if width == self.width && height == self.height {
            return;
        }
        let mut next = Surface::new(width, height);
        let w = width.min(self.width) as usize;
        for y in 0..height.min(self.height) as usize {
            let src = &self.pixels[y * self.width as usize..][..w];
            next.pixels[y * width as usize..][..w].copy_from_slice(src);
        }
        if width <= self.width && height <= self.height {
            // Only cropped: no new (transparent) pixels.
            next.opacity = match self.opacity {
                Opacity::Opaque => Opacity::Opaque,
                Opacity::Unknown { .. } => Opacity::default(),
            };
        }
        *self = next;
    }

    /// Mutable row `y`, columns `x .. x + w` (the caller clipped).
    fn row_mut(&mut self, x: i64, y: i64, w: i64) -> &mut [u32] {
        let start = y as usize * self.width as usize + x as usize;
        &mut self.pixels[start..start + w as usize]
    }

    /// Row `y`, columns `x .. x + w` (the caller clipped).
    pub fn row(&self, x: i64, y: i64, w: i64) -> &[u32] {
        let start = y as usize * self.width as usize + x as usize;
        &self.pixels[start..start + w as usize]
    }

    /// Fills `rect ∩ clip ∩ bounds` with colour `c` through channel mask `mask`; returns the
    /// rectangle actually touched.
    pub fn fill_rect(&mut self, rect: Rect, clip: Rect, c: u32, mask: u8) -> Rect {
        let r = rect.intersect(&clip).intersect(&self.bounds());
        if r.is_empty() {
            return r;
        }
        self.note_write(mask, c >> 24 == 255);
        for y in r.y..r.y + r.h {
            composite::fill_row(mask, c, self.row_mut(r.x, y, r.w));
        }
        r
    }

    /// Fills one horizontal span (already clipped) with a paint.
    pub fn fill_span(&mut self, y: i64, x0: i64, x1: i64, paint: &Paint<'_>, mask: u8) {
        match paint {
            Paint::Color(c) => self.note_write(mask, *c >> 24 == 255),
            Paint::Pattern(p) => self.note_write(mask, p.known_opaque()),
        }
        match paint {
            Paint::Color(c) => composite::fill_row(mask, *c, self.row_mut(x0, y, x1 - x0)),
            Paint::Pattern(p) => {
                if p.width == 0 || p.height == 0 {
                    return;
                }
                let py = (y.rem_euclid(i64::from(p.height))) as usize;
                let prow = &p.pixels[py * p.width as usize..][..p.width as usize];
                let row = self.row_mut(x0, y, x1 - x0);
                for (i, d) in row.iter_mut().enumerate() {
                    let px = (x0 + i as i64).rem_euclid(i64::from(p.width)) as usize;
                    *d = composite::apply_mask(mask, prow[px], *d);
                }
            }
        }
    }

    /// Composites `src` (a `src_w`-wide block of pixels, `rect.w x rect.h` used, starting at
    /// `src[0]`) at `rect` with `mask`, clipped to `clip` and the bounds. `src_opaque` says
    /// every source pixel is opaque (false when not known). Returns the rectangle touched.
    pub fn draw_pixels(
        &mut self,
        rect: Rect,
        clip: Rect,
        src: &[u32],
        src_w: usize,
        mask: u8,
        src_opaque: bool,
    ) -> Rect {
        let r = rect.intersect(&clip).intersect(&self.bounds());
        if r.is_empty() {
            return r;
        }
        self.note_write(mask, src_opaque);
        let mask = if src_opaque && mask == MASK_OVER {
            MASK_SRC
        } else {
            mask
        };
        let ox = (r.x - rect.x) as usize;
        let oy = (r.y - rect.y) as usize;
        for row in 0..r.h as usize {
            let s = &src[(oy + row) * src_w + ox..][..r.w as usize];
            composite::composite_row(mask, s, self.row_mut(r.x, r.y + row as i64, r.w));
        }
        r
    }

    /// Copies the `w x h` block at (`sx`, `sy`) of `self` out as a packed pixel vector, clipped
    /// to the bounds; returns the clipped source rectangle and its pixels.
    pub fn extract(&self, src: Rect) -> (Rect, Vec<u32>) {
        let r = src.intersect(&self.bounds());
        if r.is_empty() {
            return (r, Vec::new());
        }
        let mut out = Vec::with_capacity((r.w * r.h) as usize);
        for y in r.y..r.y + r.h {
            out.extend_from_slice(self.row(r.x, y, r.w));
        }
        (r, out)
    }

    /// Copies within this surface from `src` to (`dx`, `dy`) with `mask`; overlapping regions
    /// are read before they are written (as if through a temporary copy).
    pub fn copy_within(&mut self, src: Rect, dx: i64, dy: i64, clip: Rect, mask: u8) -> Rect {
        let r = src.intersect(&self.bounds());
        if r.is_empty() {
            return r;
        }
        let dst = Rect::new(dx + (r.x - src.x), dy + (r.y - src.y), r.w, r.h);
        let plain =
            mask == MASK_SRC || (mask == MASK_OVER && self.check_opaque_for((r.w * r.h) as u64));
        if !plain {
            let (r, pixels) = self.extract(r);
            return self.draw_pixels(dst, clip, &pixels, r.w as usize, mask, false);
        }
        // A plain copy: move rows in place, in the order that reads each before it is written.
        let d = dst.intersect(&clip).intersect(&self.bounds());
        if d.is_empty() {
            return d;
        }
        let sx = (r.x + (d.x - dst.x)) as usize;
        let sy = r.y + (d.y - dst.y);
        let w = self.width as usize;
        let len = d.w as usize;
        let mut move_row = |row: i64| {
            let from = (sy + row) as usize * w + sx;
            let to = (d.y + row) as usize * w + d.x as usize;
            self.pixels.copy_within(from..from + len, to);
        };
        if sy < d.y {
            (0..d.h).rev().for_each(&mut move_row);
        } else {
            (0..d.h).for_each(&mut move_row);
        }
        d
    }

    /// Copies from `other` to (`dx`, `dy`) with `mask`.
    pub fn copy_from(
        &mut self,
        other: &Surface,
        src: Rect,
        dx: i64,
        dy: i64,
        clip: Rect,
        mask: u8,
    ) -> Rect {
        let s = src.intersect(&other.bounds());
        if s.is_empty() {
            return s;
        }
        let dst = Rect::new(dx + (s.x - src.x), dy + (s.y - src.y), s.w, s.h);
        let d = dst.intersect(&clip).intersect(&self.bounds());
        if d.is_empty() {
            return d;
        }
        let sx = s.x + (d.x - dst.x);
        let sy = s.y + (d.y - dst.y);
        let src_opaque = other.known_opaque();
        self.note_write(mask, src_opaque);
        let mask = if src_opaque && mask == MASK_OVER {
            MASK_SRC
        } else {
            mask
        };
        for row in 0..d.h {
            let from = other.row(sx, sy + row, d.w);
            let start = (d.y + row) as usize * self.width as usize + d.x as usize;
            let to = &mut self.pixels[start..start + d.w as usize];
            composite::composite_row(mask, from, to);
        }
        d
    }

    /// Applies binary transfer `function` from packed `src` pixels onto `rect`.
    pub fn transfer_pixels(
        &mut self,
        rect: Rect,
        clip: Rect,
        src: &[u32],
        src_w: usize,
        function: u8,
    ) -> Rect {
        let r = rect.intersect(&clip).intersect(&self.bounds());
        if r.is_empty() {
            return r;
        }
        self.forget_opacity();
        let ox = (r.x - rect.x) as usize;
        let oy = (r.y - rect.y) as usize;
        for row in 0..r.h as usize {
            let s = &src[(oy + row) * src_w + ox..][..r.w as usize];
            let d = self.row_mut(r.x, r.y + row as i64, r.w);
            for (d, &s) in d.iter_mut().zip(s) {
                *d = composite::transfer(function, s, *d);
            }
        }
        r
    }

    /// Composites this whole surface with *over* at (`x`, `y`) of `dst`, scaled by `opacity`,
    /// limited to `area` (in `dst` coordinates).
    pub fn paint_onto(
        &self,
        dst: &mut [u32],
        dst_w: u32,
        x: i64,
        y: i64,
        area: Rect,
        opacity: u32,
    ) {
        let r = Rect::new(x, y, i64::from(self.width), i64::from(self.height)).intersect(&area);
        if r.is_empty() {
            return;
        }
        let plain = opacity >= 255 && self.known_opaque();
        for row in r.y..r.y + r.h {
            let s = self.row(r.x - x, row - y, r.w);
            let start = row as usize * dst_w as usize + r.x as usize;
            let d = &mut dst[start..start + r.w as usize];
            if plain {
                d.copy_from_slice(s);
            } else {
                composite::over_row_with_opacity(s, d, opacity);
            }
        }
    }
}

/// What a path fill or stroke paints with.
#[derive(Debug, Clone, Copy)]
pub enum Paint<'a> {
    /// A premultiplied colour.
    Color(u32),
    /// A layer used as a repeating pattern anchored at (0, 0).
    Pattern(&'a Surface),
}

/// The cheaper equivalent mask for an opaque source.
pub fn simplify_mask(mask: u8, opaque: bool) -> u8 {
    if opaque && mask == MASK_OVER {
        MASK_SRC
    } else {
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(w: u32, h: u32) -> Surface {
        let mut s = Surface::new(w, h);
        for (i, p) in s.pixels.iter_mut().enumerate() {
            *p = 0xFF00_0000 | i as u32;
        }
        s
    }

    #[test]
    fn copy_within_overlapping_both_directions() {
        let all = Rect::new(0, 0, 1 << 30, 1 << 30);
        // Down-right by one: every destination pixel must be the original source pixel.
        let orig = numbered(5, 5);
        let mut s = orig.clone();
        s.copy_within(Rect::new(0, 0, 4, 4), 1, 1, all, MASK_SRC);
        for y in 1..5 {
            for x in 1..5 {
                assert_eq!(s.pixels[y * 5 + x], orig.pixels[(y - 1) * 5 + x - 1]);
            }
        }
        assert_eq!(s.pixels[0], orig.pixels[0]);
        // Up-left by one.
        let mut s = orig.clone();
        s.copy_within(Rect::new(1, 1, 4, 4), 0, 0, all, MASK_OVER);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(s.pixels[y * 5 + x], orig.pixels[(y + 1) * 5 + x + 1]);
            }
        }
        assert_eq!(s.pixels[24], orig.pixels[24]);
    }

    #[test]
    fn clipping_at_every_edge() {
        let mut s = Surface::new(4, 4);
        let all = Rect::new(-100, -100, 1000, 1000);
        let r = s.fill_rect(Rect::new(-2, -2, 4, 4), all, 0xFFFF_FFFF, MASK_SRC);
        assert_eq!(r, Rect::new(0, 0, 2, 2));
        assert_eq!(s.pixels.iter().filter(|&&p| p != 0).count(), 4);
        let src = numbered(3, 3);
        let r = s.copy_from(&src, Rect::new(-1, -1, 5, 5), 2, 2, all, MASK_SRC);
        // Source (0,0) lands at (3,3): only one pixel fits.
        assert_eq!(r, Rect::new(3, 3, 1, 1));
        assert_eq!(s.pixels[15], src.pixels[0]);
    }

    #[test]
    fn opacity_is_learnt_kept_and_lost() {
        let all = Rect::new(0, 0, 1 << 30, 1 << 30);
        let mut s = numbered(4, 4);
        assert!(!s.known_opaque(), "not known before a scan");
        assert!(s.check_opaque());
        // Over and opaque src keep it opaque.
        s.fill_rect(Rect::new(0, 0, 2, 2), all, 0x8000_0080, MASK_OVER);
        s.draw_pixels(
            Rect::new(0, 0, 1, 1),
            all,
            &[0xFF12_3456],
            1,
            MASK_SRC,
            true,
        );
        assert!(s.known_opaque());
        // A transparent src pixel loses it, and a scan finds that pixel.
        s.draw_pixels(Rect::new(3, 3, 1, 1), all, &[0], 1, MASK_SRC, false);
        assert!(!s.known_opaque());
        assert!(!s.check_opaque());
        s.fill_rect(Rect::new(3, 3, 1, 1), all, 0xFF00_0000, MASK_SRC);
        assert!(s.check_opaque(), "the hint pixel was covered: scan again");
        // Growing adds transparent pixels; cropping does not.
        s.resize(3, 3);
        assert!(s.known_opaque());
        s.resize(4, 3);
        assert!(!s.check_opaque());
        // Other masks and transfers lose it.
        let mut t = numbered(2, 2);
        assert!(t.check_opaque());
        t.fill_rect(Rect::new(0, 0, 1, 1), all, 0xFF00_0000, 0x2);
        assert!(!t.known_opaque());
    }

    #[test]
    fn over_from_a_surface_that_lost_opacity_still_blends() {
        let all = Rect::new(0, 0, 1 << 30, 1 << 30);
        let mut src = numbered(2, 1);
        assert!(src.check_opaque());
        src.draw_pixels(
            Rect::new(1, 0, 1, 1),
            all,
            &[0x8000_0080],
            1,
            MASK_SRC,
            false,
        );
        let mut dst = Surface::new(2, 1);
        dst.fill_rect(all, all, 0xFFFF_0000, MASK_SRC);
        dst.copy_from(&src, Rect::new(0, 0, 2, 1), 0, 0, all, MASK_OVER);
        assert_eq!(
            dst.pixels,
            vec![0xFF00_0000, composite::over(0x8000_0080, 0xFFFF_0000)]
        );
        // Same within one surface (the in-place path must not be taken).
        let mut s = Surface::new(3, 1);
        s.fill_rect(all, all, 0xFFFF_0000, MASK_SRC);
        s.draw_pixels(
            Rect::new(0, 0, 1, 1),
            all,
            &[0x8000_0080],
            1,
            MASK_SRC,
            false,
        );
        s.copy_within(Rect::new(0, 0, 1, 1), 2, 0, all, MASK_OVER);
        assert_eq!(s.pixels[2], composite::over(0x8000_0080, 0xFFFF_0000));
    }

    #[test]
    fn copy_within_vertical_overlap_with_clip() {
        let clip = Rect::new(0, 1, 3, 1);
        let orig = numbered(3, 3);
        let mut s = orig.clone();
        s.copy_within(Rect::new(0, 0, 3, 3), 1, 1, clip, MASK_SRC);
        // Only row 1, columns 1..3, gets source row 0 columns 0..2.
        assert_eq!(
            &s.pixels[3..6],
            &[orig.pixels[3], orig.pixels[0], orig.pixels[1]]
        );
        assert_eq!(s.pixels[6..], orig.pixels[6..]);
        assert_eq!(s.pixels[..3], orig.pixels[..3]);
    }

    #[test]
    fn resize_keeps_top_left() {
        let mut s = numbered(3, 2);
        s.resize(2, 3);
        assert_eq!(
            s.pixels,
            vec![0xFF00_0000, 0xFF00_0001, 0xFF00_0003, 0xFF00_0004, 0, 0]
        );
    }
}
