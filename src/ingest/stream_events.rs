//! Clipboard and file-transfer events of a live session: what the per-user streams left out of
//! the recording carried, kept as one compact event instruction each.
//!
//! The recorder leaves per-user streams out of the segment ([`super::streams`]). For the
//! `clipboard` streams and the file transfers (`file` both ways, guacd's `body` downloads and
//! the client's `put` uploads) in both directions, this tracker reads the opening instruction
//! (mimetype, name), streams each `blob`'s base64 value through a decoder as its bytes go by
//! (across chunk boundaries, into a fixed buffer: no allocation per instruction), and when the
//! stream ends writes one instruction into the recording, stamped like the client's `mouse`
//! and `key` with guacd's clock at the stream's opening:
//!
//! - `x-sr-clipboard,DIRECTION,MIMETYPE,SIZE,TRUNCATED,TEXT,TIMESTAMP`: `TEXT` is the UTF-8
//!   text of a `text/*` clipboard up to [`EVENTS_CLIPBOARD_TEXT_BYTES_MAX`] (longer: cut,
//!   `TRUNCATED` 1), empty for other mimetypes or text that is not UTF-8;
//! - `x-sr-file,DIRECTION,NAME,MIMETYPE,SIZE,SHA256,COMPLETE,TIMESTAMP`: the SHA-256 (hex) of
//!   the decoded bytes, never the content; `COMPLETE` 0 when the session ended first.
//!
//! `DIRECTION` is `to-remote` (the client's streams: a paste, an upload) or `from-remote`.
//! guacenc and the renderer skip these unknown opcodes; [`crate::events::extract`] reads them.
//! Memory is bounded: [`TAP_USER_STREAMS_MAX`] tracked streams, each keeping at most the
//! clipboard text cap, and an opening instruction of at most [`TAP_STREAM_OPENER_BYTES_MAX`].

use sha2::{Digest, Sha256};

use super::scan::Captured;
use crate::events::Direction;
use crate::events::extract::{CLIPBOARD_OPCODE, FILE_OPCODE, cut_at_char, direction_name};
use crate::limits::{
    EVENTS_CLIPBOARD_TEXT_BYTES_MAX, TAP_STREAM_OPENER_BYTES_MAX, TAP_USER_STREAMS_MAX,
};

/// Bytes decoded at a time before they are handed on.
const DECODE_BUFFER_BYTES: usize = 768;

/// What a tracked stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clipboard,
    File,
}

/// The opening instructions tracked, with the element of the stream index, the mimetype and
/// the name (none for a clipboard).
fn opener(from_client: bool, opcode: &[u8]) -> Option<(Kind, usize, usize, Option<usize>)> {
    match (opcode, from_client) {
        (b"clipboard", _) => Some((Kind::Clipboard, 1, 2, None)),
        (b"file", _) => Some((Kind::File, 1, 2, Some(3))),
        (b"body", false) | (b"put", true) => Some((Kind::File, 2, 3, Some(4))),
        _ => None,
    }
}

/// A base64 decoder fed any slices of the value; padding or the value's end flushes it.
#[derive(Debug, Clone, Default)]
struct Base64 {
    acc: u32,
    sextets: u8,
}

