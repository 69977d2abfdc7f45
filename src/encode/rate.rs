//! Our rate control: the quantiser of every frame, whether a frame waits for room under the
//! cap, and whether a frame is a scene cut.
//!
//! x264 runs at a constant quantiser set per frame (`i_qpplus1`) instead of CRF + VBV: CRF needs
//! x264's low-resolution lookahead analysis, which cost about half of a near-still frame
//! (1.25 ms against 0.64 ms per 800x600 frame). What CRF gave us on screen content was a
//! constant quantiser anyway (qcomp 1.0); what VBV gave us was the cap. So:
//!
//! - **Quality**: every frame is coded at the configured quantiser (`VideoSettings::qp`;
//!   scheduled IDR frames [`VIDEO_IDR_QP_OFFSET`] finer, 0 today) as long as the cap allows.
//! - **The cap**: no window of [`VIDEO_RATE_WINDOW_MS`] of video holds more than the bitrate
//!   cap's worth of bytes. Before each frame the controller predicts its size and takes the
//!   finest quantiser from the wanted one up whose prediction, times a margin learnt from past
//!   mispredictions (at least 2x), fits what is left of the window ending at this frame,
//!   planning to use only [`VIDEO_RATE_TARGET_PERMILLE`] of it. Keeping every window that
//!   *ends at a frame* under the cap keeps every window under it: a window's bytes are those of
//!   the window ending at its last frame, or fewer.
//! - **Waiting**: when not even the coarsest quantiser fits, the frame waits: the pipeline
//!   keeps the change and offers it again at the next tick (a still screen never waits: it
//!   codes nothing). The change is shown late, never lost; a window that is empty takes any
//!   frame, so nothing waits forever.
//! - **Prediction**: `bytes ~ a * cost * 2^(-qp/6)`, with `cost` from the converter's
//!   measures (`encode::convert`): per changed macroblock the smaller of its difference from
//!   the previous picture (less a dead zone the quantiser removes anyway, so a JPEG re-sent
//!   with a little noise costs nothing) and its texture (new content coded intra), moved
//!   areas discounted (x264 finds the vector); for an IDR frame the texture of the whole
//!   picture. A third part is the refinement x264 does by itself: it codes again, finer, every
//!   unchanged macroblock whose reference is coarser than the frame's quantiser, so the frame
//!   after a starved one costs about a new picture. One `a` each for P-frames, IDR frames and
//!   refinements, running averages in the log domain of what frames cost.
//!
//! Scene cuts: x264's own detection needs the same lookahead, so it is off and the pipeline asks
//! [`is_scene_cut`] with the macroblocks whose content is new (moved ones excluded): a scroll or
//! a window drag is motion, and a screen re-sent unchanged is no change at all.

use std::collections::VecDeque;

use crate::limits::{
    VIDEO_IDR_QP_OFFSET, VIDEO_QP_MAX, VIDEO_QP_MIN, VIDEO_RATE_TARGET_PERMILLE,
    VIDEO_RATE_WINDOW_MS, VIDEO_SCENECUT_MIN_FRAMES, VIDEO_SCENECUT_NEW_PERMILLE,
};

/// `a` of an IDR frame before any was seen (its cost is the texture of the whole picture;
/// vnc-jpeg-keys' first IDR of content measured 0.18).
const IDR_A_INITIAL: f64 = 0.2;
/// `a` of a P-frame before any was seen: bytes per unit of cost at quantiser 0. Measured over
/// the P-frames above 1 kB of five shared recordings: medians 0.027 (vnc-jpeg-keys) to 0.075
/// (ssh-green), 90th percentiles 0.07 to 0.20; the initial margin doubles it.
const P_A_INITIAL: f64 = 0.08;
/// `a` of the refinement of coarser macroblocks before any was seen (texture left over at
/// the new quantiser; vnc-jpeg-keys' refinement of a QP 50 IDR at QP 36 measured 0.27).
const REFINE_A_INITIAL: f64 = 0.25;
/// Weight of the newest frame in the running averages.
const LEARN_WEIGHT: f64 = 0.3;
/// Per frame, the learnt margin forgets this share of itself.
const MARGIN_DECAY: f64 = 0.9;
/// Margins never plan for a misprediction beyond this factor (log2).
const MARGIN_LOG2_MAX: f64 = 2.0;
/// Nor for less than this one (log2): the same cost measure codes to 2-5x different sizes (the
/// 10th to 90th percentile of `a` over the shared recordings), and one frame that comes out
/// twice its prediction is what breaks a window; a calm run must not talk the margin away.
const MARGIN_LOG2_MIN: f64 = 1.0;
/// The cost every macroblock of a frame adds whatever its content (in the converter's units):
/// with the x264 floor of a few bits per coded macroblock.
const MB_COST_FLOOR: f64 = 64.0;
/// Frames smaller than this say nothing about the cost of content (headers, a few skips).
const LEARN_BYTES_MIN: u64 = 200;

