//! The events of one clip, taken from its recording while the encoder renders it, pure.
//!
//! The encoder feeds the [`Extractor`] every instruction in stream order, at the moment it
//! applies it to the display, with the screen pixels that instruction changed. From them:
//! - `key` (with `recording-include-keys` or `tap.record-keys`) becomes typed text, batched
//!   (a batch ends at Enter, after a pause of [`EVENTS_TYPING_PAUSE_MS`], or at
//!   [`EVENTS_TYPED_BATCH_KEYS_MAX`] keys), kept raw and with backspaces applied;
//! - a run of printable keys (up to the next Enter, named key or combination) after none of
//!   which the screen changed within [`EVENTS_ECHO_WINDOW_MS`] before the run ended is masked
//!   as [`MASK`] when [`ExtractSettings::mask_unechoed_input`] is on: a terminal password
//!   prompt. A run judged as a whole, because a terminal's echo of the last keys of a line
//!   may come after its Enter;
//! - `name` becomes a title; the tap's `x-sr-clipboard` and `x-sr-file` become clipboard and
//!   file events (see [`crate::ingest`]'s recorder for what they carry);
//! - the changed pixels and key presses add up per second into the activity track.
//!
//! Times are guacd's millisecond clock (`sync`, timestamped `mouse` and `key`, the `x-sr-*`
//! timestamp); offsets count from the first `sync`, as the clip's video does.

use super::keys::{Held, Key, write_key};
use super::{ActivitySecond, ClipEvents, Direction, Event, EventDetail};
use crate::guac::Instruction;
use crate::limits::{
    EVENTS_ACTIVITY_SECONDS_MAX, EVENTS_CLIPBOARD_TEXT_BYTES_MAX, EVENTS_ECHO_WINDOW_MS,
    EVENTS_PER_CLIP_MAX, EVENTS_TYPED_BATCH_KEYS_MAX, EVENTS_TYPING_PAUSE_MS,
};

/// What a masked run of printable keys is shown as.
pub const MASK: &str = "•••";

/// The opcode of the tap's clipboard event instruction.
pub const CLIPBOARD_OPCODE: &str = "x-sr-clipboard";
/// The opcode of the tap's file transfer event instruction.
pub const FILE_OPCODE: &str = "x-sr-file";

/// How events are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractSettings {
    /// Mask printable keys the screen did not echo (`search.mask-unechoed-input`).
    pub mask_unechoed_input: bool,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        Self {
            mask_unechoed_input: true,
        }
    }
}

/// The wire name of a direction in the `x-sr-*` instructions.
pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::ToRemote => "to-remote",
        Direction::FromRemote => "from-remote",
    }
}

fn parse_direction(s: &str) -> Option<Direction> {
    match s {
        "to-remote" => Some(Direction::ToRemote),
        "from-remote" => Some(Direction::FromRemote),
        _ => None,
    }
}

/// One key of a batch.
#[derive(Debug, Clone)]
enum Tok {
    /// A printable character, pressed at guacd time `at_ms`; `echoed` is `None` until known.
    Char {
        ch: char,
        at_ms: u64,
        echoed: Option<bool>,
    },
    BackSpace,
    Enter,
    /// Anything else, as the raw log writes it (`<Tab>`, `<Ctrl+c>`).
    Other(String),
}

/// The typed batch being collected.
#[derive(Debug, Clone)]
struct Batch {
    start_ms: u64,
    last_ms: u64,
    keys: u32,
    toks: Vec<Tok>,
    /// Index of the first `Char` that may still be undecided.
    undecided_from: usize,
    /// Where the current run of characters starts (after the last named key or combination).
    run_from: usize,
}

/// Takes the events of one clip from its instructions.
#[derive(Debug, Clone)]
pub struct Extractor {
    settings: ExtractSettings,
    first_sync_ms: Option<u64>,
    /// guacd's clock: the latest timestamp seen.
    now_ms: u64,
    held: Held,
    batch: Option<Batch>,
    events: Vec<Event>,
    activity: Vec<ActivitySecond>,
    last_title: Option<String>,
    dropped: u64,
}

impl Extractor {
    /// An extractor at the start of a clip.
    pub fn new(settings: ExtractSettings) -> Self {
        Self {
            settings,
            first_sync_ms: None,
            now_ms: 0,
            held: Held::default(),
            batch: None,
            events: Vec::new(),
            activity: Vec::new(),
            last_title: None,
            dropped: 0,
        }
    }

