//! [`Display`]: the instruction handlers. One exhaustive `match` over [`Op`] dispatches to a
//! short handler per opcode; every handler validates indices and sizes against
//! [`crate::limits`] and records what it changed on screen (damage) so that
//! [`Display::flatten`] (in `flatten.rs`) only recomposites that.

use std::collections::{HashMap, HashSet};

use super::composite::{self, MASK_SRC};
use super::flatten::Damage;
use super::frame::Frame;
use super::image::{ImageStream, format_of};
use super::layer::Layer;
use super::mirror::{EVERYWHERE, Mirror};
use super::motion::Move;
use super::path::{self, PathTooLong};
use super::surface::{self, Paint, Rect, Surface};
use super::{Effect, RenderError};
use crate::guac::{Instruction, Op};
use crate::limits::{
    RENDER_LAYER_DEPTH_MAX, RENDER_LAYER_INDEX_MAX, RENDER_LAYER_SIDE_PIXELS_MAX,
    RENDER_LAYERS_MAX, RENDER_MOVES_MAX, RENDER_OTHER_STREAMS_MAX, RENDER_STATE_STACK_MAX,
    RENDER_STREAMS_MAX, RENDER_TOTAL_PIXELS_MAX,
};

/// The mouse pointer: image (from `cursor`), hotspot and position (from `mouse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pointer {
    pub image: Surface,
    pub hotspot_x: i32,
    pub hotspot_y: i32,
    /// Negative until the first `mouse`: not drawn.
    pub x: i32,
    pub y: i32,
}

impl Pointer {
    /// Where the pointer image covers the screen (empty when not drawn).
    pub fn screen_rect(&self) -> Rect {
        if self.x < 0 || self.y < 0 {
            return Rect::default();
        }
        Rect::new(
            i64::from(self.x) - i64::from(self.hotspot_x),
            i64::from(self.y) - i64::from(self.hotspot_y),
            i64::from(self.image.width),
            i64::from(self.image.height),
        )
    }
}

/// The Guacamole display: layers, buffers, open image streams and the pointer.
///
/// Feed it instructions with [`apply`](Display::apply); read frames with
/// [`flatten`](Display::flatten) at each [`Effect::Sync`]. Errors from `apply` concern one
/// instruction only: log them and continue with the next instruction.
#[derive(Debug, Clone)]
pub struct Display {
    pub(super) layers: HashMap<i32, Layer>,
    pub(super) streams: HashMap<i32, ImageStream>,
    pub(super) pointer: Pointer,
    pub(super) frame: Frame,
    /// Screen area changed since the last flatten.
    pub(super) damage: Damage,
    /// Screen pixels drawn on shown layers so far (pointer moves and resizes not counted).
    drawn_px: u64,
    /// Pixels allocated over all layers, buffers and the pointer.
    pub(super) total_pixels: u64,
    /// Copies into buffers not made yet (see `mirror.rs`).
    pub(super) mirrors: Vec<Mirror>,
    /// Open non-image streams (clipboard, file, audio...): their blobs are skipped. Not part
    /// of a snapshot: one open across a segment boundary costs one logged render error.
    pub(super) other_streams: HashSet<i32>,
    /// Blobs of non-image streams skipped (a debug figure).
    pub(super) other_blobs: u64,
    /// Moves since the last flatten, and those the last flatten handed out.
    pub(super) moves: Vec<Move>,
    pub(super) moves_flushed: Vec<Move>,
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

/// Span buffer type: `(y, x0, x1)`.
type Spans = Vec<(i64, i64, i64)>;

impl Display {
    /// An empty display: size 0x0 until the first `size` of layer 0, no pointer.
    pub fn new() -> Self {
        let mut layers = HashMap::new();
        layers.insert(0, Layer::new(0));
        Self {
            layers,
            streams: HashMap::new(),
            pointer: Pointer {
                image: Surface::default(),
                hotspot_x: 0,
                hotspot_y: 0,
                x: -1,
                y: -1,
            },
            frame: Frame::filled(1, 1, 0),
            damage: Damage::default(),
            drawn_px: 0,
            total_pixels: 0,
            mirrors: Vec::new(),
            other_streams: HashSet::new(),
            other_blobs: 0,
            moves: Vec::new(),
            moves_flushed: Vec::new(),
        }
    }

    /// The moves (scrolls, drags) among the changes the last
    /// [`flatten_damaged`](Display::flatten_damaged) handed out.
    pub fn flushed_moves(&self) -> &[Move] {
        &self.moves_flushed
    }

    /// Blobs of non-image streams (clipboard, file, audio...) skipped so far.
    pub fn other_stream_blobs(&self) -> u64 {
        self.other_blobs
    }

    /// The display size: the size of the default layer (0x0 before its first `size`).
    pub fn size(&self) -> (u32, u32) {
        self.layers
            .get(&0)
            .map_or((0, 0), |l| (l.surface.width, l.surface.height))
    }

    /// True when anything visible (drawing on shown layers, layer moves and opacity, pointer
    /// position or image, display size) changed since the last [`flatten`](Display::flatten).
    pub fn is_dirty(&self) -> bool {
        !self.damage.is_empty()
    }

