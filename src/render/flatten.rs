//! [`Display::flatten`]: composites the default layer, the shown layers (tree order, position,
//! opacity) and the pointer into the [`Frame`], redoing only the damaged screen rectangles,
//! and tells the caller which ones ([`Display::flatten_damaged`]) so that the encoder converts
//! only those. Nothing changed = nothing done.

use super::Display;
use super::frame::Frame;
use super::motion::Move;
use super::surface::Rect;
use crate::limits::RENDER_LAYER_DEPTH_MAX;

/// The screen area changed since the last flatten: a few rectangles, so that two small changes
/// far apart do not cost a recomposite of everything between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Damage {
    rects: Vec<Rect>,
    /// What the last flatten recomposited (inside the frame): handed to the caller.
    flushed: Vec<Rect>,
}

impl Damage {
    /// Rectangles kept before they are merged into their bounding box.
    const RECTS_MAX: usize = 8;

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// Forgets all damage.
    pub fn clear(&mut self) {
        self.rects.clear();
    }

    /// The changed rectangles (they may overlap).
    #[cfg(test)]
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    /// The bounding box of all damage.
    pub fn bounds(&self) -> Rect {
        self.rects
            .iter()
            .fold(Rect::default(), |acc, r| acc.union(r))
    }

    /// Adds a changed rectangle, merging it with any it overlaps.
    pub fn add(&mut self, r: Rect) {
        if r.is_empty() {
            return;
        }
        let mut r = r;
        // Absorb every rectangle the new one touches (repeat: the union may touch more).
        loop {
            let before = self.rects.len();
            self.rects.retain(|o| {
                let grown = Rect::new(o.x - 1, o.y - 1, o.w + 2, o.h + 2);
                if grown.intersect(&r).is_empty() {
                    true
                } else {
                    r = r.union(o);
                    false
                }
            });
            if self.rects.len() == before {
                break;
            }
        }
        self.rects.push(r);
        if self.rects.len() > Self::RECTS_MAX {
            let all = self.bounds();
            self.rects.clear();
            self.rects.push(all);
        }
    }
}

/// Drops the alpha byte of the frame pixels in `r` (the frame is `0x00RRGGBB`).
fn clear_alpha(frame: &mut [u32], fw: u32, r: Rect) {
    if r.is_empty() {
        return;
    }
    for y in r.y..r.y + r.h {
        let start = y as usize * fw as usize + r.x as usize;
        for p in &mut frame[start..start + r.w as usize] {
            *p &= 0x00FF_FFFF;
        }
    }
}

/// One shown layer in paint order, resolved to screen space.
struct Placed {
    index: i32,
    x: i64,
    y: i64,
    /// Ancestors' bounds intersected: the layer is only visible inside.
    clip: Rect,
    opacity: u32,
}

impl Display {
    /// The composited picture at the display size (1x1 black before the first `size`).
    ///
    /// Recomposites only what changed since the last call and clears the dirty flag; calling
    /// it when [`is_dirty`](Display::is_dirty) is false costs nothing.
    ///
    /// Layers are painted parent before children, siblings by ascending `z` (then index), each
    /// clipped to its ancestors and scaled by the product of their opacities (`shade`); the
    /// pointer goes on top, as in guacenc.
    pub fn flatten(&mut self) -> &Frame {
        self.flatten_damaged().0
    }

    /// [`flatten`](Display::flatten), plus the frame rectangles it recomposited: every pixel
    /// that may differ from the previous flatten's frame lies inside one of them (the whole
    /// frame on the first call and after a size change; none when nothing changed). They lie
    /// inside the frame and may overlap.
    pub fn flatten_damaged(&mut self) -> (&Frame, &[Rect]) {
        let (frame, damaged, _) = self.flatten_changes();
        (frame, damaged)
    }

    /// [`flatten_damaged`](Display::flatten_damaged), plus the moves (scrolls, drags: `copy`
    /// within a shown layer) among those changes (also in [`Display::moves`] until the next
    /// flatten).
    pub fn flatten_changes(&mut self) -> (&Frame, &[Rect], &[Move]) {
        let (w, h) = self.size();
        let (fw, fh) = (w.max(1), h.max(1));
        if self.frame.width != fw || self.frame.height != fh {
            self.frame = Frame::filled(fw, fh, 0);
            self.damage.clear();
            self.damage.add(Rect::new(0, 0, fw.into(), fh.into()));
            self.moves.clear();
        }
        self.moves_flushed.clear();
        std::mem::swap(&mut self.moves, &mut self.moves_flushed);
        let screen = Rect::new(0, 0, fw.into(), fh.into());
        // Move the pending damage to `flushed` (both vectors keep their capacity).
        let damage = &mut self.damage;
        damage.flushed.clear();
        std::mem::swap(&mut damage.rects, &mut damage.flushed);
        damage.flushed.retain_mut(|r| {
            *r = r.intersect(&screen);
            !r.is_empty()
        });
        if !self.damage.flushed.is_empty() {
            let placed = self.paint_order();
            for i in 0..self.damage.flushed.len() {
                let area = self.damage.flushed[i];
                self.compose(area, &placed);
            }
        }
        (&self.frame, &self.damage.flushed, &self.moves_flushed)
    }

