//! The per-user stream filter: which instructions of a live session are per-user streams
//! (clipboard, file transfers, pipes, filesystem downloads, connection parameters) that guacd
//! never writes to a `recording-path` file, tracked by stream index so that their `blob`s and
//! `end` are left out too.
//!
//! guacd records what it broadcasts to every user of a connection (its `client->socket`, tee'd
//! to the recording file): the drawing stream with its `img`, `audio` and `video` streams.
//! Clipboard contents, `file`/`pipe` streams, `filesystem` objects and their `body` downloads,
//! and the `argv` echo of connection parameters go to one user's socket only (or, for `argv`,
//! mostly so), and are not in guacd's file. The recorder asks this filter, per server
//! instruction, whether it belongs to such a stream, first at the opcode and then at each
//! captured argument ([`StreamFilter::verdict`]), and tells it where each one ends
//! ([`StreamFilter::finish`]), which opens and closes the tracked streams.
//!
//! The client's own streams (a paste, an upload) are tracked the same way from the client's
//! instructions ([`Direction::FromClient`]; their indices are the client's, a separate space).
//! Nothing of them is recorded (the recorder keeps only `mouse` and `key` from the client);
//! [`StreamFilter::finish`] reports each step ([`StreamStep`]), which is where events about
//! clipboard contents and file transfers can be taken from.
//!
//! Pure: no I/O, bounded memory ([`crate::limits::TAP_USER_STREAMS_MAX`] open streams).

use crate::limits::TAP_USER_STREAMS_MAX;

use super::scan::Captured;

/// Which side sent the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// guacd -> client.
    FromServer,
    /// client -> guacd.
    FromClient,
}

/// A per-user stream's kind, from the instruction that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `clipboard`: clipboard contents.
    Clipboard,
    /// `file`: a file transfer.
    File,
    /// `pipe`: a named pipe.
    Pipe,
    /// `body` (guacd) or `put` (client): a filesystem object's contents.
    Body,
    /// `argv`: a connection parameter's value.
    Argv,
}

/// What the filter says about one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Goes into the recording (as far as this filter is concerned).
    Record,
    /// Left out: part of a per-user stream or object.
    Drop,
}

/// What a finished instruction did to the per-user streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStep {
    /// A per-user stream opened.
    Opened {
        /// Its kind.
        kind: StreamKind,
        /// Its index.
        index: u32,
    },
    /// A `blob` of an open per-user stream.
    Data {
        /// The stream's kind.
        kind: StreamKind,
        /// Its index.
        index: u32,
    },
    /// The stream's `end`: its index is free again.
    Ended {
        /// The stream's kind.
        kind: StreamKind,
        /// Its index.
        index: u32,
    },
    /// A filesystem object was declared or removed (`filesystem`, `undefine`).
    Object,
}

/// The filter broke its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// More per-user streams open at once than the named limit (guacd itself allows 64).
    #[error("more than {max} per-user streams open at once")]
    TooManyStreams {
        /// The limit.
        max: usize,
    },
}

/// Which element holds the stream index of a per-user stream's opening instruction.
fn opener(direction: Direction, opcode: &[u8]) -> Option<(StreamKind, usize)> {
    match (opcode, direction) {
        (b"clipboard", _) => Some((StreamKind::Clipboard, 1)),
        (b"file", _) => Some((StreamKind::File, 1)),
        (b"pipe", _) => Some((StreamKind::Pipe, 1)),
        (b"argv", _) => Some((StreamKind::Argv, 1)),
        (b"body", Direction::FromServer) => Some((StreamKind::Body, 2)),
        (b"put", Direction::FromClient) => Some((StreamKind::Body, 2)),
        _ => None,
    }
}

/// Instructions about filesystem objects (guacd exposes them to one user).
fn is_object(opcode: &[u8]) -> bool {
    matches!(opcode, b"filesystem" | b"undefine")
}

