//! Typed meaning of an [`Instruction`]: one exhaustive `match` on the opcode turns raw strings
//! into an [`Op`]. Unknown opcodes become [`Op::Unknown`] (skipped by the renderer). Only the
//! drawing and session opcodes the renderer or tap care about are typed; the raw opcode and
//! arguments stay on the [`Instruction`].

use super::Instruction;
use crate::error::Classify;

/// A decoded instruction. Borrowed strings point into the [`Instruction`].
///
/// Field names follow the Guacamole protocol reference; each variant's doc gives the argument
/// layout on the wire.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Op<'a> {
    /// `size,layer,width,height`: resize a layer or buffer (layer 0 = the display).
    Size { layer: i32, width: i32, height: i32 },
    /// `rect,layer,x,y,width,height`: add a rectangle to the layer's path.
    Rect {
        layer: i32,
        x: i32,
        y: i32,
        width: i32,
        height: i32,
    },
    /// `cfill,mask,layer,r,g,b,a`: fill the path with a colour using a channel mask.
    Cfill {
        mask: i32,
        layer: i32,
        r: i32,
        g: i32,
        b: i32,
        a: i32,
    },
    /// `lfill,mask,layer,srclayer`: fill the path with a layer as a pattern.
    Lfill { mask: i32, layer: i32, src: i32 },
    /// `copy,src,sx,sy,w,h,mask,dst,dx,dy`: composite a rectangle of one layer onto another.
    Copy {
        src: i32,
        sx: i32,
        sy: i32,
        width: i32,
        height: i32,
        mask: i32,
        dst: i32,
        dx: i32,
        dy: i32,
    },
    /// `transfer,src,sx,sy,w,h,function,dst,dx,dy`: binary raster operation.
    Transfer {
        src: i32,
        sx: i32,
        sy: i32,
        width: i32,
        height: i32,
        function: i32,
        dst: i32,
        dx: i32,
        dy: i32,
    },
    /// `img,stream,mask,layer,mimetype,x,y`: start an image stream.
    Img {
        stream: i32,
        mask: i32,
        layer: i32,
        mimetype: &'a str,
        x: i32,
        y: i32,
    },
    /// `blob,stream,base64`: a chunk of stream data.
    Blob { stream: i32, data: &'a str },
    /// `end,stream`: the stream is complete.
    End { stream: i32 },
    /// `cursor,hx,hy,src,sx,sy,w,h`: set the pointer image.
    Cursor {
        hotspot_x: i32,
        hotspot_y: i32,
        src: i32,
        sx: i32,
        sy: i32,
        width: i32,
        height: i32,
    },
    /// `mouse,x,y[,buttons,timestamp]`: the pointer position (recordings carry a timestamp).
    Mouse {
        x: i32,
        y: i32,
        buttons: i32,
        timestamp_ms: Option<u64>,
    },
    /// `move,layer,parent,x,y,z`: position a layer within its parent.
    Move {
        layer: i32,
        parent: i32,
        x: i32,
        y: i32,
        z: i32,
    },
    /// `shade,layer,opacity`.
    Shade { layer: i32, opacity: i32 },
    /// `dispose,layer`: free a layer or buffer.
    Dispose { layer: i32 },
    /// `sync,timestamp[,frames]`: end of a frame.
    Sync { timestamp_ms: u64 },
    /// `arc,layer,x,y,radius,start,end,negative`.
    Arc {
        layer: i32,
        x: f64,
        y: f64,
        radius: f64,
        start: f64,
        end: f64,
        negative: bool,
    },
    /// `start,layer,x,y`: begin a new subpath.
    Start { layer: i32, x: f64, y: f64 },
    /// `line,layer,x,y`.
    Line { layer: i32, x: f64, y: f64 },
    /// `curve,layer,cp1x,cp1y,cp2x,cp2y,x,y`: cubic Bézier.
    Curve {
        layer: i32,
        cp1x: f64,
        cp1y: f64,
        cp2x: f64,
        cp2y: f64,
        x: f64,
        y: f64,
    },
    /// `close,layer`: close the current subpath.
    Close { layer: i32 },
    /// `cstroke,mask,layer,cap,join,thickness,r,g,b,a`.
    Cstroke {
        mask: i32,
        layer: i32,
        thickness: f64,
        r: i32,
        g: i32,
        b: i32,
        a: i32,
    },
    /// `lstroke,mask,layer,cap,join,thickness,srclayer`.
    Lstroke {
        mask: i32,
        layer: i32,
        thickness: f64,
        src: i32,
    },
    /// `push,layer`: save the layer's drawing state.
    Push { layer: i32 },
    /// `pop,layer`: restore the layer's drawing state.
    Pop { layer: i32 },
    /// `reset,layer`: clear the layer's drawing state stack, clip and transform.
    Reset { layer: i32 },
    /// `clip,layer`: intersect the clip with the current path.
    Clip { layer: i32 },
    /// `identity,layer`: reset the transform.
    Identity { layer: i32 },
    /// `transform,layer,a,b,c,d,e,f`: multiply the transform.
    Transform { layer: i32, matrix: [f64; 6] },
    /// `distort,layer,a,b,c,d,e,f`: replace the transform.
    Distort { layer: i32, matrix: [f64; 6] },
    /// `key,keysym,pressed[,timestamp]`: recorded key events (ignored by the renderer).
    Key { keysym: i32, pressed: bool },
    /// A stream that carries no picture: `clipboard,stream,mimetype`, `pipe,stream,mimetype,
    /// name`, `file,stream,mimetype,name`, `audio,stream,mimetype`, `video,stream,layer,
    /// mimetype` or `argv,stream,mimetype,name`. guacd opens these in recordings (clipboard
    /// use, file transfer, sound); their `blob`s and `end` follow like an image's.
    OtherStream { stream: i32, kind: StreamKind },
    /// Any other opcode: skipped.
    Unknown,
}

