//! Segment -> H.264 MP4 clip and JPEG thumbnail.
