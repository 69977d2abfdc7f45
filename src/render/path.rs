//! Vector paths for the Guacamole path instructions (`rect`, `start`, `line`, `arc`, `curve`,
//! `close`) and their rasterisation to horizontal spans: nonzero-winding scanline fill sampled at
//! pixel centres, and strokes as the union of one quad per segment. No anti-aliasing (guacd's
//! RDP and terminal drawing is axis-aligned). Knows nothing about colours or layers.

use serde::{Deserialize, Serialize};

use super::surface::Rect;
use crate::limits::RENDER_PATH_POINTS_MAX;

/// Segments used to flatten a cubic Bézier.
const CURVE_SEGMENTS: usize = 16;

/// An affine transform `[a, b, c, d, e, f]`: `x' = a x + c y + e`, `y' = b x + d y + f`.
pub type Matrix = [f64; 6];

/// The identity transform.
pub const IDENTITY: Matrix = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

/// Path coordinates are kept within +-this many pixels so that integer rectangle maths on
/// their bounds can never overflow, whatever the transform.
const COORD_ABS_MAX: f64 = 1e9;

/// `m` applied to (`x`, `y`), clamped to [`COORD_ABS_MAX`] (NaN becomes 0).
pub fn apply(m: &Matrix, x: f64, y: f64) -> (f64, f64) {
    let tame = |v: f64| {
        if v.is_nan() {
            0.0
        } else {
            v.clamp(-COORD_ABS_MAX, COORD_ABS_MAX)
        }
    };
    (
        tame(m[0] * x + m[2] * y + m[4]),
        tame(m[1] * x + m[3] * y + m[5]),
    )
}

/// `m` then `n` as one transform (canvas `transform()`: the new matrix applies first).
pub fn multiply(m: &Matrix, n: &Matrix) -> Matrix {
    [
        m[0] * n[0] + m[2] * n[1],
        m[1] * n[0] + m[3] * n[1],
        m[0] * n[2] + m[2] * n[3],
        m[1] * n[2] + m[3] * n[3],
        m[0] * n[4] + m[2] * n[5] + m[4],
        m[1] * n[4] + m[3] * n[5] + m[5],
    ]
}

/// One subpath: a polyline, closed or not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SubPath {
    points: Vec<(f64, f64)>,
    closed: bool,
}

/// Why a path could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTooLong;

/// A layer's current path, in layer pixel coordinates (transform already applied).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Path {
    subpaths: Vec<SubPath>,
    points: usize,
    /// `Some` while the path is only integer rectangles from `rect` (the common case).
    rects: Option<Vec<Rect>>,
}

impl Path {
    /// Forgets the path (after a fill or stroke).
    pub fn clear(&mut self) {
        *self = Path::default();
    }

    /// The rectangles, when the path is only axis-aligned integer rectangles.
    pub fn as_rects(&self) -> Option<&[Rect]> {
        self.rects.as_deref()
    }

    fn reserve(&mut self, n: usize) -> Result<(), PathTooLong> {
        if self.points + n > RENDER_PATH_POINTS_MAX {
            return Err(PathTooLong);
        }
        self.points += n;
        Ok(())
    }

    fn current(&mut self) -> Option<&mut SubPath> {
        self.subpaths.last_mut().filter(|s| !s.closed)
    }

