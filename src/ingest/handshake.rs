//! The Guacamole handshake as the tap sees it: whole handshake instructions (`select`, `args`,
//! `size`, ..., `connect`, `ready`) parsed by [`crate::guac::Parser`] under the handshake's
//! tighter limits, the rewrite of guacd's
//! `args` (our recording parameters appended) and of the client's `connect` (their values
//! stripped), and the encoding of the `error` instruction sent when a session is refused.
//!
//! It does not do I/O (the tap reads and writes) and does not parse the live stream (that is
//! [`super::scan`], which never allocates per instruction).
//!
//! Element lengths count Unicode characters, not bytes (libguac `parser.c`).

use crate::guac::{ParseError, Parser, ParserLimits};
use crate::limits::{
    TAP_HANDSHAKE_BYTES_MAX, TAP_HANDSHAKE_ELEMENT_CHARS_MAX, TAP_HANDSHAKE_ELEMENTS_MAX,
    TAP_META_VALUE_CHARS_MAX,
};

/// The connection parameters the tap adds to guacd's `args`, in the order they are appended.
pub const RECORDING_PARAMS: [&str; 5] = [
    "recording-session-id",
    "recording-user-id",
    "recording-username",
    "recording-image-friendly-name",
    "recording-required",
];

/// Guacamole status codes the tap sends (guacamole-protocol `guac_protocol_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum StatusCode {
    /// 0x0200: the server failed in an unexpected way (recording cannot be set up: invalid
    /// settings, the queue cannot be written, the segment directory is not writable).
    ServerError = 0x0200,
    /// 0x0201: the server is busy or short of a resource (free disk below the floor, too many
    /// connections, shutting down).
    ServerBusy = 0x0201,
    /// 0x0203: guacd (or the remote desktop behind it) failed during the session.
    UpstreamError = 0x0203,
    /// 0x0208: guacd could not be reached.
    UpstreamUnavailable = 0x0208,
    /// 0x0300: the client's handshake was malformed or too large.
    ClientBadRequest = 0x0300,
    /// 0x0308: the client took too long to finish the handshake.
    ClientTimeout = 0x0308,
}

impl StatusCode {
    /// The numeric code as sent on the wire (decimal).
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

/// A malformed or oversized handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A byte where a length digit, `.`, `,` or `;` belongs.
    #[error("malformed instruction at byte {offset}")]
    Malformed {
        /// Offset in the handshake buffer.
        offset: usize,
    },
    /// An element longer than the named limit.
    #[error("element longer than {max} characters")]
    ElementTooLong {
        /// The limit.
        max: usize,
    },
    /// More elements than the named limit.
    #[error("instruction with more than {max} elements")]
    TooManyElements {
        /// The limit.
        max: usize,
    },
    /// An element that is not UTF-8.
    #[error("element is not valid UTF-8")]
    NotUtf8,
    /// The handshake was larger than the named limit.
    #[error("handshake larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// An instruction other than the one the handshake needs at this point.
    #[error("unexpected `{got}` during the handshake (expected `{expected}`)")]
    Unexpected {
        /// The opcode received.
        got: String,
        /// The opcode expected.
        expected: &'static str,
    },
}

impl crate::error::Classify for HandshakeError {
    fn is_transient(&self) -> bool {
        false
    }
}

/// One complete handshake instruction: opcode first, then the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Opcode followed by arguments.
    pub elements: Vec<String>,
}

impl Instruction {
    /// The opcode.
    pub fn opcode(&self) -> &str {
        self.elements.first().map(String::as_str).unwrap_or("")
    }
    /// The arguments.
    pub fn args(&self) -> &[String] {
        self.elements.get(1..).unwrap_or(&[])
    }
}

/// The parser's bounds during the handshake: shorter elements, fewer of them, and no
/// instruction larger than the whole handshake may be.
pub const HANDSHAKE_LIMITS: ParserLimits = ParserLimits {
    element_chars_max: TAP_HANDSHAKE_ELEMENT_CHARS_MAX,
    elements_max: TAP_HANDSHAKE_ELEMENTS_MAX,
    instruction_bytes_max: TAP_HANDSHAKE_BYTES_MAX,
};

