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
//! Damage-driven: [`Converter::update`] takes the frame rectangles the renderer recomposited
//! and rewrites only the output area they reach (the 2x2 chroma blocks, widened by the taps'
//! support when scaling), with byte-identical results to a whole conversion; it also reports
//! the 16x16 macroblocks it rewrote, which x264 then need not analyse. The inner loops are
//! branch-free and auto-vectorised; an AVX2 build of them is picked at run time.
//!
//! Called by the pipeline (one [`Converter`] per clip) and by `thumb`. Knows nothing of x264.

use crate::render::{Frame, Rect};

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
        assert!(width > 0, "I420 width must be positive");
        assert!(width.is_multiple_of(2), "I420 width must be even");
        assert!(height > 0, "I420 height must be positive");
        assert!(height.is_multiple_of(2), "I420 height must be even");
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
    (if scaled >= 0.0 {
        scaled + 0.5
    } else {
        scaled - 0.5
    }) as i32
}
const KR: f64 = 0.2126;
const KB: f64 = 0.0722;
const KG: f64 = 1.0 - KR - KB;
const LUMA_SCALE: f64 = 219.0 / 255.0;
const CHROMA_SCALE: f64 = 224.0 / 255.0;
/// Decoder side (limited range): R = a(Y-16) + E_RV V', G = a(Y-16) - E_GU U' - E_GV V',
/// B = a(Y-16) + E_BU U', with a = 255/219 and U' = U-128, V' = V-128.
const E_RV: f64 = 2.0 * (1.0 - KR) / CHROMA_SCALE;
const E_GU: f64 = 2.0 * (1.0 - KB) * KB / KG / CHROMA_SCALE;
const E_GV: f64 = 2.0 * (1.0 - KR) * KR / KG / CHROMA_SCALE;
const E_BU: f64 = 2.0 * (1.0 - KB) / CHROMA_SCALE;
/// RGB-error-minimising luma: Y = 16 + (r + g + b - chroma brightness) / (3a).
const Y_SUM: i32 = fix16(LUMA_SCALE / 3.0);
const Y_CU: i32 = fix16(LUMA_SCALE / 3.0 * (E_BU - E_GU));
const Y_CV: i32 = fix16(LUMA_SCALE / 3.0 * (E_RV - E_GV));
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
        assert!(src > 0, "resampling needs a positive source size");
        assert!(dst > 0, "resampling needs a positive target size");
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

    /// The outputs `lo..hi` that read any of the source samples `s0..s1` (`first` never
    /// decreases, so both ends are binary searches).
    fn outputs_reading(&self, s0: u32, s1: u32) -> (u32, u32) {
        let count = self.count as u32;
        let lo = self.first.partition_point(|&f| f + count <= s0);
        let hi = self.first.partition_point(|&f| f < s1);
        (lo as u32, hi.max(lo) as u32)
    }
}

/// A rectangle of pixels of the output picture (what a conversion rewrote,
/// [`Converter::written`]). Frame rectangles are the renderer's [`Rect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width (0 = empty).
    pub w: u32,
    /// Height (0 = empty).
    pub h: u32,
}

impl Region {
    /// A rectangle.
    pub fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    /// True when it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
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
    /// Vertical-pass accumulators (one channel each, one entry per source column).
    acc: Accumulator,
    /// Address of the picture converted last time: only that picture can be updated in place.
    last_target: usize,
    /// Output rectangles (2x2 aligned) rewritten by the last conversion.
    written: Vec<Region>,
    /// Per 16x16 output macroblock, row-major: changed by the last conversion.
    changed_mbs: Vec<bool>,
    /// Per macroblock: sum of absolute differences (Y, U and V samples) between the picture
    /// before and after the last conversion; [`SAD_UNKNOWN`] after a whole conversion.
    sad_mbs: Vec<u32>,
    /// Per macroblock: the same differences less [`CHANGE_DEAD_ZONE`] each (what a quantiser
    /// keeps of them), the rate control's measure; [`SAD_UNKNOWN`] after a whole conversion.
    cost_mbs: Vec<u32>,
    /// The old samples of the rows being rewritten (to measure the difference).
    old_rows: Vec<u8>,
    /// Per macroblock of the current picture: its texture, the sum of the luma differences
    /// between horizontal and vertical neighbours less [`CHANGE_DEAD_ZONE`] (what intra
    /// coding it costs, roughly). Kept up to date for changed macroblocks.
    activity_mbs: Vec<u32>,
    /// Sum of `activity_mbs` (what an intra frame of the whole picture costs).
    activity_total: u64,
    /// Output height (rows of macroblocks).
    mb_rows: usize,
    /// Macroblocks per output row.
    mb_cols: usize,
    /// The CPU has AVX2: the inner loops run their AVX2 build.
    avx2: bool,
}

