//! A streaming instruction-boundary scanner for the live Guacamole stream of a recorded session.
//!
//! The tap forwards bytes as they arrive and scans them on the side: it needs to know where
//! each instruction ends, its opcode (to leave out per-connection instructions such as `nop`),
//! and a few short arguments (the `sync` timestamp, `mouse` coordinates). The scanner keeps no
//! copy of the stream and never allocates: the first [`CAPTURED_ELEMENTS`] elements are captured
//! up to [`CAPTURE_BYTES`] bytes each, and values are skipped in bulk (counting UTF-8 lead
//! bytes, since lengths count characters).
//!
//! It does not build typed instructions; that is `crate::guac`'s job.

use crate::limits::TAP_STREAM_ELEMENT_CHARS_MAX;

/// How many leading elements (opcode included) are captured.
pub const CAPTURED_ELEMENTS: usize = 5;
/// How many bytes of each captured element are kept; longer ones are marked overflowed.
pub const CAPTURE_BYTES: usize = 32;

/// A broken stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A byte where a digit, `.`, `,` or `;` belongs.
    #[error("malformed stream at byte {offset} of the connection")]
    Malformed {
        /// Offset from the start of the scanned stream.
        offset: u64,
    },
    /// An element longer than the named limit.
    #[error("element longer than {max} characters at byte {offset}")]
    ElementTooLong {
        /// The limit.
        max: usize,
        /// Offset from the start of the scanned stream.
        offset: u64,
    },
}

impl crate::error::Classify for ScanError {
    fn is_transient(&self) -> bool {
        false
    }
}

/// What the scanner found, with the position just after it in the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The opcode (element 0) is complete; see [`Captured::opcode`].
    Opcode,
    /// A captured argument (element 1 to [`CAPTURED_ELEMENTS`] - 1) is complete; see
    /// [`Captured::count`] for which. Lets a caller decide about an instruction by its first
    /// arguments (a `blob`'s stream index) before its long last element goes by.
    Arg,
    /// The instruction ended (`;`).
    End,
}

/// The leading elements of the instruction being scanned.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    bytes: [[u8; CAPTURE_BYTES]; CAPTURED_ELEMENTS],
    /// Length kept per element; `None` when the element overflowed the capture.
    lens: [Option<u8>; CAPTURED_ELEMENTS],
    /// Elements completed so far.
    count: usize,
}