/// The quantiser for each frame under the bitrate cap.
#[derive(Debug, Clone)]
pub struct RateControl {
    qp: i32,
    /// Bytes the controller plans to fill a window with.
    target_bytes: u64,
    /// Window length in pts units.
    window_units: u64,
    /// (pts, bytes) of the frames inside the window ending at the latest frame.
    recent: VecDeque<(u64, u64)>,
    recent_bytes: u64,
    /// log2 of `a` for IDR frames.
    idr_a_log2: f64,
    /// log2 of `a` for P-frames.
    p_a_log2: f64,
    /// log2 of `a` for the refinement of coarser macroblocks.
    refine_a_log2: f64,
    /// log2 of how much the latest frames exceeded their prediction (decaying maximum).
    margin_log2: f64,
}

/// The inputs of one frame's decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FramePlan {
    /// Its pts (timeline units).
    pub pts: u64,
    /// It will be an IDR frame.
    pub idr: bool,
    /// Macroblocks x264 codes (all of an IDR frame, the changed ones of a P-frame).
    pub coded_mbs: u64,
    /// The converter's measure of what the frame codes (see the module doc): for an IDR frame
    /// the texture of the whole picture.
    pub cost: f64,
    /// The texture of the macroblocks the frame does not change, by the quantiser they were
    /// last coded at. x264 ignores the "unchanged" hint of a macroblock whose reference is
    /// coarser than the frame's quantiser and codes it again, finer: after a starved frame,
    /// the next frame at the wanted quantiser refines the whole picture, and costs that much.
    pub unchanged_by_qp: [f64; QP_BINS],
}

/// Quantisers 0..=51, one bin each.
pub const QP_BINS: usize = 52;

/// What the controller decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Encode it at this quantiser.
    Encode(i32),
    /// No room in the window even at the coarsest quantiser: offer it again later.
    Wait,
}

impl RateControl {
    /// A controller for frames at the P-frame quantiser `qp`, capped at `cap_bps`, with pts in
    /// units of `units_per_ms` per ms.
    pub fn new(qp: i32, cap_bps: u64, units_per_ms: u64) -> Self {
        let window_bytes = cap_bps / 8 * VIDEO_RATE_WINDOW_MS / 1000;
        Self {
            qp,
            target_bytes: window_bytes * VIDEO_RATE_TARGET_PERMILLE / 1000,
            window_units: VIDEO_RATE_WINDOW_MS * units_per_ms,
            recent: VecDeque::new(),
            recent_bytes: 0,
            idr_a_log2: IDR_A_INITIAL.log2(),
            p_a_log2: P_A_INITIAL.log2(),
            refine_a_log2: REFINE_A_INITIAL.log2(),
            margin_log2: 1.0,
        }
    }