    /// Events dropped over [`EVENTS_PER_CLIP_MAX`] so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// One instruction, in stream order, and the screen pixels applying it changed.
    pub fn instruction(&mut self, instr: &Instruction, changed_px: u64) {
        let arg = |i: usize| instr.args.get(i).map(String::as_str);
        let ts = |i: usize| arg(i).and_then(|t| t.parse::<u64>().ok());
        match instr.opcode.as_str() {
            "sync" => {
                if let Some(t) = ts(0) {
                    self.first_sync_ms.get_or_insert(t);
                    self.advance(t);
                }
            }
            "mouse" => {
                if let Some(t) = ts(3) {
                    self.advance(t);
                }
            }
            "key" => {
                if let Some(t) = ts(2) {
                    self.advance(t);
                }
                let keysym = arg(0).and_then(|k| k.parse::<u32>().ok());
                if let Some(keysym) = keysym {
                    self.key(keysym, arg(1) == Some("1"));
                }
            }
            "name" => {
                if let Some(title) = arg(0) {
                    self.title(title);
                }
            }
            CLIPBOARD_OPCODE => self.clipboard(&instr.args),
            FILE_OPCODE => self.file(&instr.args),
            _ => {}
        }
        if changed_px > 0 {
            self.screen_changed(changed_px);
        }
    }

    /// The clip's events, in time order.
    pub fn finish(mut self) -> ClipEvents {
        self.close_batch();
        if self.dropped > 0 {
            log::warn!("event=clip_events_dropped count={}", self.dropped);
        }
        // Clipboard and file events are written when their stream ended, stamped with when it
        // opened: put them in place.
        self.events.sort_by_key(|e| e.offset_ms);
        while self.activity.last() == Some(&ActivitySecond::default()) {
            self.activity.pop();
        }
        ClipEvents {
            events: self.events,
            activity_start_ms: 0,
            activity: self.activity,
        }
    }

    fn offset_ms(&self, at_ms: u64) -> u64 {
        self.first_sync_ms.map_or(0, |f| at_ms.saturating_sub(f))
    }

    fn advance(&mut self, t: u64) {
        self.now_ms = self.now_ms.max(t);
        // Keys whose echo window passed with no change are unechoed.
        let now = self.now_ms;
        self.decide(|at| (now > at + EVENTS_ECHO_WINDOW_MS).then_some(false));
    }

