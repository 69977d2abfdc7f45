//! One layer or buffer: its pixels, its place in the layer tree (parent, position, z,
//! opacity) and its drawing state (path, clip, transform, saved states). Buffers (negative
//! indices) are never shown and grow to fit what is drawn on them, like guacenc's autosize.

use serde::{Deserialize, Serialize};

use super::path::{IDENTITY, Matrix, Path};
use super::surface::{Rect, Surface};

/// Saved by `push`, restored by `pop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawState {
    /// Drawing is limited to this rectangle, if set.
    pub clip: Option<Rect>,
    /// Transform applied to path coordinates.
    pub transform: Matrix,
}

impl Default for DrawState {
    fn default() -> Self {
        Self {
            clip: None,
            transform: IDENTITY,
        }
    }
}

/// A layer (index >= 0) or buffer (index < 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The pixels.
    pub surface: Surface,
    /// Buffers grow to fit drawing; layers keep the size `size` gave them.
    pub autosize: bool,
    /// Parent layer index (`None` for the default layer and buffers).
    pub parent: Option<i32>,
    /// Position within the parent.
    pub x: i32,
    /// Position within the parent.
    pub y: i32,
    /// Stacking order among siblings (higher on top).
    pub z: i32,
    /// 0 (invisible) ..= 255 (opaque).
    pub opacity: u8,
    /// The path being built.
    pub path: Path,
    /// Current clip and transform.
    pub state: DrawState,
    /// States saved by `push`.
    pub stack: Vec<DrawState>,
}

impl Layer {
    /// A new, empty layer or buffer for `index`.
    pub fn new(index: i32) -> Self {
        Self {
            surface: Surface::default(),
            autosize: index < 0,
            parent: if index > 0 { Some(0) } else { None },
            x: 0,
            y: 0,
            z: 0,
            opacity: 255,
            path: Path::default(),
            state: DrawState::default(),
            stack: Vec::new(),
        }
    }

    /// The clip rectangle in effect (everything when unset).
    pub fn clip(&self) -> Rect {
        self.state.clip.unwrap_or(Rect::new(
            i64::MIN / 4,
            i64::MIN / 4,
            i64::MAX / 2,
            i64::MAX / 2,
        ))
    }
}