    /// Applies one instruction.
    ///
    /// Returns [`Effect::Sync`] at a frame boundary, [`Effect::Pointer`] for a recorded pointer
    /// move, [`Effect::None`] otherwise. Unknown opcodes are ignored.
    ///
    /// # Errors
    /// A [`RenderError`] when this one instruction cannot be applied (bad arguments, limits,
    /// undecodable image). The display is still consistent: log it and continue; only the
    /// parser can fail a stream.
    pub fn apply(&mut self, instr: &Instruction) -> Result<Effect, RenderError> {
        let op = instr.op()?;
        match op {
            Op::Size {
                layer,
                width,
                height,
            } => self.size_layer(layer, width, height)?,
            Op::Rect {
                layer,
                x,
                y,
                width,
                height,
            } => self.rect(layer, x, y, width, height)?,
            Op::Cfill {
                mask,
                layer,
                r,
                g,
                b,
                a,
            } => {
                self.fill(layer, mask, Fill::Color(composite::premultiply(r, g, b, a)))?;
            }
            Op::Lfill { mask, layer, src } => self.fill(layer, mask, Fill::Layer(src))?,
            Op::Copy {
                src,
                sx,
                sy,
                width,
                height,
                mask,
                dst,
                dx,
                dy,
            } => {
                let rect = Rect::new(sx.into(), sy.into(), width.into(), height.into());
                self.copy(
                    src,
                    rect,
                    dst,
                    dx.into(),
                    dy.into(),
                    CopyKind::Mask(mask_of(mask)),
                )?;
            }
            Op::Transfer {
                src,
                sx,
                sy,
                width,
                height,
                function,
                dst,
                dx,
                dy,
            } => {
                let rect = Rect::new(sx.into(), sy.into(), width.into(), height.into());
                let f = (function & 0xF) as u8;
                self.copy(src, rect, dst, dx.into(), dy.into(), CopyKind::Transfer(f))?;
            }
            Op::Img {
                stream,
                mask,
                layer,
                mimetype,
                x,
                y,
            } => {
                self.other_streams.remove(&stream);
                self.img(stream, mask, layer, mimetype, x, y)?;
            }
            Op::Blob { stream, data } => {
                if self.other_streams.contains(&stream) {
                    self.other_blobs += 1;
                    return Ok(Effect::None);
                }
                let s = self
                    .streams
                    .get_mut(&stream)
                    .ok_or(RenderError::UnknownStream { stream })?;
                s.append(stream, data)?;
            }
            Op::End { stream } => {
                if !self.other_streams.remove(&stream) {
                    self.end(stream)?;
                }
            }
            Op::OtherStream { stream, .. } => {
                // A stream index is reused once ended; an image stream of the same index is
                // replaced (as `img` replaces one).
                self.streams.remove(&stream);
                if self.other_streams.len() < RENDER_OTHER_STREAMS_MAX {
                    self.other_streams.insert(stream);
                }
            }
            Op::Cursor {
                hotspot_x,
                hotspot_y,
                src,
                sx,
                sy,
                width,
                height,
            } => {
                let rect = Rect::new(sx.into(), sy.into(), width.into(), height.into());
                self.cursor(hotspot_x, hotspot_y, src, rect)?;
            }
            Op::Mouse {
                x, y, timestamp_ms, ..
            } => {
                self.mouse(x, y);
                if let Some(timestamp_ms) = timestamp_ms {
                    return Ok(Effect::Pointer { timestamp_ms });
                }
            }
            Op::Move {
                layer,
                parent,
                x,
                y,
                z,
            } => self.move_layer(layer, parent, x, y, z)?,
            Op::Shade { layer, opacity } => self.shade(layer, opacity)?,
            Op::Dispose { layer } => self.dispose(layer)?,
            Op::Sync { timestamp_ms } => {
                self.learn_shown_opacity();
                return Ok(Effect::Sync { timestamp_ms });
            }
            Op::Arc {
                layer,
                x,
                y,
                radius,
                start,
                end,
                negative,
            } => {
                self.path_op(layer, |p, m| p.arc(m, (x, y), radius, start, end, negative))?;
            }
            Op::Start { layer, x, y } => self.path_op(layer, |p, m| p.start(m, x, y))?,
            Op::Line { layer, x, y } => self.path_op(layer, |p, m| p.line(m, x, y))?,
            Op::Curve {
                layer,
                cp1x,
                cp1y,
                cp2x,
                cp2y,
                x,
                y,
            } => {
                self.path_op(layer, |p, m| p.curve(m, (cp1x, cp1y), (cp2x, cp2y), (x, y)))?;
            }
            Op::Close { layer } => self.layer_mut(layer)?.path.close(),
            Op::Cstroke {
                mask,
                layer,
                thickness,
                r,
                g,
                b,
                a,
            } => {
                let c = composite::premultiply(r, g, b, a);
                self.stroke(layer, mask, thickness, Fill::Color(c))?;
            }
            Op::Lstroke {
                mask,
                layer,
                thickness,
                src,
            } => {
                self.stroke(layer, mask, thickness, Fill::Layer(src))?;
            }
            Op::Push { layer } => {
                let l = self.layer_mut(layer)?;
                if l.stack.len() >= RENDER_STATE_STACK_MAX {
                    return Err(RenderError::StateStack { index: layer });
                }
                let state = l.state.clone();
                l.stack.push(state);
            }
            Op::Pop { layer } => {
                let l = self.layer_mut(layer)?;
                if let Some(state) = l.stack.pop() {
                    l.state = state;
                }
            }
            Op::Reset { layer } => {
                let l = self.layer_mut(layer)?;
                l.stack.clear();
                l.state = Default::default();
                l.path.clear();
            }
            Op::Clip { layer } => {
                let l = self.layer_mut(layer)?;
                let bounds = l.path.bounds();
                let clip = match l.state.clip {
                    Some(c) => c.intersect(&bounds),
                    None => bounds,
                };
                l.state.clip = Some(clip);
                l.path.clear();
            }
            Op::Identity { layer } => self.layer_mut(layer)?.state.transform = path::IDENTITY,
            Op::Transform { layer, matrix } => {
                let l = self.layer_mut(layer)?;
                l.state.transform = path::multiply(&l.state.transform, &matrix);
            }
            Op::Distort { layer, matrix } => self.layer_mut(layer)?.state.transform = matrix,
            Op::Key { .. } | Op::Unknown => {}
        }
        Ok(Effect::None)
    }

    // ---- layer bookkeeping ----

    /// Checks an index against [`RENDER_LAYER_INDEX_MAX`].
    fn check_index(index: i32) -> Result<(), RenderError> {
        if index.unsigned_abs() > RENDER_LAYER_INDEX_MAX.unsigned_abs() {
            return Err(RenderError::LayerIndex {
                index: index.into(),
            });
        }
        Ok(())
    }

    /// The layer or buffer `index`, created empty on first use (as guacenc does).
    pub(super) fn layer_mut(&mut self, index: i32) -> Result<&mut Layer, RenderError> {
        Self::check_index(index)?;
        if !self.layers.contains_key(&index) && self.layers.len() >= RENDER_LAYERS_MAX {
            return Err(RenderError::TooManyLayers {
                max: RENDER_LAYERS_MAX,
            });
        }
        Ok(self
            .layers
            .entry(index)
            .or_insert_with(|| Layer::new(index)))
    }

    /// Screen position of layer `index`'s origin, if it is shown (a chain of parents up to the
    /// default layer).
    pub(super) fn screen_origin(&self, index: i32) -> Option<(i64, i64)> {
        let (mut x, mut y) = (0i64, 0i64);
        let mut at = index;
        for _ in 0..=RENDER_LAYER_DEPTH_MAX {
            if at == 0 {
                return Some((x, y));
            }
            let l = self.layers.get(&at)?;
            x += i64::from(l.x);
            y += i64::from(l.y);
            at = l.parent?;
        }
        None
    }

    /// Marks `rect` (in layer `index` coordinates) as changed on screen, if the layer is shown.
    pub(super) fn damage_layer(&mut self, index: i32, rect: Rect) {
        if index < 0 || rect.is_empty() {
            return;
        }
        if let Some((x, y)) = self.screen_origin(index) {
            let (w, h) = self.size();
            let shown = rect
                .offset(x, y)
                .intersect(&Rect::new(0, 0, w.into(), h.into()));
            self.drawn_px += (shown.w.max(0) * shown.h.max(0)) as u64;
            self.damage_screen(rect.offset(x, y));
        }
    }

    /// Screen pixels drawn on shown layers since this display was made, counted once per
    /// drawing instruction (pointer moves and resizes are not counted): the difference before
    /// and after an instruction is what it changed on screen.
    pub fn drawn_px(&self) -> u64 {
        self.drawn_px
    }

    /// Marks a screen rectangle as changed.
    pub(super) fn damage_screen(&mut self, rect: Rect) {
        let (w, h) = self.size();
        let r = rect.intersect(&Rect::new(0, 0, w.into(), h.into()));
        self.damage.add(r);
    }