/// [`Converter::macroblock_sad`] of a macroblock that was converted whole, with no previous
/// picture to compare with: treated as entirely new.
pub const SAD_UNKNOWN: u32 = u32::MAX;

/// Differences up to this much per sample are not counted in [`Converter::macroblock_cost`]:
/// x264's quantiser at the usual quantisers (step ~10 at QP 26) codes them as nothing.
pub const CHANGE_DEAD_ZONE: u8 = 3;

/// Adds to `sads` and `costs` (one per macroblock of a row) the absolute differences of `old`
/// and `new` (for `costs`, less [`CHANGE_DEAD_ZONE`]), samples of one plane row starting at
/// plane column `x0`, where a macroblock spans `16 / subsampling` samples of the plane.
fn add_sad(
    sads: &mut [u32],
    costs: &mut [u32],
    x0: usize,
    old: &[u8],
    new: &[u8],
    subsampling: usize,
) {
    let span = 16 / subsampling;
    let mut x = x0;
    let mut i = 0;
    while i < new.len() {
        let mb = x / span;
        let end = ((mb + 1) * span - x).min(new.len() - i);
        let (mut d, mut c) = (0_u32, 0_u32);
        for (&a, &b) in old[i..i + end].iter().zip(&new[i..i + end]) {
            let diff = a.abs_diff(b);
            d += u32::from(diff);
            c += u32::from(diff.saturating_sub(CHANGE_DEAD_ZONE));
        }
        sads[mb] = sads[mb].saturating_add(d);
        costs[mb] = costs[mb].saturating_add(c);
        x += end;
        i += end;
    }
}

/// The vertical pass's per-channel sums for a run of source columns.
#[derive(Debug, Default)]
struct Accumulator {
    r: Vec<u32>,
    g: Vec<u32>,
    b: Vec<u32>,
}

impl Accumulator {
    fn new(len: usize) -> Self {
        Self {
            r: vec![0; len],
            g: vec![0; len],
            b: vec![0; len],
        }
    }
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
            acc: Accumulator::default(),
            last_target: 0,
            written: Vec::new(),
            changed_mbs: vec![true; out_w.div_ceil(16) as usize * out_h.div_ceil(16) as usize],
            sad_mbs: vec![SAD_UNKNOWN; out_w.div_ceil(16) as usize * out_h.div_ceil(16) as usize],
            cost_mbs: vec![SAD_UNKNOWN; out_w.div_ceil(16) as usize * out_h.div_ceil(16) as usize],
            old_rows: Vec::new(),
            activity_mbs: vec![0; out_w.div_ceil(16) as usize * out_h.div_ceil(16) as usize],
            activity_total: 0,
            mb_rows: out_h.div_ceil(16) as usize,
            mb_cols: out_w.div_ceil(16) as usize,
            avx2: has_avx2(),
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

    /// Converts the whole of `frame` into `out` (which must have the output size).
    pub fn convert(&mut self, frame: &Frame, out: &mut I420) {
        self.check(frame, out);
        self.prepare(frame.width, frame.height);
        self.last_target = out.data.as_ptr() as usize;
        self.convert_all(frame, out);
    }

    /// Converts only what `damaged` (frame rectangles that may differ from the frame given to
    /// the previous call) changes in `out`.
    ///
    /// Falls back to a whole conversion when `out` is not the picture of the previous call or
    /// the frame size changed. The result is byte-identical to [`Converter::convert`] as long
    /// as every pixel that changed since the previous call lies inside `damaged`. Typing in a
    /// terminal touches a few characters; a whole 1080p conversion costs milliseconds.
    pub fn update(&mut self, frame: &Frame, damaged: &[Rect], out: &mut I420) {
        self.check(frame, out);
        let rebuilt = self.prepare(frame.width, frame.height);
        let target = out.data.as_ptr() as usize;
        if rebuilt || target != self.last_target {
            self.last_target = target;
            self.convert_all(frame, out);
            self.measure_activity(out);
            return;
        }
        self.written.clear();
        self.changed_mbs.fill(false);
        self.sad_mbs.fill(0);
        self.cost_mbs.fill(0);
        for r in damaged {
            let o = self.output_region(r);
            if !o.is_empty() {
                self.convert_region(frame, o, out, true);
                self.written.push(o);
            }
        }
        // Rewritten with the same samples is not changed: a VNC server re-sending the screen
        // it already sent (a JPEG of the same picture, a redraw) costs x264 nothing then, and
        // does not count as new content for the rate control and the scene-cut rule.
        for (changed, &sad) in self.changed_mbs.iter_mut().zip(&self.sad_mbs) {
            *changed &= sad > 0;
        }
        self.measure_activity(out);
    }