    /// `rect`: a closed rectangle subpath.
    pub fn rect(&mut self, m: &Matrix, x: f64, y: f64, w: f64, h: f64) -> Result<(), PathTooLong> {
        self.reserve(4)?;
        let was_empty = self.subpaths.is_empty();
        let pts = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)];
        let points = pts.iter().map(|&(px, py)| apply(m, px, py)).collect();
        self.subpaths.push(SubPath {
            points,
            closed: true,
        });
        let integral = *m == IDENTITY && [x, y, w, h].iter().all(|v| v.fract() == 0.0);
        if integral && (was_empty || self.rects.is_some()) {
            let r = Rect::new(x as i64, y as i64, w as i64, h as i64);
            self.rects.get_or_insert_with(Vec::new).push(r);
        } else {
            self.rects = None;
        }
        Ok(())
    }

    /// `start`: begins a new subpath at (`x`, `y`).
    pub fn start(&mut self, m: &Matrix, x: f64, y: f64) -> Result<(), PathTooLong> {
        self.reserve(1)?;
        self.rects = None;
        self.subpaths.push(SubPath {
            points: vec![apply(m, x, y)],
            closed: false,
        });
        Ok(())
    }

    /// `line`: a straight segment to (`x`, `y`).
    pub fn line(&mut self, m: &Matrix, x: f64, y: f64) -> Result<(), PathTooLong> {
        self.reserve(1)?;
        self.rects = None;
        let p = apply(m, x, y);
        match self.current() {
            Some(s) => s.points.push(p),
            None => self.subpaths.push(SubPath {
                points: vec![p],
                closed: false,
            }),
        }
        Ok(())
    }

    /// `curve`: a cubic Bézier from the current point, flattened to segments.
    #[allow(clippy::too_many_arguments)]
    pub fn curve(
        &mut self,
        m: &Matrix,
        c1: (f64, f64),
        c2: (f64, f64),
        end: (f64, f64),
    ) -> Result<(), PathTooLong> {
        let Some(&p0) = self.current().and_then(|s| s.points.last()) else {
            return self.line(m, end.0, end.1);
        };
        self.reserve(CURVE_SEGMENTS)?;
        let (p1, p2, p3) = (
            apply(m, c1.0, c1.1),
            apply(m, c2.0, c2.1),
            apply(m, end.0, end.1),
        );
        let sub = self.current().expect("checked above");
        for i in 1..=CURVE_SEGMENTS {
            let t = i as f64 / CURVE_SEGMENTS as f64;
            let u = 1.0 - t;
            let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
            sub.points.push((
                a * p0.0 + b * p1.0 + c * p2.0 + d * p3.0,
                a * p0.1 + b * p1.1 + c * p2.1 + d * p3.1,
            ));
        }
        Ok(())
    }

    /// `arc`: a circular arc (angles in radians), joined to the current point by a line.
    pub fn arc(
        &mut self,
        m: &Matrix,
        centre: (f64, f64),
        radius: f64,
        start: f64,
        end: f64,
        negative: bool,
    ) -> Result<(), PathTooLong> {
        let tau = std::f64::consts::TAU;
        let mut sweep = end - start;
        if negative {
            if sweep > 0.0 {
                sweep -= tau * (sweep / tau).ceil();
            }
            sweep = sweep.max(-tau);
        } else {
            if sweep < 0.0 {
                sweep += tau * (-sweep / tau).ceil();
            }
            sweep = sweep.min(tau);
        }
        let radius = radius.abs();
        let steps = ((sweep.abs() * radius.max(1.0)).sqrt() * 2.0)
            .ceil()
            .clamp(4.0, 256.0) as usize;
        self.reserve(steps + 1)?;
        self.rects = None;
        let first = apply(
            m,
            centre.0 + radius * start.cos(),
            centre.1 + radius * start.sin(),
        );
        match self.current() {
            Some(s) => s.points.push(first),
            None => self.subpaths.push(SubPath {
                points: vec![first],
                closed: false,
            }),
        }
        let sub = self.current().expect("just pushed");
        for i in 1..=steps {
            let a = start + sweep * i as f64 / steps as f64;
            sub.points.push(apply(
                m,
                centre.0 + radius * a.cos(),
                centre.1 + radius * a.sin(),
            ));
        }
        Ok(())
    }

    /// `close`: closes the current subpath.
    pub fn close(&mut self) {
        if let Some(s) = self.current() {
            s.closed = true;
        }
    }

    /// Bounding box of all points (pixel-aligned, outward).
    pub fn bounds(&self) -> Rect {
        let mut r = Rect::default();
        for s in &self.subpaths {
            for &(x, y) in &s.points {
                let p = Rect::new(x.floor() as i64, y.floor() as i64, 1, 1);
                r = r.union(&p);
            }
        }
        r
    }

    /// Nonzero-winding fill spans `(y, x0, x1)` inside `clip`.
    pub fn fill_spans(&self, clip: Rect, out: &mut Vec<(i64, i64, i64)>) {
        let mut edges = Vec::new();
        for s in &self.subpaths {
            polygon_edges(&s.points, &mut edges);
        }
        scan(&edges, clip, out);
    }

    /// Stroke spans `(y, x0, x1)` for a line of `thickness`, inside `clip`: the union of one
    /// quad per segment (butt caps, no joins).
    pub fn stroke_spans(&self, thickness: f64, clip: Rect, out: &mut Vec<(i64, i64, i64)>) {
        // Clamped: no stroke needs to be wider than any layer can be.
        let half = if thickness.is_nan() {
            0.5
        } else {
            (thickness / 2.0).clamp(0.5, 65_536.0)
        };
        let area = self.bounds();
        let pad = half.ceil() as i64 + 1;
        let area = Rect::new(
            area.x - pad,
            area.y - pad,
            area.w + 2 * pad,
            area.h + 2 * pad,
        );
        let area = area.intersect(&clip);
        if area.is_empty() {
            return;
        }
        let (w, h) = (area.w as usize, area.h as usize);
        let mut mask = vec![false; w * h];
        let mut quad_spans = Vec::new();
        for s in &self.subpaths {
            let n = s.points.len();
            let segs = if s.closed { n } else { n.saturating_sub(1) };
            for i in 0..segs {
                let (a, b) = (s.points[i], s.points[(i + 1) % n]);
                let (dx, dy) = (b.0 - a.0, b.1 - a.1);
                let len = (dx * dx + dy * dy).sqrt();
                let (nx, ny) = if len > 0.0 {
                    (-dy / len * half, dx / len * half)
                } else {
                    (0.0, half)
                };
                let (ex, ey) = if len > 0.0 { (0.0, 0.0) } else { (half, 0.0) };
                let quad = [
                    (a.0 + nx - ex, a.1 + ny - ey),
                    (b.0 + nx + ex, b.1 + ny + ey),
                    (b.0 - nx + ex, b.1 - ny + ey),
                    (a.0 - nx - ex, a.1 - ny - ey),
                ];
                let mut edges = Vec::new();
                polygon_edges(&quad, &mut edges);
                quad_spans.clear();
                // Any orientation: a single convex quad has winding +-1 inside.
                scan(&edges, area, &mut quad_spans);
                for &(y, x0, x1) in &quad_spans {
                    let row = (y - area.y) as usize * w;
                    mask[row + (x0 - area.x) as usize..row + (x1 - area.x) as usize].fill(true);
                }
            }
        }
        for row in 0..h {
            let line = &mask[row * w..(row + 1) * w];
            let mut x = 0;
            while x < w {
                if !line[x] {
                    x += 1;
                    continue;
                }
                let start = x;
                while x < w && line[x] {
                    x += 1;
                }
                out.push((
                    area.y + row as i64,
                    area.x + start as i64,
                    area.x + x as i64,
                ));
            }
        }
    }
}