    /// Damages the whole of layer `index` (and so everything drawn inside it).
    fn damage_whole(&mut self, index: i32) {
        if let Some(l) = self.layers.get(&index) {
            let b = l.surface.bounds();
            self.damage_layer(index, b);
        }
    }

    /// Resizes a surface within the size and pixel budgets.
    fn resize_surface(&mut self, index: i32, width: i64, height: i64) -> Result<(), RenderError> {
        let side = i64::from(RENDER_LAYER_SIDE_PIXELS_MAX);
        if width < 0 || height < 0 || width > side || height > side {
            return Err(RenderError::LayerSize {
                index,
                width,
                height,
            });
        }
        let old = self.layer_mut(index)?.surface.area();
        let new = (width * height) as u64;
        if self.total_pixels - old + new > RENDER_TOTAL_PIXELS_MAX {
            return Err(RenderError::PixelBudget {
                max: RENDER_TOTAL_PIXELS_MAX,
            });
        }
        self.before_write(index, EVERYWHERE);
        self.damage_whole(index);
        self.total_pixels = self.total_pixels - old + new;
        self.layer_mut(index)?
            .surface
            .resize(width as u32, height as u32);
        self.damage_whole(index);
        Ok(())
    }

    /// Grows an autosizing buffer to hold (`x1`, `y1`) exclusive; layers are left alone.
    fn fit(&mut self, index: i32, x1: i64, y1: i64) -> Result<(), RenderError> {
        let l = self.layer_mut(index)?;
        if !l.autosize {
            return Ok(());
        }
        let w = i64::from(l.surface.width).max(x1);
        let h = i64::from(l.surface.height).max(y1);
        if w != i64::from(l.surface.width) || h != i64::from(l.surface.height) {
            self.resize_surface(index, w, h)?;
        }
        Ok(())
    }

    // ---- handlers ----

    fn size_layer(&mut self, index: i32, width: i32, height: i32) -> Result<(), RenderError> {
        self.resize_surface(index, width.into(), height.into())?;
        if index == 0 {
            // The frame follows the display size (at least 1x1, as `flatten` makes it), so
            // everything is new, even when a side is now 0 and nothing else can be drawn.
            self.damage.clear();
            let (w, h) = (width.max(1), height.max(1));
            self.damage.add(Rect::new(0, 0, w.into(), h.into()));
        }
        Ok(())
    }

    fn rect(&mut self, index: i32, x: i32, y: i32, w: i32, h: i32) -> Result<(), RenderError> {
        self.fit(
            index,
            i64::from(x) + i64::from(w),
            i64::from(y) + i64::from(h),
        )?;
        self.path_op(index, |p, m| {
            p.rect(m, x.into(), y.into(), w.into(), h.into())
        })
    }

    fn path_op(
        &mut self,
        index: i32,
        f: impl FnOnce(&mut path::Path, &path::Matrix) -> Result<(), PathTooLong>,
    ) -> Result<(), RenderError> {
        let l = self.layer_mut(index)?;
        let m = l.state.transform;
        f(&mut l.path, &m).map_err(|PathTooLong| RenderError::PathTooLong { index })
    }

    /// A pattern layer's pixels, cloned only when it is the layer being drawn on.
    fn pattern(&mut self, src: i32) -> Result<Surface, RenderError> {
        Self::check_index(src)?;
        self.before_read(src, EVERYWHERE);
        Ok(self
            .layers
            .get(&src)
            .map(|l| l.surface.clone())
            .unwrap_or_default())
    }

    /// `cfill` / `lfill`: fills the layer's path, then clears it.
    fn fill(&mut self, index: i32, mask: i32, fill: Fill) -> Result<(), RenderError> {
        let pattern = match fill {
            Fill::Layer(src) => Some(self.pattern(src)?),
            Fill::Color(_) => None,
        };
        let mask = mask_of(mask);
        let area = match self.layer_mut(index)?.path.as_rects() {
            Some(rects) => rects.iter().fold(Rect::default(), |a, r| a.union(r)),
            None => EVERYWHERE,
        };
        self.before_write(index, area);
        let l = self.layer_mut(index)?;
        let clip = l.clip();
        let path = std::mem::take(&mut l.path);
        let mut touched = Rect::default();
        match (fill, path.as_rects()) {
            (Fill::Color(c), Some(rects)) if disjoint(rects) => {
                for r in rects {
                    touched = touched.union(&l.surface.fill_rect(*r, clip, c, mask));
                }
            }
            _ => {
                let paint = match (&fill, &pattern) {
                    (Fill::Color(c), _) => Paint::Color(*c),
                    (Fill::Layer(_), Some(p)) => Paint::Pattern(p),
                    (Fill::Layer(_), None) => unreachable!("pattern fetched above"),
                };
                let mut spans = Spans::new();
                path.fill_spans(clip.intersect(&l.surface.bounds()), &mut spans);
                touched = paint_spans(&mut l.surface, &spans, &paint, mask);
            }
        }
        self.damage_layer(index, touched);
        Ok(())
    }

    /// `cstroke` / `lstroke`: strokes the layer's path, then clears it.
    fn stroke(
        &mut self,
        index: i32,
        mask: i32,
        thickness: f64,
        fill: Fill,
    ) -> Result<(), RenderError> {
        let pattern = match fill {
            Fill::Layer(src) => Some(self.pattern(src)?),
            Fill::Color(_) => None,
        };
        let mask = mask_of(mask);
        self.before_write(index, EVERYWHERE);
        let l = self.layer_mut(index)?;
        let clip = l.clip().intersect(&l.surface.bounds());
        let path = std::mem::take(&mut l.path);
        let paint = match (&fill, &pattern) {
            (Fill::Color(c), _) => Paint::Color(*c),
            (Fill::Layer(_), Some(p)) => Paint::Pattern(p),
            (Fill::Layer(_), None) => unreachable!("pattern fetched above"),
        };
        let mut spans = Spans::new();
        path.stroke_spans(thickness, clip, &mut spans);
        let touched = paint_spans(&mut l.surface, &spans, &paint, mask);
        self.damage_layer(index, touched);
        Ok(())
    }

    /// `copy` and `transfer` from `src` to `dst`, correct for overlapping regions of one layer.
    fn copy(
        &mut self,
        src: i32,
        rect: Rect,
        dst: i32,
        dx: i64,
        dy: i64,
        kind: CopyKind,
    ) -> Result<(), RenderError> {
        self.layer_mut(src)?;
        self.fit(dst, dx + rect.w, dy + rect.h)?;
        if let CopyKind::Mask(mask) = kind
            && self.try_mirror(src, rect, dst, dx, dy, mask)
        {
            return Ok(());
        }
        self.before_read(src, rect);
        self.before_write(dst, Rect::new(dx, dy, rect.w, rect.h));
        let touched = match kind {
            CopyKind::Mask(mask) if src == dst => {
                let l = self.layer_mut(dst)?;
                let clip = l.clip();
                l.surface.copy_within(rect, dx, dy, clip, mask)
            }
            CopyKind::Mask(mask) => {
                if mask == composite::MASK_OVER {
                    // Learn (cheaply) whether *over* from this source is a plain copy.
                    let area = (rect.w.max(0) * rect.h.max(0)) as u64;
                    self.layer_mut(src)?.surface.check_opaque_for(area);
                }
                let [Some(s), Some(d)] = self.layers.get_disjoint_mut([&src, &dst]) else {
                    unreachable!("both layers exist and differ");
                };
                let clip = d.clip();
                d.surface.copy_from(&s.surface, rect, dx, dy, clip, mask)
            }
            CopyKind::Transfer(f) => {
                // Take the source pixels out first: overlap-safe and borrow-friendly.
                let (from, pixels) = self.layers[&src].surface.extract(rect);
                let to = Rect::new(
                    dx + (from.x - rect.x),
                    dy + (from.y - rect.y),
                    from.w,
                    from.h,
                );
                let l = self.layer_mut(dst)?;
                let clip = l.clip();
                l.surface
                    .transfer_pixels(to, clip, &pixels, from.w as usize, f)
            }
        };
        if src == dst
            && matches!(
                kind,
                CopyKind::Mask(composite::MASK_SRC | composite::MASK_OVER)
            )
        {
            self.note_move(dst, touched, dx - rect.x, dy - rect.y);
        }
        self.damage_layer(dst, touched);
        Ok(())
    }