    /// Per macroblock (as [`Converter::changed_macroblocks`]): the texture of the current
    /// picture's luma (see `activity_mbs`), valid after [`Converter::update`].
    pub fn macroblock_activity(&self) -> &[u32] {
        &self.activity_mbs
    }

    /// The texture of the whole current picture: what an intra frame of it costs, in the
    /// units of [`Converter::macroblock_cost`].
    pub fn activity_total(&self) -> u64 {
        self.activity_total
    }

    /// Recomputes the texture of the changed macroblocks of `out`.
    fn measure_activity(&mut self, out: &I420) {
        let w = self.out_w as usize;
        let h = self.out_h as usize;
        let (y_plane, _, _) = out.planes();
        for row in 0..self.mb_rows {
            for col in 0..self.mb_cols {
                let i = row * self.mb_cols + col;
                if !self.changed_mbs[i] {
                    continue;
                }
                let (x0, y0) = (col * 16, row * 16);
                let (x1, y1) = ((x0 + 16).min(w), (y0 + 16).min(h));
                let mut a = 0_u32;
                for y in y0..y1 {
                    let line = &y_plane[y * w + x0..y * w + x1];
                    a += line
                        .windows(2)
                        .map(|p| u32::from(p[0].abs_diff(p[1]).saturating_sub(CHANGE_DEAD_ZONE)))
                        .sum::<u32>();
                    if y + 1 < y1 {
                        let below = &y_plane[(y + 1) * w + x0..(y + 1) * w + x1];
                        a += line
                            .iter()
                            .zip(below)
                            .map(|(&p, &q)| {
                                u32::from(p.abs_diff(q).saturating_sub(CHANGE_DEAD_ZONE))
                            })
                            .sum::<u32>();
                    }
                }
                self.activity_total =
                    self.activity_total - u64::from(self.activity_mbs[i]) + u64::from(a);
                self.activity_mbs[i] = a;
            }
        }
    }

    /// Per macroblock (as [`Converter::changed_macroblocks`]): the sum of absolute
    /// differences of its Y, U and V samples between the previous picture and this one, or
    /// [`SAD_UNKNOWN`] after a whole conversion (no previous picture to compare with). The
    /// rate control's measure of how much a frame changed.
    pub fn macroblock_sad(&self) -> &[u32] {
        &self.sad_mbs
    }

    /// Per macroblock: [`Converter::macroblock_sad`] less [`CHANGE_DEAD_ZONE`] per sample:
    /// small differences (JPEG noise of a re-sent picture) cost an encoder nothing.
    pub fn macroblock_cost(&self) -> &[u32] {
        &self.cost_mbs
    }

    /// One flag per 16x16 macroblock of the output picture (row-major, the last column and
    /// row may be partial): true where the last conversion rewrote pixels (everywhere after a
    /// whole conversion), so false = the same pixels as the previous picture.
    ///
    /// After [`Converter::update`], a macroblock rewritten with the very same samples is not
    /// flagged.
    pub fn changed_macroblocks(&self) -> &[bool] {
        &self.changed_mbs
    }

    /// The output rectangles the last conversion rewrote (all of it after a full conversion,
    /// none when nothing was damaged); pixels outside them are those of the previous picture.
    pub fn written(&self) -> &[Region] {
        &self.written
    }

    fn check(&self, frame: &Frame, out: &I420) {
        assert_eq!(
            out.width, self.out_w,
            "picture width differs from converter"
        );
        assert_eq!(
            out.height, self.out_h,
            "picture height differs from converter"
        );
        assert_eq!(
            frame.pixels.len(),
            frame.width as usize * frame.height as usize,
            "frame pixel count"
        );
    }

    fn convert_all(&mut self, frame: &Frame, out: &mut I420) {
        let all = Region::new(0, 0, self.out_w, self.out_h);
        self.convert_region(frame, all, out, false);
        self.written.clear();
        self.written.push(all);
        self.changed_mbs.fill(true);
        self.sad_mbs.fill(SAD_UNKNOWN);
        self.cost_mbs.fill(SAD_UNKNOWN);
    }