/// One direction's open per-user streams.
#[derive(Debug, Clone)]
pub struct StreamFilter {
    direction: Direction,
    open: Vec<(u32, StreamKind)>,
}

impl StreamFilter {
    /// A filter for the instructions `direction` sends, with no stream open.
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            open: Vec::new(),
        }
    }

    /// The per-user streams open now.
    pub fn open_streams(&self) -> usize {
        self.open.len()
    }

    fn kind_of(&self, index: u32) -> Option<StreamKind> {
        self.open
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, kind)| *kind)
    }

    /// The verdict on the instruction whose first elements are `cap`, or `None` while it
    /// depends on an element not complete yet. Call it at the opcode and after each captured
    /// argument until it answers.
    pub fn verdict(&self, cap: &Captured) -> Option<Verdict> {
        let opcode = cap.opcode();
        if opener(self.direction, opcode).is_some() || is_object(opcode) {
            return Some(Verdict::Drop);
        }
        if !matches!(opcode, b"blob" | b"end") {
            return Some(Verdict::Record);
        }
        if cap.count() < 2 {
            return None;
        }
        Some(match stream_index(cap, 1).and_then(|i| self.kind_of(i)) {
            Some(_) => Verdict::Drop,
            None => Verdict::Record,
        })
    }

    /// Updates the open streams after the complete instruction `cap`, and says what it did.
    ///
    /// # Errors
    /// Too many per-user streams open at once.
    pub fn finish(&mut self, cap: &Captured) -> Result<Option<StreamStep>, StreamError> {
        let opcode = cap.opcode();
        if is_object(opcode) {
            return Ok(Some(StreamStep::Object));
        }
        if let Some((kind, element)) = opener(self.direction, opcode) {
            let Some(index) = stream_index(cap, element) else {
                return Ok(None);
            };
            // An index reused without an `end` is a new stream of that index.
            self.open.retain(|(i, _)| *i != index);
            if self.open.len() >= TAP_USER_STREAMS_MAX {
                return Err(StreamError::TooManyStreams {
                    max: TAP_USER_STREAMS_MAX,
                });
            }
            self.open.push((index, kind));
            return Ok(Some(StreamStep::Opened { kind, index }));
        }
        let Some(index) = stream_index(cap, 1) else {
            return Ok(None);
        };
        let Some(kind) = self.kind_of(index) else {
            return Ok(None);
        };
        Ok(match opcode {
            b"blob" => Some(StreamStep::Data { kind, index }),
            b"end" => {
                self.open.retain(|(i, _)| *i != index);
                Some(StreamStep::Ended { kind, index })
            }
            _ => None,
        })
    }
}

