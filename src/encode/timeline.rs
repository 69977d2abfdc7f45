//! When frames exist in the video: maps guacd's frame-boundary timestamps (`sync`, and
//! timestamped `mouse`) to presentation timestamps at the configured frame rate, and says when a
//! keyframe is due. Pure arithmetic, no pixels; the pipeline asks it and does the work.
//!
//! # Why variable frame durations
//! guacenc renders and encodes a frame every 40 ms whatever happens, so an idle hour costs as
//! much CPU and nearly as many bytes as a busy one. Here a frame is emitted only when the
//! display changed and a frame tick (every `1/fps` s of video time) falls while that state is on
//! screen; the frame then lasts until the next emitted frame (MP4 sample durations are per
//! sample). Idle time costs no render, conversion or encoding, and a fixed tick grid still caps
//! the frame rate at `fps`. The one price: seeking needs keyframes, so when
//! [`VIDEO_KEYFRAME_INTERVAL_MAX_MS`] of video passes without one, the last picture is encoded
//! again as a forced IDR (the pipeline re-uses the last I420 buffer: no render or conversion),
//! which costs one intra frame per 5 s of idle screen.
//!
//! # Sampling rule
//! A state that appears at video time `v` (a boundary) and lasts until the next boundary `w` is
//! shown at the first tick `t` with `v <= t < w`; if no tick falls in `[v, w)` the state is
//! never shown (like any fixed-rate capture). The pipeline reads ahead to the next boundary
//! before deciding, so the decision is exact. The last state of the clip is always shown, at
//! its own timestamp, for half a frame period, so a clip lasts `last - first + 1/(2 fps)`:
//! within one frame of the session's duration.
//!
//! Units: the MP4 and x264 timescale is `1000 * fps` per second, so a tick is exactly 1000 units
//! and a millisecond exactly `fps` units: no rounding anywhere.

use crate::limits::VIDEO_KEYFRAME_INTERVAL_MAX_MS;

/// Timestamp units per frame tick.
pub const UNITS_PER_TICK: u64 = 1000;

/// The clip's clock and keyframe bookkeeping.
#[derive(Debug, Clone)]
pub struct Timeline {
    fps: u64,
    first_ms: Option<u64>,
    /// Latest boundary, video ms (never decreases).
    last_video_ms: u64,
    last_pts: Option<u64>,
    last_idr_pts: Option<u64>,
    keyframe_interval_units: u64,
}

impl Timeline {
    /// A timeline ticking `fps` times per second of video.
    pub fn new(fps: u32) -> Self {
        assert!(fps > 0, "fps must be positive");
        Self {
            fps: u64::from(fps),
            first_ms: None,
            last_video_ms: 0,
            last_pts: None,
            last_idr_pts: None,
            keyframe_interval_units: VIDEO_KEYFRAME_INTERVAL_MAX_MS * u64::from(fps),
        }
    }

    /// Units per second (the MP4 and x264 timescale).
    pub fn timescale(&self) -> u32 {
        u32::try_from(self.fps * 1000).expect("fps bounded by limits")
    }

    /// Registers a boundary at guacd time `timestamp_ms` and returns its video time in ms
    /// (0 at the first boundary). Timestamps that go backwards are clamped: video time never
    /// decreases.
    pub fn boundary(&mut self, timestamp_ms: u64) -> u64 {
        let first = *self.first_ms.get_or_insert(timestamp_ms);
        let video_ms = timestamp_ms.saturating_sub(first).max(self.last_video_ms);
        self.last_video_ms = video_ms;
        video_ms
    }

    /// Whether a boundary has been seen (the clip has started).
    pub fn started(&self) -> bool {
        self.first_ms.is_some()
    }

    /// The guacd timestamp of the first boundary.
    pub fn first_ms(&self) -> Option<u64> {
        self.first_ms
    }

    /// Video time of the latest boundary, ms.
    pub fn last_video_ms(&self) -> u64 {
        self.last_video_ms
    }

    /// The pts at which a state on screen from `from_ms` until `until_ms` (video ms; `None`:
    /// not known yet) is sampled, or `None` when no tick falls in that span.
    pub fn sample_pts(&self, from_ms: u64, until_ms: Option<u64>) -> Option<u64> {
        let from_units = from_ms * self.fps;
        let mut tick = from_units.div_ceil(UNITS_PER_TICK) * UNITS_PER_TICK;
        if let Some(last) = self.last_pts
            && tick <= last
        {
            tick = (last / UNITS_PER_TICK + 1) * UNITS_PER_TICK;
        }
        match until_ms {
            Some(until) if tick >= until * self.fps => None,
            _ => Some(tick),
        }
    }