/// What a non-image stream carries (see [`Op::OtherStream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `clipboard`.
    Clipboard,
    /// `pipe`.
    Pipe,
    /// `file`.
    File,
    /// `audio`.
    Audio,
    /// `video`.
    Video,
    /// `argv`.
    Argv,
}

/// A known opcode with missing or malformed arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer arguments than the opcode needs.
    #[error("\"{opcode}\" needs {needed} arguments, got {got}")]
    MissingArguments {
        /// The opcode.
        opcode: &'static str,
        /// Arguments required.
        needed: usize,
        /// Arguments present.
        got: usize,
    },
    /// An argument is not a number in range.
    #[error("\"{opcode}\" argument {index} is not a valid number: {value:?}")]
    BadNumber {
        /// The opcode.
        opcode: &'static str,
        /// Zero-based argument index.
        index: usize,
        /// The argument (truncated to 32 characters).
        value: String,
    },
}

impl Classify for DecodeError {
    fn is_transient(&self) -> bool {
        false
    }
}

/// Argument reader for one opcode.
struct Args<'a> {
    opcode: &'static str,
    args: &'a [String],
}

impl<'a> Args<'a> {
    fn new(opcode: &'static str, args: &'a [String], needed: usize) -> Result<Self, DecodeError> {
        if args.len() < needed {
            return Err(DecodeError::MissingArguments {
                opcode,
                needed,
                got: args.len(),
            });
        }
        Ok(Self { opcode, args })
    }

    fn bad(&self, index: usize) -> DecodeError {
        let value = self.args[index].chars().take(32).collect();
        DecodeError::BadNumber {
            opcode: self.opcode,
            index,
            value,
        }
    }

    fn int(&self, index: usize) -> Result<i32, DecodeError> {
        self.args[index]
            .trim()
            .parse::<i32>()
            .map_err(|_| self.bad(index))
    }

    fn uint64(&self, index: usize) -> Result<u64, DecodeError> {
        self.args[index]
            .trim()
            .parse::<u64>()
            .map_err(|_| self.bad(index))
    }

    fn float(&self, index: usize) -> Result<f64, DecodeError> {
        let v = self.args[index]
            .trim()
            .parse::<f64>()
            .map_err(|_| self.bad(index))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(self.bad(index))
        }
    }

    fn str(&self, index: usize) -> &'a str {
        &self.args[index]
    }

    fn matrix(&self) -> Result<[f64; 6], DecodeError> {
        Ok([
            self.float(1)?,
            self.float(2)?,
            self.float(3)?,
            self.float(4)?,
            self.float(5)?,
            self.float(6)?,
        ])
    }
}

/// A non-image stream: only its index matters (its blobs are skipped).
fn other_stream<'a>(
    opcode: &'static str,
    a: &[String],
    kind: StreamKind,
) -> Result<Op<'a>, DecodeError> {
    Ok(Op::OtherStream {
        stream: Args::new(opcode, a, 1)?.int(0)?,
        kind,
    })
}

