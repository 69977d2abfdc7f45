//! Colour conversion and scaling: a flattened [`Frame`] (`0x00RRGGBB`) -> an I420 picture at the
//! output size (BT.709, limited range, as signalled in the H.264 VUI).
//!
//! When the display size equals the requested size the pixels go straight to YUV (the fast
//! path; an odd width or height gets one black column/row of padding, since 4:2:0 needs even
//! sizes). Otherwise the picture is scaled to fit with its aspect kept and centred between black
//! bars. Scaling is separable with per-size precomputed tap tables in 14-bit fixed point: area
//! averaging when shrinking (text stays legible), bilinear when enlarging. Nothing is allocated
//! per frame once the tables exist. Also produces small RGB images for thumbnails.
//!
//! Called by the pipeline (one [`Converter`] per clip) and by `thumb`. Knows nothing of x264.

use crate::render::Frame;

/// A planar YUV 4:2:0 picture with even dimensions, planes stored back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420 {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl I420 {
    /// A black picture of `width` x `height` (both even, positive).
    pub fn new(width: u32, height: u32) -> Self {
        assert!(width > 0 && width % 2 == 0, "I420 width must be even and positive");
        assert!(height > 0 && height % 2 == 0, "I420 height must be even and positive");
        let luma = width as usize * height as usize;
        let mut data = vec![BLACK_Y; luma + luma / 2];
        data[luma..].fill(BLACK_C);
        Self {
            width,
            height,
            data,
        }
    }

    /// Width in pixels (even).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels (even).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The Y, U and V planes (strides `width`, `width / 2`, `width / 2`).
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = self.width as usize * self.height as usize;
        let (y, uv) = self.data.split_at(luma);
        let (u, v) = uv.split_at(luma / 4);
        (y, u, v)
    }

    /// The Y, U and V planes, writable.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let luma = self.width as usize * self.height as usize;
        let (y, uv) = self.data.split_at_mut(luma);
        let (u, v) = uv.split_at_mut(luma / 4);
        (y, u, v)
    }
}

const BLACK_Y: u8 = 16;
const BLACK_C: u8 = 128;
/// Fixed-point precision of the scaling weights.
const WEIGHT_BITS: u32 = 14;
const WEIGHT_ONE: i32 = 1 << WEIGHT_BITS;
/// Bits dropped after the vertical pass so the horizontal pass fits in `u32`.
const VERTICAL_SHIFT: u32 = 6;

/// BT.709 limited-range coefficients in 16-bit fixed point.
const fn fix16(x: f64) -> i32 {
    let scaled = x * 65536.0;
    (if scaled >= 0.0 { scaled + 0.5 } else { scaled - 0.5 }) as i32
}
const KR: f64 = 0.2126;
const KB: f64 = 0.0722;
const KG: f64 = 1.0 - KR - KB;
const LUMA_SCALE: f64 = 219.0 / 255.0;
const CHROMA_SCALE: f64 = 224.0 / 255.0;
const Y_R: i32 = fix16(KR * LUMA_SCALE);
const Y_G: i32 = fix16(KG * LUMA_SCALE);
const Y_B: i32 = fix16(KB * LUMA_SCALE);
const U_R: i32 = fix16(-KR / (2.0 * (1.0 - KB)) * CHROMA_SCALE);
const U_G: i32 = fix16(-KG / (2.0 * (1.0 - KB)) * CHROMA_SCALE);
const U_B: i32 = fix16(0.5 * CHROMA_SCALE);
const V_R: i32 = fix16(0.5 * CHROMA_SCALE);
const V_G: i32 = fix16(-KG / (2.0 * (1.0 - KR)) * CHROMA_SCALE);
const V_B: i32 = fix16(-KB / (2.0 * (1.0 - KR)) * CHROMA_SCALE);

/// Where the picture lands inside the output and how to resample it, for one source size.
#[derive(Debug)]
struct Geometry {
    src_w: u32,
    src_h: u32,
    /// Destination rectangle of the picture inside the output.
    dst_x: u32,
    dst_y: u32,
    dst_w: u32,
    dst_h: u32,
    /// Source size equals the requested size: no resampling.
    identity: bool,
    x_taps: Taps,
    y_taps: Taps,
}

