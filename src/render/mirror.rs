//! Deferred copies into buffers ("mirrors").
//!
//! guacd's VNC and RDP support copy large parts of the screen (layer 0) into a buffer at the
//! same coordinates every frame (`copy 0 -> -1`), and later read back only small pieces of it.
//! Copying those pixels for real costs more than the rest of the rendering on such recordings.
//! So a plain copy (source opaque or *src*, same coordinates, unclipped, inside both surfaces)
//! into a buffer is only recorded as a [`Mirror`]: "these rectangles of `dst` are `src`'s
//! pixels, and `src` has not changed there since". The pixels move for real ([`Display::settle`])
//! only where, and just before, either side is touched: a write to the source or the buffer,
//! a read of the buffer, a resize or dispose of either. Most of the mirrored area is never
//! touched before the next copy replaces it.
//!
//! Invariant: while a mirror exists both layers exist and `dst` is a buffer (never shown, so
//! [`Display::flatten`] never reads it).

use super::Display;
use super::composite::MASK_SRC;
use super::surface::Rect;

/// Pending rectangles kept per mirror; past that the smaller half is settled. Tiny in unit
/// tests, so that they exercise trimming.
const MIRROR_RECTS_MAX: usize = if cfg!(test) { 4 } else { 32 };

/// Everything (an area that contains any layer).
pub(super) const EVERYWHERE: Rect = Rect {
    x: i64::MIN / 4,
    y: i64::MIN / 4,
    w: i64::MAX / 2,
    h: i64::MAX / 2,
};

/// A deferred plain copy from `src` to buffer `dst`, same coordinates in both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mirror {
    pub src: i32,
    pub dst: i32,
    /// Not yet copied (in both layers' coordinates).
    pub rects: Vec<Rect>,
}

/// Appends the parts of `r` outside `cut` (at most 4 rectangles).
fn subtract(r: Rect, cut: Rect, out: &mut Vec<Rect>) {
    let i = r.intersect(&cut);
    if i.is_empty() {
        out.push(r);
        return;
    }
    let (r1, i1) = (r.y + r.h, i.y + i.h);
    let parts = [
        Rect::new(r.x, r.y, r.w, i.y - r.y),
        Rect::new(r.x, i1, r.w, r1 - i1),
        Rect::new(r.x, i.y, i.x - r.x, i.h),
        Rect::new(i.x + i.w, i.y, r.x + r.w - (i.x + i.w), i.h),
    ];
    out.extend(parts.into_iter().filter(|p| !p.is_empty()));
}

impl Display {
    /// Copies for real the pending pixels of mirror `m` inside `area`.
    fn settle(&mut self, m: usize, area: Rect) {
        let (src, dst) = (self.mirrors[m].src, self.mirrors[m].dst);
        let rects = std::mem::take(&mut self.mirrors[m].rects);
        let [Some(s), Some(d)] = self.layers.get_disjoint_mut([&src, &dst]) else {
            unreachable!("mirrored layers exist and differ");
        };
        let mut keep = Vec::with_capacity(rects.len() + 4);
        for r in rects {
            let i = r.intersect(&area);
            if i.is_empty() {
                keep.push(r);
                continue;
            }
            let done = d
                .surface
                .copy_from(&s.surface, i, i.x, i.y, EVERYWHERE, MASK_SRC);
            assert_eq!(done, i, "mirrored rectangles lie inside both layers");
            subtract(r, i, &mut keep);
        }
        self.mirrors[m].rects = keep;
    }

    /// Keeps mirror `m` to [`MIRROR_RECTS_MAX`] rectangles by settling the smallest.
    fn trim(&mut self, m: usize) {
        let rects = &mut self.mirrors[m].rects;
        if rects.len() <= MIRROR_RECTS_MAX {
            return;
        }
        rects.sort_unstable_by_key(|r| std::cmp::Reverse(r.w * r.h));
        let small = rects.split_off(MIRROR_RECTS_MAX / 2);
        let (src, dst) = (self.mirrors[m].src, self.mirrors[m].dst);
        let [Some(s), Some(d)] = self.layers.get_disjoint_mut([&src, &dst]) else {
            unreachable!("mirrored layers exist and differ");
        };
        for r in small {
            let done = d
                .surface
                .copy_from(&s.surface, r, r.x, r.y, EVERYWHERE, MASK_SRC);
            assert_eq!(done, r, "mirrored rectangles lie inside both layers");
        }
    }

