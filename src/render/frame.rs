//! The flattened picture the renderer hands to the encoder: one opaque RGB image at the display
//! size, including the mouse pointer. Owned by `render`; read by `encode` and thumbnails.

/// One flattened display image.
///
/// Pixels are row-major, `width * height` of them, each `0x00RRGGBB` (opaque; the alpha byte is
/// ignored). Using `u32` per pixel keeps compositing word-aligned and lets the encoder's colour
/// conversion read whole pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels, at least 1.
    pub width: u32,
    /// Height in pixels, at least 1.
    pub height: u32,
    /// `width * height` pixels, `0x00RRGGBB`.
    pub pixels: Vec<u32>,
}

impl Frame {
    /// A frame of `width` x `height` filled with `rgb` (`0x00RRGGBB`).
    pub fn filled(width: u32, height: u32, rgb: u32) -> Self {
        assert!(width > 0, "frame width must be positive");
        assert!(height > 0, "frame height must be positive");
        Self {
            width,
            height,
            pixels: vec![rgb; width as usize * height as usize],
        }
    }

    /// The pixel at (`x`, `y`), `0x00RRGGBB`.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        assert!(x < self.width, "x out of frame");
        assert!(y < self.height, "y out of frame");
        self.pixels[y as usize * self.width as usize + x as usize] & 0x00FF_FFFF
    }
}