    /// The output area (aligned to the 2x2 chroma grid) whose pixels read any pixel of the
    /// frame rectangle `r`: the picture's placement plus the filter support of the taps.
    pub fn output_region(&self, r: &Rect) -> Region {
        let g = self.geometry.as_ref().expect("prepared");
        // Clipped to the frame, so the casts are lossless.
        let clip = |v: i64, max: u32| v.clamp(0, i64::from(max)) as u32;
        let (x0, y0) = (clip(r.x, g.src_w), clip(r.y, g.src_h));
        let x1 = clip(r.x.saturating_add(r.w), g.src_w);
        let y1 = clip(r.y.saturating_add(r.h), g.src_h);
        if x0 >= x1 || y0 >= y1 {
            return Region::default();
        }
        let (ox0, ox1, oy0, oy1) = if g.identity {
            (x0, x1, y0, y1)
        } else {
            let (a, b) = g.x_taps.outputs_reading(x0, x1);
            let (c, d) = g.y_taps.outputs_reading(y0, y1);
            (a + g.dst_x, b + g.dst_x, c + g.dst_y, d + g.dst_y)
        };
        let ox0 = ox0 & !1;
        let oy0 = oy0 & !1;
        let ox1 = ox1.next_multiple_of(2).min(self.out_w);
        let oy1 = oy1.next_multiple_of(2).min(self.out_h);
        if ox0 >= ox1 || oy0 >= oy1 {
            return Region::default();
        }
        Region::new(ox0, oy0, ox1 - ox0, oy1 - oy0)
    }

    /// Converts the output rectangle `o` (even position and size, inside the output) and marks
    /// the macroblocks it touches in `changed_mbs`; with `measure`, adds the absolute
    /// differences of the rewritten samples to `sad_mbs`.
    fn convert_region(&mut self, frame: &Frame, o: Region, out: &mut I420, measure: bool) {
        assert!(
            o.x.is_multiple_of(2) && o.w.is_multiple_of(2),
            "region on the chroma grid"
        );
        assert!(
            o.y.is_multiple_of(2) && o.h.is_multiple_of(2),
            "region on the chroma grid"
        );
        assert!(
            o.x + o.w <= self.out_w && o.y + o.h <= self.out_h,
            "region inside"
        );
        let out_w = self.out_w as usize;
        let (x0, x1) = (o.x as usize, (o.x + o.w) as usize);
        let (y_plane, u_plane, v_plane) = out.planes_mut();
        let geometry = self.geometry.as_ref().expect("prepared");
        // Rows straight out of the frame when no scaling or padding is involved.
        let direct_cols = geometry.identity && o.x + o.w <= frame.width;
        let src_w = frame.width as usize;
        for y in (o.y..o.y + o.h).step_by(2) {
            let (r0, r1): (&[u32], &[u32]) = if direct_cols && y + 1 < frame.height {
                let start = y as usize * src_w;
                (
                    &frame.pixels[start + x0..start + x1],
                    &frame.pixels[start + src_w + x0..start + src_w + x1],
                )
            } else {
                let (acc, avx2) = (&mut self.acc, self.avx2);
                fill_row(avx2, geometry, frame, y, &mut self.row0, acc, x0, x1);
                fill_row(avx2, geometry, frame, y + 1, &mut self.row1, acc, x0, x1);
                (&self.row0[x0..x1], &self.row1[x0..x1])
            };
            let line = y as usize * out_w;
            let (y0, y1) = y_plane[line..line + 2 * out_w].split_at_mut(out_w);
            let chroma = line / 4;
            let (y0, y1) = (&mut y0[x0..x1], &mut y1[x0..x1]);
            let u = &mut u_plane[chroma + x0 / 2..chroma + x1 / 2];
            let v = &mut v_plane[chroma + x0 / 2..chroma + x1 / 2];
            let mb_row = y as usize / 16 * self.mb_cols;
            let mbs = &mut self.changed_mbs[mb_row..][..self.mb_cols];
            mbs[x0 / 16..=(x1 - 1) / 16].fill(true);
            if !measure {
                rows_to_yuv(self.avx2, r0, r1, y0, y1, u, v);
                continue;
            }
            let n = x1 - x0;
            let old = &mut self.old_rows;
            old.clear();
            for plane in [&*y0, &*y1, &*u, &*v] {
                old.extend_from_slice(plane);
            }
            rows_to_yuv(self.avx2, r0, r1, y0, y1, u, v);
            let (old_y0, rest) = old.split_at(n);
            let (old_y1, rest) = rest.split_at(n);
            let (old_u, old_v) = rest.split_at(n / 2);
            let sads = &mut self.sad_mbs[mb_row..][..self.mb_cols];
            let costs = &mut self.cost_mbs[mb_row..][..self.mb_cols];
            add_sad(sads, costs, x0, old_y0, y0, 1);
            add_sad(sads, costs, x0, old_y1, y1, 1);
            add_sad(sads, costs, x0 / 2, old_u, u, 2);
            add_sad(sads, costs, x0 / 2, old_v, v, 2);
        }
    }

