//! Image streams (`img` + `blob` + `end`): base64 chunks accumulated per stream, then decoded
//! (PNG, JPEG, WebP through the `image` crate with allocation limits) into premultiplied ARGB.
//! Does not draw: [`super::Display`] composites the decoded pixels.

use std::io::Cursor;

use base64::Engine as _;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

use super::RenderError;
use crate::limits::{
    RENDER_DECODE_ALLOC_BYTES_MAX, RENDER_LAYER_SIDE_PIXELS_MAX, RENDER_STREAM_BYTES_MAX,
};

/// An open image stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStream {
    /// Destination layer or buffer.
    pub layer: i32,
    /// Channel mask to draw with.
    pub mask: u8,
    /// Destination position.
    pub x: i32,
    /// Destination position.
    pub y: i32,
    /// The mimetype as sent.
    pub mimetype: String,
    /// Decoded bytes so far.
    pub data: Vec<u8>,
    /// Base64 characters not yet forming a whole 4-character group.
    pub carry: String,
    /// Set when a blob was rejected: `end` then draws nothing.
    pub failed: bool,
}

/// A decoded image, premultiplied ARGB.
#[derive(Debug)]
pub struct Decoded {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` pixels.
    pub pixels: Vec<u32>,
    /// True when every pixel is opaque.
    pub opaque: bool,
}

impl ImageStream {
    /// Appends a base64 blob.
    ///
    /// # Errors
    /// [`RenderError::BadBase64`] for characters outside the base64 alphabet,
    /// [`RenderError::StreamTooLarge`] past [`RENDER_STREAM_BYTES_MAX`]. The stream is marked
    /// failed either way.
    pub fn append(&mut self, stream: i32, blob: &str) -> Result<(), RenderError> {
        if self.failed {
            return Ok(());
        }
        let result = self.append_inner(stream, blob);
        if result.is_err() {
            self.failed = true;
            self.data = Vec::new();
            self.carry.clear();
        }
        result
    }

    fn append_inner(&mut self, stream: i32, blob: &str) -> Result<(), RenderError> {
        let bad = || RenderError::BadBase64 { stream };
        let text: std::borrow::Cow<'_, str> = if self.carry.is_empty() {
            blob.into()
        } else {
            let mut t = std::mem::take(&mut self.carry);
            t.push_str(blob);
            t.into()
        };
        let whole = text.len() / 4 * 4;
        let (now, later) = text.split_at(whole);
        let grow = now.len() / 4 * 3;
        if self.data.len() + grow > RENDER_STREAM_BYTES_MAX {
            return Err(RenderError::StreamTooLarge {
                stream,
                max_bytes: RENDER_STREAM_BYTES_MAX,
            });
        }
        // The decoder rejects every byte outside the alphabet (and misplaced padding).
        base64::engine::general_purpose::STANDARD
            .decode_vec(now, &mut self.data)
            .map_err(|_| bad())?;
        if !later
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        {
            return Err(bad());
        }
        self.carry.push_str(later);
        Ok(())
    }

    /// The image format for the stream's mimetype, if supported.
    pub fn format(&self) -> Option<ImageFormat> {
        format_of(&self.mimetype)
    }

    /// Decodes the accumulated data.
    ///
    /// # Errors
    /// [`RenderError::UnsupportedImage`] for an unknown mimetype, [`RenderError::ImageDecode`]
    /// for undecodable or oversized images.
    pub fn decode(&self, stream: i32) -> Result<Decoded, RenderError> {
        let format = self.format().ok_or_else(|| RenderError::UnsupportedImage {
            stream,
            mimetype: self.mimetype.chars().take(64).collect(),
        })?;
        decode(stream, format, &self.data)
    }
}

/// The supported image format of a mimetype.
pub fn format_of(mimetype: &str) -> Option<ImageFormat> {
    match mimetype {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Decodes `data` as `format` into premultiplied ARGB, with bounded allocation.
///
/// The image shapes guacd sends take direct paths that write our pixel layout in one pass:
/// PNG (indexed at any bit depth, RGB8, RGBA8; not interlaced) through the `png` crate, and
/// YCbCr JPEG through `zune-jpeg`. Everything else (WebP, other PNG and JPEG variants) goes
/// through the `image` crate.
///
/// # Errors
/// [`RenderError::ImageDecode`] for corrupt data or an image over the limits.
pub fn decode(stream: i32, format: ImageFormat, data: &[u8]) -> Result<Decoded, RenderError> {
    let fail = |reason: String| RenderError::ImageDecode { stream, reason };
    let direct = match format {
        ImageFormat::Png => decode_png(data).map_err(fail)?,
        ImageFormat::Jpeg => decode_jpeg(data).map_err(fail)?,
        _ => None,
    };
    match direct {
        Some(decoded) => Ok(decoded),
        None => decode_generic(stream, format, data),
    }
}

/// Checks decoded dimensions against [`RENDER_LAYER_SIDE_PIXELS_MAX`].
fn check_size(width: usize, height: usize) -> Result<(), String> {
    let side = RENDER_LAYER_SIDE_PIXELS_MAX as usize;
    if width > side || height > side {
        return Err(format!("{width}x{height} exceeds {side} pixels a side"));
    }
    Ok(())
}

/// PNG straight into premultiplied ARGB; `Ok(None)` for shapes left to the `image` crate
/// (16-bit, greyscale, interlaced).
fn decode_png(data: &[u8]) -> Result<Option<Decoded>, String> {
    use png::{BitDepth, ColorType, Transformations};
    let limits = png::Limits {
        bytes: usize::try_from(RENDER_DECODE_ALLOC_BYTES_MAX).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(data), limits);
    decoder.set_transformations(Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    check_size(width as usize, height as usize)?;
    if info.interlaced {
        return Ok(None);
    }
    enum Kind {
        Indexed { bits: u8, lut: Box<[u32; 256]> },
        Rgb,
        Rgba,
    }
    let mut opaque = true;
    let kind = match (info.color_type, info.bit_depth) {
        (ColorType::Indexed, depth) => {
            let (lut, lut_opaque) = palette_lut(info.palette.as_deref(), info.trns.as_deref());
            opaque = lut_opaque;
            Kind::Indexed {
                bits: depth as u8,
                lut,
            }
        }
        (ColorType::Rgb, BitDepth::Eight) if info.trns.is_none() => Kind::Rgb,
        (ColorType::Rgba, BitDepth::Eight) if info.trns.is_none() => Kind::Rgba,
        _ => return Ok(None),
    };
    let w = width as usize;
    let mut pixels = vec![0u32; w * height as usize];
    for out in pixels.chunks_exact_mut(w.max(1)).take(height as usize) {
        let row = reader
            .next_row()
            .map_err(|e| e.to_string())?
            .ok_or("image data ends early")?;
        let row = row.data();
        match &kind {
            Kind::Indexed { bits: 8, lut } => {
                for (o, &i) in out.iter_mut().zip(row) {
                    *o = lut[usize::from(i)];
                }
            }
            Kind::Indexed { bits: 4, lut } => unpack_indexed::<4>(row, out, lut),
            Kind::Indexed { bits: 2, lut } => unpack_indexed::<2>(row, out, lut),
            Kind::Indexed { lut, .. } => unpack_indexed::<1>(row, out, lut),
            Kind::Rgb => {
                for (o, p) in out.iter_mut().zip(row.chunks_exact(3)) {
                    *o = 0xFF00_0000
                        | u32::from(p[0]) << 16
                        | u32::from(p[1]) << 8
                        | u32::from(p[2]);
                }
            }
            Kind::Rgba => {
                for (o, p) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = premultiply_rgba(p[0], p[1], p[2], p[3]);
                    opaque &= p[3] == 255;
                }
            }
        }
    }
    Ok(Some(Decoded {
        width,
        height,
        pixels,
        opaque,
    }))
}

/// One row of `BITS`-bit palette indices (1, 2 or 4; packed from the high bit) through `lut`.
#[inline]
fn unpack_indexed<const BITS: u32>(row: &[u8], out: &mut [u32], lut: &[u32; 256]) {
    let per_byte = (8 / BITS) as usize;
    let mask = (1u8 << BITS) - 1;
    let (whole, tail) = out.split_at_mut(out.len() / per_byte * per_byte);
    for (o, &b) in whole.chunks_exact_mut(per_byte).zip(row) {
        for (k, o) in o.iter_mut().enumerate() {
            *o = lut[usize::from((b >> (8 - BITS * (k as u32 + 1))) & mask)];
        }
    }
    if let Some(&b) = row.get(whole.len() / per_byte) {
        for (k, o) in tail.iter_mut().enumerate() {
            *o = lut[usize::from((b >> (8 - BITS * (k as u32 + 1))) & mask)];
        }
    }
}

/// A straight-alpha RGBA pixel, premultiplied (exact shortcuts for alpha 255 and 0).
#[inline]
fn premultiply_rgba(r: u8, g: u8, b: u8, a: u8) -> u32 {
    match a {
        255 => 0xFF00_0000 | u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b),
        0 => 0,
        _ => super::composite::premultiply(r.into(), g.into(), b.into(), a.into()),
    }
}

/// The 256 palette entries as premultiplied ARGB (missing entries opaque black, as the `png`
/// crate expands them; a `tRNS` longer than the palette is ignored, as there), and whether
/// every entry is opaque.
fn palette_lut(palette: Option<&[u8]>, trns: Option<&[u8]>) -> (Box<[u32; 256]>, bool) {
    let palette = palette.unwrap_or(&[]);
    let trns = trns.unwrap_or(&[]);
    let trns = if trns.len() <= palette.len() / 3 {
        trns
    } else {
        &[]
    };
    let mut lut = Box::new([0xFF00_0000u32; 256]);
    for (i, rgb) in palette.chunks_exact(3).take(256).enumerate() {
        let a = trns.get(i).copied().unwrap_or(255);
        lut[i] = premultiply_rgba(rgb[0], rgb[1], rgb[2], a);
    }
    let opaque = trns.iter().all(|&a| a == 255);
    (lut, opaque)
}

/// A YCbCr JPEG straight into ARGB (`zune-jpeg`'s RGBA output, bytes swapped in place);
/// `Ok(None)` for other colour spaces.
fn decode_jpeg(data: &[u8]) -> Result<Option<Decoded>, String> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let side = RENDER_LAYER_SIDE_PIXELS_MAX as usize;
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(ColorSpace::RGBA);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder.decode_headers().map_err(|e| e.to_string())?;
    if decoder.input_colorspace() != Some(ColorSpace::YCbCr) {
        return Ok(None);
    }
    let (w, h) = decoder.dimensions().ok_or("no JPEG dimensions")?;
    check_size(w, h)?;
    let mut pixels = vec![0u32; w * h];
    decoder
        .decode_into(bytemuck::cast_slice_mut(&mut pixels))
        .map_err(|e| e.to_string())?;
    // Bytes R, G, B, A read as a little-endian u32 are 0xAABBGGRR: swap R and B, opaque.
    for p in &mut pixels {
        let v = u32::from_le(*p);
        *p = 0xFF00_0000 | (v & 0xFF00) | (v & 0xFF) << 16 | (v >> 16) & 0xFF;
    }
    Ok(Some(Decoded {
        width: w as u32,
        height: h as u32,
        pixels,
        opaque: true,
    }))
}

/// Any format through the `image` crate, then into premultiplied ARGB.
fn decode_generic(stream: i32, format: ImageFormat, data: &[u8]) -> Result<Decoded, RenderError> {
    let fail = |reason: String| RenderError::ImageDecode { stream, reason };
    let mut limits = Limits::default();
    limits.max_image_width = Some(RENDER_LAYER_SIDE_PIXELS_MAX);
    limits.max_image_height = Some(RENDER_LAYER_SIDE_PIXELS_MAX);
    limits.max_alloc = Some(RENDER_DECODE_ALLOC_BYTES_MAX);
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| fail(e.to_string()))?;
    let (width, height) = (image.width(), image.height());
    let mut opaque = true;
    let pixels: Vec<u32> = match image {
        DynamicImage::ImageRgb8(buf) => {
            let raw = buf.as_raw();
            let mut out = vec![0u32; raw.len() / 3];
            for (o, p) in out.iter_mut().zip(raw.chunks_exact(3)) {
                *o = 0xFF00_0000 | u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]);
            }
            out
        }
        DynamicImage::ImageRgba8(buf) => {
            let raw = buf.as_raw();
            let mut out = vec![0u32; raw.len() / 4];
            for (o, p) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = premultiply_rgba(p[0], p[1], p[2], p[3]);
                opaque &= p[3] == 255;
            }
            out
        }
        other => {
            let rgba = other.to_rgba8();
            let mut out = Vec::with_capacity(rgba.as_raw().len() / 4);
            for p in rgba.as_raw().chunks_exact(4) {
                opaque &= p[3] == 255;
                out.push(super::composite::premultiply(
                    p[0].into(),
                    p[1].into(),
                    p[2].into(),
                    p[3].into(),
                ));
            }
            out
        }
    };
    Ok(Decoded {
        width,
        height,
        pixels,
        opaque,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> ImageStream {
        ImageStream {
            layer: 0,
            mask: 14,
            x: 0,
            y: 0,
            mimetype: "image/png".into(),
            data: Vec::new(),
            carry: String::new(),
            failed: false,
        }
    }

    #[test]
    fn base64_split_anywhere() {
        let mut s = stream();
        s.append(1, "aGVsbG8").unwrap();
        s.append(1, "gd29y").unwrap();
        s.append(1, "bGQ=").unwrap();
        assert_eq!(s.data, b"hello world");
        assert!(s.carry.is_empty());
    }

    #[test]
    fn non_base64_is_rejected() {
        let mut s = stream();
        let e = s.append(3, "aGV*bG8=").unwrap_err();
        assert!(matches!(e, RenderError::BadBase64 { stream: 3 }));
        assert!(s.failed);
    }

    #[test]
    fn png_bomb_is_refused() {
        // A valid PNG header claiming 100000 x 100000 pixels.
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        png.extend_from_slice(&(ihdr.len() as u32).to_be_bytes());
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&ihdr);
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        let e = decode(1, ImageFormat::Png, &png).unwrap_err();
        assert!(matches!(e, RenderError::ImageDecode { .. }), "{e}");
    }

    /// A PNG written by the `png` crate (indexed images get `palette` and `trns`).
    fn png_bytes(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        palette: Option<&[u8]>,
        trns: Option<&[u8]>,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(color);
        e.set_depth(depth);
        if let Some(p) = palette {
            e.set_palette(p.to_vec());
        }
        if let Some(t) = trns {
            e.set_trns(t.to_vec());
        }
        let mut writer = e.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    /// The direct path must give exactly what the `image` crate path gives.
    fn same_as_generic(format: ImageFormat, data: &[u8]) -> Decoded {
        let direct = match format {
            ImageFormat::Png => decode_png(data).unwrap(),
            _ => decode_jpeg(data).unwrap(),
        }
        .expect("takes the direct path");
        let generic = decode_generic(1, format, data).unwrap();
        assert_eq!(
            (direct.width, direct.height),
            (generic.width, generic.height)
        );
        assert_eq!(direct.pixels, generic.pixels);
        assert_eq!(direct.opaque, generic.opaque);
        direct
    }

    #[test]
    fn indexed_png_every_depth_matches_image_crate() {
        use png::{BitDepth, ColorType};
        // 5 entries, the 6th index (5) is missing from the palette: opaque black.
        let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 200, 100, 50];
        for (depth, bits) in [
            (BitDepth::One, 1),
            (BitDepth::Two, 2),
            (BitDepth::Four, 4),
            (BitDepth::Eight, 8),
        ] {
            let (w, h) = (13u32, 3u32);
            let levels = 1u32 << bits;
            let row_bytes = (w as usize * bits).div_ceil(8);
            let mut data = vec![0u8; row_bytes * h as usize];
            for y in 0..h as usize {
                for x in 0..w as usize {
                    let v = ((x + 2 * y) as u32 % levels.min(6)) as u8;
                    let bit = x * bits;
                    data[y * row_bytes + bit / 8] |= v << (8 - bits - bit % 8);
                }
            }
            for trns in [None, Some(&[255u8, 128, 0][..])] {
                let png = png_bytes(w, h, ColorType::Indexed, depth, Some(&palette), trns, &data);
                let d = same_as_generic(ImageFormat::Png, &png);
                assert_eq!(d.opaque, trns.is_none(), "{bits} bits");
                assert_eq!(d.pixels[0], 0xFFFF_0000, "index 0: red, opaque");
                if bits > 1 {
                    // Index 2 is blue, fully transparent with the tRNS chunk.
                    let two = if trns.is_none() { 0xFF00_00FF } else { 0 };
                    assert_eq!(d.pixels[2], two, "{bits} bits");
                }
            }
        }
    }

    #[test]
    fn rgb_and_rgba_png_match_image_crate() {
        use png::{BitDepth, ColorType};
        let rgb: Vec<u8> = (0..5 * 2 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let d = same_as_generic(
            ImageFormat::Png,
            &png_bytes(5, 2, ColorType::Rgb, BitDepth::Eight, None, None, &rgb),
        );
        assert_eq!(d.pixels[0], 0xFF00_254A);
        let rgba: Vec<u8> = (0..5 * 2 * 4).map(|i| (i * 53 % 256) as u8).collect();
        let d = same_as_generic(
            ImageFormat::Png,
            &png_bytes(5, 2, ColorType::Rgba, BitDepth::Eight, None, None, &rgba),
        );
        assert!(!d.opaque);
        // RGB with a transparent colour key and 16-bit images go through the image crate.
        let keyed = png_bytes(
            5,
            2,
            ColorType::Rgb,
            BitDepth::Eight,
            None,
            Some(&[0, 0, 0, 0, 0, 0]),
            &rgb,
        );
        assert!(decode_png(&keyed).unwrap().is_none());
    }

    #[test]
    fn jpeg_matches_image_crate() {
        let rgb: Vec<u8> = (0..24 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode(&rgb, 24, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        let d = same_as_generic(ImageFormat::Jpeg, &jpeg);
        assert!(d.opaque && d.pixels.iter().all(|p| p >> 24 == 0xFF));
        // Greyscale JPEG is left to the image crate.
        let mut grey = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut grey, 80)
            .encode(&rgb[..24 * 16], 24, 16, image::ExtendedColorType::L8)
            .unwrap();
        assert!(decode_jpeg(&grey).unwrap().is_none());
        assert!(decode(1, ImageFormat::Jpeg, &grey).is_ok());
    }

    #[test]
    fn corrupt_png_and_jpeg_are_errors() {
        let rgb = [1u8; 4 * 4 * 3];
        let mut png = png_bytes(
            4,
            4,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            None,
            None,
            &rgb,
        );
        png.truncate(45); // Inside the first IDAT chunk.
        assert!(matches!(
            decode(7, ImageFormat::Png, &png),
            Err(RenderError::ImageDecode { stream: 7, .. })
        ));
        assert!(matches!(
            decode(7, ImageFormat::Jpeg, b"\xff\xd8\xff\xe0garbage"),
            Err(RenderError::ImageDecode { stream: 7, .. })
        ));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