/// Separable resampling taps: output coordinate `i` reads source `first[i] + t` with weight
/// `weights[i * count + t]`, for `t` in `0..count`; the weights of one output sum to 2^14.
#[derive(Debug)]
struct Taps {
    count: usize,
    first: Vec<u32>,
    weights: Vec<i32>,
}

impl Taps {
    /// Taps mapping `src` samples onto `dst` samples (area average when shrinking, bilinear when
    /// enlarging).
    fn new(src: u32, dst: u32) -> Self {
        assert!(src > 0 && dst > 0, "resampling needs positive sizes");
        let scale = f64::from(dst) / f64::from(src);
        let mut rows: Vec<(u32, Vec<f64>)> = Vec::with_capacity(dst as usize);
        for i in 0..dst {
            if scale < 1.0 {
                let lo = f64::from(i) / scale;
                let hi = (f64::from(i) + 1.0) / scale;
                let first = lo.floor() as u32;
                let last = (hi.ceil() as u32).min(src).max(first + 1);
                let w = (first..last)
                    .map(|j| (hi.min(f64::from(j) + 1.0) - lo.max(f64::from(j))).max(0.0))
                    .collect();
                rows.push((first, w));
            } else {
                let centre = (f64::from(i) + 0.5) / scale - 0.5;
                let c = centre.clamp(0.0, f64::from(src - 1));
                let first = (c.floor() as u32).min(src.saturating_sub(2));
                let frac = c - f64::from(first);
                if src == 1 {
                    rows.push((0, vec![1.0]));
                } else {
                    rows.push((first, vec![1.0 - frac, frac]));
                }
            }
        }
        let count = rows.iter().map(|(_, w)| w.len()).max().unwrap_or(1);
        let mut first = Vec::with_capacity(dst as usize);
        let mut weights = vec![0i32; dst as usize * count];
        for (i, (start, w)) in rows.iter().enumerate() {
            // Keep all `count` taps inside the source: shift the window left at the far edge.
            let start_fixed = (*start).min(src - count.min(src as usize) as u32);
            let shift = (*start - start_fixed) as usize;
            let total: f64 = w.iter().sum();
            let mut sum = 0;
            let mut heaviest = (i * count + shift, -1);
            for (t, wt) in w.iter().enumerate() {
                let fixed = (wt / total * f64::from(WEIGHT_ONE)).round() as i32;
                let slot = i * count + t + shift;
                weights[slot] = fixed;
                sum += fixed;
                if fixed > heaviest.1 {
                    heaviest = (slot, fixed);
                }
            }
            // Rounding error goes to the heaviest tap so every output sums to exactly one.
            weights[heaviest.0] += WEIGHT_ONE - sum;
            first.push(start_fixed);
        }
        Self {
            count,
            first,
            weights,
        }
    }
}

/// Converts frames of any size to I420 at one fixed output size.
#[derive(Debug)]
pub struct Converter {
    content_w: u32,
    content_h: u32,
    out_w: u32,
    out_h: u32,
    geometry: Option<Geometry>,
    row0: Vec<u32>,
    row1: Vec<u32>,
    /// Vertical-pass accumulator, three channels per source pixel.
    acc: Vec<u32>,
}

impl Converter {
    /// A converter to `content_w` x `content_h` (the requested size, maybe odd); the output
    /// pictures are that size rounded up to even.
    pub fn new(content_w: u32, content_h: u32) -> Self {
        assert!(content_w > 0, "output width must be positive");
        assert!(content_h > 0, "output height must be positive");
        let out_w = content_w.next_multiple_of(2);
        let out_h = content_h.next_multiple_of(2);
        Self {
            content_w,
            content_h,
            out_w,
            out_h,
            geometry: None,
            row0: vec![0; out_w as usize],
            row1: vec![0; out_w as usize],
            acc: Vec::new(),
        }
    }

    /// Output picture width (even).
    pub fn out_width(&self) -> u32 {
        self.out_w
    }

    /// Output picture height (even).
    pub fn out_height(&self) -> u32 {
        self.out_h
    }

    /// A black picture of the output size.
    pub fn new_picture(&self) -> I420 {
        I420::new(self.out_w, self.out_h)
    }

