//! Quiet moments and the rectangles to read, pure: fed each frame boundary's time and the
//! rectangles the flatten changed, it says when the screen has been still for
//! [`QUIET_MS`] with something unread on it, and which screen rectangles to read then (what
//! changed since the last read, widened to whole words and merged). No I/O; called by
//! [`super::read_recording`].

use crate::render::Rect;

/// How long the screen must stay unchanged before what changed on it is read, ms.
pub const QUIET_MS: u64 = 1000;
/// Changed rectangles are widened by this much left and right, so a word typed one key at a
/// time is read whole with its neighbours (screen pixels).
pub const REGION_PAD_X_PX: i64 = 160;
/// And by this much above and below (a glyph's ascenders and descenders).
pub const REGION_PAD_Y_PX: i64 = 3;
/// A region lower or narrower than this cannot hold a line of text and is not read (pixels).
pub const REGION_SIDE_PX_MIN: i64 = 7;
/// At most this many rectangles are kept between reads; more are merged into their bounds.
pub const PENDING_RECTS_MAX: usize = 256;

/// A still screen with unread changes: read `regions` of the frame shown since `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// When the screen last changed (the frame to read has been shown since then), in the
    /// caller's clock.
    pub at_ms: u64,
    /// Screen rectangles to read, disjoint, widened and merged.
    pub regions: Vec<Rect>,
}

/// Tracks changes between reads.
#[derive(Debug, Default)]
pub struct Moments {
    pending: Vec<Rect>,
    last_change_ms: Option<u64>,
}

impl Moments {
    /// Nothing changed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// At a frame boundary at `now_ms`, before the frame changes: the moment to read now when
    /// the screen has been still for [`QUIET_MS`] with unread changes on it.
    pub fn due(&mut self, now_ms: u64, screen: Rect) -> Option<Moment> {
        let last = self.last_change_ms?;
        if now_ms.saturating_sub(last) < QUIET_MS || self.pending.is_empty() {
            return None;
        }
        self.take(screen)
    }

    /// The frame at `now_ms` changed these rectangles (none: nothing changed).
    pub fn changed(&mut self, now_ms: u64, rects: &[Rect]) {
        let rects = rects.iter().filter(|r| !r.is_empty());
        let before = self.pending.len();
        self.pending.extend(rects);
        if self.pending.len() == before {
            return;
        }
        self.last_change_ms = Some(now_ms);
        if self.pending.len() > PENDING_RECTS_MAX {
            let bounds = self.pending.iter().fold(Rect::default(), |a, r| a.union(r));
            self.pending = vec![bounds];
        }
    }

    /// At the end of the recording: the last picture stays up until the session ends, so
    /// whatever is unread is read now.
    pub fn finish(&mut self, screen: Rect) -> Option<Moment> {
        if self.pending.is_empty() {
            return None;
        }
        self.take(screen)
    }

    fn take(&mut self, screen: Rect) -> Option<Moment> {
        let at_ms = self.last_change_ms?;
        let regions = regions_to_read(&std::mem::take(&mut self.pending), screen);
        (!regions.is_empty()).then_some(Moment { at_ms, regions })
    }
}

