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
//! the frame rate at `fps`.
//!
//! # Keyframes by frames, not by time
//! What a seek costs is the number of frames the player decodes from the previous keyframe, not
//! the video time between them. So a frame is forced to IDR when `keyframe_frames` frames have
//! been encoded since the last one (`video.keyframe-frames`, default 50), and never because time
//! passed: a still screen encodes no frames and needs no keyframe (a keyframe every 5 s of
//! time would spend 9 of ssh-green's 12 IDRs on an idle screen).
//! Scene cuts (`rate`) add keyframes where a whole new screen would cost as much as one anyway.
//!
//! The same re-use refines quality: a frame the bitrate cap starved (high quantiser, e.g. a
//! whole screen of new text) would otherwise stay blurry for as long as the screen is still, since
//! no new frame comes; so one second later (the VBV buffer has refilled) the same picture is
//! encoded again as a P-frame, which codes only the residual, up to [`VIDEO_REFINES_MAX`] times.
//! Refinements are encoded frames: they count towards the keyframe interval.
//!
//! # Sampling rule
//! A state that appears at video time `v` (a boundary) and lasts until the next boundary `w` is
//! shown at the first tick `t` with `v <= t < w`; if no tick falls in `[v, w)` the state is
//! never shown (like any fixed-rate capture). The pipeline reads ahead to the next boundary
//! before deciding, so the decision is exact. The last state of the clip is always shown, at
//! its own timestamp, for half a frame period, so a clip lasts `last - first + 1/(2 fps)`, or
//! until the end of its segment's span when the pipeline knows it (the session ended, or the
//! next segment started, later than the last boundary: a still tail is one long sample).
//! Video time 0 is the first boundary, whatever is on screen then: a display that has no size
//! yet is shown black until its first picture, so video time is session time.
//!
//! Units: the MP4 and x264 timescale is `1000 * fps` per second, so a tick is exactly 1000 units
//! and a millisecond exactly `fps` units: no rounding anywhere.

use crate::limits::{VIDEO_REFINE_DELAY_MS, VIDEO_REFINE_QP_MIN, VIDEO_REFINES_MAX};

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
    /// Frames encoded since the last IDR, that IDR included; `None` before the first frame.
    since_idr: Option<u32>,
    keyframe_frames: u32,
    /// When the last picture should be encoded again to refine it.
    refine_at: Option<u64>,
    /// Refinements since the screen last changed.
    refines: u32,
}