    /// Converts `frame` into `out` (which must have the output size).
    pub fn convert(&mut self, frame: &Frame, out: &mut I420) {
        assert_eq!(out.width, self.out_w, "picture width differs from converter");
        assert_eq!(out.height, self.out_h, "picture height differs from converter");
        assert_eq!(
            frame.pixels.len(),
            frame.width as usize * frame.height as usize,
            "frame pixel count"
        );
        self.prepare(frame.width, frame.height);
        let out_w = self.out_w as usize;
        let (y_plane, u_plane, v_plane) = out.planes_mut();
        for pair in 0..(self.out_h / 2) as usize {
            let y = (pair * 2) as u32;
            let geometry = self.geometry.as_ref().expect("prepared above");
            let identity_width = geometry.identity && frame.width == self.out_w;
            // Fast path: rows straight out of the frame when no scaling or padding is needed.
            let (r0, r1): (&[u32], &[u32]) = if identity_width && y + 1 < frame.height {
                let start = y as usize * out_w;
                (
                    &frame.pixels[start..start + out_w],
                    &frame.pixels[start + out_w..start + 2 * out_w],
                )
            } else {
                fill_row(geometry, frame, y, &mut self.row0, &mut self.acc);
                fill_row(geometry, frame, y + 1, &mut self.row1, &mut self.acc);
                (&self.row0, &self.row1)
            };
            let (y0, y1) = y_plane[pair * 2 * out_w..(pair * 2 + 2) * out_w].split_at_mut(out_w);
            let chroma = pair * out_w / 2..(pair + 1) * out_w / 2;
            rows_to_yuv(r0, r1, y0, y1, &mut u_plane[chroma.clone()], &mut v_plane[chroma]);
        }
    }

    /// Builds the tables for a source size (once per display size).
    fn prepare(&mut self, src_w: u32, src_h: u32) {
        if let Some(g) = &self.geometry
            && g.src_w == src_w
            && g.src_h == src_h
        {
            return;
        }
        let identity = src_w == self.content_w && src_h == self.content_h;
        let (dst_w, dst_h) = if identity {
            (src_w, src_h)
        } else {
            fit(src_w, src_h, self.content_w, self.content_h)
        };
        let dst_x = (self.content_w - dst_w) / 2;
        let dst_y = (self.content_h - dst_h) / 2;
        self.acc = vec![0; src_w as usize * 3];
        self.geometry = Some(Geometry {
            src_w,
            src_h,
            dst_x,
            dst_y,
            dst_w,
            dst_h,
            identity,
            x_taps: Taps::new(src_w, dst_w),
            y_taps: Taps::new(src_h, dst_h),
        });
    }
}

/// The largest `w` x `h` with the aspect of `src` that fits in `box_w` x `box_h`.
fn fit(src_w: u32, src_h: u32, box_w: u32, box_h: u32) -> (u32, u32) {
    let (sw, sh, bw, bh) = (
        u64::from(src_w),
        u64::from(src_h),
        u64::from(box_w),
        u64::from(box_h),
    );
    if sw * bh <= bw * sh {
        // Height-bound.
        let w = ((sw * bh + sh / 2) / sh).clamp(1, bw);
        (w as u32, box_h)
    } else {
        let h = ((sh * bw + sw / 2) / sw).clamp(1, bh);
        (box_w, h as u32)
    }
}

