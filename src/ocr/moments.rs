//! Quiet moments and the rectangles to read, pure: fed each frame boundary's time and the
//! rectangles whose pixels changed, it says which changed regions (widened to whole words and
//! merged) have been still for [`QUIET_MS`] and are unread, to read them then. No I/O; called by
//! [`super::read_recording`].

use crate::render::{Frame, Rect};

/// How long the screen must stay unchanged before what changed on it is read, ms.
pub const QUIET_MS: u64 = 1000;
/// Changed rectangles are widened by this much left and right, so a word typed one key at a
/// time is read whole with its neighbours (screen pixels).
pub const REGION_PAD_X_PX: i64 = 160;
/// And by this much above and below (a glyph's ascenders and descenders).
pub const REGION_PAD_Y_PX: i64 = 3;
/// A region lower or narrower than this cannot hold a line of text and is not read (pixels).
pub const REGION_SIDE_PX_MIN: i64 = 7;
/// A region that keeps changing (a `top`, a progress bar) is read anyway once it has been
/// unread this long, ms, so text that stays while its neighbours change is not missed.
pub const UNREAD_MS_MAX: u64 = 2000;
/// A frame that changes at most this many pixels (a blinking text cursor, a key echoed) does
/// not end a quiet moment: its rectangles are read with the next real change's (pixels).
pub const SMALL_CHANGE_PX_MAX: i64 = 512;
/// At most this many rectangles are kept between reads; more are merged into their bounds.
pub const PENDING_RECTS_MAX: usize = 256;

/// Regions still long enough to read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// Screen rectangles to read, each with the time it last changed (what is there has been
    /// shown since then), in the caller's clock; disjoint, widened and merged.
    pub regions: Vec<(Rect, u64)>,
}

/// Tracks changes between reads, per region: a region is read once it has been still for
/// [`QUIET_MS`], whatever changes elsewhere (a clock or an animation does not keep the rest of
/// the screen from being read).
#[derive(Debug, Default)]
pub struct Moments {
    /// Changed regions whose widened rectangles are disjoint, each with its first and last
    /// change since it was last read.
    pending: Vec<(Rect, u64, u64)>,
    /// Small changes since the last read (they never make a read due on their own).
    small: Vec<(Rect, u64)>,
}

impl Moments {
    /// Nothing changed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// At a frame boundary at `now_ms`, before the frame changes: the regions still for
    /// [`QUIET_MS`] (with the small changes, read along), if any.
    pub fn due(&mut self, now_ms: u64, screen: Rect) -> Option<Moment> {
        let ripe = |&(_, first, last): &(Rect, u64, u64)| {
            now_ms.saturating_sub(last) >= QUIET_MS || now_ms.saturating_sub(first) >= UNREAD_MS_MAX
        };
        if !self.pending.iter().any(ripe) {
            return None;
        }
        let (taken, kept): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(ripe);
        self.pending = kept;
        let mut taken: Vec<(Rect, u64)> = taken.into_iter().map(|(r, _, t)| (r, t)).collect();
        taken.append(&mut self.small);
        Some(self.moment(taken, screen)).filter(|m| !m.regions.is_empty())
    }

    /// The frame at `now_ms` changed these rectangles (none: nothing changed). A change of at
    /// most [`SMALL_CHANGE_PX_MAX`] pixels in all is kept but does not restart any quiet time.
    pub fn changed(&mut self, now_ms: u64, rects: &[Rect]) {
        let rects: Vec<Rect> = rects.iter().filter(|r| !r.is_empty()).copied().collect();
        let area: i64 = rects.iter().map(|r| r.w * r.h).sum();
        if area == 0 {
            return;
        }
        if area <= SMALL_CHANGE_PX_MAX {
            self.small.extend(rects.into_iter().map(|r| (r, now_ms)));
            bound(&mut self.small);
            return;
        }
        for r in rects {
            // A change whose widened region touches a pending one's restarts its quiet time
            // (merged, repeatedly: the union may reach others).
            let (mut merged, mut first) = (r, now_ms);
            while let Some(i) = self
                .pending
                .iter()
                .position(|(o, _, _)| !widen(*o).intersect(&widen(merged)).is_empty())
            {
                let (o, f, _) = self.pending.swap_remove(i);
                merged = merged.union(&o);
                first = first.min(f);
            }
            self.pending.push((merged, first, now_ms));
        }
        if self.pending.len() > PENDING_RECTS_MAX {
            let bounds = self
                .pending
                .iter()
                .fold(Rect::default(), |a, p| a.union(&p.0));
            let first = self.pending.iter().map(|p| p.1).min().unwrap_or(now_ms);
            self.pending = vec![(bounds, first, now_ms)];
        }
    }

