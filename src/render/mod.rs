//! The display model, pure: layers, buffers, image streams, cursor; turns instructions into
//! frames. No I/O.

mod frame;

pub use frame::Frame;