impl Captured {
    /// Element `i` if it was complete and short enough to capture.
    pub fn element(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count.min(CAPTURED_ELEMENTS) {
            return None;
        }
        let len = usize::from(self.lens[i]?);
        Some(&self.bytes[i][..len])
    }
    /// The opcode, once complete.
    pub fn opcode(&self) -> &[u8] {
        self.element(0).unwrap_or(b"")
    }
    /// Complete elements, opcode included.
    pub fn count(&self) -> usize {
        self.count
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading length digits.
    Length { digits: bool },
    /// Inside a value; `remaining` characters still to start.
    Value { remaining: usize },
    /// After the value: continuation bytes of its last character, then `,` or `;`.
    Terminator,
}

/// The scanner. Feed it chunks in order.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    len: usize,
    element: usize,
    /// Bytes of the current element captured so far (when element < CAPTURED_ELEMENTS).
    cap_len: usize,
    cap_overflow: bool,
    captured: Captured,
    offset: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        Self {
            state: State::Length { digits: false },
            len: 0,
            element: 0,
            cap_len: 0,
            cap_overflow: false,
            captured: Captured::default(),
            offset: 0,
        }
    }

    /// Whether the bytes fed so far end exactly on an instruction boundary.
    pub fn at_boundary(&self) -> bool {
        self.element == 0 && self.state == State::Length { digits: false }
    }

    /// Bytes scanned since the start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Scans `chunk`, calling `on(event, position_after_event_in_chunk, captured)`.
    ///
    /// # Errors
    /// The stream is not a Guacamole stream; the scanner must not be fed again.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on: impl FnMut(Event, usize, &Captured),
    ) -> Result<(), ScanError> {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Length { digits } => {
                    let b = chunk[i];
                    match b {
                        b'0'..=b'9' => {
                            self.len = self.len * 10 + usize::from(b - b'0');
                            if self.len > TAP_STREAM_ELEMENT_CHARS_MAX {
                                return Err(ScanError::ElementTooLong {
                                    max: TAP_STREAM_ELEMENT_CHARS_MAX,
                                    offset: self.offset + i as u64,
                                });
                            }
                            self.state = State::Length { digits: true };
                        }
                        b'.' if digits => {
                            self.cap_len = 0;
                            self.cap_overflow = false;
                            self.state = if self.len == 0 {
                                State::Terminator
                            } else {
                                State::Value {
                                    remaining: self.len,
                                }
                            };
                        }
                        _ => {
                            return Err(ScanError::Malformed {
                                offset: self.offset + i as u64,
                            });
                        }
                    }
                    i += 1;
                }
                State::Value { remaining } => {
                    // Skip in bulk: `span` bytes hold at most `span` character starts.
                    let span = remaining.min(chunk.len() - i);
                    let bytes = &chunk[i..i + span];
                    let starts = bytes.iter().filter(|&&b| (b as i8) >= -0x40).count();
                    self.capture(bytes);
                    i += span;
                    let left = remaining - starts;
                    self.state = if left == 0 {
                        State::Terminator
                    } else {
                        State::Value { remaining: left }
                    };
                }
                State::Terminator => {
                    let b = chunk[i];
                    i += 1;
                    match b {
                        0x80..=0xBF => self.capture(&[b]),
                        b',' | b';' => {
                            self.finish_element();
                            if self.element == 0 {
                                on(Event::Opcode, i, &self.captured);
                            } else if self.element < CAPTURED_ELEMENTS {
                                on(Event::Arg, i, &self.captured);
                            }
                            if b == b';' {
                                on(Event::End, i, &self.captured);
                                self.element = 0;
                                self.captured.count = 0;
                            } else {
                                self.element += 1;
                            }
                            self.len = 0;
                            self.state = State::Length { digits: false };
                        }
                        _ => {
                            return Err(ScanError::Malformed {
                                offset: self.offset + i as u64 - 1,
                            });
                        }
                    }
                }
            }
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    fn capture(&mut self, bytes: &[u8]) {
        if self.element >= CAPTURED_ELEMENTS || self.cap_overflow {
            return;
        }
        let end = self.cap_len + bytes.len();
        if end > CAPTURE_BYTES {
            self.cap_overflow = true;
            return;
        }
        self.captured.bytes[self.element][self.cap_len..end].copy_from_slice(bytes);
        self.cap_len = end;
    }

    fn finish_element(&mut self) {
        if self.element < CAPTURED_ELEMENTS {
            self.captured.lens[self.element] = if self.cap_overflow {
                None
            } else {
                Some(self.cap_len as u8)
            };
        }
        self.captured.count = self.element + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(stream: &[u8], step: usize) -> Vec<(Vec<u8>, usize, Option<Vec<u8>>)> {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        let mut base = 0;
        for chunk in stream.chunks(step) {
            s.feed(chunk, |ev, pos, cap| {
                if ev == Event::End {
                    out.push((
                        cap.opcode().to_vec(),
                        base + pos,
                        cap.element(1).map(<[u8]>::to_vec),
                    ));
                }
            })
            .unwrap();
            base += chunk.len();
        }
        out
    }

    #[test]
    fn finds_boundaries_at_every_split() {
        let stream = "4.sync,7.3672326,1.0;4.name,4.héé€;3.img,1.1,2.14;0.;".as_bytes();
        let whole = ends(stream, stream.len());
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0].0, b"sync");
        assert_eq!(whole[0].2.as_deref(), Some(&b"3672326"[..]));
        assert_eq!(whole[1].2.as_deref(), Some("héé€".as_bytes()));
        assert_eq!(whole[3].0, b"");
        for step in 1..stream.len() {
            assert_eq!(ends(stream, step), whole, "step {step}");
        }
    }

    #[test]
    fn real_recording_scans_to_its_instruction_count() {
        let Some(dir) = shared_recordings() else {
            return;
        };
        let data = std::fs::read(dir.join("ssh-green-800x600.guac")).unwrap();
        let found = ends(&data, 4093);
        assert_eq!(found.len(), 2107);
        assert_eq!(found.last().unwrap().1, data.len());
    }

    fn shared_recordings() -> Option<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        [
            root.join("../shared/recordings"),
            "/work/shared/recordings".into(),
        ]
        .into_iter()
        .find(|p| p.is_dir())
    }

    #[test]
    fn rejects_garbage() {
        let mut s = Scanner::new();
        assert!(s.feed(b"4.sync,1.0;GET /", |_, _, _| {}).is_err());
        let mut s = Scanner::new();
        assert!(matches!(
            s.feed(b"99999999999.", |_, _, _| {}),
            Err(ScanError::ElementTooLong { .. })
        ));
    }
}