    /// At the end of the recording: the last picture stays up until the session ends, so
    /// whatever is unread is read now.
    pub fn finish(&mut self, screen: Rect) -> Option<Moment> {
        let mut taken: Vec<(Rect, u64)> = self.pending.drain(..).map(|(r, _, t)| (r, t)).collect();
        taken.append(&mut self.small);
        Some(self.moment(taken, screen)).filter(|m| !m.regions.is_empty())
    }

    fn moment(&self, taken: Vec<(Rect, u64)>, screen: Rect) -> Moment {
        let rects: Vec<Rect> = taken.iter().map(|&(r, _)| r).collect();
        let regions = regions_to_read(&rects, screen)
            .into_iter()
            .map(|region| {
                let at = taken
                    .iter()
                    .filter(|(r, _)| !widen(*r).intersect(&region).is_empty())
                    .map(|&(_, t)| t)
                    .max()
                    .unwrap_or(0);
                (region, at)
            })
            .collect();
        Moment { regions }
    }
}

/// A changed rectangle widened by the pads (not clipped).
fn widen(r: Rect) -> Rect {
    Rect::new(
        r.x - REGION_PAD_X_PX,
        r.y - REGION_PAD_Y_PX,
        r.w + 2 * REGION_PAD_X_PX,
        r.h + 2 * REGION_PAD_Y_PX,
    )
}

/// The last picture seen, to tell real changes from repaints with the same pixels (RDP and
/// VNC servers resend unchanged tiles; the renderer reports every repaint as damage).
#[derive(Debug, Default)]
pub struct LastPicture {
    width: u32,
    height: u32,
    pixels: Vec<u32>,
}