/// Writes output row `y` (full output width, black outside the picture) into `row`.
fn fill_row(geometry: &Geometry, frame: &Frame, y: u32, row: &mut [u32], acc: &mut [u32]) {
    row.fill(0);
    if y < geometry.dst_y || y >= geometry.dst_y + geometry.dst_h {
        return;
    }
    let dst = &mut row[geometry.dst_x as usize..(geometry.dst_x + geometry.dst_w) as usize];
    let src_w = frame.width as usize;
    if geometry.identity {
        let start = (y - geometry.dst_y) as usize * src_w;
        dst.copy_from_slice(&frame.pixels[start..start + src_w]);
        return;
    }
    // Vertical pass: weighted sum of the source rows into `acc` (r, g, b per source pixel).
    let yi = (y - geometry.dst_y) as usize;
    let taps = &geometry.y_taps;
    acc.fill(0);
    for t in 0..taps.count {
        let w = taps.weights[yi * taps.count + t] as u32;
        if w == 0 {
            continue;
        }
        let sy = taps.first[yi] as usize + t;
        let src = &frame.pixels[sy * src_w..(sy + 1) * src_w];
        for (a, &p) in acc.chunks_exact_mut(3).zip(src) {
            a[0] += ((p >> 16) & 0xff) * w;
            a[1] += ((p >> 8) & 0xff) * w;
            a[2] += (p & 0xff) * w;
        }
    }
    for a in acc.iter_mut() {
        *a >>= VERTICAL_SHIFT;
    }
    // Horizontal pass.
    let taps = &geometry.x_taps;
    let shift = 2 * WEIGHT_BITS - VERTICAL_SHIFT;
    let round = 1u32 << (shift - 1);
    for (xi, out) in dst.iter_mut().enumerate() {
        let (mut r, mut g, mut b) = (round, round, round);
        let first = taps.first[xi] as usize;
        for t in 0..taps.count {
            let w = taps.weights[xi * taps.count + t] as u32;
            let a = &acc[(first + t) * 3..(first + t) * 3 + 3];
            r += a[0] * w;
            g += a[1] * w;
            b += a[2] * w;
        }
        *out = ((r >> shift).min(255) << 16) | ((g >> shift).min(255) << 8) | (b >> shift).min(255);
    }
}

/// Two RGB rows -> two luma rows and one row of each chroma plane (2x2 averaged).
#[inline]
fn rows_to_yuv(r0: &[u32], r1: &[u32], y0: &mut [u8], y1: &mut [u8], u: &mut [u8], v: &mut [u8]) {
    let luma = |p: u32| -> (u8, i32, i32, i32) {
        let r = ((p >> 16) & 0xff) as i32;
        let g = ((p >> 8) & 0xff) as i32;
        let b = (p & 0xff) as i32;
        let y = (Y_R * r + Y_G * g + Y_B * b + (16 << 16) + (1 << 15)) >> 16;
        (y as u8, r, g, b)
    };
    let pairs = r0
        .chunks_exact(2)
        .zip(r1.chunks_exact(2))
        .zip(y0.chunks_exact_mut(2).zip(y1.chunks_exact_mut(2)))
        .zip(u.iter_mut().zip(v.iter_mut()));
    for (((a, b), (ya, yb)), (cu, cv)) in pairs {
        let (y00, r00, g00, b00) = luma(a[0]);
        let (y01, r01, g01, b01) = luma(a[1]);
        let (y10, r10, g10, b10) = luma(b[0]);
        let (y11, r11, g11, b11) = luma(b[1]);
        ya[0] = y00;
        ya[1] = y01;
        yb[0] = y10;
        yb[1] = y11;
        let r = r00 + r01 + r10 + r11;
        let g = g00 + g01 + g10 + g11;
        let bl = b00 + b01 + b10 + b11;
        *cu = ((U_R * r + U_G * g + U_B * bl + (128 << 18) + (1 << 17)) >> 18) as u8;
        *cv = ((V_R * r + V_G * g + V_B * bl + (128 << 18) + (1 << 17)) >> 18) as u8;
    }
}