/// Element `i` as a stream index.
fn stream_index(cap: &Captured, i: usize) -> Option<u32> {
    std::str::from_utf8(cap.element(i)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::scan::{Event, Scanner};

    /// Runs `stream` through a filter the way the recorder does; returns the opcodes kept
    /// and the steps reported.
    fn run(direction: Direction, stream: &[u8], step: usize) -> (Vec<String>, Vec<StreamStep>) {
        let mut filter = StreamFilter::new(direction);
        let mut scanner = Scanner::new();
        let (mut kept, mut steps) = (Vec::new(), Vec::new());
        let mut verdict = None;
        for chunk in stream.chunks(step) {
            scanner
                .feed(chunk, |ev, _, cap| match ev {
                    Event::Opcode | Event::Arg => {
                        if verdict.is_none() {
                            verdict = filter.verdict(cap);
                        }
                    }
                    Event::End => {
                        let v = verdict.take().or_else(|| filter.verdict(cap));
                        if v == Some(Verdict::Record) {
                            kept.push(String::from_utf8_lossy(cap.opcode()).into_owned());
                        }
                        steps.extend(filter.finish(cap).unwrap());
                    }
                })
                .unwrap();
        }
        (kept, steps)
    }

    #[test]
    fn clipboard_and_file_download_interleaved_with_drawing_are_dropped() {
        let stream = b"4.sync,1.1;\
            9.clipboard,1.1,10.text/plain;\
            3.img,1.0,2.14,1.0,9.image/png,1.0,1.0;\
            4.file,1.3,24.application/octet-stream,5.a.bin;\
            4.blob,1.1,8.aGVsbG8=;\
            4.blob,1.0,4.iVBO;\
            4.blob,1.3,12.AAAAAAAAAAAA;\
            3.end,1.1;\
            3.end,1.0;\
            4.blob,1.3,4.AAAA;\
            4.sync,1.2;\
            3.end,1.3;\
            10.filesystem,1.0,4.SFTP;\
            4.body,1.0,1.5,10.text/plain,2./a;\
            4.blob,1.5,4.AAAA;\
            3.end,1.5;\
            8.undefine,1.0;\
            4.argv,1.7,10.text/plain,9.font-size;\
            4.blob,1.7,4.MTI=;\
            3.end,1.7;\
            4.sync,1.3;";
        let expected = ["sync", "img", "blob", "end", "sync", "sync"];
        for step in [1, 2, 3, 7, stream.len()] {
            let (kept, steps) = run(Direction::FromServer, stream, step);
            assert_eq!(kept, expected, "split every {step} bytes");
            assert_eq!(steps.len(), 15, "{steps:?}");
        }
        let (_, steps) = run(Direction::FromServer, stream, stream.len());
        assert_eq!(
            steps[0],
            StreamStep::Opened {
                kind: StreamKind::Clipboard,
                index: 1
            }
        );
        assert!(steps.contains(&StreamStep::Opened {
            kind: StreamKind::Body,
            index: 5
        }));
        assert!(steps.contains(&StreamStep::Ended {
            kind: StreamKind::File,
            index: 3
        }));
    }

    #[test]
    fn a_stream_index_reused_after_end_is_recorded_again() {
        let stream = b"9.clipboard,1.4,10.text/plain;4.blob,1.4,4.AAAA;3.end,1.4;\
            3.img,1.4,2.14,1.0,9.image/png,1.0,1.0;4.blob,1.4,4.iVBO;3.end,1.4;";
        let (kept, _) = run(Direction::FromServer, stream, 5);
        assert_eq!(kept, ["img", "blob", "end"]);
    }

    #[test]
    fn client_streams_are_tracked_in_their_own_index_space() {
        // A paste and an upload from the client; the server's `ack`s are the recorder's
        // business (never recorded), not this filter's.
        let stream = b"9.clipboard,1.0,10.text/plain;4.blob,1.0,4.AAAA;3.end,1.0;\
            3.put,1.0,1.2,24.application/octet-stream,2./x;4.blob,1.2,4.AAAA;\
            5.mouse,1.1,1.1,1.0;";
        let (kept, steps) = run(Direction::FromClient, stream, 4);
        assert_eq!(kept, ["mouse"]);
        assert_eq!(
            steps.last(),
            Some(&StreamStep::Data {
                kind: StreamKind::Body,
                index: 2
            })
        );
    }

    #[test]
    fn open_streams_are_bounded() {
        let mut filter = StreamFilter::new(Direction::FromServer);
        let mut scanner = Scanner::new();
        let mut result = Ok(None);
        let mut stream = Vec::new();
        for i in 0..=TAP_USER_STREAMS_MAX {
            let index = i.to_string();
            stream.extend_from_slice(
                format!("4.file,{}.{index},10.text/plain,1.x;", index.len()).as_bytes(),
            );
        }
        scanner
            .feed(&stream, |ev, _, cap| {
                if ev == Event::End && result.is_ok() {
                    result = filter.finish(cap);
                }
            })
            .unwrap();
        assert_eq!(
            result,
            Err(StreamError::TooManyStreams {
                max: TAP_USER_STREAMS_MAX
            })
        );
        assert_eq!(filter.open_streams(), TAP_USER_STREAMS_MAX);
    }
}