fn sextet(b: u8) -> Option<u32> {
    Some(u32::from(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

impl Base64 {
    /// Decodes `input` into `out` (`out.1` bytes used), handing full buffers to `sink`.
    fn feed(
        &mut self,
        input: &[u8],
        out: &mut ([u8; DECODE_BUFFER_BYTES], usize),
        sink: &mut impl FnMut(&[u8]),
    ) {
        for &b in input {
            let Some(v) = sextet(b) else {
                if b == b'=' {
                    self.flush(out, sink);
                }
                continue;
            };
            self.acc = (self.acc << 6) | v;
            self.sextets += 1;
            if self.sextets == 4 {
                let bytes = self.acc.to_be_bytes();
                push(out, &bytes[1..4], sink);
                self.acc = 0;
                self.sextets = 0;
            }
        }
    }

    /// Ends a value: a partial group gives its whole bytes.
    fn flush(
        &mut self,
        out: &mut ([u8; DECODE_BUFFER_BYTES], usize),
        sink: &mut impl FnMut(&[u8]),
    ) {
        let n = match self.sextets {
            2 => 1,
            3 => 2,
            _ => 0,
        };
        let bits = u32::from(self.sextets) * 6;
        let bytes = (self.acc << (32 - bits.max(1)) >> 8).to_be_bytes();
        if n > 0 {
            push(out, &bytes[1..1 + n], sink);
        }
        self.acc = 0;
        self.sextets = 0;
    }
}

fn push(out: &mut ([u8; DECODE_BUFFER_BYTES], usize), bytes: &[u8], sink: &mut impl FnMut(&[u8])) {
    if out.1 + bytes.len() > DECODE_BUFFER_BYTES {
        sink(&out.0[..out.1]);
        out.1 = 0;
    }
    out.0[out.1..out.1 + bytes.len()].copy_from_slice(bytes);
    out.1 += bytes.len();
}

/// Where a `blob`'s value is after its stream index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Length digits and the dot.
    Length,
    /// The base64 value, until `;`.
    Value,
    /// After the value.
    Done,
}

/// One tracked stream.
#[derive(Debug)]
struct Slot {
    index: u32,
    kind: Kind,
    mimetype: String,
    name: String,
    opened_ms: u64,
    size_bytes: u64,
    /// Clipboard text kept (text mimetypes), at most the cap.
    text: Vec<u8>,
    truncated: bool,
    sha: Option<Sha256>,
    b64: Base64,
}

impl Slot {
    fn take(&mut self, bytes: &[u8]) {
        self.size_bytes += bytes.len() as u64;
        if let Some(sha) = &mut self.sha {
            sha.update(bytes);
        }
        if self.kind == Kind::Clipboard && self.mimetype.starts_with("text/") {
            let room = EVENTS_CLIPBOARD_TEXT_BYTES_MAX.saturating_sub(self.text.len());
            // One character more than the cap, so a cut never splits the last one unseen.
            let keep = bytes.len().min(room + 3);
            self.text.extend_from_slice(&bytes[..keep]);
            if self.text.len() > EVENTS_CLIPBOARD_TEXT_BYTES_MAX {
                self.truncated = true;
                self.text.truncate(EVENTS_CLIPBOARD_TEXT_BYTES_MAX + 3);
            }
            if keep < bytes.len() {
                self.truncated = true;
            }
        }
    }
}

/// What the instruction being scanned is, for this tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing to keep.
    Idle,
    /// An opening instruction: its bytes after the opcode are kept.
    Opener,
    /// A `blob` of the tracked stream in this slot: its value is decoded.
    Blob { slot: usize, body: Body },
}

/// The clipboard and file streams of one direction of a live session.
#[derive(Debug)]
pub struct StreamEvents {
    direction: Direction,
    from_client: bool,
    slots: Vec<Slot>,
    mode: Mode,
    opener: Vec<u8>,
    decoded: ([u8; DECODE_BUFFER_BYTES], usize),
}

impl StreamEvents {
    /// The tracker of the instructions guacd sends (`from_client` false: copies, downloads)
    /// or the client sends (pastes, uploads).
    pub fn new(from_client: bool) -> Self {
        Self {
            direction: match from_client {
                true => Direction::ToRemote,
                false => Direction::FromRemote,
            },
            from_client,
            slots: Vec::new(),
            mode: Mode::Idle,
            opener: Vec::with_capacity(TAP_STREAM_OPENER_BYTES_MAX),
            decoded: ([0; DECODE_BUFFER_BYTES], 0),
        }
    }

    /// Streams tracked now.
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    /// At an instruction's opcode: whether its following bytes are wanted ([`Self::bytes`]).
    pub fn at_opcode(&mut self, cap: &Captured) -> bool {
        self.mode = Mode::Idle;
        if opener(self.from_client, cap.opcode()).is_some() {
            self.opener.clear();
            self.mode = Mode::Opener;
            return true;
        }
        false
    }

    /// At a captured argument: whether the bytes from here on are wanted (a tracked `blob`'s
    /// value, after its stream index).
    pub fn at_arg(&mut self, cap: &Captured) -> bool {
        if self.slots.is_empty() || cap.count() != 2 || cap.opcode() != b"blob" {
            return false;
        }
        let Some(index) = index_of(cap.element(1)) else {
            return false;
        };
        match self.slots.iter().position(|s| s.index == index) {
            Some(slot) => {
                self.mode = Mode::Blob {
                    slot,
                    body: Body::Length,
                };
                true
            }
            None => false,
        }
    }

    /// Whether bytes are wanted now (the caller feeds the rest of each chunk while it is).
    pub fn wants_bytes(&self) -> bool {
        self.mode != Mode::Idle
    }

    /// Bytes of the current instruction after the point [`Self::at_opcode`] or
    /// [`Self::at_arg`] asked for them (up to and including its `;`).
    pub fn bytes(&mut self, bytes: &[u8]) {
        let Self {
            mode,
            slots,
            opener,
            decoded,
            ..
        } = self;
        match mode {
            Mode::Idle => {}
            Mode::Opener => {
                let room = TAP_STREAM_OPENER_BYTES_MAX - opener.len();
                opener.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Mode::Blob { slot, body } => {
                let s = &mut slots[*slot];
                let mut b64 = std::mem::take(&mut s.b64);
                blob_value(body, &mut b64, decoded, bytes, &mut |b| s.take(b));
                s.b64 = b64;
            }
        }
    }

    /// At the instruction's end: opens a tracked stream, or for its `end` writes the event
    /// instruction to `out`. `now_ms` is guacd's clock now (asked only when a stream opens).
    pub fn at_end(&mut self, cap: &Captured, now_ms: impl FnOnce() -> u64, out: &mut Vec<u8>) {
        let mode = std::mem::replace(&mut self.mode, Mode::Idle);
        match mode {
            Mode::Opener => self.open(cap, now_ms(), out),
            Mode::Blob { .. } => {}
            Mode::Idle => {
                if cap.opcode() == b"end"
                    && let Some(index) = index_of(cap.element(1))
                    && let Some(i) = self.slots.iter().position(|s| s.index == index)
                {
                    let slot = self.slots.swap_remove(i);
                    write_event(&slot, self.direction, true, out);
                }
            }
        }
    }

    /// The session ended: every stream still open is written as cut (`complete` 0).
    pub fn close_all(&mut self, out: &mut Vec<u8>) {
        for slot in self.slots.drain(..) {
            write_event(&slot, self.direction, false, out);
        }
        self.mode = Mode::Idle;
    }

    /// Forgets everything (the stream stopped parsing).
    pub fn reset(&mut self) {
        self.slots.clear();
        self.mode = Mode::Idle;
    }

    fn open(&mut self, cap: &Captured, now_ms: u64, out: &mut Vec<u8>) {
        let Some((kind, index_at, mimetype_at, name_at)) = opener(self.from_client, cap.opcode())
        else {
            return;
        };
        // The kept bytes are the elements after the opcode: element i is args[i - 1].
        let args = parse_elements(&self.opener);
        let arg = |i: usize| args.get(i - 1).map(String::as_str).unwrap_or("");
        let Ok(index) = arg(index_at).parse::<u32>() else {
            return;
        };
        if let Some(i) = self.slots.iter().position(|s| s.index == index) {
            // Reused without an `end`: the old one was cut.
            let old = self.slots.swap_remove(i);
            write_event(&old, self.direction, false, out);
        }
        if self.slots.len() >= TAP_USER_STREAMS_MAX {
            // The stream filter ends the recording at this bound; nothing to track.
            return;
        }
        self.slots.push(Slot {
            index,
            kind,
            mimetype: arg(mimetype_at).to_owned(),
            name: name_at.map(|n| arg(n).to_owned()).unwrap_or_default(),
            opened_ms: now_ms,
            size_bytes: 0,
            text: Vec::new(),
            truncated: false,
            sha: (kind == Kind::File).then(Sha256::new),
            b64: Base64::default(),
        });
    }
}

/// Decodes the part of a `blob`'s value in `bytes` (which start where `body` says).
fn blob_value(
    body: &mut Body,
    b64: &mut Base64,
    decoded: &mut ([u8; DECODE_BUFFER_BYTES], usize),
    mut bytes: &[u8],
    sink: &mut impl FnMut(&[u8]),
) {
    while !bytes.is_empty() {
        match body {
            Body::Length => match bytes.iter().position(|&b| b == b'.') {
                Some(dot) => {
                    *body = Body::Value;
                    bytes = &bytes[dot + 1..];
                }
                None => return,
            },
            Body::Value => {
                let end = bytes.iter().position(|&b| b == b';' || b == b',');
                b64.feed(&bytes[..end.unwrap_or(bytes.len())], decoded, sink);
                if end.is_none() {
                    return;
                }
                b64.flush(decoded, sink);
                sink(&decoded.0[..decoded.1]);
                decoded.1 = 0;
                *body = Body::Done;
            }
            Body::Done => return,
        }
    }
}

fn index_of(element: Option<&[u8]>) -> Option<u32> {
    std::str::from_utf8(element?).ok()?.parse().ok()
}

/// The elements of `LEN.VALUE,LEN.VALUE;` (a cut or malformed tail is dropped).
fn parse_elements(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(text) = std::str::from_utf8(bytes) else {
        return out;
    };
    let mut rest = text;
    while let Some((len, after)) = rest.split_once('.') {
        let Ok(len) = len.parse::<usize>() else {
            break;
        };
        let end = after
            .char_indices()
            .nth(len)
            .map_or(after.len(), |(i, _)| i);
        if after[..end].chars().count() < len {
            break;
        }
        out.push(after[..end].to_owned());
        rest = after[end..].get(1..).unwrap_or("");
    }
    out
}

/// Appends one element (`LEN.VALUE` with its terminator) to `out`.
fn put(out: &mut Vec<u8>, value: &str, last: bool) {
    out.extend_from_slice(value.chars().count().to_string().as_bytes());
    out.push(b'.');
    out.extend_from_slice(value.as_bytes());
    out.push(if last { b';' } else { b',' });
}

/// Writes the event instruction of `slot`.
fn write_event(slot: &Slot, direction: Direction, complete: bool, out: &mut Vec<u8>) {
    let size = slot.size_bytes.to_string();
    let ts = slot.opened_ms.to_string();
    match slot.kind {
        Kind::Clipboard => {
            let (text, cut) = clipboard_text(&slot.text);
            let truncated = slot.truncated || cut || !complete;
            put(out, CLIPBOARD_OPCODE, false);
            put(out, direction_name(direction), false);
            put(out, &slot.mimetype, false);
            put(out, &size, false);
            put(out, if truncated { "1" } else { "0" }, false);
            put(out, text, false);
            put(out, &ts, true);
        }
        Kind::File => {
            let sha = slot
                .sha
                .clone()
                .map(|s| hex::encode(s.finalize()))
                .unwrap_or_default();
            put(out, FILE_OPCODE, false);
            put(out, direction_name(direction), false);
            put(out, &slot.name, false);
            put(out, &slot.mimetype, false);
            put(out, &size, false);
            put(out, &sha, false);
            put(out, if complete { "1" } else { "0" }, false);
            put(out, &ts, true);
        }
    }
}

/// The kept clipboard bytes as text within the cap, and whether they were cut here; empty for
/// bytes that are not UTF-8.
fn clipboard_text(kept: &[u8]) -> (&str, bool) {
    let text = match std::str::from_utf8(kept) {
        Ok(t) => t,
        // Cut inside the last character: keep the whole ones.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&kept[..e.valid_up_to()]).expect("valid up to there")
        }
        Err(_) => return ("", false),
    };
    let cut = cut_at_char(text, EVENTS_CLIPBOARD_TEXT_BYTES_MAX);
    (cut, cut.len() < kept.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventDetail;
    use crate::events::extract::{ExtractSettings, Extractor};
    use crate::guac::Parser;
    use crate::ingest::scan::{Event, Scanner};
    use base64::Engine;

    /// Feeds one chunk the way the recorder does.
    fn feed(scanner: &mut Scanner, tracker: &mut StreamEvents, chunk: &[u8], out: &mut Vec<u8>) {
        let mut from: Option<usize> = None;
        scanner
            .feed(chunk, |ev, pos, cap| match ev {
                Event::Opcode if tracker.at_opcode(cap) => from = Some(pos),
                Event::Arg if tracker.at_arg(cap) => from = Some(pos),
                Event::End => {
                    if tracker.wants_bytes() {
                        tracker.bytes(&chunk[from.take().unwrap_or(0)..pos]);
                    }
                    from = None;
                    tracker.at_end(cap, || 4242, out);
                }
                _ => {}
            })
            .unwrap();
        if tracker.wants_bytes() {
            tracker.bytes(&chunk[from.unwrap_or(0)..]);
        }
    }

    /// Runs `stream` through a scanner and a tracker split every `step` bytes; returns the
    /// event instructions written.
    fn run(from_client: bool, stream: &[u8], step: usize, close: bool) -> Vec<u8> {
        let mut scanner = Scanner::new();
        let mut tracker = StreamEvents::new(from_client);
        let mut out = Vec::new();
        for chunk in stream.chunks(step) {
            feed(&mut scanner, &mut tracker, chunk, &mut out);
        }
        if close {
            tracker.close_all(&mut out);
        }
        out
    }

    /// The events the extractor takes from `instructions`.
    fn events(instructions: &[u8]) -> Vec<EventDetail> {
        let mut parser = Parser::new();
        parser.push(instructions);
        let mut x = Extractor::new(ExtractSettings::default());
        while let Some(i) = parser.next().unwrap() {
            x.instruction(&i, 0);
        }
        x.finish().events.into_iter().map(|e| e.detail).collect()
    }

    fn blob(index: u32, data: &[u8]) -> Vec<u8> {
        let b = base64::engine::general_purpose::STANDARD.encode(data);
        let i = index.to_string();
        format!("4.blob,{}.{i},{}.{b};", i.len(), b.len()).into_bytes()
    }

    #[test]
    fn a_paste_split_at_every_byte_gives_its_text() {
        let mut stream = b"9.clipboard,1.3,10.text/plain;".to_vec();
        stream.extend(blob(3, "héllo wörld".as_bytes()));
        stream.extend(blob(3, b"!"));
        stream.extend_from_slice(b"5.mouse,1.1,1.1,1.0;3.end,1.3;");
        let whole = run(true, &stream, stream.len(), false);
        for step in 1..stream.len() {
            assert_eq!(run(true, &stream, step, false), whole, "step {step}");
        }
        assert_eq!(
            events(&whole),
            [EventDetail::Clipboard {
                direction: Direction::ToRemote,
                mimetype: "text/plain".into(),
                size_bytes: 14,
                text: Some("héllo wörld!".into()),
                truncated: false,
            }]
        );
    }

    #[test]
    fn a_download_is_hashed_never_kept() {
        let content: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let mut stream = b"4.file,1.5,24.application/octet-stream,9.list.xlsx;".to_vec();
        for part in content.chunks(6000) {
            stream.extend(blob(5, part));
        }
        stream.extend_from_slice(b"3.end,1.5;");
        let out = run(false, &stream, 777, false);
        let sha = hex::encode(Sha256::digest(&content));
        assert!(!out.windows(8).any(|w| w == &content[100..108]));
        assert_eq!(
            events(&out),
            [EventDetail::File {
                direction: Direction::FromRemote,
                name: "list.xlsx".into(),
                mimetype: "application/octet-stream".into(),
                size_bytes: 20_000,
                sha256: sha,
                complete: true,
            }]
        );
    }

    #[test]
    fn a_file_stream_with_no_end_is_written_cut_at_close() {
        let mut stream = b"3.put,1.0,1.2,10.text/plain,6./a.txt;".to_vec();
        stream.extend(blob(2, b"abc"));
        assert!(run(true, &stream, 5, false).is_empty());
        let out = run(true, &stream, 5, true);
        assert!(matches!(
            &events(&out)[..],
            [EventDetail::File {
                complete: false,
                size_bytes: 3,
                ..
            }]
        ));
    }

    #[test]
    fn binary_clipboard_is_mimetype_and_size_only() {
        let mut stream = b"9.clipboard,1.0,9.image/png;".to_vec();
        stream.extend(blob(0, &[0x89, b'P', b'N', b'G', 0, 0xFF]));
        stream.extend_from_slice(b"3.end,1.0;");
        let out = run(false, &stream, 3, false);
        assert!(matches!(
            &events(&out)[..],
            [EventDetail::Clipboard {
                text: None,
                size_bytes: 6,
                direction: Direction::FromRemote,
                ..
            }]
        ));
        // Text that is not UTF-8: the same.
        let mut stream = b"9.clipboard,1.0,10.text/plain;".to_vec();
        stream.extend(blob(0, &[0xFF, 0xFE, b'a']));
        stream.extend_from_slice(b"3.end,1.0;");
        let out = run(false, &stream, 3, false);
        assert!(matches!(
            &events(&out)[..],
            [EventDetail::Clipboard { text: None, .. }]
        ));
    }

    #[test]
    fn a_huge_clipboard_is_cut_at_the_cap_with_bounded_memory() {
        // 100 MB of text in guacd-sized blobs, fed as one would arrive.
        let part = "é".repeat(3000); // 6000 bytes
        let one = blob(1, part.as_bytes());
        let mut tracker = StreamEvents::new(false);
        let mut scanner = Scanner::new();
        let mut out = Vec::new();
        let (s, t) = (&mut scanner, &mut tracker);
        feed(s, t, b"9.clipboard,1.1,10.text/plain;", &mut out);
        let total = 100 * 1000 * 1000 / part.len();
        for _ in 0..total {
            feed(s, t, &one, &mut out);
            assert!(t.slots[0].text.len() <= EVENTS_CLIPBOARD_TEXT_BYTES_MAX + 3);
        }
        feed(s, t, b"3.end,1.1;", &mut out);
        let got = events(&out);
        let [
            EventDetail::Clipboard {
                text: Some(text),
                truncated: true,
                size_bytes,
                ..
            },
        ] = &got[..]
        else {
            panic!("{got:?}");
        };
        assert_eq!(*size_bytes, (total * part.len()) as u64);
        assert!(text.len() <= EVENTS_CLIPBOARD_TEXT_BYTES_MAX);
        assert!(text.len() > EVENTS_CLIPBOARD_TEXT_BYTES_MAX - 4);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn many_streams_are_bounded() {
        let mut stream = Vec::new();
        for i in 0..TAP_USER_STREAMS_MAX + 10 {
            let index = i.to_string();
            stream.extend_from_slice(
                format!("4.file,{}.{index},10.text/plain,1.x;", index.len()).as_bytes(),
            );
        }
        let mut tracker = StreamEvents::new(false);
        let mut out = Vec::new();
        feed(&mut Scanner::new(), &mut tracker, &stream, &mut out);
        assert_eq!(tracker.tracked(), TAP_USER_STREAMS_MAX);
    }

    #[test]
    fn base64_across_any_split() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..10 {
            let enc = base64::engine::general_purpose::STANDARD.encode(&data[..len]);
            let mut d = Base64::default();
            let mut buf = ([0u8; DECODE_BUFFER_BYTES], 0);
            let mut got = Vec::new();
            let mut sink = |b: &[u8]| got.extend_from_slice(b);
            for b in enc.as_bytes().chunks(1) {
                d.feed(b, &mut buf, &mut sink);
            }
            d.flush(&mut buf, &mut sink);
            sink(&buf.0[..buf.1]);
            assert_eq!(got, &data[..len], "len {len}");
        }
    }
}