    /// Builds the tables for a source size (once per display size). True when rebuilt.
    fn prepare(&mut self, src_w: u32, src_h: u32) -> bool {
        if let Some(g) = &self.geometry
            && g.src_w == src_w
            && g.src_h == src_h
        {
            return false;
        }
        let identity = src_w == self.content_w && src_h == self.content_h;
        let (dst_w, dst_h) = if identity {
            (src_w, src_h)
        } else {
            fit(src_w, src_h, self.content_w, self.content_h)
        };
        let dst_x = (self.content_w - dst_w) / 2;
        let dst_y = (self.content_h - dst_h) / 2;
        self.acc = Accumulator::new(src_w as usize);
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
        true
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

/// Writes columns `x0..x1` of output row `y` (black outside the picture) into `row`; `avx2`
/// as detected by [`has_avx2`].
#[allow(clippy::too_many_arguments)]
fn fill_row(
    avx2: bool,
    geometry: &Geometry,
    frame: &Frame,
    y: u32,
    row: &mut [u32],
    acc: &mut Accumulator,
    x0: usize,
    x1: usize,
) {
    let row = &mut row[x0..x1];
    row.fill(0);
    if y < geometry.dst_y || y >= geometry.dst_y + geometry.dst_h {
        return;
    }
    let (dst_x0, dst_x1) = (
        geometry.dst_x as usize,
        (geometry.dst_x + geometry.dst_w) as usize,
    );
    let (a, b) = (x0.max(dst_x0), x1.min(dst_x1));
    if a >= b {
        return;
    }
    let dst = &mut row[a - x0..b - x0];
    // Picture columns `xi0..xi1`.
    let (xi0, xi1) = (a - dst_x0, b - dst_x0);
    let src_w = frame.width as usize;
    let yi = (y - geometry.dst_y) as usize;
    if geometry.identity {
        let start = yi * src_w;
        dst.copy_from_slice(&frame.pixels[start + xi0..start + xi1]);
        return;
    }
    // Vertical pass: weighted sum of the source rows, over the source columns read.
    let x_taps = &geometry.x_taps;
    let s0 = x_taps.first[xi0] as usize;
    let s1 = x_taps.first[xi1 - 1] as usize + x_taps.count;
    let n = s1 - s0;
    let (ar, ag, ab) = (&mut acc.r[..n], &mut acc.g[..n], &mut acc.b[..n]);
    let taps = &geometry.y_taps;
    let weights = &taps.weights[yi * taps.count..(yi + 1) * taps.count];
    // The weights sum to one, so some are non-zero; the first assigns, the last shifts.
    let used: u32 = weights.iter().map(|&w| u32::from(w != 0)).sum();
    let mut seen = 0;
    for (t, &w) in weights.iter().enumerate() {
        if w == 0 {
            continue;
        }
        seen += 1;
        let sy = taps.first[yi] as usize + t;
        let src = &frame.pixels[sy * src_w + s0..sy * src_w + s1];
        let pass = Pass {
            weight: w as u32,
            first: seen == 1,
            last: seen == used,
        };
        accumulate(avx2, src, pass, ar, ag, ab);
    }
    // Horizontal pass.
    let shift = 2 * WEIGHT_BITS - VERTICAL_SHIFT;
    let round = 1u32 << (shift - 1);
    let count = x_taps.count;
    for (xi, out) in (xi0..xi1).zip(dst.iter_mut()) {
        let (mut r, mut g, mut b) = (round, round, round);
        let first = x_taps.first[xi] as usize - s0;
        let weights = &x_taps.weights[xi * count..(xi + 1) * count];
        let (sr, sg, sb) = (
            &ar[first..first + count],
            &ag[first..first + count],
            &ab[first..first + count],
        );
        for t in 0..count {
            let w = weights[t] as u32;
            r += sr[t] * w;
            g += sg[t] * w;
            b += sb[t] * w;
        }
        *out = ((r >> shift).min(255) << 16) | ((g >> shift).min(255) << 8) | (b >> shift).min(255);
    }
}

/// One source row's contribution to the vertical pass.
#[derive(Clone, Copy)]
struct Pass {
    weight: u32,
    /// The first row: assign instead of add.
    first: bool,
    /// The last row: then drop `VERTICAL_SHIFT` bits so the horizontal pass fits in `u32`.
    last: bool,
}

/// Adds `w` times each channel of `src` to the accumulators, with the AVX2 build of the loop
/// when `avx2`.
#[inline]
fn accumulate(avx2: bool, src: &[u32], pass: Pass, r: &mut [u32], g: &mut [u32], b: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when the CPU reported AVX2 (`has_avx2`).
        unsafe { accumulate_avx2(src, pass, r, g, b) };
        return;
    }
    let _ = avx2;
    accumulate_body(src, pass, r, g, b);
}

/// [`accumulate_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_avx2(src: &[u32], pass: Pass, r: &mut [u32], g: &mut [u32], b: &mut [u32]) {
    accumulate_body(src, pass, r, g, b);
}

