//! [`DisplaySnapshot`]: the whole display state at a segment boundary, so the next segment of
//! a chained recording renders as if it had never been cut. Serde (the caller persists it with
//! postcard); pixels are stored PNG-compressed (lossless, premultiplied bytes as RGBA).

use serde::{Deserialize, Serialize};

use super::display::{Display, Pointer};
use super::image::ImageStream;
use super::layer::{DrawState, Layer};
use super::path::Path;
use super::surface::{Rect, Surface};
use super::{RenderError, frame::Frame};
use crate::limits::{
    RENDER_DECODE_ALLOC_BYTES_MAX, RENDER_LAYER_SIDE_PIXELS_MAX, RENDER_LAYERS_MAX,
    RENDER_OTHER_STREAMS_MAX, RENDER_STREAMS_MAX, RENDER_TOTAL_PIXELS_MAX,
};

/// A versioned display snapshot (postcard is not self-describing: never reorder variants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DisplaySnapshot {
    /// Version 1.
    V1(SnapshotV1),
    /// Version 2: version 1 and the open non-image streams (clipboard, file...), so that a
    /// segment that starts inside one skips its blobs instead of failing on them.
    V2(SnapshotV1, Vec<i32>),
}

/// Version 1 of the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV1 {
    pub(super) layers: Vec<LayerV1>,
    streams: Vec<(i32, ImageStream)>,
    pointer: PointerV1,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PixelsV1 {
    width: u32,
    height: u32,
    /// PNG of the premultiplied pixels' little-endian bytes read as RGBA; empty for 0 pixels.
    png: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct LayerV1 {
    pub(super) index: i32,
    pixels: PixelsV1,
    autosize: bool,
    parent: Option<i32>,
    x: i32,
    y: i32,
    z: i32,
    opacity: u8,
    path: Path,
    state: DrawState,
    stack: Vec<DrawState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PointerV1 {
    image: PixelsV1,
    hotspot_x: i32,
    hotspot_y: i32,
    x: i32,
    y: i32,
}

fn encode_pixels(s: &Surface) -> PixelsV1 {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut png = Vec::new();
    if s.area() > 0 {
        let bytes: Vec<u8> = s.pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
        let enc =
            PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive);
        // Encoding into a Vec cannot fail for a consistent surface.
        enc.write_image(&bytes, s.width, s.height, image::ExtendedColorType::Rgba8)
            .expect("PNG encoding of an in-memory surface");
    }
    PixelsV1 {
        width: s.width,
        height: s.height,
        png,
    }
}

fn decode_pixels(p: &PixelsV1) -> Result<Surface, RenderError> {
    let bad = |reason: String| RenderError::Snapshot { reason };
    if p.width > RENDER_LAYER_SIDE_PIXELS_MAX || p.height > RENDER_LAYER_SIDE_PIXELS_MAX {
        return Err(bad(format!("surface {}x{} too large", p.width, p.height)));
    }
    let mut s = Surface::new(p.width, p.height);
    if s.area() == 0 {
        return Ok(s);
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(RENDER_LAYER_SIDE_PIXELS_MAX);
    limits.max_image_height = Some(RENDER_LAYER_SIDE_PIXELS_MAX);
    limits.max_alloc = Some(RENDER_DECODE_ALLOC_BYTES_MAX);
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(&p.png), image::ImageFormat::Png);
    reader.limits(limits);
    // The bytes are raw premultiplied ARGB (little-endian), not colours: read them back as is.
    let raw = reader
        .decode()
        .map_err(|e| bad(e.to_string()))?
        .into_rgba8();
    if (raw.width(), raw.height()) != (p.width, p.height) {
        return Err(bad("surface size does not match its pixels".into()));
    }
    for (d, c) in s.pixels.iter_mut().zip(raw.as_raw().chunks_exact(4)) {
        *d = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(s)
}

impl Display {
    /// The complete state (layers, buffers, open streams, pointer) for the next segment.
    pub fn snapshot(&self) -> DisplaySnapshot {
        if !self.mirrors.is_empty() {
            // Deferred copies into buffers are made in a copy of the display, not here.
            let mut settled = self.clone();
            settled.settle_all();
            return settled.snapshot();
        }
        let mut indices: Vec<i32> = self.layers.keys().copied().collect();
        indices.sort_unstable();
        let layers = indices
            .into_iter()
            .map(|index| {
                let l = &self.layers[&index];
                LayerV1 {
                    index,
                    pixels: encode_pixels(&l.surface),
                    autosize: l.autosize,
                    parent: l.parent,
                    x: l.x,
                    y: l.y,
                    z: l.z,
                    opacity: l.opacity,
                    path: l.path.clone(),
                    state: l.state.clone(),
                    stack: l.stack.clone(),
                }
            })
            .collect();
        let mut streams: Vec<(i32, ImageStream)> =
            self.streams.iter().map(|(&i, s)| (i, s.clone())).collect();
        streams.sort_unstable_by_key(|s| s.0);
        let p = &self.pointer;
        let mut other: Vec<i32> = self.other_streams.iter().copied().collect();
        other.sort_unstable();
        DisplaySnapshot::V2(
            SnapshotV1 {
                layers,
                streams,
                pointer: PointerV1 {
                    image: encode_pixels(&p.image),
                    hotspot_x: p.hotspot_x,
                    hotspot_y: p.hotspot_y,
                    x: p.x,
                    y: p.y,
                },
            },
            other,
        )
    }

    /// Rebuilds a display from [`snapshot`](Display::snapshot); it flattens to exactly the same
    /// pixels. The restored display is dirty (its first flatten composites everything).
    ///
    /// # Errors
    /// [`RenderError::Snapshot`] when the snapshot is corrupt or over the limits.
    pub fn from_snapshot(snapshot: &DisplaySnapshot) -> Result<Display, RenderError> {
        let (s, other) = match snapshot {
            DisplaySnapshot::V1(s) => (s, &[][..]),
            DisplaySnapshot::V2(s, other) => (s, &other[..]),
        };
        let bad = |reason: &str| RenderError::Snapshot {
            reason: reason.into(),
        };
        if s.layers.len() > RENDER_LAYERS_MAX
            || s.streams.len() > RENDER_STREAMS_MAX
            || other.len() > RENDER_OTHER_STREAMS_MAX
        {
            return Err(bad("too many layers or streams"));
        }
        let mut d = Display::new();
        d.layers.clear();
        for l in &s.layers {
            let surface = decode_pixels(&l.pixels)?;
            d.total_pixels += surface.area();
            if d.total_pixels > RENDER_TOTAL_PIXELS_MAX {
                return Err(bad("pixel budget exceeded"));
            }
            let layer = Layer {
                surface,
                autosize: l.autosize,
                parent: l.parent,
                x: l.x,
                y: l.y,
                z: l.z,
                opacity: l.opacity,
                path: l.path.clone(),
                state: l.state.clone(),
                stack: l.stack.clone(),
            };
            if d.layers.insert(l.index, layer).is_some() {
                return Err(bad("duplicate layer index"));
            }
        }
        if !d.layers.contains_key(&0) {
            return Err(bad("no default layer"));
        }
        d.streams = s.streams.iter().cloned().collect();
        d.other_streams = other.iter().copied().collect();
        let image = decode_pixels(&s.pointer.image)?;
        d.total_pixels += image.area();
        d.pointer = Pointer {
            image,
            hotspot_x: s.pointer.hotspot_x,
            hotspot_y: s.pointer.hotspot_y,
            x: s.pointer.x,
            y: s.pointer.y,
        };
        let (w, h) = d.size();
        d.frame = Frame::filled(w.max(1), h.max(1), 0);
        d.damage
            .add(Rect::new(0, 0, w.max(1).into(), h.max(1).into()));
        Ok(d)
    }
}