impl Timeline {
    /// A timeline ticking `fps` times per second of video, with an IDR at least every
    /// `keyframe_frames` encoded frames.
    pub fn new(fps: u32, keyframe_frames: u32) -> Self {
        assert!(fps > 0, "fps must be positive");
        assert!(keyframe_frames > 0, "keyframe interval must be positive");
        Self {
            fps: u64::from(fps),
            first_ms: None,
            last_video_ms: 0,
            last_pts: None,
            since_idr: None,
            keyframe_frames,
            refine_at: None,
            refines: 0,
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

    /// The pts of a refinement of the last picture (a starved frame encoded again) due before
    /// a frame at `pts` (or the end of the clip). Call until it returns `None`, reporting each
    /// encoded repeat with [`Timeline::encoded`].
    pub fn repeat_due(&self, pts: u64) -> Option<u64> {
        self.refine_at.filter(|&due| due < pts)
    }

    /// Whether the next frame must be forced to IDR: the first one, or `keyframe_frames`
    /// frames encoded since the last IDR.
    pub fn needs_idr(&self) -> bool {
        self.since_idr.is_none_or(|n| n >= self.keyframe_frames)
    }

    /// Frames encoded since the last IDR, that IDR included (`u32::MAX` before the first).
    pub fn frames_since_idr(&self) -> u32 {
        self.since_idr.unwrap_or(u32::MAX)
    }

    /// The due refinement was not encoded (no room under the cap): drop it rather than
    /// offering it again and again; the next new picture starts over.
    pub fn refine_skipped(&mut self) {
        self.refine_at = None;
    }

    /// Records an encoded frame: `repeat` when it re-encoded the previous picture, `qp` its
    /// average quantiser.
    pub fn encoded(&mut self, pts: u64, keyframe: bool, repeat: bool, qp: i32) {
        if let Some(last) = self.last_pts {
            assert!(pts > last, "pts must increase");
        }
        self.last_pts = Some(pts);
        self.since_idr = if keyframe {
            Some(1)
        } else {
            Some(self.since_idr.map_or(1, |n| n.saturating_add(1)))
        };
        if !repeat {
            self.refines = 0;
        }
        self.refine_at = None;
        if qp >= VIDEO_REFINE_QP_MIN && self.refines < VIDEO_REFINES_MAX {
            self.refines += 1;
            self.refine_at = Some(pts + VIDEO_REFINE_DELAY_MS * self.fps);
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
        let mut t = Timeline::new(10, 50);
        assert_eq!(t.boundary(5_000), 0);
        assert_eq!(t.boundary(5_250), 250);
        assert_eq!(t.boundary(5_100), 250, "clamped");
        assert_eq!(t.first_ms(), Some(5_000));
    }

    #[test]
    fn a_state_is_sampled_at_the_first_tick_it_covers() {
        let mut t = Timeline::new(10, 50); // tick = 100 ms = 1000 units, 1 ms = 10 units
        assert_eq!(t.sample_pts(0, Some(30)), Some(0));
        t.encoded(0, true, false, 20);
        assert_eq!(t.sample_pts(30, Some(90)), None, "no tick in [30, 90)");
        assert_eq!(t.sample_pts(90, Some(100)), None, "tick 100 excluded");
        assert_eq!(t.sample_pts(90, Some(101)), Some(1000));
        assert_eq!(
            t.sample_pts(100, Some(101)),
            Some(1000),
            "tick at the boundary"
        );
        t.encoded(1000, false, false, 20);
        assert_eq!(t.sample_pts(100, None), Some(2000), "never reuses a tick");
    }

    #[test]
    fn keyframes_come_by_frame_count_and_idle_time_needs_none() {
        let mut t = Timeline::new(10, 10);
        assert!(t.needs_idr(), "the first frame");
        t.encoded(0, true, false, 20);
        assert!(!t.needs_idr());
        t.encoded(1000, false, false, 20);
        // An hour of still screen: nothing to repeat, no keyframe due.
        assert_eq!(t.repeat_due(36_000_000), None);
        assert!(!t.needs_idr(), "time alone never forces a keyframe");
        // Frames 3..=10 since the IDR are P-frames; the 11th is forced.
        for i in 3..=10_u64 {
            assert!(!t.needs_idr(), "frame {i}");
            t.encoded(36_000_000 + i * 1000, false, false, 20);
        }
        assert!(t.needs_idr(), "10 frames since the last IDR");
        // A keyframe of its own (a scene cut) restarts the count.
        t.encoded(36_020_000, true, false, 20);
        assert!(!t.needs_idr());
    }

    #[test]
    fn starved_frames_are_refined_a_bounded_number_of_times() {
        let mut t = Timeline::new(10, 50);
        t.encoded(0, true, false, 40);
        let mut refined = Vec::new();
        while let Some(pts) = t.repeat_due(40_000) {
            refined.push(pts);
            t.encoded(pts, false, true, 40);
        }
        assert_eq!(
            refined,
            vec![10_000, 20_000, 30_000],
            "1 s apart, at most 3"
        );
        t.encoded(40_000, false, false, 20);
        assert_eq!(
            t.repeat_due(45_000),
            None,
            "a good frame needs no refinement"
        );
    }

    #[test]
    fn final_state_and_end_stay_after_the_last_frame() {
        let mut t = Timeline::new(10, 50);
        t.encoded(0, true, false, 20);
        assert_eq!(t.final_pts(0), 1);
        assert_eq!(t.final_pts(45_300), 453_000);
        assert_eq!(
            t.end_pts(45_300),
            453_500,
            "half a tick after the last sync"
        );
        t.encoded(453_000, false, false, 20);
        assert_eq!(t.end_pts(45_300), 453_500);
    }
}