    /// Settles, in every mirror matching `which`, the pixels inside `area`; drops mirrors
    /// left empty.
    fn settle_where(&mut self, area: Rect, which: impl Fn(&Mirror) -> bool) {
        for m in (0..self.mirrors.len()).rev() {
            if which(&self.mirrors[m]) {
                self.settle(m, area);
                if self.mirrors[m].rects.is_empty() {
                    self.mirrors.swap_remove(m);
                } else {
                    self.trim(m);
                }
            }
        }
    }

    /// Before pixels of layer `index` inside `area` are written.
    pub(super) fn before_write(&mut self, index: i32, area: Rect) {
        if !self.mirrors.is_empty() {
            self.settle_where(area, |m| m.src == index || m.dst == index);
        }
    }

    /// Before pixels of layer `index` inside `area` are read.
    pub(super) fn before_read(&mut self, index: i32, area: Rect) {
        if !self.mirrors.is_empty() {
            self.settle_where(area, |m| m.dst == index);
        }
    }

    /// Settles every mirror (for a snapshot, or tests).
    pub(super) fn settle_all(&mut self) {
        self.settle_where(EVERYWHERE, |_| true);
    }

    /// Before layer `index` is disposed: mirrors into it are dropped, mirrors from it settled.
    pub(super) fn before_dispose(&mut self, index: i32) {
        self.mirrors.retain(|m| m.dst != index);
        self.settle_where(EVERYWHERE, |m| m.src == index);
    }

