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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surface {
    /// Width in pixels (0 = no pixels).
    pub width: u32,
    /// Height in pixels (0 = no pixels).
    pub height: u32,
    /// `width * height` premultiplied ARGB pixels.
    pub pixels: Vec<u32>,
}

impl Surface {
    /// A transparent surface.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width as usize * height as usize],
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
        for y in r.y..r.y + r.h {
            composite::fill_row(mask, c, self.row_mut(r.x, y, r.w));
        }
        r
    }

    /// Fills one horizontal span (already clipped) with a paint.
    pub fn fill_span(&mut self, y: i64, x0: i64, x1: i64, paint: &Paint<'_>, mask: u8) {
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
    /// `src[0]`) at `rect` with `mask`, clipped to `clip` and the bounds. Returns the rectangle
    /// touched.
    pub fn draw_pixels(
        &mut self,
        rect: Rect,
        clip: Rect,
        src: &[u32],
        src_w: usize,
        mask: u8,
    ) -> Rect {
        let r = rect.intersect(&clip).intersect(&self.bounds());
        if r.is_empty() {
            return r;
        }
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
        let (r, pixels) = self.extract(src);
        if r.is_empty() {
            return r;
        }
        let dst = Rect::new(dx + (r.x - src.x), dy + (r.y - src.y), r.w, r.h);
        self.draw_pixels(dst, clip, &pixels, r.w as usize, mask)
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
        for row in r.y..r.y + r.h {
            let s = self.row(r.x - x, row - y, r.w);
            let start = row as usize * dst_w as usize + r.x as usize;
            composite::over_row_with_opacity(s, &mut dst[start..start + r.w as usize], opacity);
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
    fn resize_keeps_top_left() {
        let mut s = numbered(3, 2);
        s.resize(2, 3);
        assert_eq!(
            s.pixels,
            vec![0xFF00_0000, 0xFF00_0001, 0xFF00_0003, 0xFF00_0004, 0, 0]
        );
    }
}
