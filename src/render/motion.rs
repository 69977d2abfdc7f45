//! What the stream says moved: a `copy` within one shown layer, in screen coordinates. Owned
//! here, apart from the display that records moves and the flatten that reports them, so that
//! neither reaches into the other for it.

use super::surface::Rect;

/// Content moved within the screen by a `copy` inside one shown layer (a scroll, a window
/// drag): the encoder's hint that the area is motion, not new content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Where the content went, in screen coordinates (clipped to what was drawn).
    pub to: Rect,
    /// Displacement from the source, px (destination minus source).
    pub dx: i64,
    /// See `dx`.
    pub dy: i64,
}