    /// Remembers a move within shown layer `index` (`to` in layer coordinates), for the
    /// encoder; beyond [`RENDER_MOVES_MAX`] per frame the rest counts as plain change.
    fn note_move(&mut self, index: i32, to: Rect, dx: i64, dy: i64) {
        if to.is_empty() || (dx == 0 && dy == 0) || self.moves.len() >= RENDER_MOVES_MAX {
            return;
        }
        if let Some((x, y)) = self.screen_origin(index) {
            self.moves.push(Move {
                to: to.offset(x, y),
                dx,
                dy,
            });
        }
    }

    /// Defers a plain copy into a buffer at the same coordinates (see `mirror.rs`); false when
    /// this copy does not qualify and must be made now.
    fn try_mirror(&mut self, src: i32, rect: Rect, dst: i32, dx: i64, dy: i64, mask: u8) -> bool {
        if src == dst || dst >= 0 || (rect.x, rect.y) != (dx, dy) || rect.is_empty() {
            return false;
        }
        let (Some(s), Some(d)) = (self.layers.get(&src), self.layers.get(&dst)) else {
            return false;
        };
        let inside = |outer: Rect| outer.intersect(&rect) == rect;
        if !inside(s.surface.bounds()) || !inside(d.surface.bounds()) || !inside(d.clip()) {
            return false;
        }
        let plain = mask == MASK_SRC
            || (mask == composite::MASK_OVER && {
                // The source's pending pixels count as its pixels: settle them first.
                self.before_read(src, rect);
                let area = (rect.w * rect.h) as u64;
                self.layer_mut(src)
                    .is_ok_and(|l| l.surface.check_opaque_for(area))
            });
        if plain {
            self.mirror(src, dst, rect);
        }
        plain
    }

    fn img(
        &mut self,
        stream: i32,
        mask: i32,
        layer: i32,
        mimetype: &str,
        x: i32,
        y: i32,
    ) -> Result<(), RenderError> {
        self.layer_mut(layer)?;
        if !self.streams.contains_key(&stream) && self.streams.len() >= RENDER_STREAMS_MAX {
            return Err(RenderError::TooManyStreams {
                max: RENDER_STREAMS_MAX,
            });
        }
        let supported = format_of(mimetype).is_some();
        self.streams.insert(
            stream,
            ImageStream {
                layer,
                mask: mask_of(mask),
                x,
                y,
                mimetype: mimetype.chars().take(64).collect(),
                data: Vec::new(),
                carry: String::new(),
                failed: !supported,
            },
        );
        if !supported {
            return Err(RenderError::UnsupportedImage {
                stream,
                mimetype: mimetype.chars().take(64).collect(),
            });
        }
        Ok(())
    }

    fn end(&mut self, stream: i32) -> Result<(), RenderError> {
        let s = self
            .streams
            .remove(&stream)
            .ok_or(RenderError::UnknownStream { stream })?;
        if s.failed {
            return Ok(());
        }
        let image = s.decode(stream)?;
        let (x, y) = (i64::from(s.x), i64::from(s.y));
        let (w, h) = (i64::from(image.width), i64::from(image.height));
        self.fit(s.layer, x + w, y + h)?;
        self.before_write(s.layer, Rect::new(x, y, w, h));
        let l = self.layer_mut(s.layer)?;
        let clip = l.clip();
        let mask = surface::simplify_mask(s.mask, image.opaque);
        let touched = l.surface.draw_pixels(
            Rect::new(x, y, w, h),
            clip,
            &image.pixels,
            image.width as usize,
            mask,
            image.opaque,
        );
        self.damage_layer(s.layer, touched);
        Ok(())
    }

    fn cursor(
        &mut self,
        hotspot_x: i32,
        hotspot_y: i32,
        src: i32,
        rect: Rect,
    ) -> Result<(), RenderError> {
        let side = i64::from(RENDER_LAYER_SIDE_PIXELS_MAX);
        if rect.w > side || rect.h > side {
            return Err(RenderError::LayerSize {
                index: src,
                width: rect.w,
                height: rect.h,
            });
        }
        self.layer_mut(src)?;
        let old_area = self.pointer.image.area();
        let new_area = (rect.w * rect.h) as u64;
        if self.total_pixels - old_area + new_area > RENDER_TOTAL_PIXELS_MAX {
            return Err(RenderError::PixelBudget {
                max: RENDER_TOTAL_PIXELS_MAX,
            });
        }
        self.before_read(src, rect);
        let mut image = Surface::new(rect.w as u32, rect.h as u32);
        let all = image.bounds();
        image.copy_from(&self.layers[&src].surface, rect, 0, 0, all, MASK_SRC);
        self.damage_screen(self.pointer.screen_rect());
        self.total_pixels = self.total_pixels - old_area + new_area;
        self.pointer.image = image;
        self.pointer.hotspot_x = hotspot_x;
        self.pointer.hotspot_y = hotspot_y;
        self.damage_screen(self.pointer.screen_rect());
        Ok(())
    }

    fn mouse(&mut self, x: i32, y: i32) {
        if (x, y) == (self.pointer.x, self.pointer.y) {
            return;
        }
        self.damage_screen(self.pointer.screen_rect());
        self.pointer.x = x;
        self.pointer.y = y;
        self.damage_screen(self.pointer.screen_rect());
    }

    fn move_layer(
        &mut self,
        index: i32,
        parent: i32,
        x: i32,
        y: i32,
        z: i32,
    ) -> Result<(), RenderError> {
        if index <= 0 {
            // The default layer and buffers cannot be moved.
            return Err(RenderError::LayerIndex {
                index: index.into(),
            });
        }
        if parent < 0 || parent == index {
            return Err(RenderError::LayerIndex {
                index: parent.into(),
            });
        }
        self.layer_mut(parent)?;
        self.layer_mut(index)?;
        self.damage_whole(index);
        let l = self.layer_mut(index)?;
        l.parent = Some(parent);
        (l.x, l.y, l.z) = (x, y, z);
        self.damage_whole(index);
        Ok(())
    }