/// The vertical pass's inner loop (branch-free, vectorised by the compiler).
#[inline(always)]
fn accumulate_body(src: &[u32], pass: Pass, r: &mut [u32], g: &mut [u32], b: &mut [u32]) {
    let n = src.len();
    let (r, g, b) = (&mut r[..n], &mut g[..n], &mut b[..n]);
    let w = pass.weight;
    // The flags are loop-invariant: the compiler makes one vectorised loop per case.
    if pass.first {
        for i in 0..n {
            let p = src[i];
            r[i] = ((p >> 16) & 0xff) * w;
            g[i] = ((p >> 8) & 0xff) * w;
            b[i] = (p & 0xff) * w;
        }
    } else {
        for i in 0..n {
            let p = src[i];
            r[i] += ((p >> 16) & 0xff) * w;
            g[i] += ((p >> 8) & 0xff) * w;
            b[i] += (p & 0xff) * w;
        }
    }
    if pass.last {
        for c in [r, g, b] {
            for v in c.iter_mut() {
                *v >>= VERTICAL_SHIFT;
            }
        }
    }
}

/// Whether the running CPU has AVX2 (then the colour conversion runs its AVX2 build).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Two RGB rows -> two luma rows and one row of each chroma plane, with the AVX2 build of the
/// loop when `avx2` (as detected by [`has_avx2`]).
#[inline]
fn rows_to_yuv(
    avx2: bool,
    r0: &[u32],
    r1: &[u32],
    y0: &mut [u8],
    y1: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when the CPU reported AVX2 (`has_avx2`).
        unsafe { rows_to_yuv_avx2(r0, r1, y0, y1, u, v) };
        return;
    }
    let _ = avx2;
    rows_to_yuv_body(r0, r1, y0, y1, u, v);
}

/// [`rows_to_yuv_body`] compiled for AVX2 (eight pixels per instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rows_to_yuv_avx2(
    r0: &[u32],
    r1: &[u32],
    y0: &mut [u8],
    y1: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    rows_to_yuv_body(r0, r1, y0, y1, u, v);
}

