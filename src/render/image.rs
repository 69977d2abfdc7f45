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
        if !blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        {
            return Err(bad());
        }
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
        base64::engine::general_purpose::STANDARD
            .decode_vec(now, &mut self.data)
            .map_err(|_| bad())?;
        if !later
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        {
            return Err(bad());
        }
        self.carry = later.to_owned();
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
/// # Errors
/// [`RenderError::ImageDecode`] for corrupt data or an image over the limits.
pub fn decode(stream: i32, format: ImageFormat, data: &[u8]) -> Result<Decoded, RenderError> {
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
        DynamicImage::ImageRgb8(buf) => buf
            .as_raw()
            .chunks_exact(3)
            .map(|p| 0xFF00_0000 | u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
            .collect(),
        DynamicImage::ImageRgba8(buf) => {
            let mut out = Vec::with_capacity(buf.as_raw().len() / 4);
            for p in buf.as_raw().chunks_exact(4) {
                let a = u32::from(p[3]);
                let px = match a {
                    255 => {
                        0xFF00_0000 | u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2])
                    }
                    0 => 0,
                    _ => super::composite::premultiply(
                        p[0].into(),
                        p[1].into(),
                        p[2].into(),
                        a as i32,
                    ),
                };
                opaque &= a == 255;
                out.push(px);
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