/// Edge `(x0, y0, x1, y1, winding)` list of a closed polygon (horizontal edges dropped).
fn polygon_edges(points: &[(f64, f64)], edges: &mut Vec<(f64, f64, f64, f64, i32)>) {
    let n = points.len();
    if n < 2 {
        return;
    }
    for i in 0..n {
        let (a, b) = (points[i], points[(i + 1) % n]);
        if a.1 == b.1 {
            continue;
        }
        if a.1 < b.1 {
            edges.push((a.0, a.1, b.0, b.1, 1));
        } else {
            edges.push((b.0, b.1, a.0, a.1, -1));
        }
    }
}

/// Nonzero-winding scan conversion at pixel centres.
fn scan(edges: &[(f64, f64, f64, f64, i32)], clip: Rect, out: &mut Vec<(i64, i64, i64)>) {
    if edges.is_empty() || clip.is_empty() {
        return;
    }
    let ymin = edges.iter().map(|e| e.1).fold(f64::INFINITY, f64::min);
    let ymax = edges.iter().map(|e| e.3).fold(f64::NEG_INFINITY, f64::max);
    let y0 = (ymin - 0.5).ceil().max(clip.y as f64) as i64;
    let y1 = ((ymax - 0.5).ceil() as i64).min(clip.y + clip.h);
    let mut xs: Vec<(f64, i32)> = Vec::new();
    for y in y0..y1 {
        let cy = y as f64 + 0.5;
        xs.clear();
        for &(ax, ay, bx, by, wind) in edges {
            if cy >= ay && cy < by {
                xs.push((ax + (cy - ay) * (bx - ax) / (by - ay), wind));
            }
        }
        xs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut winding = 0;
        for i in 0..xs.len() {
            let before = winding;
            winding += xs[i].1;
            if before == 0 && winding != 0 {
                // Span starts at xs[i]; find where winding returns to zero.
                let mut w = winding;
                let mut j = i + 1;
                while j < xs.len() {
                    w += xs[j].1;
                    if w == 0 {
                        break;
                    }
                    j += 1;
                }
                let end = xs.get(j).map_or(xs[i].0, |e| e.0);
                let x0 = ((xs[i].0 - 0.5).ceil() as i64).max(clip.x);
                let x1 = ((end - 0.5).ceil() as i64).min(clip.x + clip.w);
                if x1 > x0 {
                    out.push((y, x0, x1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Rect = Rect {
        x: -1000,
        y: -1000,
        w: 3000,
        h: 3000,
    };

    #[test]
    fn rect_paths_stay_rectangles() {
        let mut p = Path::default();
        p.rect(&IDENTITY, 1.0, 2.0, 3.0, 4.0).unwrap();
        assert_eq!(p.as_rects(), Some(&[Rect::new(1, 2, 3, 4)][..]));
        let mut spans = Vec::new();
        p.fill_spans(BIG, &mut spans);
        assert_eq!(spans, vec![(2, 1, 4), (3, 1, 4), (4, 1, 4), (5, 1, 4)]);
        p.line(&IDENTITY, 0.0, 0.0).unwrap();
        assert!(p.as_rects().is_none());
    }

    #[test]
    fn triangle_fill_and_overlapping_union() {
        let mut p = Path::default();
        p.start(&IDENTITY, 0.0, 0.0).unwrap();
        p.line(&IDENTITY, 4.0, 0.0).unwrap();
        p.line(&IDENTITY, 0.0, 4.0).unwrap();
        p.close();
        let mut spans = Vec::new();
        p.fill_spans(BIG, &mut spans);
        // Sampled at pixel centres: the diagonal's own pixels fall outside.
        assert_eq!(spans, vec![(0, 0, 3), (1, 0, 2), (2, 0, 1)]);
        // Two overlapping rects: nonzero winding gives one span per row, not two.
        let mut p = Path::default();
        p.rect(&IDENTITY, 0.0, 0.0, 4.0, 1.0).unwrap();
        p.rect(&IDENTITY, 2.0, 0.0, 4.0, 1.0).unwrap();
        spans.clear();
        p.fill_spans(BIG, &mut spans);
        assert_eq!(spans, vec![(0, 0, 6)]);
    }

    #[test]
    fn stroke_horizontal_line() {
        let mut p = Path::default();
        p.start(&IDENTITY, 0.0, 2.0).unwrap();
        p.line(&IDENTITY, 5.0, 2.0).unwrap();
        let mut spans = Vec::new();
        p.stroke_spans(2.0, BIG, &mut spans);
        assert_eq!(spans, vec![(1, 0, 5), (2, 0, 5)]);
    }

    #[test]
    fn arc_full_circle_is_round() {
        let mut p = Path::default();
        p.arc(
            &IDENTITY,
            (10.0, 10.0),
            5.0,
            0.0,
            std::f64::consts::TAU,
            false,
        )
        .unwrap();
        p.close();
        let mut spans = Vec::new();
        p.fill_spans(BIG, &mut spans);
        let area: i64 = spans.iter().map(|s| s.2 - s.1).sum();
        assert!(
            (70..=86).contains(&area),
            "area {area} should be about 78.5"
        );
    }

    #[test]
    fn path_length_is_bounded() {
        let mut p = Path::default();
        let mut err = None;
        for i in 0..RENDER_PATH_POINTS_MAX + 1 {
            if let Err(e) = p.line(&IDENTITY, i as f64, 0.0) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(PathTooLong));
    }

    #[test]
    fn huge_coordinates_are_tamed() {
        let mut p = Path::default();
        let m = [1e300, 0.0, 0.0, 1e300, 0.0, 0.0];
        p.start(&m, 1e300, -1e300).unwrap();
        p.line(&m, f64::MAX, 3.0).unwrap();
        let b = p.bounds();
        assert!(b.x >= -1_000_000_000 && b.x + b.w <= 1_000_000_001, "{b:?}");
        let mut spans = Vec::new();
        p.stroke_spans(1e300, BIG, &mut spans);
        p.fill_spans(BIG, &mut spans);
    }

    #[test]
    fn transform_multiplies() {
        let t = multiply(&IDENTITY, &[2.0, 0.0, 0.0, 2.0, 1.0, 1.0]);
        assert_eq!(apply(&t, 1.0, 1.0), (3.0, 3.0));
    }
}
