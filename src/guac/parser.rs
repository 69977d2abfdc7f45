//! The incremental, bounded Guacamole instruction parser.
//!
//! Owns the byte-level grammar `LEN.VALUE,LEN.VALUE,...;` where `LEN` counts Unicode code points
//! (libguac `parser.c`), never bytes. It does not interpret opcodes (see [`super::op`]) and does
//! no I/O: callers [`Parser::push`] whatever chunk they read and pull complete instructions with
//! [`Parser::next`]. Called by the tap (forwarding and recording raw bytes), the spool import and
//! the encoder.
//!
//! Memory stays bounded: one instruction is at most [`ParserLimits::instruction_bytes_max`]
//! bytes ([`GUAC_INSTRUCTION_BYTES_MAX`] for a recorded stream, smaller for the tap's
//! handshake), and consumed bytes are dropped from the front of the buffer as instructions
//! complete.

use crate::limits::{GUAC_ELEMENT_CHARS_MAX, GUAC_ELEMENTS_MAX, GUAC_INSTRUCTION_BYTES_MAX};

use super::{Instruction, ParseError};

/// Where the scanner is inside the current instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the decimal length of the next element; `digits` read so far.
    Length { value: u64, digits: u32 },
    /// Reading an element's value: `chars_left` code points still to come, starting at byte
    /// `start` of the buffer.
    Value { start: usize, chars_left: u64 },
}

/// The bounds a [`Parser`] enforces on each instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Most Unicode characters in one element.
    pub element_chars_max: usize,
    /// Most elements (opcode included) in one instruction.
    pub elements_max: usize,
    /// Most bytes in one instruction, terminator included.
    pub instruction_bytes_max: usize,
}

impl ParserLimits {
    /// The bounds of a recorded Guacamole stream (the `GUAC_*` limits).
    pub const STREAM: Self = Self {
        element_chars_max: GUAC_ELEMENT_CHARS_MAX,
        elements_max: GUAC_ELEMENTS_MAX,
        instruction_bytes_max: GUAC_INSTRUCTION_BYTES_MAX,
    };
}

/// Incremental parser. Feed bytes with [`push`](Parser::push), take instructions with
/// [`next`](Parser::next). After an error the parser stays failed: every later `next` returns
/// the same error (a broken stream cannot be resynchronised reliably).
#[derive(Debug)]
pub struct Parser {
    /// Unconsumed bytes; `buf[0]` is at stream offset `base`.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Index in `buf` where the current (incomplete) instruction starts.
    instr_start: usize,
    /// Index in `buf` of the next byte to scan.
    scan: usize,
    state: State,
    /// Elements of the current instruction decoded so far (opcode first).
    elements: Vec<String>,
    /// Stream offset just past the last complete instruction returned.
    offset: u64,
    failed: Option<ParseError>,
    limits: ParserLimits,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// An empty parser at stream offset 0, with the bounds of a recorded stream.
    pub fn new() -> Self {
        Self::with_limits(ParserLimits::STREAM)
    }

    /// An empty parser at stream offset 0 that enforces `limits`.
    pub fn with_limits(limits: ParserLimits) -> Self {
        Self {
            buf: Vec::new(),
            base: 0,
            instr_start: 0,
            scan: 0,
            state: State::Length {
                value: 0,
                digits: 0,
            },
            elements: Vec::new(),
            offset: 0,
            failed: None,
            limits,
        }
    }