/// Two RGB rows -> two luma rows and one row of each chroma plane.
///
/// Chroma is the 2x2 average (decoders replicate or interpolate it back). Luma is not the
/// textbook weighted sum: given the block's shared (quantised) chroma, each pixel's luma is
/// chosen to minimise its RGB error, a closed-form "sharp YUV". Uniform areas get the textbook
/// value; coloured text on black (4:2:0's worst case) gains ~4 dB PSNR because the brightness
/// of the chroma that bleeds across an edge is compensated in the full-resolution luma.
///
/// Written as one branch-free loop over 2x2 blocks with indexed slices of checked length, so
/// the compiler vectorises it.
#[inline(always)]
fn rows_to_yuv_body(
    r0: &[u32],
    r1: &[u32],
    y0: &mut [u8],
    y1: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    #[inline(always)]
    fn split(p: u32) -> (i32, i32, i32) {
        (
            ((p >> 16) & 0xff) as i32,
            ((p >> 8) & 0xff) as i32,
            (p & 0xff) as i32,
        )
    }
    #[inline(always)]
    fn luma(p: u32, chroma_term: i32) -> u8 {
        let (r, g, b) = split(p);
        ((Y_SUM * (r + g + b) - chroma_term) >> 16).clamp(0, 255) as u8
    }
    let n = u.len().min(v.len()).min(r0.len() / 2).min(r1.len() / 2);
    let (r0, r1) = (&r0[..2 * n], &r1[..2 * n]);
    let (y0, y1) = (&mut y0[..2 * n], &mut y1[..2 * n]);
    let (u, v) = (&mut u[..n], &mut v[..n]);
    for i in 0..n {
        let (a0, a1, b0, b1) = (r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]);
        let (r00, g00, b00) = split(a0);
        let (r01, g01, b01) = split(a1);
        let (r10, g10, b10) = split(b0);
        let (r11, g11, b11) = split(b1);
        let r = r00 + r01 + r10 + r11;
        let g = g00 + g01 + g10 + g11;
        let bl = b00 + b01 + b10 + b11;
        let uq = ((U_R * r + U_G * g + U_B * bl + (128 << 18) + (1 << 17)) >> 18).clamp(0, 255);
        let vq = ((V_R * r + V_G * g + V_B * bl + (128 << 18) + (1 << 17)) >> 18).clamp(0, 255);
        u[i] = uq as u8;
        v[i] = vq as u8;
        // Per-block part of the luma: offset 16, rounding, minus the chroma's brightness.
        let term = Y_CU * (uq - 128) + Y_CV * (vq - 128) - (16 << 16) - (1 << 15);
        y0[2 * i] = luma(a0, term);
        y0[2 * i + 1] = luma(a1, term);
        y1[2 * i] = luma(b0, term);
        y1[2 * i + 1] = luma(b1, term);
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
    let mut acc = Accumulator::new(frame.width as usize);
    let mut row = vec![0; width as usize];
    let avx2 = has_avx2();
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        fill_row(
            avx2,
            &geometry,
            frame,
            y,
            &mut row,
            &mut acc,
            0,
            width as usize,
        );
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
        (
            yp[y * w + x],
            up[(y / 2) * (w / 2) + x / 2],
            vp[(y / 2) * (w / 2) + x / 2],
        )
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

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u32) -> u32 {
            (self.next() % u64::from(n)) as u32
        }
    }

    /// Paints a random rectangle of `frame` (solid, noise or a copy of its neighbour) and
    /// returns it; sometimes 1 pixel, sometimes at an edge.
    fn scribble(frame: &mut Frame, rng: &mut Rng) -> Rect {
        let (fw, fh) = (frame.width, frame.height);
        let (w, h) = match rng.below(4) {
            0 => (1, 1),
            1 => (1 + rng.below(fw), 1 + rng.below(fh)),
            _ => (1 + rng.below(fw.min(24)), 1 + rng.below(fh.min(24))),
        };
        let x = if rng.below(5) == 0 {
            fw - w
        } else {
            rng.below(fw - w + 1)
        };
        let y = if rng.below(5) == 0 {
            fh - h
        } else {
            rng.below(fh - h + 1)
        };
        let solid = (rng.next() & 0xff_ffff) as u32;
        let noise = rng.below(2) == 0;
        for row in y..y + h {
            for col in x..x + w {
                let p = &mut frame.pixels[(row * fw + col) as usize];
                *p = if noise {
                    (rng.next() & 0xff_ffff) as u32
                } else {
                    solid
                };
            }
        }
        Rect::new(x.into(), y.into(), w.into(), h.into())
    }

    #[test]
    fn damaged_updates_equal_full_conversion() {
        let cases = [
            ("identity", (64, 48), (64, 48), 300),
            ("odd identity", (33, 21), (33, 21), 300),
            ("odd identity 1023x767", (1023, 767), (1023, 767), 25),
            ("shrink", (64, 48), (100, 70), 200),
            ("shrink odd", (97, 61), (200, 130), 200),
            ("enlarge", (200, 150), (64, 48), 200),
            ("enlarge odd", (101, 77), (40, 30), 200),
            ("letterbox top and bottom", (100, 100), (200, 100), 200),
            ("pillarbox enlarge", (100, 60), (50, 50), 200),
            ("letterbox odd", (63, 47), (30, 40), 200),
        ];
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        for (name, content, src, steps) in cases {
            let mut frame = Frame::filled(src.0, src.1, 0x102030);
            let mut conv = Converter::new(content.0, content.1);
            let mut pic = conv.new_picture();
            conv.update(&frame, &[], &mut pic);
            assert_eq!(conv.written().len(), 1, "{name}: first update converts all");
            let mut full = Converter::new(content.0, content.1);
            let mut want = full.new_picture();
            for step in 0..steps {
                let damaged: Vec<Rect> = (0..1 + rng.below(3))
                    .map(|_| scribble(&mut frame, &mut rng))
                    .collect();
                conv.update(&frame, &damaged, &mut pic);
                full.convert(&frame, &mut want);
                assert!(pic == want, "{name}: step {step} damaged {damaged:?}");
            }
            conv.update(&frame, &[], &mut pic);
            assert!(
                conv.written().is_empty(),
                "{name}: nothing damaged, nothing done"
            );
        }
    }

    #[test]
    fn changed_macroblocks_are_those_rewritten() {
        let mut conv = Converter::new(64, 48);
        let mut pic = conv.new_picture();
        let mut frame = Frame::filled(64, 48, 0);
        conv.update(&frame, &[], &mut pic);
        assert_eq!(conv.changed_macroblocks(), &[true; 12], "first: all of it");
        conv.update(&frame, &[], &mut pic);
        assert_eq!(conv.changed_macroblocks(), &[false; 12], "nothing damaged");
        // One pixel at (31, 16): its 2x2 block (30..32, 16..18) lies in macroblock (1, 1).
        frame.pixels[16 * 64 + 31] = 0xffffff;
        conv.update(&frame, &[Rect::new(31, 16, 1, 1)], &mut pic);
        let mut want = [false; 12];
        want[4 + 1] = true;
        assert_eq!(conv.changed_macroblocks(), &want);
        // Scaled 2:1, source (62, 0) reaches output column 31 only.
        let mut conv = Converter::new(32, 24);
        let mut small = conv.new_picture();
        conv.update(&frame, &[], &mut small);
        frame.pixels[62] = 0x00ff00;
        conv.update(&frame, &[Rect::new(62, 0, 1, 1)], &mut small);
        assert_eq!(conv.changed_macroblocks(), &[false, true, false, false]);
    }

    #[test]
    fn rewritten_with_the_same_pixels_is_not_changed() {
        let mut conv = Converter::new(64, 48);
        let mut pic = conv.new_picture();
        let mut frame = Frame::filled(64, 48, 0x336699);
        conv.update(&frame, &[], &mut pic);
        assert!(conv.macroblock_sad().iter().all(|&s| s == SAD_UNKNOWN));
        // A redraw of the whole screen with what it already shows: nothing changed.
        conv.update(&frame, &[Rect::new(0, 0, 64, 48)], &mut pic);
        assert_eq!(conv.changed_macroblocks(), &[false; 12]);
        assert_eq!(conv.macroblock_sad(), &[0; 12]);
        // A red square in macroblock (2, 1), the whole screen redrawn around it.
        for y in 20..24 {
            for x in 36..40 {
                frame.pixels[y * 64 + x] = 0xff0000;
            }
        }
        conv.update(&frame, &[Rect::new(0, 0, 64, 48)], &mut pic);
        let mut want = [false; 12];
        want[4 + 2] = true;
        assert_eq!(conv.changed_macroblocks(), &want);
        let sad = conv.macroblock_sad();
        assert!(
            sad[6] > 16 * 40,
            "16 luma samples changed a lot: {}",
            sad[6]
        );
        assert_eq!(sad.iter().filter(|&&s| s > 0).count(), 1);
    }

    #[test]
    fn differences_land_in_their_macroblocks() {
        // A luma row from column 8 over 3 macroblocks; a chroma row (half as wide per
        // macroblock) from chroma column 4.
        let (mut sads, mut costs) = ([0_u32; 4], [0_u32; 4]);
        let old = [0_u8; 40];
        let mut new = [0_u8; 40];
        new[0] = 5; // column 8: macroblock 0
        new[8] = 7; // column 16: macroblock 1
        new[39] = 9; // column 47: macroblock 2
        add_sad(&mut sads, &mut costs, 8, &old, &new, 1);
        assert_eq!(sads, [5, 7, 9, 0]);
        let dz = u32::from(CHANGE_DEAD_ZONE);
        assert_eq!(costs, [5 - dz, 7 - dz, 9 - dz, 0], "less the dead zone");
        let (mut sads, mut costs) = ([0_u32; 4], [0_u32; 4]);
        let mut new = [0_u8; 20];
        new[3] = 1; // chroma column 7: macroblock 0
        new[4] = 2; // chroma column 8: macroblock 1
        new[19] = 9; // chroma column 23: macroblock 2
        add_sad(&mut sads, &mut costs, 4, &old[..20], &new, 2);
        assert_eq!(sads, [1, 2, 9, 0]);
        assert_eq!(
            costs,
            [0, 0, 9 - dz, 0],
            "noise below the dead zone costs nothing"
        );
    }

    #[test]
    fn another_picture_or_size_gets_a_full_conversion() {
        let mut conv = Converter::new(64, 48);
        let mut a = conv.new_picture();
        let mut b = conv.new_picture();
        let white = Frame::filled(64, 48, 0xffffff);
        conv.update(&white, &[], &mut a);
        conv.update(&white, &[], &mut b);
        assert_eq!(a, b, "a new picture is converted whole");
        let small = Frame::filled(32, 24, 0xff0000);
        conv.update(&small, &[], &mut b);
        let mut want = conv.new_picture();
        Converter::new(64, 48).convert(&small, &mut want);
        assert_eq!(b, want, "a size change is converted whole");
    }

    #[test]
    fn taps_sum_to_one_and_stay_in_range() {
        for (src, dst) in [
            (1023, 640),
            (640, 1023),
            (7, 3),
            (3, 7),
            (1, 5),
            (5, 1),
            (1920, 320),
        ] {
            let taps = Taps::new(src, dst);
            for i in 0..dst as usize {
                let sum: i32 = taps.weights[i * taps.count..(i + 1) * taps.count]
                    .iter()
                    .sum();
                assert_eq!(sum, WEIGHT_ONE, "src {src} dst {dst} i {i}");
                assert!(
                    taps.first[i] as usize + taps.count <= src as usize,
                    "in range"
                );
                if i > 0 {
                    assert!(taps.first[i - 1] <= taps.first[i], "first never decreases");
                }
                assert!(taps.weights.iter().all(|&w| w >= 0), "non-negative");
            }
        }
    }
}