/// `frame` resampled to `width` x `height` (any aspect), as packed RGB8, for thumbnails.
pub fn scale_to_rgb8(frame: &Frame, width: u32, height: u32) -> Vec<u8> {
    let geometry = Geometry {
        src_w: frame.width,
        src_h: frame.height,
        dst_x: 0,
        dst_y: 0,
        dst_w: width,
        dst_h: height,
        identity: frame.width == width && frame.height == height,
        x_taps: Taps::new(frame.width, width),
        y_taps: Taps::new(frame.height, height),
    };
    let mut acc = vec![0; frame.width as usize * 3];
    let mut row = vec![0; width as usize];
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        fill_row(&geometry, frame, y, &mut row, &mut acc);
        for &p in &row {
            rgb.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yuv_at(pic: &I420, x: u32, y: u32) -> (u8, u8, u8) {
        let (yp, up, vp) = pic.planes();
        let w = pic.width() as usize;
        let (x, y) = (x as usize, y as usize);
        (yp[y * w + x], up[(y / 2) * (w / 2) + x / 2], vp[(y / 2) * (w / 2) + x / 2])
    }

    #[test]
    fn primaries_match_bt709_limited_range() {
        let cases = [
            (0x000000, (16, 128, 128)),
            (0xffffff, (235, 128, 128)),
            (0xff0000, (63, 102, 240)),
            (0x00ff00, (173, 42, 26)),
            (0x0000ff, (32, 240, 118)),
        ];
        for (rgb, want) in cases {
            let mut conv = Converter::new(4, 4);
            let mut pic = conv.new_picture();
            conv.convert(&Frame::filled(4, 4, rgb), &mut pic);
            let got = yuv_at(&pic, 1, 1);
            let close = |a: u8, b: u8| a.abs_diff(b) <= 1;
            assert!(
                close(got.0, want.0) && close(got.1, want.1) && close(got.2, want.2),
                "rgb {rgb:06x}: got {got:?} want {want:?}"
            );
        }
    }

    #[test]
    fn odd_size_is_padded_black_without_scaling() {
        let mut frame = Frame::filled(5, 3, 0xffffff);
        frame.pixels[0] = 0x000000;
        let mut conv = Converter::new(5, 3);
        assert_eq!((conv.out_width(), conv.out_height()), (6, 4));
        let mut pic = conv.new_picture();
        conv.convert(&frame, &mut pic);
        assert_eq!(yuv_at(&pic, 0, 0).0, 16, "pixel kept, not resampled");
        assert_eq!(yuv_at(&pic, 4, 2).0, 235, "last real pixel kept");
        assert_eq!(yuv_at(&pic, 5, 0).0, 16, "padding column black");
        assert_eq!(yuv_at(&pic, 0, 3).0, 16, "padding row black");
    }

    #[test]
    fn wider_source_is_letterboxed_top_and_bottom() {
        // 200x100 into 100x100: picture 100x50 centred, bars of 25 rows.
        let mut conv = Converter::new(100, 100);
        let mut pic = conv.new_picture();
        conv.convert(&Frame::filled(200, 100, 0xffffff), &mut pic);
        assert_eq!(yuv_at(&pic, 50, 10).0, 16, "top bar");
        assert_eq!(yuv_at(&pic, 50, 50).0, 235, "picture");
        assert_eq!(yuv_at(&pic, 50, 90).0, 16, "bottom bar");
        assert_eq!(yuv_at(&pic, 0, 50).0, 235, "no side bars");
    }

    #[test]
    fn downscale_averages_areas() {
        // Alternating black/white columns halve to mid grey.
        let mut frame = Frame::filled(8, 8, 0);
        for (i, p) in frame.pixels.iter_mut().enumerate() {
            if i % 2 == 1 {
                *p = 0xffffff;
            }
        }
        let rgb = scale_to_rgb8(&frame, 4, 4);
        assert!(rgb.iter().all(|&c| c.abs_diff(128) <= 1), "{rgb:?}");
    }

    #[test]
    fn size_change_rebuilds_tables_and_upscales_to_fit() {
        let mut conv = Converter::new(100, 100);
        let mut pic = conv.new_picture();
        conv.convert(&Frame::filled(100, 100, 0xffffff), &mut pic);
        conv.convert(&Frame::filled(50, 25, 0x000000), &mut pic);
        assert_eq!(yuv_at(&pic, 50, 50).0, 16);
        conv.convert(&Frame::filled(50, 50, 0xffffff), &mut pic);
        assert_eq!(yuv_at(&pic, 0, 0).0, 235, "50x50 fills 100x100");
        assert_eq!(yuv_at(&pic, 99, 99).0, 235);
    }

    #[test]
    fn taps_sum_to_one_and_stay_in_range() {
        for (src, dst) in [(1023, 640), (640, 1023), (7, 3), (3, 7), (1, 5), (5, 1), (1920, 320)] {
            let taps = Taps::new(src, dst);
            for i in 0..dst as usize {
                let sum: i32 = taps.weights[i * taps.count..(i + 1) * taps.count].iter().sum();
                assert_eq!(sum, WEIGHT_ONE, "src {src} dst {dst} i {i}");
                assert!(taps.first[i] as usize + taps.count <= src as usize, "in range");
                assert!(taps.weights.iter().all(|&w| w >= 0), "non-negative");
            }
        }
    }
}