    /// The pts of the clip's final state, shown at its own timestamp `at_ms`.
    pub fn final_pts(&self, at_ms: u64) -> u64 {
        let pts = at_ms * self.fps;
        match self.last_pts {
            Some(last) if pts <= last => last + 1,
            _ => pts,
        }
    }

    /// Where the clip ends: half a tick after the final state (and after the last frame).
    pub fn end_pts(&self, at_ms: u64) -> u64 {
        let end = at_ms * self.fps + UNITS_PER_TICK / 2;
        match self.last_pts {
            Some(last) if end <= last => last + 1,
            _ => end,
        }
    }

    /// A repeat of the last picture as an IDR, due before a frame at `pts` (or the end of the
    /// clip) so that keyframes are never further apart than the maximum interval. Call until it
    /// returns `None`, reporting each encoded repeat with [`Timeline::encoded`].
    pub fn repeat_due(&self, pts: u64) -> Option<u64> {
        let idr = self.last_idr_pts?;
        let due = idr + self.keyframe_interval_units;
        (due < pts).then_some(due)
    }

    /// Whether a frame at `pts` must be forced to IDR.
    pub fn needs_idr(&self, pts: u64) -> bool {
        self.last_idr_pts
            .is_none_or(|idr| pts >= idr + self.keyframe_interval_units)
    }

    /// Records an encoded frame.
    pub fn encoded(&mut self, pts: u64, keyframe: bool) {
        if let Some(last) = self.last_pts {
            assert!(pts > last, "pts must increase");
        }
        self.last_pts = Some(pts);
        if keyframe {
            self.last_idr_pts = Some(pts);
        }
    }

    /// Video ms of a pts (rounded down).
    pub fn pts_to_ms(&self, pts: u64) -> u64 {
        pts / self.fps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_boundary_is_time_zero_and_time_never_goes_back() {
        let mut t = Timeline::new(10);
        assert_eq!(t.boundary(5_000), 0);
        assert_eq!(t.boundary(5_250), 250);
        assert_eq!(t.boundary(5_100), 250, "clamped");
        assert_eq!(t.first_ms(), Some(5_000));
    }

    #[test]
    fn a_state_is_sampled_at_the_first_tick_it_covers() {
        let mut t = Timeline::new(10); // tick = 100 ms = 1000 units, 1 ms = 10 units
        assert_eq!(t.sample_pts(0, Some(30)), Some(0));
        t.encoded(0, true);
        assert_eq!(t.sample_pts(30, Some(90)), None, "no tick in [30, 90)");
        assert_eq!(t.sample_pts(90, Some(100)), None, "tick 100 excluded");
        assert_eq!(t.sample_pts(90, Some(101)), Some(1000));
        assert_eq!(t.sample_pts(100, Some(101)), Some(1000), "tick at the boundary");
        t.encoded(1000, false);
        assert_eq!(t.sample_pts(100, None), Some(2000), "never reuses a tick");
    }

    #[test]
    fn keyframes_repeat_every_interval_through_idle_time() {
        let mut t = Timeline::new(10);
        assert!(t.needs_idr(0));
        t.encoded(0, true);
        assert!(!t.needs_idr(1000));
        t.encoded(1000, false);
        // Next change 12 s later: repeats at 5 s and 10 s.
        let next = 120_000;
        let mut repeats = Vec::new();
        while let Some(r) = t.repeat_due(next) {
            repeats.push(r);
            t.encoded(r, true);
        }
        assert_eq!(repeats, vec![50_000, 100_000]);
        assert!(!t.needs_idr(next));
        assert!(t.needs_idr(150_000), "exactly 5 s after the last IDR");
    }

    #[test]
    fn final_state_and_end_stay_after_the_last_frame() {
        let mut t = Timeline::new(10);
        t.encoded(0, true);
        assert_eq!(t.final_pts(0), 1);
        assert_eq!(t.final_pts(45_300 / 1), 453_000);
        assert_eq!(t.end_pts(45_300), 453_500, "half a tick after the last sync");
        t.encoded(453_000, false);
        assert_eq!(t.end_pts(45_300), 453_500);
    }
}