/// Parses the first complete instruction in `buf` with [`guac::Parser`](Parser) under
/// [`HANDSHAKE_LIMITS`].
///
/// Returns `Ok(None)` when `buf` holds only a prefix of one, and the instruction with the
/// number of bytes it took otherwise.
///
/// # Errors
/// Malformed input or a limit exceeded, detected as early as the bytes allow (an endless
/// element is refused as soon as its declared length is read).
pub fn parse_instruction(buf: &[u8]) -> Result<Option<(Instruction, usize)>, HandshakeError> {
    let mut parser = Parser::with_limits(HANDSHAKE_LIMITS);
    parser.push(buf);
    let found = parser.next().map_err(|e| match e {
        ParseError::NotGuacamole { offset }
        | ParseError::BadLength { offset, .. }
        | ParseError::BadTerminator { offset, .. } => HandshakeError::Malformed {
            offset: offset as usize,
        },
        ParseError::ElementTooLong { max_chars, .. } => {
            HandshakeError::ElementTooLong { max: max_chars }
        }
        ParseError::TooManyElements { max, .. } => HandshakeError::TooManyElements { max },
        ParseError::InstructionTooLong { max_bytes, .. } => {
            HandshakeError::TooLarge { max: max_bytes }
        }
        ParseError::BadUtf8 { .. } => HandshakeError::NotUtf8,
    })?;
    Ok(found.map(|i| {
        let mut elements = Vec::with_capacity(1 + i.args.len());
        elements.push(i.opcode);
        elements.extend(i.args);
        (Instruction { elements }, i.raw_len as usize)
    }))
}

/// Encodes an instruction: `LEN.VALUE,LEN.VALUE;`, lengths in characters.
pub fn encode<S: AsRef<str>>(elements: &[S]) -> Vec<u8> {
    assert!(!elements.is_empty(), "an instruction has an opcode");
    let mut out = Vec::new();
    for (i, e) in elements.iter().enumerate() {
        let e = e.as_ref();
        out.extend_from_slice(e.chars().count().to_string().as_bytes());
        out.push(b'.');
        out.extend_from_slice(e.as_bytes());
        out.push(if i + 1 == elements.len() { b';' } else { b',' });
    }
    out
}

/// The `error` instruction: message and status code.
pub fn error_instruction(message: &str, code: StatusCode) -> Vec<u8> {
    encode(&["error", message, &code.as_u16().to_string()])
}

/// guacd's `args` with our parameter names appended. The version element (`VERSION_1_x_y`)
/// stays at the head: we only ever append.
pub fn extend_args(guacd_args: &[String]) -> Vec<u8> {
    let mut elements: Vec<&str> = vec!["args"];
    elements.extend(guacd_args.iter().map(String::as_str));
    elements.extend(RECORDING_PARAMS);
    encode(&elements)
}

/// The recording parameters the client sent, in [`RECORDING_PARAMS`] order (`None` when the
/// client sent fewer values than names).
pub type RecordingValues = [Option<String>; 5];

/// Splits the client's `connect` values (answering `args_sent` = guacd's args + ours) into the
/// `connect` guacd must see (answering `guacd_args`, guacd's current list) and our values.
///
/// Values are positional. When `guacd_args` equals the list the client answered (the usual
/// case), this just drops our trailing values; otherwise (guacd's list changed since it was
/// cached) values are matched by name and parameters the client was not asked for are empty.
/// A leading `VERSION_` element is matched to the version element.
pub fn split_connect(
    client_values: &[String],
    args_answered: &[String],
    guacd_args: &[String],
) -> (Vec<u8>, RecordingValues) {
    let value_of = |name: &str| -> Option<&String> {
        let i = args_answered.iter().position(|a| a == name)?;
        client_values.get(i)
    };
    let mut ours: RecordingValues = Default::default();
    for (slot, name) in ours.iter_mut().zip(RECORDING_PARAMS) {
        // Our names sit after guacd's: look them up past guacd's part so a guacd parameter
        // with the same name can never be taken for ours.
        let i = args_answered.len()
            + RECORDING_PARAMS
                .iter()
                .position(|n| *n == name)
                .unwrap_or(0);
        *slot = client_values.get(i).cloned();
    }
    let mut elements: Vec<&str> = vec!["connect"];
    if guacd_args == args_answered {
        let n = guacd_args.len().min(client_values.len());
        elements.extend(client_values[..n].iter().map(String::as_str));
    } else {
        for (i, name) in guacd_args.iter().enumerate() {
            let v = if i == 0 && name.starts_with("VERSION_") {
                client_values
                    .first()
                    .filter(|v| v.starts_with("VERSION_"))
                    .map(String::as_str)
                    .unwrap_or(name.as_str())
            } else {
                value_of(name).map(String::as_str).unwrap_or("")
            };
            elements.push(v);
        }
    }
    (encode(&elements), ours)
}