    /// Recomposites `area` (inside the frame) from scratch.
    fn compose(&mut self, area: Rect, placed: &[Placed]) {
        let fw = self.frame.width;
        let frame = &mut self.frame.pixels;
        // 1. The default layer, alpha dropped (black where transparent, as in guacenc's video).
        let base = &self.layers[&0].surface;
        for y in area.y..area.y + area.h {
            let start = y as usize * fw as usize;
            let row = &mut frame[start + area.x as usize..start + (area.x + area.w) as usize];
            if y < i64::from(base.height) && area.x < i64::from(base.width) {
                let w = area.w.min(i64::from(base.width) - area.x);
                let (inside, outside) = row.split_at_mut(w as usize);
                for (d, s) in inside.iter_mut().zip(base.row(area.x, y, w)) {
                    *d = s & 0x00FF_FFFF;
                }
                outside.fill(0);
            } else {
                row.fill(0);
            }
        }
        // 2. Shown layers, in paint order.
        for p in placed {
            let l = &self.layers[&p.index];
            let visible = area.intersect(&p.clip);
            l.surface
                .paint_onto(frame, fw, p.x, p.y, visible, p.opacity);
            clear_alpha(frame, fw, visible);
        }
        // 3. The pointer.
        let ptr = &self.pointer;
        let r = ptr.screen_rect().intersect(&area);
        if !r.is_empty() {
            let full = ptr.screen_rect();
            ptr.image.paint_onto(frame, fw, full.x, full.y, r, 255);
            clear_alpha(frame, fw, r);
        }
    }

    /// Shown layers (index > 0 reachable from the default layer) in paint order.
    fn paint_order(&self) -> Vec<Placed> {
        let mut out = Vec::new();
        if self.layers.len() <= 1 || !self.layers.keys().any(|&i| i > 0) {
            return out;
        }
        let mut children: Vec<(i32, i32, i32)> = self
            .layers
            .iter()
            .filter(|&(&i, l)| i > 0 && l.opacity > 0 && l.parent.is_some())
            .map(|(&i, l)| (l.parent.unwrap_or(0), l.z, i))
            .collect();
        children.sort_unstable();
        let (w, h) = self.size();
        let root = Rect::new(0, 0, w.into(), h.into());
        self.place_children(0, 0, 0, root, 255, &children, 0, &mut out);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn place_children(
        &self,
        parent: i32,
        px: i64,
        py: i64,
        clip: Rect,
        opacity: u32,
        children: &[(i32, i32, i32)],
        depth: usize,
        out: &mut Vec<Placed>,
    ) {
        if depth >= RENDER_LAYER_DEPTH_MAX {
            return;
        }
        let start = children.partition_point(|c| c.0 < parent);
        for &(_, _, index) in children[start..].iter().take_while(|c| c.0 == parent) {
            let l = &self.layers[&index];
            let (x, y) = (px + i64::from(l.x), py + i64::from(l.y));
            let bounds = Rect::new(x, y, l.surface.width.into(), l.surface.height.into());
            let clip = clip.intersect(&bounds);
            let opacity = opacity * u32::from(l.opacity) / 255;
            if clip.is_empty() || opacity == 0 {
                continue;
            }
            out.push(Placed {
                index,
                x,
                y,
                clip,
                opacity,
            });
            self.place_children(index, x, y, clip, opacity, children, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::guac::Parser;
    use crate::render::Effect;

    /// The shared recordings: `$SESSION_RECORDER_SHARED`, `<repo>/../shared`, `/work/shared`.
    fn recording(name: &str) -> Option<PathBuf> {
        let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
        std::env::var_os("SESSION_RECORDER_SHARED")
            .map(PathBuf::from)
            .into_iter()
            .chain([beside, PathBuf::from("/work/shared")])
            .map(|dir| dir.join("recordings").join(name))
            .find(|p| p.is_file())
    }

    #[test]
    fn damaged_rects_cover_every_changed_pixel_of_real_recordings() {
        let names = [
            "ssh-resize-1024x768.guac",
            "vnc-ico-remotecursor-640x480.guac",
            "rdp-desktop-1024x768.guac",
        ];
        for name in names {
            let Some(path) = recording(name) else {
                panic!("recording {name} not found (set SESSION_RECORDER_SHARED)");
            };
            let bytes = std::fs::read(&path).expect("readable recording");
            let mut parser = Parser::new();
            parser.push(&bytes[..bytes.len().min(4 << 20)]);
            let mut d = Display::new();
            let (mut syncs, mut checked) = (0, 0);
            while let Some(i) = parser.next().expect("recording parses") {
                let Ok(Effect::Sync { .. }) = d.apply(&i) else {
                    continue;
                };
                syncs += 1;
                // Check a spread of frames (every pixel of each): debug builds are slow.
                if syncs % 7 != 0 || checked >= 120 {
                    d.flatten();
                    continue;
                }
                let before = d.frame().clone();
                let (frame, rects) = d.flatten_damaged();
                for r in rects {
                    assert!(r.x >= 0 && r.y >= 0, "{name}: inside the frame");
                    assert!(
                        r.x + r.w <= i64::from(frame.width),
                        "{name}: inside the frame"
                    );
                    assert!(
                        r.y + r.h <= i64::from(frame.height),
                        "{name}: inside the frame"
                    );
                }
                if (before.width, before.height) != (frame.width, frame.height) {
                    assert_eq!(
                        rects,
                        &[Rect::new(0, 0, frame.width.into(), frame.height.into())],
                        "{name}: a new size is damaged whole"
                    );
                    continue;
                }
                checked += 1;
                let fw = frame.width as usize;
                for (at, (new, old)) in frame.pixels.iter().zip(&before.pixels).enumerate() {
                    if new != old {
                        let (x, y) = ((at % fw) as i64, (at / fw) as i64);
                        assert!(
                            rects
                                .iter()
                                .any(|r| x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h),
                            "{name}: sync {syncs}: pixel ({x}, {y}) changed outside {rects:?}"
                        );
                    }
                }
            }
            assert!(checked > 20, "{name}: only {checked} frames checked");
            let (_, rects) = d.flatten_damaged();
            assert!(rects.is_empty(), "{name}: flatten again = nothing damaged");
        }
    }
}
