//! Our rate control: the quantiser of every frame, and whether a frame is a scene cut.
//!
//! x264 runs at a constant quantiser set per frame (`i_qpplus1`) instead of CRF + VBV: CRF needs
//! x264's low-resolution lookahead analysis, which cost about half of a near-still frame
//! (1.25 ms against 0.64 ms per 800x600 frame). What CRF gave us on screen content was a
//! constant quantiser anyway (qcomp 1.0); what VBV gave us was the cap. So:
//!
//! - **Quality**: every frame is coded at the configured quantiser (`VideoSettings::qp`),
//!   IDR frames [`VIDEO_IDR_QP_OFFSET`] finer, as long as the cap allows.
//! - **The cap**: no window of [`VIDEO_RATE_WINDOW_MS`] of video holds more than the bitrate
//!   cap's worth of bytes. Before each frame the controller predicts its size at the wanted
//!   quantiser from the frames before it and raises the quantiser (6 QP per halving) until the
//!   prediction fits what is left of the window ending at this frame, planning to use only
//!   [`VIDEO_RATE_TARGET_PERMILLE`] of it. Keeping every window that *ends at a frame* under the
//!   cap keeps every window under it: a window's bytes are those of the window ending at its
//!   last frame, or fewer. A misprediction can overshoot (the margin is there for that); the
//!   next frames then starve until the window has passed. A still screen codes nothing, so it
//!   costs nothing; a starved frame is refined once the screen is still (`timeline`).
//! - **Prediction**: bytes ~ k * macroblocks coded * 2^(-qp/6), one `k` for IDR frames (all
//!   macroblocks) and one for P-frames (the macroblocks the stream changed). `k` is a decaying
//!   maximum of what past frames showed, not an average, and a P-frame is predicted at no less
//!   than the IDR figure: a cheap run of cursor blinks must not make the controller trust a
//!   whole screen of new text.
//!
//! Scene cuts: x264's own detection needs the same lookahead, so it is off and the pipeline asks
//! [`is_scene_cut`] with what the stream says changed (damage) and moved (`copy` within the
//! screen): a scroll or a window drag is motion, never a cut.

use std::collections::VecDeque;

use crate::limits::{
    VIDEO_IDR_QP_OFFSET, VIDEO_QP_MAX, VIDEO_QP_MIN, VIDEO_RATE_TARGET_PERMILLE,
    VIDEO_RATE_WINDOW_MS, VIDEO_SCENECUT_NEW_PERMILLE,
};

/// A guess of `k` before any frame was seen, on the dear side (about twice what a screen of
/// text costs: an 800x600 text IDR was ~60 KB at QP 23): the first frame has no history, and
/// overshooting the cap is worse than a first frame a little coarse (it is refined later).
const K_INITIAL: f64 = 1_200.0;
/// Per frame, the decaying maximum of `k` loses this share (it forgets a costly frame in a few
/// dozen frames).
const K_DECAY: f64 = 0.95;

/// The quantiser for each frame under the bitrate cap.
#[derive(Debug, Clone)]
pub struct RateControl {
    qp: i32,
    /// Bytes a window may hold (the cap).
    window_bytes: u64,
    /// Bytes the controller plans to fill a window with.
    target_bytes: u64,
    /// Window length in pts units.
    window_units: u64,
    /// (pts, bytes) of the frames inside the window ending at the latest frame.
    recent: VecDeque<(u64, u64)>,
    recent_bytes: u64,
    k_idr: f64,
    k_p: f64,
}

/// The inputs of one frame's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlan {
    /// Its pts (timeline units).
    pub pts: u64,
    /// It will be an IDR frame.
    pub idr: bool,
    /// Macroblocks x264 will code (all of them for an IDR; the changed ones for a P-frame).
    pub coded_mbs: u64,
}