    /// Decides undecided keys of the batch with `rule(pressed_at)`.
    fn decide(&mut self, rule: impl Fn(u64) -> Option<bool>) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        let mut first_open = b.toks.len();
        for (i, tok) in b.toks.iter_mut().enumerate().skip(b.undecided_from) {
            if let Tok::Char {
                at_ms,
                echoed: echoed @ None,
                ..
            } = tok
            {
                *echoed = rule(*at_ms);
                if echoed.is_none() {
                    first_open = first_open.min(i);
                }
            }
        }
        b.undecided_from = first_open;
    }

    /// Ends the current run of characters: echoed as a whole when the screen changed within
    /// the window after any of its keys before the run ended (a terminal's echo may lag the
    /// last keys of a line past its Enter), masked as a whole otherwise.
    fn end_run(&mut self) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        let run = &mut b.toks[b.run_from..];
        let echoed = run.iter().any(|t| {
            matches!(
                t,
                Tok::Char {
                    echoed: Some(true),
                    ..
                }
            )
        });
        for t in run {
            if let Tok::Char { echoed: e, .. } = t {
                *e = Some(echoed);
            }
        }
        b.run_from = b.toks.len();
        b.undecided_from = b.toks.len();
    }

    fn screen_changed(&mut self, px: u64) {
        let now = self.now_ms;
        self.decide(|at| (now <= at + EVENTS_ECHO_WINDOW_MS).then_some(true));
        if let Some(a) = self.activity_at(now) {
            a.changed_px += px;
        }
    }

    fn activity_at(&mut self, at_ms: u64) -> Option<&mut ActivitySecond> {
        let second = (self.offset_ms(at_ms) / 1000) as usize;
        if second >= EVENTS_ACTIVITY_SECONDS_MAX {
            return None;
        }
        if self.activity.len() <= second {
            self.activity.resize(second + 1, ActivitySecond::default());
        }
        Some(&mut self.activity[second])
    }

    fn key(&mut self, keysym: u32, pressed: bool) {
        let Some(k) = self.held.update(keysym, pressed) else {
            return;
        };
        let now = self.now_ms;
        if let Some(a) = self.activity_at(now) {
            a.keys += 1;
        }
        if matches!(k, Key::Modifier(_) | Key::Silent) {
            return;
        }
        if self
            .batch
            .as_ref()
            .is_some_and(|b| now > b.last_ms + EVENTS_TYPING_PAUSE_MS)
        {
            self.close_batch();
        }
        let tok = match k {
            _ if self.held.any() => {
                let mut s = String::new();
                self.held.write_combo(k, &mut s);
                Tok::Other(s)
            }
            Key::Char(ch) => Tok::Char {
                ch,
                at_ms: now,
                echoed: None,
            },
            Key::BackSpace => Tok::BackSpace,
            Key::Enter => Tok::Enter,
            _ => {
                let mut s = String::new();
                write_key(k, &mut s);
                Tok::Other(s)
            }
        };
        // An Enter, a named key or a combination ends the run of keys before it.
        let ends_run = matches!(tok, Tok::Enter | Tok::Other(_));
        if ends_run {
            self.end_run();
        }
        let ends_batch = matches!(tok, Tok::Enter);
        let b = self.batch.get_or_insert(Batch {
            start_ms: now,
            last_ms: now,
            keys: 0,
            toks: Vec::new(),
            undecided_from: 0,
            run_from: 0,
        });
        b.last_ms = now;
        b.keys += 1;
        b.toks.push(tok);
        if ends_run {
            b.run_from = b.toks.len();
            b.undecided_from = b.toks.len();
        }
        if ends_batch || b.toks.len() >= EVENTS_TYPED_BATCH_KEYS_MAX {
            self.close_batch();
        }
    }

    /// Closes the batch: keys still undecided count as unechoed (their echo, if any, is in
    /// the next clip; masking errs on the side of hiding).
    fn close_batch(&mut self) {
        self.end_run();
        let Some(b) = self.batch.take() else {
            return;
        };
        let mask = self.settings.mask_unechoed_input;
        let (raw, text, masked_keys) = render_batch(&b.toks, mask);
        let offset_ms = self.offset_ms(b.start_ms);
        self.push(Event {
            offset_ms,
            detail: EventDetail::Typed {
                raw,
                text,
                masked_keys,
                keys: b.keys,
            },
        });
    }

    fn push(&mut self, e: Event) {
        if self.events.len() >= EVENTS_PER_CLIP_MAX {
            self.dropped += 1;
            return;
        }
        self.events.push(e);
    }

    fn title(&mut self, title: &str) {
        if self.last_title.as_deref() == Some(title) {
            return;
        }
        self.last_title = Some(title.to_owned());
        let offset_ms = self.offset_ms(self.now_ms);
        self.push(Event {
            offset_ms,
            detail: EventDetail::Title {
                title: title.to_owned(),
            },
        });
    }

    /// `x-sr-clipboard,direction,mimetype,size,truncated,text,timestamp`.
    fn clipboard(&mut self, args: &[String]) {
        let [direction, mimetype, size, truncated, text, at] = match args {
            [a, b, c, d, e, f, ..] => [a, b, c, d, e, f],
            _ => return,
        };
        let (Some(direction), Ok(size_bytes), Ok(at)) = (
            parse_direction(direction),
            size.parse::<u64>(),
            at.parse::<u64>(),
        ) else {
            return;
        };
        // Empty text for a non-empty clipboard: not UTF-8, so mimetype and size only.
        let is_text = mimetype.starts_with("text/") && (size_bytes == 0 || !text.is_empty());
        let mut truncated = truncated == "1";
        let text = is_text.then(|| {
            let cut = cut_at_char(text, EVENTS_CLIPBOARD_TEXT_BYTES_MAX);
            truncated |= cut.len() < text.len();
            cut.to_owned()
        });
        let offset_ms = self.offset_ms(at);
        self.push(Event {
            offset_ms,
            detail: EventDetail::Clipboard {
                direction,
                mimetype: mimetype.clone(),
                size_bytes,
                text,
                truncated,
            },
        });
    }

    /// `x-sr-file,direction,name,mimetype,size,sha256,complete,timestamp`.
    fn file(&mut self, args: &[String]) {
        let [direction, name, mimetype, size, sha256, complete, at] = match args {
            [a, b, c, d, e, f, g, ..] => [a, b, c, d, e, f, g],
            _ => return,
        };
        let (Some(direction), Ok(size_bytes), Ok(at)) = (
            parse_direction(direction),
            size.parse::<u64>(),
            at.parse::<u64>(),
        ) else {
            return;
        };
        let offset_ms = self.offset_ms(at);
        self.push(Event {
            offset_ms,
            detail: EventDetail::File {
                direction,
                name: name.clone(),
                mimetype: mimetype.clone(),
                size_bytes,
                sha256: sha256.clone(),
                complete: complete == "1",
            },
        });
    }
}

