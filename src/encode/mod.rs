//! Segment -> H.264 MP4 clip and JPEG thumbnail.
pub mod worker;