impl RateControl {
    /// A controller for frames at the P-frame quantiser `qp`, capped at `cap_bps`, with pts in
    /// units of `units_per_ms` per ms.
    pub fn new(qp: i32, cap_bps: u64, units_per_ms: u64) -> Self {
        let window_bytes = cap_bps / 8 * VIDEO_RATE_WINDOW_MS / 1000;
        Self {
            qp,
            window_bytes,
            target_bytes: window_bytes * VIDEO_RATE_TARGET_PERMILLE / 1000,
            window_units: VIDEO_RATE_WINDOW_MS * units_per_ms,
            recent: VecDeque::new(),
            recent_bytes: 0,
            k_idr: K_INITIAL,
            k_p: K_INITIAL,
        }
    }

    /// The quantiser the frame wants before the cap: the configured one, finer for IDR.
    pub fn wanted_qp(&self, idr: bool) -> i32 {
        let qp = if idr {
            self.qp - VIDEO_IDR_QP_OFFSET
        } else {
            self.qp
        };
        qp.clamp(VIDEO_QP_MIN, VIDEO_QP_MAX)
    }

    /// Bytes already in the window that would end at `pts`.
    fn used_before(&self, pts: u64) -> u64 {
        self.recent
            .iter()
            .filter(|&&(at, _)| at + self.window_units > pts)
            .map(|&(_, b)| b)
            .sum()
    }

    /// The predicted size in bytes of the frame at `qp`.
    fn predict(&self, plan: &FramePlan, qp: i32) -> f64 {
        // A changed macroblock of a P-frame costs at most about what an intra one does (new
        // content is coded intra): the IDR figure bounds a P-frame after a run of cheap ones.
        let k = if plan.idr {
            self.k_idr
        } else {
            self.k_p.max(self.k_idr)
        };
        k * plan.coded_mbs.max(1) as f64 * (-f64::from(qp) / 6.0).exp2()
    }

    /// The quantiser for the frame: the wanted one, raised as far as the window needs.
    pub fn choose(&self, plan: &FramePlan) -> i32 {
        let wanted = self.wanted_qp(plan.idr);
        let room = self.target_bytes.saturating_sub(self.used_before(plan.pts));
        if room == 0 {
            return VIDEO_QP_MAX;
        }
        let predicted = self.predict(plan, wanted);
        if predicted <= room as f64 {
            return wanted;
        }
        let raise = (6.0 * (predicted / room as f64).log2()).ceil();
        let qp = f64::from(wanted) + raise;
        qp.min(f64::from(VIDEO_QP_MAX)) as i32
    }

    /// Records what the frame cost: `bytes` at quantiser `qp`.
    pub fn coded(&mut self, plan: &FramePlan, qp: i32, bytes: u64) {
        while let Some(&(at, b)) = self.recent.front() {
            if at + self.window_units > plan.pts {
                break;
            }
            self.recent_bytes -= b;
            self.recent.pop_front();
        }
        self.recent.push_back((plan.pts, bytes));
        self.recent_bytes += bytes;
        // Tiny frames (a few skipped macroblocks) say nothing about the cost of content.
        if plan.coded_mbs == 0 || bytes < 64 {
            return;
        }
        let k = bytes as f64 * (f64::from(qp) / 6.0).exp2() / plan.coded_mbs as f64;
        let slot = if plan.idr {
            &mut self.k_idr
        } else {
            &mut self.k_p
        };
        *slot = (*slot * K_DECAY).max(k);
    }

    /// Bytes coded in the window ending at the latest frame.
    pub fn window_bytes_used(&self) -> u64 {
        self.recent_bytes
    }

    /// The cap: bytes a window may hold.
    pub fn window_bytes_cap(&self) -> u64 {
        self.window_bytes
    }
}