/// The rectangles to read for these changes: each widened by the pads and clipped to the
/// screen, overlapping ones merged into their bounds until none overlap, too small ones
/// dropped; sorted top to bottom.
pub fn regions_to_read(changed: &[Rect], screen: Rect) -> Vec<Rect> {
    let mut out: Vec<Rect> = Vec::new();
    for r in changed {
        let mut grown = Rect::new(
            r.x - REGION_PAD_X_PX,
            r.y - REGION_PAD_Y_PX,
            r.w + 2 * REGION_PAD_X_PX,
            r.h + 2 * REGION_PAD_Y_PX,
        )
        .intersect(&screen);
        if grown.is_empty() {
            continue;
        }
        // Merge with every overlapping one (repeat: the union may reach others).
        loop {
            let Some(i) = out.iter().position(|o| !o.intersect(&grown).is_empty()) else {
                break;
            };
            grown = grown.union(&out.swap_remove(i));
        }
        out.push(grown);
    }
    out.retain(|r| r.w >= REGION_SIDE_PX_MIN && r.h >= REGION_SIDE_PX_MIN);
    out.sort_by_key(|r| (r.y, r.x));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCREEN: Rect = Rect {
        x: 0,
        y: 0,
        w: 800,
        h: 600,
    };

    #[test]
    fn nothing_is_due_before_the_screen_was_still_for_the_quiet_time() {
        let mut m = Moments::new();
        assert_eq!(m.due(0, SCREEN), None, "nothing changed yet");
        m.changed(100, &[Rect::new(0, 0, 8, 16)]);
        assert_eq!(m.due(100 + QUIET_MS - 1, SCREEN), None);
        let moment = m.due(100 + QUIET_MS, SCREEN).expect("due after the quiet time");
        assert_eq!(moment.at_ms, 100, "the frame shown since the last change");
        assert_eq!(m.due(5000, SCREEN), None, "read once");
    }

    #[test]
    fn a_change_during_the_quiet_time_starts_it_again() {
        let mut m = Moments::new();
        m.changed(0, &[Rect::new(0, 0, 8, 16)]);
        m.changed(900, &[Rect::new(8, 0, 8, 16)]);
        assert_eq!(m.due(1500, SCREEN), None);
        let moment = m.due(1900, SCREEN).expect("due");
        assert_eq!(moment.at_ms, 900);
        assert_eq!(moment.regions.len(), 1, "both keys in one region");
    }

    #[test]
    fn a_boundary_without_changes_does_not_restart_the_quiet_time() {
        let mut m = Moments::new();
        m.changed(0, &[Rect::new(0, 0, 8, 16)]);
        m.changed(500, &[]);
        assert!(m.due(QUIET_MS, SCREEN).is_some());
    }

    #[test]
    fn only_what_changed_since_the_last_read_is_read() {
        let mut m = Moments::new();
        m.changed(0, &[Rect::new(0, 0, 800, 16)]);
        assert!(m.due(2000, SCREEN).is_some());
        m.changed(3000, &[Rect::new(0, 300, 8, 16)]);
        let moment = m.due(4000, SCREEN).expect("due");
        assert_eq!(moment.regions, vec![Rect::new(0, 297, 168, 22)]);
    }

    #[test]
    fn the_end_reads_what_is_unread_even_when_not_quiet_yet() {
        let mut m = Moments::new();
        assert_eq!(m.finish(SCREEN), None);
        m.changed(10, &[Rect::new(100, 100, 50, 20)]);
        assert_eq!(m.finish(SCREEN).map(|x| x.at_ms), Some(10));
        assert_eq!(m.finish(SCREEN), None);
    }

    #[test]
    fn regions_are_widened_clipped_and_merged_when_they_overlap() {
        let got = regions_to_read(
            &[
                Rect::new(300, 100, 8, 16),
                Rect::new(500, 104, 8, 16),
                Rect::new(790, 500, 8, 16),
            ],
            SCREEN,
        );
        assert_eq!(
            got,
            vec![Rect::new(140, 97, 528, 26), Rect::new(630, 497, 170, 22)]
        );
    }

    #[test]
    fn a_merge_that_reaches_an_earlier_region_takes_it_too() {
        let got = regions_to_read(
            &[
                Rect::new(0, 0, 10, 10),
                Rect::new(0, 100, 10, 10),
                Rect::new(0, 0, 10, 110),
            ],
            SCREEN,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], Rect::new(0, 0, 170, 113));
    }

    #[test]
    fn slivers_that_cannot_hold_text_are_dropped() {
        let got = regions_to_read(&[Rect::new(0, 598, 8, 2)], SCREEN);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn too_many_pending_rects_collapse_into_their_bounds() {
        let mut m = Moments::new();
        let many: Vec<Rect> = (0..300).map(|i| Rect::new(0, i, 1, 1)).collect();
        m.changed(0, &many);
        let moment = m.finish(SCREEN).expect("due");
        assert_eq!(moment.regions, vec![Rect::new(0, 0, 161, 303)]);
    }
}