    /// The quantiser the frame wants before the cap: the configured one, finer for a
    /// scheduled IDR (`fine`).
    pub fn wanted_qp(&self, fine: bool) -> i32 {
        let qp = if fine {
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

    /// log2 of the predicted size in bytes of the frame at quantiser `qp`.
    fn predict_log2(&self, plan: &FramePlan, qp: i32) -> f64 {
        let (new, refined) = self.predict_parts(plan, qp);
        (new + refined).max(1.0).log2()
    }

    /// The predicted bytes of the frame at `qp`: of its new content, and of the refinement of
    /// coarser macroblocks it does not change.
    fn predict_parts(&self, plan: &FramePlan, qp: i32) -> (f64, f64) {
        // Every macroblock coded costs a few bytes whatever its content.
        let cost = plan.cost + MB_COST_FLOOR * plan.coded_mbs as f64;
        let scale = (-f64::from(qp) / 6.0).exp2();
        if plan.idr {
            return (self.idr_a_log2.exp2() * cost * scale, 0.0);
        }
        // Coarser macroblocks are coded again: what is left of their texture. The share grows
        // faster than linearly with the step: a refinement by 3 QP costs little, one of a QP
        // 49 picture at 38 nearly a new picture (measured on vnc-jpeg-keys at 500 kb/s, a
        // linear share under-predicted the big step 6x once fitted to the small ones).
        let mut texture_left = 0.0;
        for (q, &texture) in plan
            .unchanged_by_qp
            .iter()
            .enumerate()
            .skip(qp.max(0) as usize + 1)
        {
            let share = 1.0 - (-f64::from(q as i32 - qp) / 6.0).exp2();
            texture_left += texture * share * share;
        }
        (
            self.p_a_log2.exp2() * cost * scale,
            self.refine_a_log2.exp2() * texture_left * scale,
        )
    }

    /// The decision for the frame: the wanted quantiser (finer when `fine`), raised as far as
    /// the window needs, or wait.
    pub fn choose(&self, plan: &FramePlan, fine: bool) -> Decision {
        let wanted = self.wanted_qp(fine);
        let used = self.used_before(plan.pts);
        let room = self.target_bytes.saturating_sub(used);
        let room_log2 = (room.max(1) as f64).log2();
        if let Some(qp) = (wanted..=VIDEO_QP_MAX)
            .find(|&qp| self.predict_log2(plan, qp) + self.margin_log2 <= room_log2)
        {
            return Decision::Encode(qp);
        }
        // An empty window takes any frame (at the coarsest quantiser): nothing waits forever,
        // and a frame that alone exceeds the cap is as small as it can be.
        if used == 0 {
            Decision::Encode(VIDEO_QP_MAX)
        } else {
            Decision::Wait
        }
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
        if bytes < LEARN_BYTES_MIN {
            return;
        }
        let (new, refined) = self.predict_parts(plan, qp);
        let miss = (bytes as f64).log2() - (new + refined).max(1.0).log2();
        log::trace!(
            "event=rate_model pts={} qp={qp} bytes={bytes} predicted_new={new:.0} \
             predicted_refined={refined:.0} margin_log2={:.2}",
            plan.pts,
            self.margin_log2
        );
        self.margin_log2 = (self.margin_log2 * MARGIN_DECAY)
            .max(miss.clamp(0.0, MARGIN_LOG2_MAX))
            .max(MARGIN_LOG2_MIN);
        // The miss is put down to the part that made most of the prediction: a refinement
        // says nothing about what new content costs, and the other way round.
        let learnt = if plan.idr {
            &mut self.idr_a_log2
        } else if refined > new {
            &mut self.refine_a_log2
        } else {
            &mut self.p_a_log2
        };
        *learnt += LEARN_WEIGHT * miss;
    }

    /// Bytes coded in the window ending at the latest frame.
    pub fn window_bytes_used(&self) -> u64 {
        self.recent_bytes
    }
}

/// Whether a frame is a scene cut: its new content is at least
/// [`VIDEO_SCENECUT_NEW_PERMILLE`] of the picture's `mbs` macroblocks, and at least
/// [`VIDEO_SCENECUT_MIN_FRAMES`] frames were encoded since the last IDR (a burst of new
/// screens, a `clear` and a redraw, makes one keyframe, not one per frame).
pub fn is_scene_cut(new_mbs: u64, mbs: u64, frames_since_idr: u32) -> bool {
    mbs > 0
        && new_mbs * 1000 >= mbs * VIDEO_SCENECUT_NEW_PERMILLE
        && frames_since_idr >= VIDEO_SCENECUT_MIN_FRAMES
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNITS_PER_MS: u64 = 10; // 10 fps timeline

    fn plan(pts_ms: u64, idr: bool, coded_mbs: u64, cost: f64) -> FramePlan {
        FramePlan {
            pts: pts_ms * UNITS_PER_MS,
            idr,
            coded_mbs,
            cost,
            unchanged_by_qp: [0.0; QP_BINS],
        }
    }

    /// A P-frame of `cost` whose true size is `a * cost * 2^(-qp/6)` (the model's form).
    fn true_bytes(a: f64, cost: f64, qp: i32) -> u64 {
        (a * cost * (-f64::from(qp) / 6.0).exp2()) as u64
    }

    fn qp_of(d: Decision) -> i32 {
        match d {
            Decision::Encode(qp) => qp,
            Decision::Wait => panic!("waited"),
        }
    }

    #[test]
    fn a_generous_cap_leaves_the_configured_quality() {
        let mut rc = RateControl::new(26, 50_000_000, UNITS_PER_MS);
        let first = plan(0, true, 1900, 0.0);
        assert_eq!(
            qp_of(rc.choose(&first, true)),
            26 - VIDEO_IDR_QP_OFFSET,
            "scheduled IDR"
        );
        rc.coded(&first, 26 - VIDEO_IDR_QP_OFFSET, 60_000);
        for i in 1..30 {
            let p = plan(i * 100, false, 1900, 200_000.0);
            assert_eq!(qp_of(rc.choose(&p, false)), 26);
            rc.coded(&p, 26, 5_000);
        }
    }

    #[test]
    fn the_model_learns_what_frames_cost() {
        let mut rc = RateControl::new(26, 2_000_000, UNITS_PER_MS);
        // Frames truly cost 0.01 per unit at QP 0; the first guess was 0.4.
        for i in 0..20 {
            let p = plan(i * 1000, false, 1900, 10_000_000.0);
            let qp = qp_of(rc.choose(&p, false));
            rc.coded(&p, qp, true_bytes(0.01, 10_000_000.0, qp));
        }
        let learnt = rc.p_a_log2.exp2();
        assert!((learnt / 0.01 - 1.0).abs() < 0.1, "learnt {learnt}");
        assert!(
            rc.margin_log2 <= MARGIN_LOG2_MIN + 1e-9,
            "no misses, the least margin: {}",
            rc.margin_log2
        );
    }

    /// A busy screen at a low cap: every 1 s window stays within 10 % of the cap, although the
    /// content's cost jumps (cheap frames, then whole screens of new text), and frames wait
    /// rather than overshoot.
    #[test]
    fn every_window_stays_under_a_low_cap() {
        let cap_bps = 500_000;
        let mut rc = RateControl::new(26, cap_bps, UNITS_PER_MS);
        let mut sent: Vec<(u64, u64)> = Vec::new();
        let mut waited = 0;
        let mut since_idr = 50;
        for i in 0..600_u64 {
            let idr = since_idr >= 50;
            // Costs in the model's units; a = 0.01 truly: cursor blinks, then frames of ~50 kB
            // at QP 26, then frames that cost ~20 kB even at the coarsest quantiser.
            let cost = match (i / 40) % 3 {
                0 => 2_000.0,
                1 => 100_000_000.0,
                _ => 600_000_000.0,
            };
            // An IDR codes the whole picture's texture: ~40 kB at QP 23.
            let p = plan(i * 100, idr, 4000, if idr { 60_000_000.0 } else { cost });
            let truth = |qp: i32| true_bytes(0.01, p.cost, qp);
            match rc.choose(&p, idr) {
                Decision::Wait => waited += 1,
                Decision::Encode(qp) => {
                    assert!((VIDEO_QP_MIN..=VIDEO_QP_MAX).contains(&qp));
                    let bytes = truth(qp);
                    rc.coded(&p, qp, bytes);
                    sent.push((p.pts, bytes));
                    since_idr = if idr { 1 } else { since_idr + 1 };
                }
            }
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
        assert!(waited > 0, "the heaviest stretch must wait");
        // And the cap is used, not wasted: the busy stretch fills most of it.
        let busiest = sent
            .iter()
            .map(|&(end, _)| {
                sent.iter()
                    .filter(|&&(at, _)| at + window > end && at <= end)
                    .map(|&(_, b)| b)
                    .sum::<u64>()
            })
            .max();
        assert!(
            busiest.unwrap() * 2 > cap,
            "busiest second {busiest:?} of {cap}"
        );
    }

    #[test]
    fn a_full_window_waits_then_recovers() {
        let mut rc = RateControl::new(26, 500_000, UNITS_PER_MS);
        let p = plan(0, true, 1900, 0.0);
        rc.coded(&p, 23, 62_500);
        assert_eq!(
            rc.choose(&plan(100, false, 1900, 1_000_000.0), false),
            Decision::Wait
        );
        assert_eq!(
            rc.choose(&plan(1_100, false, 1900, 1_000.0), false),
            Decision::Encode(26),
            "window passed"
        );
    }

    #[test]
    fn a_frame_after_a_starved_one_pays_for_the_refinement() {
        let rc = RateControl::new(26, 2_000_000, UNITS_PER_MS);
        let calm = plan(0, false, 10, 1_000.0);
        let mut after_starved = calm;
        after_starved.unchanged_by_qp[45] = 20_000_000.0;
        let (a, b) = (
            rc.predict_log2(&calm, 26),
            rc.predict_log2(&after_starved, 26),
        );
        assert!(b > a + 5.0, "the whole picture is coded again: {a} -> {b}");
        // At the starved frame's own quantiser nothing is refined.
        assert!((rc.predict_log2(&after_starved, 45) - rc.predict_log2(&calm, 45)).abs() < 1e-9);
    }

    #[test]
    fn an_empty_window_takes_any_frame() {
        let rc = RateControl::new(26, 100_000, UNITS_PER_MS);
        assert_eq!(
            rc.choose(&plan(0, false, 8000, 1e12), false),
            Decision::Encode(VIDEO_QP_MAX)
        );
    }

    #[test]
    fn scene_cuts_need_most_of_the_screen_new_and_distance() {
        assert!(!is_scene_cut(0, 1000, 50));
        assert!(!is_scene_cut(599, 1000, 50));
        assert!(is_scene_cut(600, 1000, 50));
        assert!(!is_scene_cut(1000, 1000, VIDEO_SCENECUT_MIN_FRAMES - 1));
        assert!(!is_scene_cut(1, 0, 50));
    }
}