/// Whether a frame is a scene cut: its new content (changed area not covered by moves) is at
/// least [`VIDEO_SCENECUT_NEW_PERMILLE`] of the `screen_px`.
pub fn is_scene_cut(new_px: u64, screen_px: u64) -> bool {
    screen_px > 0 && new_px * 1000 >= screen_px * VIDEO_SCENECUT_NEW_PERMILLE
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNITS_PER_MS: u64 = 10; // 10 fps timeline

    fn plan(pts_ms: u64, idr: bool, coded_mbs: u64) -> FramePlan {
        FramePlan {
            pts: pts_ms * UNITS_PER_MS,
            idr,
            coded_mbs,
        }
    }

    /// A frame of `mbs` macroblocks whose true cost is `k` (the model's form).
    fn true_bytes(k: f64, mbs: u64, qp: i32) -> u64 {
        (k * mbs as f64 * (-f64::from(qp) / 6.0).exp2()) as u64
    }

    #[test]
    fn a_generous_cap_leaves_the_configured_quality() {
        let mut rc = RateControl::new(26, 50_000_000, UNITS_PER_MS);
        let first = plan(0, true, 1900);
        assert_eq!(rc.choose(&first), 23, "IDR finer");
        rc.coded(&first, 23, 60_000);
        for i in 1..30 {
            let p = plan(i * 100, false, 200);
            assert_eq!(rc.choose(&p), 26);
            rc.coded(&p, 26, 5_000);
        }
    }

    /// A busy screen at a low cap: every 1 s window stays within 10 % of the cap, although the
    /// content's cost jumps (cheap frames, then whole screens of new text).
    #[test]
    fn every_window_stays_under_a_low_cap() {
        let cap_bps = 500_000;
        let mut rc = RateControl::new(26, cap_bps, UNITS_PER_MS);
        let mut sent: Vec<(u64, u64)> = Vec::new();
        for i in 0..600_u64 {
            let idr = i % 50 == 0;
            // P-frames cost at most what intra content does (IDR k = 900).
            let (mbs, k) = match (i / 40) % 3 {
                _ if idr => (1900, 900.0),
                0 => (20, 300.0),
                // A sixth of the screen new every frame. Not more: at QP_MAX a frame still
                // costs k * mbs / 2^(50/6), and frames are never dropped, so a stream that
                // changes most of the screen every tick (video) exceeds a low cap at the
                // codec's floor (~2.6 KB per 1000 changed macroblocks).
                1 => (300, 850.0),
                _ => (600, 600.0),
            };
            let p = plan(i * 100, idr, mbs);
            let qp = rc.choose(&p);
            assert!((VIDEO_QP_MIN..=VIDEO_QP_MAX).contains(&qp));
            let bytes = true_bytes(k, mbs, qp);
            rc.coded(&p, qp, bytes);
            sent.push((p.pts, bytes));
        }
        let cap = cap_bps / 8;
        let window = VIDEO_RATE_WINDOW_MS * UNITS_PER_MS;
        for &(end, _) in &sent {
            let in_window: u64 = sent
                .iter()
                .filter(|&&(at, _)| at + window > end && at <= end)
                .map(|&(_, b)| b)
                .sum();
            assert!(
                in_window * 10 <= cap * 11,
                "window ending at {end}: {in_window} bytes, cap {cap}"
            );
        }
        // And the cap is used, not wasted: the busy stretch fills most of it.
        let busiest = sent.windows(10).map(|w| w.iter().map(|x| x.1).sum::<u64>()).max();
        assert!(busiest.unwrap() * 2 > cap, "busiest second {busiest:?} of {cap}");
    }

    #[test]
    fn a_full_window_starves_then_recovers() {
        let mut rc = RateControl::new(26, 500_000, UNITS_PER_MS);
        let p = plan(0, true, 1900);
        rc.coded(&p, 23, 62_500);
        assert_eq!(rc.choose(&plan(100, false, 100)), VIDEO_QP_MAX);
        assert_eq!(rc.choose(&plan(1_100, false, 100)), 26, "window passed");
    }

    #[test]
    fn scene_cuts_need_most_of_the_screen_new() {
        assert!(!is_scene_cut(0, 1000));
        assert!(!is_scene_cut(599, 1000));
        assert!(is_scene_cut(600, 1000));
        assert!(!is_scene_cut(1, 0));
    }
}