    /// Appends bytes read from the stream. Any chunking works, including splits inside a
    /// multi-byte UTF-8 character.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Byte offset (from the start of the stream) just past the last complete instruction
    /// returned by [`next`](Parser::next).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes pushed but not yet part of a returned instruction.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.instr_start
    }

    /// The next complete instruction, or `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// [`ParseError`] when the bytes are not a valid, bounded Guacamole stream; it carries the
    /// byte offset where the stream broke. The parser stays failed afterwards.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Instruction>, ParseError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.scan_instruction() {
            Ok(found) => Ok(found),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Stream offset of buffer index `i`.
    fn at(&self, i: usize) -> u64 {
        self.base + i as u64
    }

    /// Drops consumed bytes from the front of the buffer when that is worth a move.
    fn compact(&mut self) {
        let consumed = self.instr_start;
        if consumed == 0 {
            return;
        }
        if consumed < 64 * 1024 && consumed * 2 < self.buf.len() {
            return;
        }
        self.buf.drain(..consumed);
        self.base += consumed as u64;
        self.scan -= consumed;
        if let State::Value { start, chars_left } = self.state {
            self.state = State::Value {
                start: start - consumed,
                chars_left,
            };
        }
        self.instr_start = 0;
    }

    fn scan_instruction(&mut self) -> Result<Option<Instruction>, ParseError> {
        loop {
            if self.scan - self.instr_start > self.limits.instruction_bytes_max {
                return Err(ParseError::InstructionTooLong {
                    offset: self.at(self.instr_start),
                    max_bytes: self.limits.instruction_bytes_max,
                });
            }
            match self.state {
                State::Length { value, digits } => {
                    let Some(&byte) = self.buf.get(self.scan) else {
                        return Ok(None);
                    };
                    self.step_length(byte, value, digits)?;
                }
                State::Value { start, chars_left } => {
                    if let Some(done) = self.step_value(start, chars_left)? {
                        return Ok(Some(done));
                    }
                    if matches!(self.state, State::Value { .. }) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Consumes one byte of an element length.
    fn step_length(&mut self, byte: u8, value: u64, digits: u32) -> Result<(), ParseError> {
        let offset = self.at(self.scan);
        match byte {
            b'0'..=b'9' => {
                let value = value * 10 + u64::from(byte - b'0');
                if value > self.limits.element_chars_max as u64 {
                    return Err(ParseError::ElementTooLong {
                        offset,
                        max_chars: self.limits.element_chars_max,
                    });
                }
                self.state = State::Length {
                    value,
                    digits: digits + 1,
                };
                self.scan += 1;
                Ok(())
            }
            b'.' if digits > 0 => {
                if self.elements.len() >= self.limits.elements_max {
                    return Err(ParseError::TooManyElements {
                        offset,
                        max: self.limits.elements_max,
                    });
                }
                self.scan += 1;
                self.state = State::Value {
                    start: self.scan,
                    chars_left: value,
                };
                Ok(())
            }
            _ if offset == 0 => Err(ParseError::NotGuacamole { offset }),
            _ => Err(ParseError::BadLength { offset, byte }),
        }
    }

    /// Scans value bytes; returns a complete instruction when its terminator was reached.
    fn step_value(
        &mut self,
        start: usize,
        mut chars_left: u64,
    ) -> Result<Option<Instruction>, ParseError> {
        let mut i = self.scan;
        let buf = &self.buf;
        loop {
            // Fast path: a run of ASCII (base64 blobs, numbers) is one code point per byte.
            if chars_left > 0 {
                let want = usize::try_from(chars_left).unwrap_or(usize::MAX);
                let end = i.saturating_add(want).min(buf.len());
                let ascii = buf[i..end].iter().take_while(|b| b.is_ascii()).count();
                i += ascii;
                chars_left -= ascii as u64;
            }
            let Some(&byte) = buf.get(i) else {
                self.scan = i;
                self.state = State::Value { start, chars_left };
                return Ok(None);
            };
            if byte & 0xC0 == 0x80 {
                // Continuation byte: belongs to the code point already counted.
                i += 1;
                continue;
            }
            if chars_left > 0 {
                chars_left -= 1;
                i += 1;
                continue;
            }
            // All code points read: `byte` is the terminator.
            let offset = self.at(i);
            let value = std::str::from_utf8(&buf[start..i])
                .map_err(|e| ParseError::BadUtf8 {
                    offset: self.at(start + e.valid_up_to()),
                })?
                .to_owned();
            self.elements.push(value);
            self.scan = i + 1;
            self.state = State::Length {
                value: 0,
                digits: 0,
            };
            return match byte {
                b',' => Ok(None),
                b';' => Ok(Some(self.finish())),
                _ => Err(ParseError::BadTerminator { offset, byte }),
            };
        }
    }

    /// Completes the current instruction, which ends just before `self.scan`.
    fn finish(&mut self) -> Instruction {
        let raw_len = (self.scan - self.instr_start) as u64;
        let start_offset = self.at(self.instr_start);
        self.instr_start = self.scan;
        self.offset = self.at(self.scan);
        let mut elements = std::mem::take(&mut self.elements).into_iter();
        let opcode = elements.next().unwrap_or_default();
        Instruction {
            opcode,
            args: elements.collect(),
            offset: start_offset,
            raw_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Instruction> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            while let Some(i) = p.next().expect("valid") {
                out.push(i);
            }
        }
        out
    }

    #[test]
    fn parses_simple_instructions() {
        let got = parse_all(&[b"4.sync,3.123;4.size,1.0,3.800,3.600;"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].opcode, "sync");
        assert_eq!(got[0].args, vec!["123"]);
        assert_eq!(got[0].raw_len, 13);
        assert_eq!(got[1].offset, 13);
        assert_eq!(got[1].args, vec!["0", "800", "600"]);
    }

    #[test]
    fn lengths_count_code_points_split_anywhere() {
        let stream = "4.name,5.héllo,2.日本,1.😀;".as_bytes();
        for split in 0..stream.len() {
            let got = parse_all(&[&stream[..split], &stream[split..]]);
            assert_eq!(got.len(), 1, "split at {split}");
            assert_eq!(got[0].args, vec!["héllo", "日本", "😀"]);
            assert_eq!(got[0].raw_len, stream.len() as u64);
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytewise)[0].args[1], "日本");
    }

    #[test]
    fn truncated_input_needs_more_bytes() {
        let mut p = Parser::new();
        p.push(b"4.sync,3.12");
        assert!(p.next().unwrap().is_none());
        assert_eq!(p.offset(), 0);
        p.push(b"3;");
        assert_eq!(p.next().unwrap().unwrap().args, vec!["123"]);
        assert_eq!(p.offset(), 13);
    }

    #[test]
    fn garbage_reports_offset() {
        let mut p = Parser::new();
        p.push(b"GET / HTTP/1.1\r\n");
        let e = p.next().unwrap_err();
        assert_eq!(e.offset(), 0);
        assert!(
            e.to_string().contains("not a Guacamole stream at byte 0"),
            "{e}"
        );
        let mut p = Parser::new();
        p.push(b"4.sync,3.123;4.sync,3.1234;");
        assert!(p.next().unwrap().is_some());
        let e = p.next().unwrap_err();
        assert_eq!(e.offset(), 25, "{e}");
        assert_eq!(p.next().unwrap_err(), e, "parser stays failed");
    }

    #[test]
    fn element_length_is_bounded() {
        let mut p = Parser::new();
        p.push(format!("4.blob,{}.", GUAC_ELEMENT_CHARS_MAX + 1).as_bytes());
        let e = p.next().unwrap_err();
        assert!(matches!(e, ParseError::ElementTooLong { .. }), "{e}");
        assert!(e.to_string().contains("element longer than"), "{e}");
    }

    #[test]
    fn element_count_is_bounded() {
        let mut p = Parser::new();
        let mut s = String::from("1.x");
        for _ in 0..GUAC_ELEMENTS_MAX + 1 {
            s.push_str(",1.a");
        }
        p.push(s.as_bytes());
        assert!(matches!(p.next(), Err(ParseError::TooManyElements { .. })));
    }

    #[test]
    fn memory_stays_bounded_over_a_long_stream() {
        let mut p = Parser::new();
        let one = b"4.sync,3.123;";
        for _ in 0..100_000 {
            p.push(one);
            assert!(p.next().unwrap().is_some());
        }
        assert!(
            p.buf.capacity() < 256 * 1024,
            "buffer grew to {}",
            p.buf.capacity()
        );
        assert_eq!(p.offset(), 100_000 * one.len() as u64);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = Parser::new();
        p.push(b"4.sync,1.\xff;");
        assert!(matches!(p.next(), Err(ParseError::BadUtf8 { offset: 9 })));
    }
}