impl<'a> Op<'a> {
    /// Decodes `instr`. The one place that knows each opcode's argument layout.
    ///
    /// # Errors
    /// [`DecodeError`] when a known opcode has too few or malformed arguments.
    pub fn decode(instr: &'a Instruction) -> Result<Self, DecodeError> {
        let a = &instr.args[..];
        Ok(match instr.opcode.as_str() {
            "size" => {
                let p = Args::new("size", a, 3)?;
                Op::Size {
                    layer: p.int(0)?,
                    width: p.int(1)?,
                    height: p.int(2)?,
                }
            }
            "rect" => {
                let p = Args::new("rect", a, 5)?;
                Op::Rect {
                    layer: p.int(0)?,
                    x: p.int(1)?,
                    y: p.int(2)?,
                    width: p.int(3)?,
                    height: p.int(4)?,
                }
            }
            "cfill" => {
                let p = Args::new("cfill", a, 6)?;
                Op::Cfill {
                    mask: p.int(0)?,
                    layer: p.int(1)?,
                    r: p.int(2)?,
                    g: p.int(3)?,
                    b: p.int(4)?,
                    a: p.int(5)?,
                }
            }
            "lfill" => {
                let p = Args::new("lfill", a, 3)?;
                Op::Lfill {
                    mask: p.int(0)?,
                    layer: p.int(1)?,
                    src: p.int(2)?,
                }
            }
            "copy" => {
                let p = Args::new("copy", a, 9)?;
                Op::Copy {
                    src: p.int(0)?,
                    sx: p.int(1)?,
                    sy: p.int(2)?,
                    width: p.int(3)?,
                    height: p.int(4)?,
                    mask: p.int(5)?,
                    dst: p.int(6)?,
                    dx: p.int(7)?,
                    dy: p.int(8)?,
                }
            }
            "transfer" => {
                let p = Args::new("transfer", a, 9)?;
                Op::Transfer {
                    src: p.int(0)?,
                    sx: p.int(1)?,
                    sy: p.int(2)?,
                    width: p.int(3)?,
                    height: p.int(4)?,
                    function: p.int(5)?,
                    dst: p.int(6)?,
                    dx: p.int(7)?,
                    dy: p.int(8)?,
                }
            }
            "img" => {
                let p = Args::new("img", a, 6)?;
                Op::Img {
                    stream: p.int(0)?,
                    mask: p.int(1)?,
                    layer: p.int(2)?,
                    mimetype: p.str(3),
                    x: p.int(4)?,
                    y: p.int(5)?,
                }
            }
            "blob" => {
                let p = Args::new("blob", a, 2)?;
                Op::Blob {
                    stream: p.int(0)?,
                    data: p.str(1),
                }
            }
            "end" => Op::End {
                stream: Args::new("end", a, 1)?.int(0)?,
            },
            "cursor" => {
                let p = Args::new("cursor", a, 7)?;
                Op::Cursor {
                    hotspot_x: p.int(0)?,
                    hotspot_y: p.int(1)?,
                    src: p.int(2)?,
                    sx: p.int(3)?,
                    sy: p.int(4)?,
                    width: p.int(5)?,
                    height: p.int(6)?,
                }
            }
            "mouse" => {
                let p = Args::new("mouse", a, 2)?;
                let buttons = if a.len() > 2 { p.int(2)? } else { 0 };
                let timestamp_ms = if a.len() > 3 {
                    Some(p.uint64(3)?)
                } else {
                    None
                };
                Op::Mouse {
                    x: p.int(0)?,
                    y: p.int(1)?,
                    buttons,
                    timestamp_ms,
                }
            }
            "move" => {
                let p = Args::new("move", a, 5)?;
                Op::Move {
                    layer: p.int(0)?,
                    parent: p.int(1)?,
                    x: p.int(2)?,
                    y: p.int(3)?,
                    z: p.int(4)?,
                }
            }
            "shade" => {
                let p = Args::new("shade", a, 2)?;
                Op::Shade {
                    layer: p.int(0)?,
                    opacity: p.int(1)?,
                }
            }
            "dispose" => Op::Dispose {
                layer: Args::new("dispose", a, 1)?.int(0)?,
            },
            "sync" => Op::Sync {
                timestamp_ms: Args::new("sync", a, 1)?.uint64(0)?,
            },
            "arc" => {
                let p = Args::new("arc", a, 7)?;
                Op::Arc {
                    layer: p.int(0)?,
                    x: p.float(1)?,
                    y: p.float(2)?,
                    radius: p.float(3)?,
                    start: p.float(4)?,
                    end: p.float(5)?,
                    negative: p.int(6)? != 0,
                }
            }
            "start" => {
                let p = Args::new("start", a, 3)?;
                Op::Start {
                    layer: p.int(0)?,
                    x: p.float(1)?,
                    y: p.float(2)?,
                }
            }
            "line" => {
                let p = Args::new("line", a, 3)?;
                Op::Line {
                    layer: p.int(0)?,
                    x: p.float(1)?,
                    y: p.float(2)?,
                }
            }
            "curve" => {
                let p = Args::new("curve", a, 7)?;
                Op::Curve {
                    layer: p.int(0)?,
                    cp1x: p.float(1)?,
                    cp1y: p.float(2)?,
                    cp2x: p.float(3)?,
                    cp2y: p.float(4)?,
                    x: p.float(5)?,
                    y: p.float(6)?,
                }
            }
            "close" => Op::Close {
                layer: Args::new("close", a, 1)?.int(0)?,
            },
            "cstroke" => {
                let p = Args::new("cstroke", a, 9)?;
                Op::Cstroke {
                    mask: p.int(0)?,
                    layer: p.int(1)?,
                    thickness: p.float(4)?,
                    r: p.int(5)?,
                    g: p.int(6)?,
                    b: p.int(7)?,
                    a: p.int(8)?,
                }
            }
            "lstroke" => {
                let p = Args::new("lstroke", a, 6)?;
                Op::Lstroke {
                    mask: p.int(0)?,
                    layer: p.int(1)?,
                    thickness: p.float(4)?,
                    src: p.int(5)?,
                }
            }
            "push" => Op::Push {
                layer: Args::new("push", a, 1)?.int(0)?,
            },
            "pop" => Op::Pop {
                layer: Args::new("pop", a, 1)?.int(0)?,
            },
            "reset" => Op::Reset {
                layer: Args::new("reset", a, 1)?.int(0)?,
            },
            "clip" => Op::Clip {
                layer: Args::new("clip", a, 1)?.int(0)?,
            },
            "identity" => Op::Identity {
                layer: Args::new("identity", a, 1)?.int(0)?,
            },
            "transform" => {
                let p = Args::new("transform", a, 7)?;
                Op::Transform {
                    layer: p.int(0)?,
                    matrix: p.matrix()?,
                }
            }
            "distort" => {
                let p = Args::new("distort", a, 7)?;
                Op::Distort {
                    layer: p.int(0)?,
                    matrix: p.matrix()?,
                }
            }
            "key" => {
                let p = Args::new("key", a, 2)?;
                Op::Key {
                    keysym: p.int(0)?,
                    pressed: p.int(1)? != 0,
                }
            }
            "clipboard" => other_stream("clipboard", a, StreamKind::Clipboard)?,
            "pipe" => other_stream("pipe", a, StreamKind::Pipe)?,
            "file" => other_stream("file", a, StreamKind::File)?,
            "audio" => other_stream("audio", a, StreamKind::Audio)?,
            "video" => other_stream("video", a, StreamKind::Video)?,
            "argv" => other_stream("argv", a, StreamKind::Argv)?,
            _ => Op::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instr(opcode: &str, args: &[&str]) -> Instruction {
        Instruction::new(opcode, args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn decodes_typed_arguments() {
        let i = instr("copy", &["-1", "0", "0", "10", "20", "14", "0", "5", "6"]);
        assert_eq!(
            i.op().unwrap(),
            Op::Copy {
                src: -1,
                sx: 0,
                sy: 0,
                width: 10,
                height: 20,
                mask: 14,
                dst: 0,
                dx: 5,
                dy: 6
            }
        );
        let i = instr("mouse", &["10", "20", "1", "3674020"]);
        assert_eq!(
            i.op().unwrap(),
            Op::Mouse {
                x: 10,
                y: 20,
                buttons: 1,
                timestamp_ms: Some(3_674_020)
            }
        );
        let i = instr("img", &["1", "14", "-8", "image/png", "0", "0"]);
        assert!(matches!(
            i.op().unwrap(),
            Op::Img {
                mimetype: "image/png",
                layer: -8,
                ..
            }
        ));
    }

    #[test]
    fn unknown_opcodes_are_skipped_and_bad_arguments_typed() {
        assert_eq!(instr("nop", &[]).op().unwrap(), Op::Unknown);
        assert_eq!(
            instr("clipboard", &["3", "text/plain"]).op().unwrap(),
            Op::OtherStream {
                stream: 3,
                kind: StreamKind::Clipboard
            }
        );
        assert_eq!(
            instr("video", &["4", "1", "video/webm"]).op().unwrap(),
            Op::OtherStream {
                stream: 4,
                kind: StreamKind::Video
            }
        );
        assert!(
            instr("audio", &[]).op().is_err(),
            "a stream needs its index"
        );
        assert!(matches!(
            instr("size", &["0", "1"]).op(),
            Err(DecodeError::MissingArguments {
                opcode: "size",
                needed: 3,
                got: 2
            })
        ));
        assert!(matches!(
            instr("size", &["0", "x", "1"]).op(),
            Err(DecodeError::BadNumber { index: 1, .. })
        ));
        assert!(instr("size", &["0", "99999999999", "1"]).op().is_err());
        assert!(
            instr("arc", &["0", "NaN", "1", "1", "0", "1", "0"])
                .op()
                .is_err()
        );
    }
}