/// The longest prefix of `s` of at most `max` bytes ending at a character boundary.
pub fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A batch's raw log, its text with backspaces applied, and how many keys were masked.
fn render_batch(toks: &[Tok], mask: bool) -> (String, String, u32) {
    let masked = |echoed: &Option<bool>| mask && *echoed != Some(true);
    let mut raw = String::new();
    let mut masked_keys = 0;
    let mut in_mask = false;
    // Typed characters with backspaces applied; `None` is a masked one.
    let mut line: Vec<Option<char>> = Vec::new();
    for tok in toks {
        let hidden = matches!(tok, Tok::Char { echoed, .. } if masked(echoed));
        if hidden {
            masked_keys += 1;
            if !in_mask {
                raw.push_str(MASK);
            }
        }
        in_mask = hidden;
        match tok {
            Tok::Char { .. } if hidden => line.push(None),
            Tok::Char { ch, .. } => {
                raw.push(*ch);
                line.push(Some(*ch));
            }
            Tok::BackSpace => {
                raw.push_str("<BackSpace>");
                line.pop();
            }
            Tok::Enter => {
                raw.push_str("<Return>");
                line.push(Some('\n'));
            }
            Tok::Other(s) => raw.push_str(s),
        }
    }
    let mut text = String::new();
    let mut prev_masked = false;
    for c in line {
        match c {
            Some(c) => text.push(c),
            None if !prev_masked => text.push_str(MASK),
            None => {}
        }
        prev_masked = c.is_none();
    }
    (raw, text, masked_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(opcode: &str, args: &[&str]) -> Instruction {
        Instruction::new(opcode, args.iter().map(|a| (*a).to_owned()).collect())
    }

    /// Feeds a script: `("type", text)` presses and releases each character 100 ms apart,
    /// echoed (a draw after each) or not; other entries are instructions.
    struct Script {
        x: Extractor,
        now: u64,
    }

    impl Script {
        fn new(mask: bool) -> Self {
            let mut x = Extractor::new(ExtractSettings {
                mask_unechoed_input: mask,
            });
            x.instruction(&i("sync", &["1000"]), 0);
            Self { x, now: 1000 }
        }
        fn key(&mut self, keysym: u32, echo: bool) {
            self.now += 100;
            let t = self.now.to_string();
            self.x
                .instruction(&i("key", &[&keysym.to_string(), "1", &t]), 0);
            self.x
                .instruction(&i("key", &[&keysym.to_string(), "0", &t]), 0);
            self.now += 10;
            let t = self.now.to_string();
            self.x
                .instruction(&i("png", &["14", "0", "0", "0", "x"]), echo as u64 * 80);
            self.x.instruction(&i("sync", &[&t]), 0);
        }
        fn typ(&mut self, s: &str, echo: bool) {
            for c in s.chars() {
                self.key(u32::from(c), echo);
            }
        }
        fn wait(&mut self, ms: u64) {
            self.now += ms;
            let t = self.now.to_string();
            self.x.instruction(&i("sync", &[&t]), 0);
        }
        fn typed(self) -> Vec<(u64, String, String, u32)> {
            self.x
                .finish()
                .events
                .into_iter()
                .filter_map(|e| match e.detail {
                    EventDetail::Typed {
                        raw,
                        text,
                        masked_keys,
                        ..
                    } => Some((e.offset_ms, raw, text, masked_keys)),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn batches_split_at_enter_and_at_pauses_with_backspaces_applied() {
        let mut s = Script::new(true);
        s.typ("echo hix", true);
        s.key(0xFF08, true);
        s.key(0xFF0D, true);
        s.wait(6000);
        s.typ("ls", true);
        s.wait(6000);
        s.typ("pwd", true);
        let typed = s.typed();
        assert_eq!(
            typed,
            vec![
                (
                    100,
                    "echo hix<BackSpace><Return>".to_owned(),
                    "echo hi\n".to_owned(),
                    0
                ),
                (7200, "ls".to_owned(), "ls".to_owned(), 0),
                (13420, "pwd".to_owned(), "pwd".to_owned(), 0),
            ]
        );
    }

    #[test]
    fn unechoed_keys_are_masked_and_echoed_ones_kept() {
        let mut s = Script::new(true);
        s.typ("read -s x", true);
        s.key(0xFF0D, true);
        s.typ("hunter2", false);
        s.key(0xFF0D, true);
        s.typ("echo ok", true);
        s.key(0xFF0D, true);
        let typed = s.typed();
        assert_eq!(typed[0].2, "read -s x\n");
        assert_eq!(typed[1].1, "•••<Return>");
        assert_eq!(typed[1].2, "•••\n");
        assert_eq!(typed[1].3, 7);
        assert_eq!(typed[2].2, "echo ok\n");
        let all = format!("{typed:?}");
        assert!(!all.contains("hunter2"), "{all}");
    }

    #[test]
    fn an_echo_after_the_enter_does_not_unmask_the_keys_before_it() {
        let mut s = Script::new(true);
        // The password's keys: no drawing; the Enter's newline draws at once.
        s.typ("pw", false);
        s.key(0xFF0D, true);
        let typed = s.typed();
        assert_eq!(typed[0].1, "•••<Return>");
    }

    #[test]
    fn echo_lagging_behind_the_last_keys_of_a_line_still_counts() {
        let mut s = Script::new(true);
        s.typ("seq 1 5", true);
        s.typ("000", false);
        s.key(0xFF0D, true);
        assert_eq!(s.typed()[0].2, "seq 1 5000\n");
    }

    #[test]
    fn masking_off_keeps_every_key() {
        let mut s = Script::new(false);
        s.typ("hunter2", false);
        s.key(0xFF0D, true);
        assert_eq!(s.typed()[0].2, "hunter2\n");
    }

    #[test]
    fn echo_later_within_the_window_counts() {
        let mut s = Script::new(true);
        s.typ("ab", false);
        s.x.instruction(&i("png", &["14", "0", "0", "0", "x"]), 10);
        s.key(0xFF0D, true);
        assert_eq!(s.typed()[0].2, "ab\n");
    }

    #[test]
    fn titles_clipboard_files_and_activity() {
        let mut x = Extractor::new(ExtractSettings::default());
        x.instruction(&i("sync", &["5000"]), 0);
        x.instruction(&i("name", &["root@erp: ~"]), 0);
        x.instruction(&i("name", &["root@erp: ~"]), 0);
        x.instruction(&i("sync", &["7500"]), 0);
        x.instruction(&i("png", &[]), 300);
        x.instruction(
            &i(
                CLIPBOARD_OPCODE,
                &["to-remote", "text/plain", "5", "0", "héllo", "6000"],
            ),
            0,
        );
        x.instruction(
            &i(
                CLIPBOARD_OPCODE,
                &["from-remote", "image/png", "99", "0", "", "7000"],
            ),
            0,
        );
        x.instruction(
            &i(
                FILE_OPCODE,
                &["from-remote", "a.csv", "text/csv", "12", "ab", "0", "7100"],
            ),
            0,
        );
        x.instruction(&i(CLIPBOARD_OPCODE, &["sideways"]), 0);
        let events = x.finish();
        let offsets: Vec<u64> = events.events.iter().map(|e| e.offset_ms).collect();
        assert_eq!(offsets, [0, 1000, 2000, 2100]);
        assert_eq!(
            events.events[1].detail,
            EventDetail::Clipboard {
                direction: Direction::ToRemote,
                mimetype: "text/plain".into(),
                size_bytes: 5,
                text: Some("héllo".into()),
                truncated: false,
            }
        );
        assert!(matches!(
            &events.events[2].detail,
            EventDetail::Clipboard { text: None, .. }
        ));
        assert!(matches!(
            &events.events[3].detail,
            EventDetail::File {
                complete: false,
                ..
            }
        ));
        assert_eq!(events.activity.len(), 3);
        assert_eq!(events.activity[2].changed_px, 300);
    }

    #[test]
    fn unknown_keysyms_and_combinations_in_the_raw_form() {
        let mut s = Script::new(true);
        for (keysym, pressed) in [("65507", "1"), ("99", "1"), ("99", "0"), ("65507", "0")] {
            s.now += 10;
            let t = s.now.to_string();
            s.x.instruction(&i("key", &[keysym, pressed, &t]), 0);
        }
        s.key(0x1234, true);
        s.key(0x0100_0416, true);
        s.key(0xFF0D, true);
        let typed = s.typed();
        assert_eq!(typed[0].1, "<Ctrl+c><0x1234>Ж<Return>");
        assert_eq!(typed[0].2, "Ж\n");
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        assert_eq!(cut_at_char("héllo", 2), "h");
        assert_eq!(cut_at_char("héllo", 3), "hé");
        assert_eq!(cut_at_char("hi", 3), "hi");
    }
}