    /// Records a plain copy of `rect` from `src` to buffer `dst` at the same place instead of
    /// copying it. The caller checked: `src != dst`, `dst < 0`, the source pixels are opaque
    /// (or the mask is *src*), `rect` is non-empty and inside both surfaces and the buffer's
    /// clip.
    pub(super) fn mirror(&mut self, src: i32, dst: i32, rect: Rect) {
        // The source's own pending pixels (if it is a buffer mirroring something) become real.
        self.before_read(src, rect);
        // Layers mirroring the buffer need its old pixels; a buffer mirrors one source.
        self.settle_where(rect, |m| m.src == dst);
        self.settle_where(EVERYWHERE, |m| m.dst == dst && m.src != src);
        let src_opaque = self.layers[&src].surface.known_opaque();
        let d = &mut self.layers.get_mut(&dst).expect("buffer exists").surface;
        d.note_write(MASK_SRC, src_opaque);
        let m = match self.mirrors.iter().position(|m| m.dst == dst) {
            Some(m) => m,
            None => {
                self.mirrors.push(Mirror {
                    src,
                    dst,
                    rects: Vec::new(),
                });
                self.mirrors.len() - 1
            }
        };
        // The new copy replaces what was pending where it lands.
        let old = std::mem::take(&mut self.mirrors[m].rects);
        let mut rects = Vec::with_capacity(old.len() + 4);
        for r in old {
            subtract(r, rect, &mut rects);
        }
        rects.push(rect);
        self.mirrors[m].rects = rects;
        self.trim(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guac::Instruction;

    fn op(d: &mut Display, opcode: &str, args: &[i64]) {
        let args = args.iter().map(|v| v.to_string()).collect();
        // Some random operations are invalid (e.g. negative sizes): both displays agree.
        let _ = d.apply(&Instruction::new(opcode, args));
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self, n: u64) -> i64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n) as i64
        }
    }

    /// The same random drawing with copies deferred (`lazy`) and made at once (`eager`, every
    /// mirror settled after each instruction): frames, buffers and snapshots must agree.
    #[test]
    fn deferred_copies_match_immediate_copies() {
        let mut total_deferred = 0;
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut lazy, mut eager) = (Display::new(), Display::new());
            for d in [&mut lazy, &mut eager] {
                op(d, "size", &[0, 16, 16]);
                op(d, "rect", &[0, 0, 0, 16, 16]);
                op(d, "cfill", &[12, 0, 10, 20, 30, 255]);
                op(d, "size", &[1, 8, 8]);
            }
            let mut deferred = 0;
            for step in 0..300 {
                let layers = [0i64, 0, -1, -1, -2, 1];
                let layer = layers[rng.next(layers.len() as u64) as usize];
                let (x, y) = (rng.next(12), rng.next(12));
                let (w, h) = (rng.next(10) + 1, rng.next(10) + 1);
                let pick: (&str, Vec<i64>) = match rng.next(14) {
                    0 if step % 50 == 0 => ("size", vec![0, 12 + rng.next(4), 12]),
                    0 | 1 => ("size", vec![-1 - rng.next(2), rng.next(16), rng.next(16)]),
                    2..=4 => {
                        // Screen to buffer at the same place: the case that is deferred.
                        let mask = [14, 12][rng.next(2) as usize];
                        let src = [0, 0, -1][rng.next(3) as usize];
                        ("copy", vec![src, x, y, w, h, mask, -1 - rng.next(2), x, y])
                    }
                    5 => {
                        let src = layers[rng.next(6) as usize];
                        let mask = [14, 12, 2, 9][rng.next(4) as usize];
                        let (dx, dy) = (rng.next(12), rng.next(12));
                        ("copy", vec![src, x, y, w, h, mask, layer, dx, dy])
                    }
                    6 => {
                        let (dx, dy) = (rng.next(12), rng.next(12));
                        ("transfer", vec![-1, x, y, w, h, 6, layer, dx, dy])
                    }
                    7 => ("dispose", vec![[0, -1, -1, -2][rng.next(4) as usize]]),
                    8 => ("cursor", vec![0, 0, -1 - rng.next(2), x, y, w, h]),
                    9 => {
                        op(&mut lazy, "rect", &[layer, x, y, w, h]);
                        op(&mut eager, "rect", &[layer, x, y, w, h]);
                        ("lfill", vec![14, layer, -1])
                    }
                    10 => ("mouse", vec![x, y, 0, step]),
                    _ => {
                        op(&mut lazy, "rect", &[layer, x, y, w, h]);
                        op(&mut eager, "rect", &[layer, x, y, w, h]);
                        let a = [255, 255, 128, 0][rng.next(4) as usize];
                        let mask = [14, 12, 2, 9][rng.next(4) as usize];
                        let c = rng.next(256);
                        ("cfill", vec![mask, layer, c, 255 - c, 7, a])
                    }
                };
                op(&mut lazy, pick.0, &pick.1);
                op(&mut eager, pick.0, &pick.1);
                deferred += usize::from(!lazy.mirrors.is_empty());
                eager.settle_all();
                assert!(eager.mirrors.is_empty());
                if step % 7 == 0 {
                    assert_eq!(lazy.flatten(), eager.flatten(), "seed {seed} step {step}");
                }
            }
            assert_eq!(lazy.snapshot(), eager.snapshot(), "seed {seed}");
            lazy.settle_all();
            for (i, l) in &eager.layers {
                assert_eq!(lazy.layers[i].surface, l.surface, "seed {seed} layer {i}");
            }
            total_deferred += deferred;
        }
        assert!(
            total_deferred > 300,
            "only {total_deferred} steps had deferred copies"
        );
    }

    /// Runs `script` on a lazy and an eager display and compares everything.
    fn lazy_equals_eager(script: &[(&str, &[i64])]) {
        let (mut lazy, mut eager) = (Display::new(), Display::new());
        for (k, (opcode, args)) in script.iter().enumerate() {
            op(&mut lazy, opcode, args);
            op(&mut eager, opcode, args);
            eager.settle_all();
            assert_eq!(
                lazy.flatten(),
                eager.flatten(),
                "after {k}: {opcode} {args:?}"
            );
        }
        assert_eq!(lazy.snapshot(), eager.snapshot());
    }

    #[test]
    fn chained_and_replaced_mirrors() {
        let fill = |layer, c| {
            [
                ("rect", vec![layer, 0, 0, 8, 8]),
                ("cfill", vec![12, layer, c, c, c, 255]),
            ]
        };
        let mut script: Vec<(&str, Vec<i64>)> = vec![("size", vec![0, 8, 8])];
        script.extend(fill(0, 10));
        // 0 -> -1 deferred, then -1 -> -2 deferred (reads -1's pending pixels).
        script.push(("copy", vec![0, 0, 0, 8, 8, 14, -1, 0, 0]));
        script.push(("copy", vec![-1, 2, 2, 4, 4, 12, -2, 2, 2]));
        script.push(("copy", vec![-2, 2, 2, 2, 2, 12, 0, 0, 6]));
        // The screen changes and is copied into -1 again: -2 must keep the old pixels.
        script.extend(fill(0, 200));
        script.push(("copy", vec![0, 0, 0, 8, 8, 14, -1, 0, 0]));
        // A second source into -1 replaces the first mirror.
        script.extend(fill(1, 90));
        script.push(("size", vec![1, 8, 8]));
        script.extend(fill(1, 90));
        script.push(("copy", vec![1, 0, 0, 4, 4, 12, -1, 0, 0]));
        script.extend(fill(1, 50));
        // Read everything back onto the screen.
        script.push(("copy", vec![-2, 0, 0, 8, 8, 12, 0, 0, 0]));
        script.push(("copy", vec![-1, 0, 0, 4, 8, 12, 0, 4, 0]));
        script.push(("dispose", vec![-1]));
        script.push(("copy", vec![-2, 0, 0, 8, 8, 12, 0, 0, 0]));
        let script: Vec<(&str, &[i64])> = script.iter().map(|(o, a)| (*o, a.as_slice())).collect();
        lazy_equals_eager(&script);
    }

    #[test]
    fn fragmented_mirrors_are_trimmed_without_loss() {
        let mut script: Vec<(&str, Vec<i64>)> = vec![("size", vec![0, 16, 16])];
        script.push(("rect", vec![0, 0, 0, 16, 16]));
        script.push(("cfill", vec![12, 0, 40, 80, 120, 255]));
        script.push(("copy", vec![0, 0, 0, 16, 16, 14, -1, 0, 0]));
        // Each small copy punches a hole into the big pending rectangle: many fragments.
        for k in 0..12 {
            let (x, y) = ((k * 5) % 13, (k * 3) % 13);
            script.push(("copy", vec![0, x, y, 3, 3, 12, -1, x, y]));
        }
        script.push(("rect", vec![0, 0, 0, 16, 16]));
        script.push(("cfill", vec![12, 0, 200, 10, 10, 255]));
        script.push(("copy", vec![-1, 0, 0, 16, 16, 12, 0, 0, 0]));
        let script: Vec<(&str, &[i64])> = script.iter().map(|(o, a)| (*o, a.as_slice())).collect();
        lazy_equals_eager(&script);
    }

    fn area(rects: &[Rect]) -> i64 {
        rects.iter().map(|r| r.w * r.h).sum()
    }

    #[test]
    fn subtract_leaves_the_rest_disjoint() {
        let r = Rect::new(0, 0, 10, 10);
        for cut in [
            Rect::new(2, 3, 4, 5),
            Rect::new(-5, -5, 8, 8),
            Rect::new(0, 0, 10, 10),
            Rect::new(20, 20, 1, 1),
            Rect::new(9, 0, 5, 10),
        ] {
            let mut out = Vec::new();
            subtract(r, cut, &mut out);
            let i = r.intersect(&cut);
            assert_eq!(area(&out), 100 - i.w * i.h, "{cut:?}");
            for (k, a) in out.iter().enumerate() {
                assert!(a.intersect(&cut).is_empty());
                assert_eq!(r.intersect(a), *a);
                assert!(out[k + 1..].iter().all(|b| a.intersect(b).is_empty()));
            }
        }
    }
}