impl LastPicture {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The parts of `damaged` where `frame` differs from the last picture (one tight
    /// rectangle per damaged rectangle that holds a difference); remembers `frame`.
    pub fn changed(&mut self, frame: &Frame, damaged: &[Rect]) -> Vec<Rect> {
        let (w, h) = (frame.width, frame.height);
        if (self.width, self.height) != (w, h) {
            self.width = w;
            self.height = h;
            self.pixels.clone_from(&frame.pixels);
            return vec![Rect::new(0, 0, w.into(), h.into())];
        }
        let screen = Rect::new(0, 0, w.into(), h.into());
        let mut out = Vec::new();
        for r in damaged {
            let r = r.intersect(&screen);
            let mut tight = Rect::default();
            for y in r.y..r.y + r.h {
                let row = y as usize * w as usize;
                let (a, b) = (row + r.x as usize, row + (r.x + r.w) as usize);
                let (old, new) = (&mut self.pixels[a..b], &frame.pixels[a..b]);
                let Some(first) = old
                    .iter()
                    .zip(new)
                    .position(|(o, n)| (o ^ n) & 0xFF_FFFF != 0)
                else {
                    continue;
                };
                let last = old
                    .iter()
                    .zip(new)
                    .rposition(|(o, n)| (o ^ n) & 0xFF_FFFF != 0)
                    .unwrap_or(first);
                tight = tight.union(&Rect::new(
                    r.x + first as i64,
                    y,
                    (last - first + 1) as i64,
                    1,
                ));
                old.copy_from_slice(new);
            }
            if !tight.is_empty() {
                out.push(tight);
            }
        }
        out
    }
}

/// Collapses `rects` into their bounds when there are more than [`PENDING_RECTS_MAX`].
fn bound(rects: &mut Vec<(Rect, u64)>) {
    if rects.len() > PENDING_RECTS_MAX {
        let bounds = rects.iter().fold(Rect::default(), |a, (r, _)| a.union(r));
        let last = rects.iter().map(|&(_, t)| t).max().unwrap_or(0);
        *rects = vec![(bounds, last)];
    }
}

/// The rectangles to read for these changes: each widened by the pads and clipped to the
/// screen, overlapping ones merged into their bounds until none overlap, too small ones
/// dropped; sorted top to bottom.
pub fn regions_to_read(changed: &[Rect], screen: Rect) -> Vec<Rect> {
    let mut out: Vec<Rect> = Vec::new();
    for &r in changed {
        let mut grown = widen(r).intersect(&screen);
        if grown.is_empty() {
            continue;
        }
        // Merge with every overlapping one (repeat: the union may reach others).
        while let Some(i) = out.iter().position(|o| !o.intersect(&grown).is_empty()) {
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

    /// A change big enough to count (a line of output).
    fn line_at(x: i64, y: i64) -> Rect {
        Rect::new(x, y, 80, 16)
    }

    fn times(m: &Moment) -> Vec<u64> {
        m.regions.iter().map(|&(_, t)| t).collect()
    }

    #[test]
    fn nothing_is_due_before_a_region_was_still_for_the_quiet_time() {
        let mut m = Moments::new();
        assert_eq!(m.due(0, SCREEN), None, "nothing changed yet");
        m.changed(100, &[line_at(0, 0)]);
        assert_eq!(m.due(100 + QUIET_MS - 1, SCREEN), None);
        let moment = m
            .due(100 + QUIET_MS, SCREEN)
            .expect("due after the quiet time");
        assert_eq!(times(&moment), vec![100], "shown since the last change");
        assert_eq!(m.due(5000, SCREEN), None, "read once");
    }

    #[test]
    fn a_change_in_a_region_during_its_quiet_time_starts_it_again() {
        let mut m = Moments::new();
        m.changed(0, &[line_at(0, 0)]);
        m.changed(900, &[line_at(80, 0)]);
        assert_eq!(m.due(1500, SCREEN), None);
        let moment = m.due(1900, SCREEN).expect("due");
        assert_eq!(moment.regions.len(), 1, "both changes in one region");
        assert_eq!(times(&moment), vec![900]);
    }

    #[test]
    fn changes_elsewhere_do_not_keep_a_still_region_from_being_read() {
        let mut m = Moments::new();
        m.changed(0, &[line_at(0, 0)]);
        for t in (300..3000).step_by(300) {
            m.changed(t, &[Rect::new(600, 400, 100, 100)]);
        }
        let moment = m.due(1000, SCREEN).expect("the still line is due");
        assert_eq!(moment.regions, vec![(Rect::new(0, 0, 240, 19), 0)]);
    }

    #[test]
    fn a_region_that_keeps_changing_is_read_once_unread_for_the_longest_wait() {
        let mut m = Moments::new();
        m.changed(0, &[line_at(0, 0)]);
        m.changed(600, &[line_at(0, 0)]);
        m.changed(1200, &[line_at(0, 0)]);
        assert_eq!(m.due(UNREAD_MS_MAX - 1, SCREEN), None);
        let moment = m.due(UNREAD_MS_MAX, SCREEN).expect("read anyway");
        assert_eq!(
            times(&moment),
            vec![1200],
            "the picture shown since the last change"
        );
        m.changed(2100, &[line_at(0, 0)]);
        assert_eq!(
            m.due(2500, SCREEN),
            None,
            "the wait starts again after a read"
        );
    }

    #[test]
    fn only_what_changed_since_the_last_read_is_read() {
        let mut m = Moments::new();
        m.changed(0, &[Rect::new(0, 0, 800, 16)]);
        assert!(m.due(2000, SCREEN).is_some());
        m.changed(3000, &[line_at(0, 300)]);
        let moment = m.due(4000, SCREEN).expect("due");
        assert_eq!(moment.regions, vec![(Rect::new(0, 297, 240, 22), 3000)]);
    }

    #[test]
    fn a_blinking_cursor_is_never_due_alone_and_is_read_with_the_next_change() {
        let mut m = Moments::new();
        for t in (500..3000).step_by(500) {
            m.changed(t, &[Rect::new(100, 0, 8, 16)]);
        }
        assert_eq!(m.due(5000, SCREEN), None, "blinks alone are never due");
        m.changed(6000, &[line_at(0, 300)]);
        let moment = m.due(7000, SCREEN).expect("due");
        assert_eq!(
            moment.regions.len(),
            2,
            "the blinks are read with the change"
        );
    }

    #[test]
    fn the_end_reads_what_is_unread_even_when_not_quiet_yet() {
        let mut m = Moments::new();
        assert_eq!(m.finish(SCREEN), None);
        m.changed(10, &[Rect::new(100, 100, 50, 20)]);
        assert_eq!(m.finish(SCREEN).map(|x| times(&x)), Some(vec![10]));
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
        assert_eq!(got, vec![Rect::new(0, 0, 170, 113)]);
    }

    #[test]
    fn slivers_that_cannot_hold_text_are_dropped() {
        let got = regions_to_read(&[Rect::new(0, 598, 8, 2)], SCREEN);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn too_many_pending_rects_collapse_into_their_bounds() {
        let mut m = Moments::new();
        let many: Vec<Rect> = (0..300).map(|i| Rect::new(0, i * 30, 1, 1)).collect();
        m.changed(0, &many);
        let moment = m.finish(SCREEN).expect("due");
        assert_eq!(moment.regions.len(), 1);
    }

    #[test]
    fn a_repaint_with_the_same_pixels_is_no_change() {
        let mut last = LastPicture::new();
        let mut frame = Frame::filled(100, 50, 0x000000);
        let all = Rect::new(0, 0, 100, 50);
        assert_eq!(
            last.changed(&frame, &[all]),
            vec![all],
            "the first picture is all new"
        );
        assert!(last.changed(&frame, &[all]).is_empty(), "same pixels");
        frame.pixels[10 * 100 + 20] = 0xffffff;
        frame.pixels[12 * 100 + 25] = 0xffffff;
        assert_eq!(
            last.changed(&frame, &[all, Rect::new(0, 40, 10, 10)]),
            vec![Rect::new(20, 10, 6, 3)],
            "only the pixels that differ"
        );
        assert!(last.changed(&frame, &[all]).is_empty(), "remembered");
    }
}