    fn shade(&mut self, index: i32, opacity: i32) -> Result<(), RenderError> {
        if index < 0 {
            return Err(RenderError::LayerIndex {
                index: index.into(),
            });
        }
        self.layer_mut(index)?.opacity = opacity.clamp(0, 255) as u8;
        self.damage_whole(index);
        Ok(())
    }

    fn dispose(&mut self, index: i32) -> Result<(), RenderError> {
        Self::check_index(index)?;
        self.before_dispose(index);
        self.damage_whole(index);
        if let Some(l) = self.layers.remove(&index) {
            self.total_pixels -= l.surface.area();
        }
        if index == 0 {
            // The default layer always exists (guacenc re-creates it empty on next use).
            self.layers.insert(0, Layer::new(0));
        }
        Ok(())
    }

    /// Lets every shown layer (index > 0) find out whether it is wholly opaque before the
    /// frame is flattened, so that painting it is a plain copy. Cheap when nothing changed:
    /// a layer that is not opaque is usually told by the one pixel that was not last time.
    fn learn_shown_opacity(&mut self) {
        for (_, l) in self.layers.iter_mut().filter(|(i, _)| **i > 0) {
            l.surface.check_opaque();
        }
    }

    /// The current flattened frame without recompositing (for tests and thumbnails).
    pub fn frame(&self) -> &Frame {
        &self.frame
    }
}

/// What a fill or stroke paints with (before borrowing).
#[derive(Debug, Clone, Copy)]
enum Fill {
    Color(u32),
    Layer(i32),
}

/// `copy` composites with a channel mask; `transfer` applies a binary function.
#[derive(Debug, Clone, Copy)]
enum CopyKind {
    Mask(u8),
    Transfer(u8),
}

/// A protocol channel mask as the 4 bits that matter.
fn mask_of(mask: i32) -> u8 {
    (mask & 0xF) as u8
}

/// True when no two rectangles overlap (so filling each once equals filling the union).
fn disjoint(rects: &[Rect]) -> bool {
    if rects.len() > 16 {
        return false;
    }
    rects
        .iter()
        .enumerate()
        .all(|(i, a)| rects[i + 1..].iter().all(|b| a.intersect(b).is_empty()))
}

/// Paints spans on a surface; returns their bounding box.
fn paint_spans(s: &mut Surface, spans: &[(i64, i64, i64)], paint: &Paint<'_>, mask: u8) -> Rect {
    let mut touched = Rect::default();
    for &(y, x0, x1) in spans {
        s.fill_span(y, x0, x1, paint, mask);
        touched = touched.union(&Rect::new(x0, y, x1 - x0, 1));
    }
    touched
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::guac::Parser;

    /// Applies a whole protocol stream, expecting every instruction to succeed.
    fn run(d: &mut Display, stream: &str) -> Vec<Effect> {
        let mut p = Parser::new();
        p.push(stream.as_bytes());
        let mut effects = Vec::new();
        while let Some(i) = p.next().expect("valid stream") {
            effects.push(
                d.apply(&i)
                    .unwrap_or_else(|e| panic!("{}: {e}", i.encode())),
            );
        }
        effects
    }

    /// Applies one instruction given as opcode and arguments.
    fn op(d: &mut Display, opcode: &str, args: &[&str]) -> Result<Effect, RenderError> {
        d.apply(&Instruction::new(
            opcode,
            args.iter().map(|s| s.to_string()).collect(),
        ))
    }

    fn ins(opcode: &str, args: &[&str]) -> String {
        Instruction::new(opcode, args.iter().map(|s| s.to_string()).collect()).encode()
    }

    fn display(w: u32, h: u32) -> Display {
        let mut d = Display::new();
        run(&mut d, &ins("size", &["0", &w.to_string(), &h.to_string()]));
        d
    }

    fn fill(layer: i32, x: i32, y: i32, w: i32, h: i32, mask: i32, rgba: [i32; 4]) -> String {
        let s = |v: i32| v.to_string();
        ins("rect", &[&s(layer), &s(x), &s(y), &s(w), &s(h)])
            + &ins(
                "cfill",
                &[
                    &s(mask),
                    &s(layer),
                    &s(rgba[0]),
                    &s(rgba[1]),
                    &s(rgba[2]),
                    &s(rgba[3]),
                ],
            )
    }

    fn png_base64(w: u32, h: u32, rgba: &[u8]) -> String {
        use image::ImageEncoder;
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(rgba, w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn pixel(d: &mut Display, x: u32, y: u32) -> u32 {
        d.flatten().pixel(x, y)
    }

    #[test]
    fn rect_cfill_over_and_src() {
        let mut d = display(4, 4);
        run(&mut d, &fill(0, 0, 0, 4, 4, 14, [255, 0, 0, 255]));
        assert_eq!(pixel(&mut d, 3, 3), 0xFF0000);
        // Half-transparent blue over red.
        run(&mut d, &fill(0, 1, 1, 2, 2, 14, [0, 0, 255, 128]));
        assert_eq!(pixel(&mut d, 1, 1), 0x7F0080);
        assert_eq!(pixel(&mut d, 0, 0), 0xFF0000);
        // src replaces: half-transparent blue stays half-transparent (black behind in a frame).
        run(&mut d, &fill(0, 0, 0, 1, 1, 12, [0, 0, 255, 128]));
        assert_eq!(pixel(&mut d, 0, 0), 0x000080);
    }

    #[test]
    fn cursor_masks_rout_and_ratop_like_guacd() {
        // guacd builds cursors in buffers with rout (2) then ratop (9).
        let mut d = display(2, 1);
        run(&mut d, &fill(-1, 0, 0, 2, 1, 14, [0, 255, 0, 255]));
        run(&mut d, &fill(-1, 0, 0, 1, 1, 2, [0, 0, 0, 255]));
        assert_eq!(
            d.layers[&-1].surface.pixels,
            vec![0, 0xFF00_FF00],
            "rout cleared pixel 0"
        );
        run(&mut d, &fill(-1, 0, 0, 2, 1, 9, [255, 0, 0, 255]));
        // ratop: destination where source is opaque (kept), source where destination is not.
        assert_eq!(d.layers[&-1].surface.pixels, vec![0xFFFF_0000, 0xFF00_FF00]);
        assert!(
            !d.is_dirty() || d.flatten().pixel(0, 0) == 0,
            "buffers are not shown"
        );
    }

    /// guacd opens a `clipboard` stream in recordings whenever the clipboard is used; its
    /// blobs are not an image and not an error (they were logged as "unknown stream" once).
    #[test]
    fn clipboard_and_other_streams_are_skipped_silently() {
        let mut d = display(2, 2);
        // `run` panics on any render error.
        run(
            &mut d,
            &(ins("clipboard", &["0", "text/plain"])
                + &ins("blob", &["0", "aGVsbG8="])
                + &ins("blob", &["0", "IHdvcmxk"])
                + &ins("end", &["0"])
                + &ins("audio", &["1", "audio/L16;rate=44100,channels=2"])
                + &ins("blob", &["1", "AAAA"])
                + &ins("file", &["2", "application/pdf", "a.pdf"])
                + &ins("blob", &["2", "JVBERi0="])
                + &ins("end", &["2"])
                + &ins("end", &["1"])),
        );
        assert_eq!(d.other_stream_blobs(), 4);
        assert!(d.other_streams.is_empty() && d.streams.is_empty());
        // The index is free again: an image stream of the same number draws.
        let b64 = png_base64(1, 1, &[255, 0, 0, 255]);
        run(
            &mut d,
            &(ins("img", &["0", "14", "0", "image/png", "0", "0"])
                + &ins("blob", &["0", &b64])
                + &ins("end", &["0"])),
        );
        assert_eq!(pixel(&mut d, 0, 0), 0xFF0000);
        // After `end` the clipboard stream is gone: a stray blob is an error again.
        assert!(matches!(
            op(&mut d, "blob", &["0", "AAAA"]),
            Err(RenderError::UnknownStream { stream: 0 })
        ));
    }

    #[test]
    fn copies_within_a_shown_layer_are_reported_as_moves() {
        let mut d = display(8, 8);
        run(&mut d, &fill(0, 0, 0, 8, 8, 12, [10, 20, 30, 255]));
        d.flatten_damaged();
        assert!(d.flushed_moves().is_empty());
        // A scroll up by 3 rows, and a copy from a buffer (not a move).
        run(
            &mut d,
            &(ins("copy", &["0", "0", "3", "8", "5", "12", "0", "0", "0"])
                + &fill(-1, 0, 0, 2, 2, 12, [1, 2, 3, 255])
                + &ins("copy", &["-1", "0", "0", "2", "2", "12", "0", "0", "6"])),
        );
        d.flatten_damaged();
        assert_eq!(
            d.flushed_moves(),
            &[Move {
                to: Rect::new(0, 0, 8, 5),
                dx: 0,
                dy: -3
            }]
        );
        d.flatten_damaged();
        assert!(d.flushed_moves().is_empty(), "handed out once");
    }

    #[test]
    fn copy_overlapping_same_layer_both_directions() {
        let mut d = display(4, 1);
        for x in 0..4 {
            run(&mut d, &fill(0, x, 0, 1, 1, 12, [x * 10, 0, 0, 255]));
        }
        run(
            &mut d,
            &ins("copy", &["0", "0", "0", "3", "1", "12", "0", "1", "0"]),
        );
        let row: Vec<u32> = (0..4).map(|x| pixel(&mut d, x, 0)).collect();
        assert_eq!(row, vec![0x000000, 0x000000, 0x0A0000, 0x140000]);
        run(
            &mut d,
            &ins("copy", &["0", "1", "0", "3", "1", "14", "0", "0", "0"]),
        );
        let row: Vec<u32> = (0..4).map(|x| pixel(&mut d, x, 0)).collect();
        assert_eq!(row, vec![0x000000, 0x0A0000, 0x140000, 0x140000]);
    }

    #[test]
    fn copy_from_buffer_autosizes_and_composites() {
        let mut d = display(4, 4);
        run(&mut d, &fill(-2, 1, 1, 2, 2, 14, [0, 0, 255, 255]));
        assert_eq!(
            (d.layers[&-2].surface.width, d.layers[&-2].surface.height),
            (3, 3)
        );
        run(
            &mut d,
            &ins("copy", &["-2", "1", "1", "2", "2", "14", "0", "2", "2"]),
        );
        assert_eq!(pixel(&mut d, 2, 2), 0x0000FF);
        assert_eq!(pixel(&mut d, 3, 3), 0x0000FF);
        assert_eq!(pixel(&mut d, 1, 1), 0);
    }

    #[test]
    fn transfer_xor() {
        let mut d = display(1, 1);
        run(&mut d, &fill(0, 0, 0, 1, 1, 12, [0x0F, 0xF0, 0xAA, 255]));
        run(&mut d, &fill(-1, 0, 0, 1, 1, 12, [0x33, 0x33, 0x55, 255]));
        run(
            &mut d,
            &ins("transfer", &["-1", "0", "0", "1", "1", "6", "0", "0", "0"]),
        );
        assert_eq!(pixel(&mut d, 0, 0), 0x3CC3FF);
    }

    #[test]
    fn png_image_stream_with_alpha_over() {
        let mut d = display(3, 1);
        run(&mut d, &fill(0, 0, 0, 3, 1, 12, [0, 255, 0, 255]));
        let b64 = png_base64(2, 1, &[255, 0, 0, 255, 0, 0, 255, 128]);
        let (a, b) = b64.split_at(b64.len() / 2 + 1);
        run(
            &mut d,
            &(ins("img", &["5", "14", "0", "image/png", "1", "0"])
                + &ins("blob", &["5", a])
                + &ins("blob", &["5", b])
                + &ins("end", &["5"])),
        );
        assert_eq!(pixel(&mut d, 0, 0), 0x00FF00);
        assert_eq!(pixel(&mut d, 1, 0), 0xFF0000);
        assert_eq!(pixel(&mut d, 2, 0), 0x007F80);
        assert!(d.streams.is_empty());
    }

    #[test]
    fn jpeg_and_webp_decode() {
        let rgb = [200u8, 100, 50].repeat(64);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
            .encode(&rgb, 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .encode(&rgb, 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        for (mime, data, exact) in [("image/jpeg", jpeg, false), ("image/webp", webp, true)] {
            let mut d = display(8, 8);
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            run(
                &mut d,
                &(ins("img", &["1", "14", "0", mime, "0", "0"])
                    + &ins("blob", &["1", &b64])
                    + &ins("end", &["1"])),
            );
            let p = pixel(&mut d, 4, 4);
            let close = |a: u32, b: u32| a.abs_diff(b) <= 3;
            assert!(
                close(p >> 16, 200) && close((p >> 8) & 0xFF, 100) && close(p & 0xFF, 50),
                "{mime}: {p:06x}"
            );
            if exact {
                assert_eq!(p, 0xC86432);
            }
        }
    }

    #[test]
    fn bad_base64_and_unknown_streams_are_typed_errors() {
        let mut d = display(2, 2);
        op(&mut d, "img", &["1", "14", "0", "image/png", "0", "0"]).unwrap();
        assert_eq!(
            op(&mut d, "blob", &["1", "not*base64"]),
            Err(RenderError::BadBase64 { stream: 1 })
        );
        assert_eq!(
            op(&mut d, "end", &["1"]),
            Ok(Effect::None),
            "failed stream ends quietly"
        );
        assert_eq!(
            op(&mut d, "blob", &["9", "AAAA"]),
            Err(RenderError::UnknownStream { stream: 9 })
        );
        op(&mut d, "img", &["2", "14", "0", "image/png", "0", "0"]).unwrap();
        op(&mut d, "blob", &["2", "AAAA"]).unwrap();
        assert!(matches!(
            op(&mut d, "end", &["2"]),
            Err(RenderError::ImageDecode { stream: 2, .. })
        ));
        assert!(matches!(
            op(&mut d, "img", &["3", "14", "0", "image/gif", "0", "0"]),
            Err(RenderError::UnsupportedImage { .. })
        ));
        op(&mut d, "blob", &["3", "R0lG"]).unwrap();
    }

    #[test]
    fn cursor_drawn_at_mouse_position_and_moves_cleanly() {
        let mut d = display(8, 8);
        run(&mut d, &fill(-1, 0, 0, 2, 2, 14, [255, 255, 255, 255]));
        run(
            &mut d,
            &ins("cursor", &["1", "1", "-1", "0", "0", "2", "2"]),
        );
        d.flatten();
        assert!(!d.is_dirty());
        // Not drawn before the first mouse.
        assert!(d.frame().pixels.iter().all(|&p| p & 0xFF_FFFF == 0));
        let e = op(&mut d, "mouse", &["5", "5", "0", "1234"]).unwrap();
        assert_eq!(e, Effect::Pointer { timestamp_ms: 1234 });
        assert!(d.is_dirty(), "pointer moves dirty the display");
        assert_eq!(pixel(&mut d, 4, 4), 0xFFFFFF);
        assert_eq!(pixel(&mut d, 5, 5), 0xFFFFFF);
        assert_eq!(pixel(&mut d, 6, 6), 0);
        op(&mut d, "mouse", &["1", "1"]).unwrap();
        let f = d.flatten();
        assert_eq!(f.pixel(5, 5), 0, "old pointer area restored");
        assert_eq!(f.pixel(0, 0), 0xFFFFFF);
        assert_eq!(f.pixel(1, 1), 0xFFFFFF);
        // Changing the image alone dirties too.
        run(&mut d, &fill(-1, 0, 0, 2, 2, 12, [255, 0, 0, 255]));
        assert!(!d.is_dirty(), "buffers are not shown");
        run(
            &mut d,
            &ins("cursor", &["1", "1", "-1", "0", "0", "2", "2"]),
        );
        assert!(d.is_dirty());
        assert_eq!(pixel(&mut d, 0, 0), 0xFF0000);
    }

    #[test]
    fn layers_move_shade_dispose() {
        let mut d = display(6, 6);
        run(&mut d, &fill(0, 0, 0, 6, 6, 14, [0, 0, 255, 255]));
        run(&mut d, &ins("size", &["1", "2", "2"]));
        run(&mut d, &fill(1, 0, 0, 2, 2, 14, [0, 255, 0, 255]));
        // A new layer sits at (0, 0) of the default layer.
        assert_eq!(pixel(&mut d, 0, 0), 0x00FF00);
        run(&mut d, &ins("move", &["1", "0", "3", "3", "0"]));
        assert_eq!(pixel(&mut d, 0, 0), 0x0000FF);
        assert_eq!(pixel(&mut d, 3, 3), 0x00FF00);
        assert_eq!(pixel(&mut d, 4, 4), 0x00FF00);
        assert_eq!(pixel(&mut d, 5, 5), 0x0000FF);
        // A child of layer 1, clipped to its parent.
        run(&mut d, &ins("size", &["2", "4", "4"]));
        run(&mut d, &fill(2, 0, 0, 4, 4, 14, [255, 0, 0, 255]));
        run(&mut d, &ins("move", &["2", "1", "1", "1", "1"]));
        assert_eq!(pixel(&mut d, 4, 4), 0xFF0000);
        assert_eq!(pixel(&mut d, 5, 5), 0x0000FF, "clipped to the parent");
        assert_eq!(pixel(&mut d, 3, 3), 0x00FF00);
        run(&mut d, &ins("shade", &["1", "128"]));
        assert_eq!(pixel(&mut d, 3, 3), 0x00807F);
        run(&mut d, &ins("dispose", &["1"]));
        assert_eq!(pixel(&mut d, 3, 3), 0x0000FF);
        assert_eq!(pixel(&mut d, 4, 4), 0x0000FF, "orphaned child not shown");
    }

    #[test]
    fn idle_costs_nothing_and_sync_marks_frames() {
        let mut d = display(4, 4);
        assert!(d.is_dirty(), "a new size is a change");
        d.flatten();
        assert!(!d.is_dirty());
        assert_eq!(
            op(&mut d, "sync", &["99"]).unwrap(),
            Effect::Sync { timestamp_ms: 99 }
        );
        assert!(!d.is_dirty(), "sync alone changes nothing");
        op(&mut d, "key", &["65", "1"]).unwrap();
        op(&mut d, "nop", &[]).unwrap();
        assert!(!d.is_dirty());
        // Damage is limited to what changed.
        run(&mut d, &fill(0, 1, 1, 1, 1, 14, [1, 2, 3, 255]));
        assert_eq!(d.damage.rects(), &[Rect::new(1, 1, 1, 1)]);
        run(&mut d, &fill(0, 3, 3, 1, 1, 14, [1, 2, 3, 255]));
        assert_eq!(d.damage.rects().len(), 2, "far apart changes stay apart");
        run(&mut d, &fill(0, 1, 2, 1, 1, 14, [1, 2, 3, 255]));
        assert_eq!(
            d.damage.rects(),
            &[Rect::new(3, 3, 1, 1), Rect::new(1, 1, 1, 2)]
        );
    }

    #[test]
    fn display_resize_keeps_contents() {
        let mut d = display(2, 2);
        run(&mut d, &fill(0, 0, 0, 2, 2, 14, [9, 9, 9, 255]));
        run(&mut d, &ins("size", &["0", "3", "1"]));
        assert_eq!(d.size(), (3, 1));
        let f = d.flatten();
        assert_eq!((f.width, f.height), (3, 1));
        assert_eq!(f.pixels, vec![0x090909, 0x090909, 0]);
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut d = display(2, 2);
        assert_eq!(
            op(&mut d, "size", &["1000000000", "10", "10"]),
            Err(RenderError::LayerIndex {
                index: 1_000_000_000
            })
        );
        assert!(matches!(
            op(&mut d, "size", &["1", "100000", "100000"]),
            Err(RenderError::LayerSize { index: 1, .. })
        ));
        assert!(matches!(
            op(&mut d, "size", &["1", "-1", "5"]),
            Err(RenderError::LayerSize { .. })
        ));
        assert!(matches!(
            op(&mut d, "rect", &["-1", "0", "0", "100000", "1"]),
            Err(RenderError::LayerSize { .. })
        ));
        for s in 0..crate::limits::RENDER_STREAMS_MAX {
            op(
                &mut d,
                "img",
                &[&s.to_string(), "14", "0", "image/png", "0", "0"],
            )
            .unwrap();
        }
        assert!(matches!(
            op(&mut d, "img", &["-5", "14", "0", "image/png", "0", "0"]),
            Err(RenderError::TooManyStreams { .. })
        ));
        assert!(matches!(
            op(&mut d, "copy", &["0"]),
            Err(RenderError::Decode(_))
        ));
        // Many big buffers hit the pixel budget, not the allocator.
        let side = crate::limits::RENDER_LAYER_SIDE_PIXELS_MAX.to_string();
        let mut budget_hit = false;
        for i in 1..40 {
            match op(&mut d, "size", &[&format!("-{i}"), &side, &side]) {
                Ok(_) => {}
                Err(RenderError::PixelBudget { .. }) => {
                    budget_hit = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(budget_hit);
    }

    #[test]
    fn paths_fill_and_stroke() {
        let mut d = display(10, 10);
        let s = ins("start", &["0", "0", "0"])
            + &ins("line", &["0", "4", "0"])
            + &ins("line", &["0", "0", "4"])
            + &ins("close", &["0"])
            + &ins("cfill", &["14", "0", "255", "255", "255", "255"]);
        run(&mut d, &s);
        assert_eq!(pixel(&mut d, 0, 0), 0xFFFFFF);
        assert_eq!(pixel(&mut d, 2, 0), 0xFFFFFF);
        assert_eq!(pixel(&mut d, 3, 0), 0, "pixel centre outside the diagonal");
        assert_eq!(pixel(&mut d, 3, 3), 0);
        let s = ins("start", &["0", "0", "8"])
            + &ins("line", &["0", "10", "8"])
            + &ins(
                "cstroke",
                &["14", "0", "0", "0", "2", "255", "0", "0", "255"],
            );
        run(&mut d, &s);
        assert_eq!(pixel(&mut d, 5, 7), 0xFF0000);
        assert_eq!(pixel(&mut d, 5, 8), 0xFF0000);
        assert_eq!(pixel(&mut d, 5, 9), 0);
        // clip limits later drawing; reset lifts it.
        run(
            &mut d,
            &(ins("rect", &["0", "5", "5", "2", "2"]) + &ins("clip", &["0"])),
        );
        run(&mut d, &fill(0, 0, 0, 10, 10, 12, [0, 0, 255, 255]));
        assert_eq!(pixel(&mut d, 5, 5), 0x0000FF);
        assert_eq!(pixel(&mut d, 0, 0), 0xFFFFFF);
        run(&mut d, &ins("reset", &["0"]));
        run(&mut d, &fill(0, 0, 0, 1, 1, 12, [0, 0, 255, 255]));
        assert_eq!(pixel(&mut d, 0, 0), 0x0000FF);
        // lfill with a 1x1 pattern layer.
        run(&mut d, &fill(-3, 0, 0, 1, 1, 12, [0, 255, 0, 255]));
        run(
            &mut d,
            &(ins("rect", &["0", "8", "0", "2", "2"]) + &ins("lfill", &["14", "0", "-3"])),
        );
        assert_eq!(pixel(&mut d, 9, 1), 0x00FF00);
    }

    /// Draws a bit of everything, including state that lives between frames.
    fn busy_display() -> Display {
        let mut d = display(16, 12);
        run(&mut d, &fill(0, 0, 0, 16, 12, 14, [10, 20, 30, 255]));
        run(&mut d, &fill(-1, 0, 0, 3, 3, 14, [255, 255, 0, 200]));
        run(
            &mut d,
            &ins("cursor", &["1", "1", "-1", "0", "0", "3", "3"]),
        );
        run(&mut d, &ins("mouse", &["7", "6", "0", "5"]));
        run(
            &mut d,
            &(ins("size", &["1", "4", "4"]) + &fill(1, 0, 0, 4, 4, 14, [200, 0, 0, 255])),
        );
        run(
            &mut d,
            &(ins("move", &["1", "0", "10", "2", "3"]) + &ins("shade", &["1", "180"])),
        );
        let b64 = png_base64(1, 1, &[1, 2, 3, 255]);
        run(
            &mut d,
            &(ins("img", &["7", "14", "0", "image/png", "0", "0"])
                + &ins("blob", &["7", &b64[..5]])),
        );
        run(&mut d, &ins("rect", &["0", "1", "1", "2", "2"]));
        d
    }

    #[test]
    fn snapshot_round_trip_is_pixel_exact() {
        let mut a = busy_display();
        let snap = a.snapshot();
        let bytes = postcard::to_stdvec(&snap).unwrap();
        let back: super::super::DisplaySnapshot = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, snap);
        let mut b = Display::from_snapshot(&back).unwrap();
        assert!(b.is_dirty());
        assert_eq!(a.flatten(), b.flatten());
        // Both continue identically: the open stream and the pending path survived.
        let b64 = png_base64(1, 1, &[1, 2, 3, 255]);
        let rest = ins("blob", &["7", &b64[5..]])
            + &ins("end", &["7"])
            + &ins("cfill", &["14", "0", "0", "255", "0", "255"])
            + &ins("mouse", &["14", "10"]);
        run(&mut a, &rest);
        run(&mut b, &rest);
        assert_eq!(a.flatten(), b.flatten());
        assert_eq!(a.flatten().pixel(0, 0), 0x010203);
        assert_eq!(a.flatten().pixel(2, 2), 0x00FF00);
    }

    #[test]
    fn shrinking_the_display_to_no_height_clears_the_frame() {
        // Found by the fuzzer: a shown layer drawn in row 0, then the display resized to
        // 800x0. The frame stays 800x1 and must go black, as a fresh render of the same state.
        let mut d = display(800, 1);
        run(
            &mut d,
            &(ins("move", &["3", "0", "784", "0", "0"])
                + &ins("size", &["3", "16", "600"])
                + &fill(3, 0, 0, 16, 600, 12, [128, 128, 128, 64])),
        );
        assert_eq!(pixel(&mut d, 790, 0), 0x202020);
        run(&mut d, &ins("size", &["0", "800", "0"]));
        assert!(d.is_dirty(), "a new size is a change");
        let mut fresh = Display::from_snapshot(&d.snapshot()).expect("restores");
        assert_eq!(d.flatten(), fresh.flatten());
        assert_eq!(d.flatten().pixel(790, 0), 0);
    }

    #[test]
    fn corrupt_snapshot_is_an_error() {
        let super::super::DisplaySnapshot::V2(mut s, other) = busy_display().snapshot() else {
            panic!("snapshots are written as version 2");
        };
        s.layers.retain(|l| l.index != 0);
        let e = Display::from_snapshot(&super::super::DisplaySnapshot::V2(s.clone(), other));
        assert!(matches!(e, Err(RenderError::Snapshot { .. })));
        let e = Display::from_snapshot(&super::super::DisplaySnapshot::V1(s));
        assert!(
            matches!(e, Err(RenderError::Snapshot { .. })),
            "version 1 still read"
        );
    }

    #[test]
    fn an_open_clipboard_stream_survives_a_snapshot() {
        let mut d = Display::new();
        run(
            &mut d,
            &(ins("size", &["0", "8", "8"]) + &ins("clipboard", &["5", "text/plain"])),
        );
        let mut next = Display::from_snapshot(&d.snapshot()).expect("restores");
        // The segment cut fell inside the clipboard stream: its blob and end are skipped.
        let rest = ins("blob", &["5", "aGVsbG8="]) + &ins("end", &["5"]);
        let mut parser = crate::guac::Parser::new();
        parser.push(rest.as_bytes());
        while let Some(i) = parser.next().expect("parses") {
            next.apply(&i)
                .expect("no render error for a known non-image stream");
        }
        assert_eq!(next.other_stream_blobs(), 1);
        // And a version-1 snapshot (written before) still restores.
        let super::super::DisplaySnapshot::V2(v1, _) = d.snapshot() else {
            panic!("version 2");
        };
        assert!(Display::from_snapshot(&super::super::DisplaySnapshot::V1(v1)).is_ok());
    }
}