/// The remote host a client's `connect` names, from the values of guacd's `hostname` and
/// `port` parameters (`args_answered` are the names the values answer, in order):
/// `host:port`, `[v6]:port` for an IPv6 address, `host` without a port, empty without a host.
pub fn connect_target(client_values: &[String], args_answered: &[String]) -> String {
    let value_of = |name: &str| -> &str {
        args_answered
            .iter()
            .position(|a| a == name)
            .and_then(|i| client_values.get(i))
            .map_or("", |v| v.trim())
    };
    let (host, port) = (value_of("hostname"), value_of("port"));
    let target = match (host, port) {
        ("", _) => String::new(),
        (h, "") => h.to_string(),
        (h, p) if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{p}"),
        (h, p) => format!("{h}:{p}"),
    };
    target.chars().take(TAP_META_VALUE_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_and_counts_characters_not_bytes() {
        let buf = "4.name,3.héé;5.ready".as_bytes();
        let (ins, used) = parse_instruction(buf).unwrap().unwrap();
        assert_eq!(ins.elements, strings(&["name", "héé"]));
        assert_eq!(used, "4.name,3.héé;".len());
        assert_eq!(parse_instruction(&buf[used..]).unwrap(), None);
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let buf = encode(&["connect", "VERSION_1_5_0", "𝄞x", ""]);
        for cut in 0..buf.len() {
            assert_eq!(parse_instruction(&buf[..cut]).unwrap(), None, "cut {cut}");
        }
        let (ins, used) = parse_instruction(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(ins.args(), &strings(&["VERSION_1_5_0", "𝄞x", ""])[..]);
    }

    #[test]
    fn refuses_garbage_and_endless_elements_early() {
        assert!(matches!(
            parse_instruction(b"GET / HTTP/1.1\r\n"),
            Err(HandshakeError::Malformed { offset: 0 })
        ));
        assert!(matches!(
            parse_instruction(b"99999999999"),
            Err(HandshakeError::ElementTooLong { .. })
        ));
        assert!(matches!(
            parse_instruction(b"1.ab"),
            Err(HandshakeError::Malformed { .. })
        ));
    }

    #[test]
    fn args_keep_the_version_head_and_connect_is_stripped() {
        let guacd = strings(&["VERSION_1_5_0", "hostname", "port"]);
        let sent = extend_args(&guacd);
        let (ins, _) = parse_instruction(&sent).unwrap().unwrap();
        assert_eq!(ins.args()[0], "VERSION_1_5_0");
        assert_eq!(ins.args()[3..], RECORDING_PARAMS.map(String::from));
        let values = strings(&[
            "VERSION_1_5_0",
            "h",
            "5900",
            "s1",
            "u1",
            "alice",
            "img",
            "true",
        ]);
        let (connect, ours) = split_connect(&values, &guacd, &guacd);
        assert_eq!(connect, encode(&["connect", "VERSION_1_5_0", "h", "5900"]));
        assert_eq!(ours[0].as_deref(), Some("s1"));
        assert_eq!(ours[4].as_deref(), Some("true"));
    }

    #[test]
    fn connect_is_remapped_by_name_when_guacd_changed_its_args() {
        let answered = strings(&["VERSION_1_5_0", "hostname", "port"]);
        let now = strings(&["VERSION_1_6_0", "port", "new", "hostname"]);
        let values = strings(&["VERSION_1_5_0", "h", "5900", "s1"]);
        let (connect, ours) = split_connect(&values, &answered, &now);
        assert_eq!(
            connect,
            encode(&["connect", "VERSION_1_5_0", "5900", "", "h"])
        );
        assert_eq!(ours[0].as_deref(), Some("s1"));
        assert_eq!(ours[1], None);
    }

    #[test]
    fn the_target_is_host_and_port_of_the_connect() {
        let names = strings(&["VERSION_1_5_0", "hostname", "port", "password"]);
        let target = |v: &[&str]| connect_target(&strings(v), &names);
        assert_eq!(
            target(&["VERSION_1_5_0", "erp.example", "3389", "x"]),
            "erp.example:3389"
        );
        assert_eq!(target(&["VERSION_1_5_0", " erp ", "", "x"]), "erp");
        assert_eq!(target(&["VERSION_1_5_0", "", "22", "x"]), "");
        assert_eq!(target(&["VERSION_1_5_0", "fd00::7", "22"]), "[fd00::7]:22");
        assert_eq!(target(&["VERSION_1_5_0"]), "");
        let no_host = strings(&["VERSION_1_5_0", "port"]);
        assert_eq!(connect_target(&strings(&["V", "22"]), &no_host), "");
    }

    #[test]
    fn error_instruction_carries_a_decimal_code() {
        let e = error_instruction("disk full", StatusCode::ServerBusy);
        assert_eq!(e, b"5.error,9.disk full,3.513;");
    }
}
