//! The Guacamole protocol, pure: an incremental, bounded parser ([`Parser`]), raw instructions
//! ([`Instruction`]) and their typed meaning ([`Op`]). No I/O; callers feed bytes and get
//! instructions back.
//!
//! Who calls it: the ingest tap (forwards and records raw bytes, edits `args`/`connect`), the
//! spool import, and the encoder, which hands each instruction to [`crate::render::Display`].

mod op;
mod parser;

pub use op::{DecodeError, Op, StreamKind};
pub use parser::{Parser, ParserLimits};

use crate::error::Classify;

/// One complete instruction as it appeared on the wire: opcode, arguments, and where its raw
/// bytes were in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The opcode (first element), e.g. `"sync"`.
    pub opcode: String,
    /// The arguments after the opcode.
    pub args: Vec<String>,
    /// Stream byte offset of the instruction's first byte.
    pub offset: u64,
    /// Length in bytes of the instruction on the wire, terminating `;` included. The raw bytes
    /// are `stream[offset .. offset + raw_len]`.
    pub raw_len: u64,
}

impl Instruction {
    /// A new instruction (not from a stream: `offset` and `raw_len` describe its encoding as if
    /// it started at offset 0).
    pub fn new(opcode: impl Into<String>, args: Vec<String>) -> Self {
        let mut instr = Self {
            opcode: opcode.into(),
            args,
            offset: 0,
            raw_len: 0,
        };
        instr.raw_len = instr.encode().len() as u64;
        instr
    }

    /// The instruction in wire format (`LEN.VALUE,...;`), with lengths in code points. Use it to
    /// forward an instruction whose `args` were edited.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.opcode.len() + 8 * (self.args.len() + 1));
        for (i, element) in std::iter::once(&self.opcode).chain(&self.args).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&element.chars().count().to_string());
            out.push('.');
            out.push_str(element);
        }
        out.push(';');
        out
    }

    /// The typed meaning of this instruction.
    ///
    /// # Errors
    /// [`DecodeError`] when a known opcode has too few or malformed arguments.
    pub fn op(&self) -> Result<Op<'_>, DecodeError> {
        Op::decode(self)
    }
}

/// Why the byte stream is not a valid Guacamole stream. Each variant carries the stream byte
/// offset where it broke ([`ParseError::offset`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The very first byte cannot start an instruction.
    #[error("not a Guacamole stream at byte {offset}")]
    NotGuacamole {
        /// Offset of the offending byte.
        offset: u64,
    },
    /// A byte that is neither a digit nor the `.` after digits where a length was expected.
    #[error("bad element length byte 0x{byte:02x} at byte {offset}")]
    BadLength {
        /// Offset of the offending byte.
        offset: u64,
        /// The byte found.
        byte: u8,
    },
    /// Something other than `,` or `;` after an element's value.
    #[error("expected ',' or ';' but found 0x{byte:02x} at byte {offset}")]
    BadTerminator {
        /// Offset of the offending byte.
        offset: u64,
        /// The byte found.
        byte: u8,
    },
    /// An element announces more code points than allowed.
    #[error("element longer than {max_chars} characters at byte {offset}")]
    ElementTooLong {
        /// Offset of the length digit that crossed the bound.
        offset: u64,
        /// The bound, [`crate::limits::GUAC_ELEMENT_CHARS_MAX`].
        max_chars: usize,
    },
    /// An instruction has more elements than allowed.
    #[error("instruction with more than {max} elements at byte {offset}")]
    TooManyElements {
        /// Offset where the extra element starts.
        offset: u64,
        /// The bound, [`crate::limits::GUAC_ELEMENTS_MAX`].
        max: usize,
    },
    /// An instruction is longer in bytes than allowed.
    #[error("instruction longer than {max_bytes} bytes at byte {offset}")]
    InstructionTooLong {
        /// Offset where the instruction starts.
        offset: u64,
        /// The bound, [`crate::limits::GUAC_INSTRUCTION_BYTES_MAX`].
        max_bytes: usize,
    },
    /// An element value is not valid UTF-8.
    #[error("invalid UTF-8 at byte {offset}")]
    BadUtf8 {
        /// Offset of the first invalid byte.
        offset: u64,
    },
}

impl ParseError {
    /// The stream byte offset where the stream broke.
    pub fn offset(&self) -> u64 {
        match *self {
            Self::NotGuacamole { offset }
            | Self::BadLength { offset, .. }
            | Self::BadTerminator { offset, .. }
            | Self::ElementTooLong { offset, .. }
            | Self::TooManyElements { offset, .. }
            | Self::InstructionTooLong { offset, .. }
            | Self::BadUtf8 { offset } => offset,
        }
    }
}

impl Classify for ParseError {
    /// A broken stream stays broken.
    fn is_transient(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_through_parser() {
        let instr = Instruction::new("connect", vec!["ü".into(), String::new(), "a,b;c".into()]);
        assert_eq!(instr.encode(), "7.connect,1.ü,0.,5.a,b;c;");
        let mut p = Parser::new();
        p.push(instr.encode().as_bytes());
        let back = p.next().unwrap().unwrap();
        assert_eq!(back, instr);
    }
}
