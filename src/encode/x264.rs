//! A small safe wrapper over `x264-sys`: open an H.264 encoder with the parameters the clips
//! need (a quantiser chosen per frame by `encode::rate`, one thread, no B-frames, IDR frames
//! only when asked), feed it I420 pictures, get length-prefixed NAL units back.
//!
//! Why not the `x264` crate: it has no setter for CRF, VBV, threads or log level, and cannot
//! force an IDR frame (see DEPENDENCIES.md). Owns only the FFI; the timeline decides *when* to
//! encode, the rate control at which quantiser, and the muxer where the bytes go. Called by
//! `encode::pipeline`.
//!
//! It also counts the CPU time spent inside x264 (this thread's CPU clock around each call),
//! so that benchmarks can say how much of an encode is x264 and how much is ours.
//!
//! The encoder is `!Send` (it holds a raw pointer): it lives and dies on the thread that opened
//! it, which is what the daemon wants anyway (one pinned encoder per core).

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::raw::c_int;

use x264_sys as sys;

use super::convert::I420;
use crate::limits::{
    VIDEO_ME_RANGE_PX, VIDEO_QP_MAX, VIDEO_QP_MIN, VIDEO_REFERENCES, VIDEO_REFERENCES_AREA_PX_MAX,
};

/// x264's constant quantiser at open: with ratios of 10 (6 log2 10 = 19.9 QP) its span is
/// 10..=50, i.e. `VIDEO_QP_MIN..=VIDEO_QP_MAX`.
const X264_QP_SPAN_CENTRE: i32 = 30;
const _: () = assert!(X264_QP_SPAN_CENTRE - 20 <= VIDEO_QP_MIN);
const _: () = assert!(X264_QP_SPAN_CENTRE + 20 >= VIDEO_QP_MAX);

/// Encoder parameters, already validated by [`super::VideoSettings`].
#[derive(Debug, Clone, PartialEq)]
pub struct X264Params {
    /// Output width in pixels, even.
    pub width: u32,
    /// Output height in pixels, even.
    pub height: u32,
    /// Nominal frame rate (frames are variable-duration; this is the tick rate).
    pub fps: u32,
    /// Units per second of the timestamps given to [`Encoder::encode`].
    pub timebase_den: u32,
    /// Quantiser of a frame encoded without one of its own (every caller here gives one).
    pub qp: i32,
    /// x264 preset name (`ultrafast` .. `placebo`).
    pub preset: &'static str,
    /// Encoder threads; 1 gives deterministic output.
    pub threads: u32,
}

/// Failures of the x264 library. All permanent: the same parameters and input fail again.
#[derive(Debug, thiserror::Error)]
pub enum X264Error {
    /// `x264_param_default_preset` rejected the preset or tune name.
    #[error("x264 rejected preset={preset}")]
    Preset {
        /// The preset name.
        preset: String,
    },
    /// `x264_param_parse` rejected an option.
    #[error("x264 rejected option {name}={value} (code {code})")]
    Param {
        /// Option name.
        name: String,
        /// Option value.
        value: String,
        /// x264's return code.
        code: i32,
    },
    /// `x264_encoder_open` returned NULL.
    #[error("x264_encoder_open failed for {width}x{height}")]
    Open {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// `x264_encoder_headers` failed.
    #[error("x264_encoder_headers failed")]
    Headers,
    /// `x264_encoder_encode` failed.
    #[error("x264_encoder_encode failed (code {code})")]
    Encode {
        /// x264's return code.
        code: i32,
    },
}

/// One encoded access unit: NAL units each prefixed by a 4-byte big-endian length (the layout
/// MP4 `avc1` samples want).
#[derive(Debug)]
pub struct EncodedFrame<'a> {
    /// Length-prefixed NAL units; borrowed from x264 until the next call.
    pub data: &'a [u8],
    /// Presentation timestamp in timebase units (== decode timestamp: no B-frames).
    pub pts: i64,
    /// True for IDR frames.
    pub keyframe: bool,
    /// Average quantiser x264 used (high when the bitrate cap starved the frame).
    pub qp: i32,
}

/// The sequence headers, without length prefixes, for the `avcC` box.
#[derive(Debug, Clone)]
pub struct Headers {
    /// Sequence parameter sets.
    pub sps: Vec<Vec<u8>>,
    /// Picture parameter sets.
    pub pps: Vec<Vec<u8>>,
}

/// An open x264 encoder. `!Send`: keep it on its thread.
pub struct Encoder {
    raw: *mut sys::x264_t,
    width: u32,
    height: u32,
    /// 16x16 macroblocks per row and per column.
    mb_cols: usize,
    mb_rows: usize,
    /// The motion-search range in force (see [`Encoder::set_me_range`]).
    me_range: u32,
    /// The range the encoder was opened with.
    me_range_base: u32,
    /// CPU time spent inside x264 calls on this thread, ns.
    cpu_ns: u64,
    /// Quantiser of a frame encoded without one of its own.
    default_qp: i32,
}

impl Encoder {
    /// Opens an encoder.
    ///
    /// # Errors
    /// [`X264Error`] when x264 rejects a parameter or cannot open.
    pub fn open(params: &X264Params) -> Result<Self, X264Error> {
        assert!(params.width.is_multiple_of(2), "I420 width must be even");
        assert!(params.height.is_multiple_of(2), "I420 height must be even");
        assert!(params.fps > 0, "fps must be positive");
        let mut p = MaybeUninit::<sys::x264_param_t>::uninit();
        let preset = CString::new(params.preset).map_err(|_| X264Error::Preset {
            preset: params.preset.to_owned(),
        })?;
        // zerolatency: no lookahead and no B-frames, so every encode() call returns the frame
        // just given (the timeline tracks keyframes by what comes out) and the encoder holds no
        // queue of 1080p pictures (peak RSS target). psnr: no psychovisual tricks; on screen
        // content they cost ~2 dB PSNR for ~20 % fewer bytes, and coloured text on black fell
        // below 38 dB without it at CRF 23.
        let tune = c"zerolatency,psnr";
        // SAFETY: `p` points to writable memory of the right size; x264 initialises every field.
        // Both strings are NUL-terminated and outlive the call.
        let rc = unsafe {
            sys::x264_param_default_preset(p.as_mut_ptr(), preset.as_ptr(), tune.as_ptr())
        };
        if rc < 0 {
            return Err(X264Error::Preset {
                preset: params.preset.to_owned(),
            });
        }
        // SAFETY: x264_param_default_preset returned success, so every field is initialised.
        let mut p = unsafe { p.assume_init() };
        p.i_log_level = sys::X264_LOG_NONE;
        p.i_csp = sys::X264_CSP_I420 as c_int;
        p.i_width = params.width as c_int;
        p.i_height = params.height as c_int;
        p.i_fps_num = params.fps;
        p.i_fps_den = 1;
        p.i_timebase_num = 1;
        p.i_timebase_den = params.timebase_den;

        // Screen-content tuning on top of the preset (veryfast by default), chosen by
        // measuring CPU seconds, bytes and the minimum PSNR of tests/it/encode.rs' fidelity
        // instants on the 8 shared recordings. Each choice, against the preset alone:
        // - me=umh with merange VIDEO_ME_RANGE_PX (48): scrolling text moves by whole text
        //   lines (15-20 px each, several per frame), which hex with range 16 never finds:
        //   -12 % to -24 % bytes on text clips at equal PSNR.
        // - VIDEO_REFERENCES (2) reference pictures up to VIDEO_REFERENCES_AREA_PX_MAX (the
        //   memory budget): busy desktops alternate between windows: -7 % to -10 % bytes,
        //   about +6 % CPU.
        // - trellis=1 (final RD quantisation): -4 % to -7 % bytes and +0.5-1 dB on text.
        // Not worth it: subme 0-1 or partitions=none (-20 % CPU but -4 to -5 dB and +15-20 %
        // bytes), subme 3-4 or p8x8 (no gain), cabac=0 (+9 % bytes, -4.6 dB),
        // chroma-qp-offset=-2 (+0.1 dB for +4 % bytes), no-deblock (blocky starved frames).
        //
        // Rate control is ours (`encode::rate`): a constant quantiser that our code sets per
        // frame. x264's own (CRF) needs its low-resolution lookahead analysis for its cost
        // estimate even with zerolatency (0.64 instead of 1.25 ms per near-still 800x600
        // frame), and so does x264's scene-cut detection; without either, x264 builds no
        // low-resolution pictures at all. Keyframes come only when the pipeline asks (every
        // `keyframe_frames` encoded frames, and at the scene cuts it finds in the stream).
        let options: [(&str, String); 15] = [
            ("threads", params.threads.to_string()),
            ("sliced-threads", "0".into()),
            ("bframes", "0".into()),
            // In constant-quantiser mode x264 clamps every frame's quantiser, forced ones
            // included, to the span of its I/P/B quantisers (qp -+ 6 log2 of ipratio/pbratio):
            // with the default ratios a forced QP 35 came out at 26. These ratios open that
            // span to VIDEO_QP_MIN..=VIDEO_QP_MAX; every frame gets its quantiser from us.
            ("qp", X264_QP_SPAN_CENTRE.to_string()),
            ("ipratio", "10".into()),
            ("pbratio", "10".into()),
            ("scenecut", "0".into()),
            ("keyint", "infinite".into()),
            ("min-keyint", "1".into()),
            ("annexb", "0".into()),
            ("repeat-headers", "0".into()),
            ("colorprim", "bt709".into()),
            ("transfer", "bt709".into()),
            ("colormatrix", "bt709".into()),
            // Screens have no fades: weighted prediction analysis is wasted time (~5 % CPU).
            ("weightp", "0".into()),
            // Our rate control keeps one quantiser for all frames while the cap allows it,
            // rather than scaling it by frame complexity as film tuning does: a frame with a
            // few changed macroblocks (a typed key, a blinking cursor) would otherwise re-code
            // the whole still screen a little finer each time, and a whole screen of new text
            // would get the coarsest quantiser, yet text shows blocking as much as any picture.
        ];
        for (name, value) in &options {
            param_parse(&mut p, name, value)?;
        }
        // The screen-content search (see above) raises the preset's own settings, never lowers
        // them (`medium` keeps its 3 references), and leaves the presets chosen for speed over
        // bytes alone.
        if !matches!(params.preset, "ultrafast" | "superfast") {
            p.analyse.i_me_method = p.analyse.i_me_method.max(sys::X264_ME_UMH as c_int);
            p.analyse.i_me_range = p.analyse.i_me_range.max(VIDEO_ME_RANGE_PX as c_int);
            let area = u64::from(params.width) * u64::from(params.height);
            if area <= VIDEO_REFERENCES_AREA_PX_MAX {
                p.i_frame_reference = p.i_frame_reference.max(VIDEO_REFERENCES as c_int);
            }
            p.analyse.i_trellis = p.analyse.i_trellis.max(1);
        }

        // Timestamps as if every frame lasted one tick. With real timestamps (vfr input) x264
        // holds each frame until the next one arrives, to learn its duration; the rate control
        // is ours and works on the real timestamps, so x264 needs none.
        p.b_vfr_input = 0;
        // Limited ("TV") range, as `convert` produces; x264 has no `range` option to parse.
        p.vui.b_fullrange = 0;
        // Per-picture hints of unchanged macroblocks (see `encode_changed`).
        p.analyse.b_mb_info = 1;
        let profile = c"high";
        // SAFETY: `p` is an initialised parameter set; `profile` is NUL-terminated.
        let rc = unsafe { sys::x264_param_apply_profile(&mut p, profile.as_ptr()) };
        if rc < 0 {
            return Err(X264Error::Param {
                name: "profile".into(),
                value: "high".into(),
                code: rc,
            });
        }
        // SAFETY: `p` is a fully initialised parameter set; x264 copies what it needs.
        let raw = unsafe { sys::x264_encoder_open(&mut p) };
        if raw.is_null() {
            return Err(X264Error::Open {
                width: params.width,
                height: params.height,
            });
        }
        let me_range = u32::try_from(p.analyse.i_me_range).unwrap_or(VIDEO_ME_RANGE_PX);
        Ok(Self {
            raw,
            width: params.width,
            height: params.height,
            mb_cols: params.width.div_ceil(16) as usize,
            mb_rows: params.height.div_ceil(16) as usize,
            me_range,
            me_range_base: me_range,
            cpu_ns: 0,
            default_qp: params.qp,
        })
    }

    /// CPU time spent inside x264 so far (encoder open excluded), ns.
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns
    }

    /// The motion-search range in force, px.
    pub fn me_range(&self) -> u32 {
        self.me_range
    }

    /// The motion-search range the encoder was opened with, px.
    pub fn me_range_base(&self) -> u32 {
        self.me_range_base
    }

    /// Sets the motion-search range for the following frames (x264 applies it at the next
    /// encode). The pipeline widens it for a frame in which the stream moved content further
    /// than the range reaches, and narrows it back after: a wide search costs on every
    /// macroblock, a scroll is rare.
    ///
    /// # Errors
    /// [`X264Error::Param`] when x264 refuses the new parameters.
    pub fn set_me_range(&mut self, px: u32) -> Result<(), X264Error> {
        if px == self.me_range {
            return Ok(());
        }
        let mut p = MaybeUninit::<sys::x264_param_t>::uninit();
        let started = thread_cpu_ns();
        // SAFETY: `self.raw` is live; x264 writes the whole parameter set into `p`.
        let mut p = unsafe {
            sys::x264_encoder_parameters(self.raw, p.as_mut_ptr());
            p.assume_init()
        };
        p.analyse.i_me_range = px as c_int;
        // SAFETY: `p` is the encoder's own parameter set with one field changed; x264 copies
        // what it needs.
        let rc = unsafe { sys::x264_encoder_reconfig(self.raw, &mut p) };
        self.cpu_ns += thread_cpu_ns().saturating_sub(started);
        if rc < 0 {
            return Err(X264Error::Param {
                name: "merange".into(),
                value: px.to_string(),
                code: rc,
            });
        }
        self.me_range = px;
        Ok(())
    }

    /// The SPS and PPS, for the MP4 sample description.
    ///
    /// # Errors
    /// [`X264Error::Headers`] when x264 fails.
    pub fn headers(&mut self) -> Result<Headers, X264Error> {
        let mut nals: *mut sys::x264_nal_t = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: `self.raw` is a live encoder; x264 writes a pointer to its own NAL array and
        // its length into the two out-parameters.
        let rc = unsafe { sys::x264_encoder_headers(self.raw, &mut nals, &mut count) };
        if rc < 0 || nals.is_null() {
            return Err(X264Error::Headers);
        }
        // SAFETY: on success `nals` points to `count` NAL descriptors owned by the encoder and
        // valid until the next call on it; we copy out before returning.
        let nals = unsafe { std::slice::from_raw_parts(nals, count.max(0) as usize) };
        let mut headers = Headers {
            sps: Vec::new(),
            pps: Vec::new(),
        };
        for nal in nals {
            // SAFETY: each descriptor's payload is `i_payload` bytes owned by the encoder.
            let payload =
                unsafe { std::slice::from_raw_parts(nal.p_payload, nal.i_payload.max(0) as usize) };
            // annexb=0: a 4-byte length prefix precedes the NAL header.
            let body = payload.get(4..).unwrap_or_default().to_vec();
            match nal.i_type as u32 {
                sys::nal_unit_type_e_NAL_SPS => headers.sps.push(body),
                sys::nal_unit_type_e_NAL_PPS => headers.pps.push(body),
                _ => {}
            }
        }
        if headers.sps.is_empty() || headers.pps.is_empty() {
            return Err(X264Error::Headers);
        }
        Ok(headers)
    }

    /// Encodes one picture at `pts` (timebase units, strictly increasing); `force_idr` makes it
    /// an IDR frame. Returns the access unit (never `None` with zerolatency and no B-frames,
    /// but the type allows for a delayed frame).
    ///
    /// # Errors
    /// [`X264Error::Encode`] when x264 fails.
    pub fn encode(
        &mut self,
        picture: &I420,
        pts: i64,
        force_idr: bool,
    ) -> Result<Option<EncodedFrame<'_>>, X264Error> {
        self.encode_changed(picture, pts, force_idr, None, None)
    }

    /// [`encode`](Encoder::encode), told what changed since the picture of the previous call:
    /// `Some(changed)` has one flag per 16x16 macroblock (row-major) and promises that the
    /// macroblocks whose flag is false are unchanged; `None` means anything may have changed.
    /// x264 codes unchanged macroblocks as skips without analysing them (mb_info
    /// `X264_MBINFO_CONSTANT`), unless its reference there is of lower quality than this frame.
    /// `qp` is the frame's quantiser (`None`: the one the encoder was opened with).
    ///
    /// # Errors
    /// [`X264Error::Encode`] when x264 fails.
    pub fn encode_changed(
        &mut self,
        picture: &I420,
        pts: i64,
        force_idr: bool,
        changed: Option<&[bool]>,
        qp: Option<i32>,
    ) -> Result<Option<EncodedFrame<'_>>, X264Error> {
        assert_eq!(
            picture.width(),
            self.width,
            "picture width differs from encoder"
        );
        assert_eq!(
            picture.height(),
            self.height,
            "picture height differs from encoder"
        );
        let mut pic = MaybeUninit::<sys::x264_picture_t>::uninit();
        // SAFETY: x264_picture_init writes every field of the picture.
        unsafe { sys::x264_picture_init(pic.as_mut_ptr()) };
        // SAFETY: initialised just above.
        let mut pic = unsafe { pic.assume_init() };
        pic.i_pts = pts;
        pic.i_type = if force_idr {
            sys::X264_TYPE_IDR as c_int
        } else {
            sys::X264_TYPE_AUTO as c_int
        };
        pic.i_qpplus1 = qp
            .unwrap_or(self.default_qp)
            .clamp(VIDEO_QP_MIN, VIDEO_QP_MAX)
            + 1;
        pic.img.i_csp = sys::X264_CSP_I420 as c_int;
        pic.img.i_plane = 3;
        let (y, u, v) = picture.planes();
        pic.img.i_stride[0] = self.width as c_int;
        pic.img.i_stride[1] = (self.width / 2) as c_int;
        pic.img.i_stride[2] = (self.width / 2) as c_int;
        // x264 only reads input planes (it copies them into its own frame buffers), so handing
        // it pointers derived from shared slices is sound.
        pic.img.plane[0] = y.as_ptr().cast_mut();
        pic.img.plane[1] = u.as_ptr().cast_mut();
        pic.img.plane[2] = v.as_ptr().cast_mut();
        if let Some(changed) = changed {
            assert_eq!(
                changed.len(),
                self.mb_cols * self.mb_rows,
                "one flag per macroblock"
            );
            pic.prop.mb_info = constant_map(changed);
            if !pic.prop.mb_info.is_null() {
                pic.prop.mb_info_free = Some(libc::free);
            }
        }
        self.call_encode(&mut pic)
    }

    /// Drains a frame still inside the encoder, if any (none with the settings used here).
    ///
    /// # Errors
    /// [`X264Error::Encode`] when x264 fails.
    pub fn flush(&mut self) -> Result<Option<EncodedFrame<'_>>, X264Error> {
        // SAFETY: `self.raw` is a live encoder.
        if unsafe { sys::x264_encoder_delayed_frames(self.raw) } <= 0 {
            return Ok(None);
        }
        let mut out = MaybeUninit::<sys::x264_picture_t>::uninit();
        let mut nals: *mut sys::x264_nal_t = std::ptr::null_mut();
        let mut count: c_int = 0;
        let started = thread_cpu_ns();
        // SAFETY: a NULL input picture asks x264 to flush; the out-parameters are writable.
        let size = unsafe {
            sys::x264_encoder_encode(
                self.raw,
                &mut nals,
                &mut count,
                std::ptr::null_mut(),
                out.as_mut_ptr(),
            )
        };
        self.cpu_ns += thread_cpu_ns().saturating_sub(started);
        // SAFETY: x264 fills `out` whenever it returns without error.
        self.collect(size, nals, count, || unsafe { out.assume_init() })
    }

    fn call_encode(
        &mut self,
        pic: &mut sys::x264_picture_t,
    ) -> Result<Option<EncodedFrame<'_>>, X264Error> {
        let mut out = MaybeUninit::<sys::x264_picture_t>::uninit();
        let mut nals: *mut sys::x264_nal_t = std::ptr::null_mut();
        let mut count: c_int = 0;
        let started = thread_cpu_ns();
        // SAFETY: `self.raw` is live; `pic` describes three planes of the encoder's size that
        // stay borrowed for the call; the out-parameters are writable.
        let size = unsafe {
            sys::x264_encoder_encode(self.raw, &mut nals, &mut count, pic, out.as_mut_ptr())
        };
        self.cpu_ns += thread_cpu_ns().saturating_sub(started);
        // SAFETY: x264 fills `out` whenever it returns without error.
        self.collect(size, nals, count, || unsafe { out.assume_init() })
    }

    fn collect(
        &self,
        size: c_int,
        nals: *mut sys::x264_nal_t,
        count: c_int,
        out: impl FnOnce() -> sys::x264_picture_t,
    ) -> Result<Option<EncodedFrame<'_>>, X264Error> {
        if size < 0 {
            return Err(X264Error::Encode { code: size });
        }
        if size == 0 || count <= 0 || nals.is_null() {
            return Ok(None);
        }
        let out = out();
        // SAFETY: on success x264 guarantees the NAL payloads are contiguous, starting at the
        // first NAL's payload, `size` bytes long, owned by the encoder until its next call
        // (the returned borrow of `self` enforces that).
        let data = unsafe { std::slice::from_raw_parts((*nals).p_payload, size as usize) };
        Ok(Some(EncodedFrame {
            data,
            pts: out.i_pts,
            keyframe: out.b_keyframe != 0,
            qp: out.i_qpplus1 - 1,
        }))
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from x264_encoder_open and is closed exactly once, here.
        unsafe { sys::x264_encoder_close(self.raw) };
    }
}

/// This thread's CPU time (user + system), ns; 0 if the clock is unavailable.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A `malloc`ed mb_info array for x264 (which frees it with `free` once the frame is coded):
/// `X264_MBINFO_CONSTANT` for each unchanged macroblock. NULL when out of memory (no hints).
fn constant_map(changed: &[bool]) -> *mut u8 {
    // SAFETY: plain allocation (at least 1 byte); checked for NULL below.
    let raw = unsafe { libc::malloc(changed.len().max(1)) }.cast::<u8>();
    if raw.is_null() {
        return raw;
    }
    // SAFETY: `raw` points to `changed.len()` writable bytes that nothing else references.
    let map = unsafe { std::slice::from_raw_parts_mut(raw, changed.len()) };
    for (m, &c) in map.iter_mut().zip(changed) {
        *m = if c {
            0
        } else {
            sys::X264_MBINFO_CONSTANT as u8
        };
    }
    raw
}

fn param_parse(p: &mut sys::x264_param_t, name: &str, value: &str) -> Result<(), X264Error> {
    let bad = |code| X264Error::Param {
        name: name.to_owned(),
        value: value.to_owned(),
        code,
    };
    let c_name = CString::new(name).map_err(|_| bad(-1))?;
    let c_value = CString::new(value).map_err(|_| bad(-1))?;
    // SAFETY: `p` is an initialised parameter set; both strings are NUL-terminated and live
    // for the call.
    let rc = unsafe { sys::x264_param_parse(p, c_name.as_ptr(), c_value.as_ptr()) };
    if rc != 0 {
        return Err(bad(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(width: u32, height: u32) -> X264Params {
        X264Params {
            width,
            height,
            fps: 10,
            timebase_den: 10_000,
            qp: 23,
            preset: "veryfast",
            threads: 1,
        }
    }

    #[test]
    fn encodes_forced_idr_and_p_frames_without_delay() {
        let mut enc = Encoder::open(&params(64, 48)).expect("open");
        let headers = enc.headers().expect("headers");
        assert_eq!(headers.sps[0][0] & 0x1f, 7, "SPS NAL type");
        assert_eq!(headers.pps[0][0] & 0x1f, 8, "PPS NAL type");
        let mut pic = I420::new(64, 48);
        let first = enc
            .encode(&pic, 0, false)
            .expect("encode")
            .expect("no delay");
        assert!(first.keyframe, "first frame is IDR");
        let len = u32::from_be_bytes(first.data[..4].try_into().expect("4 bytes")) as usize;
        assert!(len + 4 <= first.data.len(), "length-prefixed NALs");
        pic.planes_mut().0[..64].fill(200);
        let second = enc
            .encode(&pic, 1000, false)
            .expect("encode")
            .expect("no delay");
        assert!(!second.keyframe, "second frame is P");
        assert_eq!(second.pts, 1000);
        let third = enc
            .encode(&pic, 2000, true)
            .expect("encode")
            .expect("no delay");
        assert!(third.keyframe, "forced IDR honoured");
        assert!(enc.flush().expect("flush").is_none(), "nothing delayed");
    }

    /// An almost still screen keeps its quantiser. With x264's default complexity scaling (CRF,
    /// qcomp 0.6) the frames after the first P-frame dropped from QP 25 to 12, 4 per frame,
    /// re-coding the still screen each time; the constant quantiser cannot drift.
    #[test]
    fn small_changes_keep_the_quantiser() {
        let (w, h) = (160_u32, 128_u32);
        let mut enc = Encoder::open(&params(w, h)).expect("open");
        let mut pic = I420::new(w, h);
        // Text-like content: dark strokes on a light background.
        let mut seed = 0x2545_f491_u32;
        for (i, px) in pic.planes_mut().0.iter_mut().enumerate() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let row = i / w as usize;
            *px = if row % 16 < 12 && seed.is_multiple_of(3) {
                30
            } else {
                220
            };
        }
        enc.encode(&pic, 0, false)
            .expect("encode")
            .expect("no delay");
        let mut qps = Vec::new();
        for frame in 1..=12_u8 {
            // One macroblock changes per frame, as when a key is typed.
            let x = usize::from(frame) * 8;
            pic.planes_mut().0[x..x + 4].fill(frame.wrapping_mul(20));
            let out = enc
                .encode(&pic, i64::from(frame) * 1000, false)
                .expect("encode")
                .expect("no delay");
            assert!(!out.keyframe);
            qps.push(out.qp);
        }
        assert!(
            qps.iter().all(|&qp| qp == qps[0]),
            "quantiser drifted: {qps:?}"
        );
        assert_eq!(qps[0], 23, "the encoder's quantiser: {qps:?}");
    }

    /// The rate control's quantiser is the one x264 codes the frame at: the same picture as
    /// an IDR costs less the coarser the quantiser.
    #[test]
    fn per_frame_quantiser_is_honoured() {
        let (w, h) = (64_u32, 48_u32);
        let mut enc = Encoder::open(&params(w, h)).expect("open");
        let mut pic = I420::new(w, h);
        let mut seed = 0x2545_f491_u32;
        for px in pic.planes_mut().0.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *px = (seed % 220) as u8 + 16;
        }
        let mut sizes = Vec::new();
        for (i, qp) in [VIDEO_QP_MIN, 26, 38, VIDEO_QP_MAX].into_iter().enumerate() {
            let out = enc
                .encode_changed(&pic, i as i64 * 1000, true, None, Some(qp))
                .expect("encode")
                .expect("no delay");
            assert!(out.keyframe);
            assert_eq!(out.qp, qp, "x264 coded the frame at the asked quantiser");
            sizes.push(out.data.len());
        }
        assert!(sizes.windows(2).all(|w| w[0] > w[1]), "sizes {sizes:?}");
        assert!(enc.cpu_ns() > 0, "x264's CPU time is counted");
    }

    /// Without a forced IDR x264 never makes one by itself (no keyint, no scene cut), even
    /// when the whole picture changes.
    #[test]
    fn keyframes_only_when_asked() {
        let (w, h) = (64_u32, 48_u32);
        let mut enc = Encoder::open(&params(w, h)).expect("open");
        let mut pic = I420::new(w, h);
        for i in 0..400_i64 {
            let v = if i % 2 == 0 { 16 } else { 235 };
            pic.planes_mut().0.fill(v);
            let out = enc
                .encode_changed(&pic, i * 1000, false, None, Some(30))
                .expect("encode")
                .expect("no delay");
            assert_eq!(out.keyframe, i == 0, "frame {i}");
        }
    }

    #[test]
    fn motion_search_range_can_be_widened_and_narrowed() {
        let mut enc = Encoder::open(&params(64, 48)).expect("open");
        let base = enc.me_range_base();
        assert_eq!(base, VIDEO_ME_RANGE_PX);
        enc.set_me_range(200).expect("widen");
        let pic = I420::new(64, 48);
        enc.encode(&pic, 0, false).expect("encode");
        assert_eq!(settled(&enc).analyse.i_me_range, 200);
        enc.set_me_range(base).expect("narrow");
        enc.encode(&pic, 1000, false).expect("encode");
        assert_eq!(settled(&enc).analyse.i_me_range, base as c_int);
    }

    /// The parameters x264 settled on.
    fn settled(enc: &Encoder) -> sys::x264_param_t {
        let mut p = MaybeUninit::<sys::x264_param_t>::uninit();
        // SAFETY: `enc.raw` is live; x264 writes the whole parameter set.
        unsafe {
            sys::x264_encoder_parameters(enc.raw, p.as_mut_ptr());
            p.assume_init()
        }
    }

    #[test]
    fn screen_content_search_raises_the_preset_but_spares_the_fast_ones() {
        let p = settled(&Encoder::open(&params(64, 48)).expect("open"));
        assert_eq!(p.analyse.i_me_method, sys::X264_ME_UMH as c_int);
        assert_eq!(p.analyse.i_me_range, VIDEO_ME_RANGE_PX as c_int);
        assert_eq!(p.i_frame_reference, VIDEO_REFERENCES as c_int);
        assert_eq!(p.analyse.i_trellis, 1);
        // Constant quantiser, no scene-cut detection: x264 needs no low-resolution lookahead.
        assert_eq!(p.rc.i_rc_method, sys::X264_RC_CQP as c_int);
        assert_eq!(p.i_scenecut_threshold, 0);
        assert_eq!(p.i_keyint_max, sys::X264_KEYINT_MAX_INFINITE as c_int);
        let mut fast = params(64, 48);
        fast.preset = "ultrafast";
        let p = settled(&Encoder::open(&fast).expect("open"));
        assert_eq!(p.analyse.i_me_method, sys::X264_ME_DIA as c_int);
        assert_eq!(p.i_frame_reference, 1);
        let mut medium = params(64, 48);
        medium.preset = "medium";
        let p = settled(&Encoder::open(&medium).expect("open"));
        assert_eq!(p.i_frame_reference, 3, "never lowered");
        // Large pictures keep the preset's single reference (memory budget).
        let p = settled(&Encoder::open(&params(1920, 1080)).expect("open"));
        assert_eq!(p.i_frame_reference, 1);
        assert_eq!(p.analyse.i_me_method, sys::X264_ME_UMH as c_int);
    }

    #[test]
    fn bad_preset_is_a_typed_error() {
        let mut p = params(64, 48);
        p.preset = "warp-speed";
        assert!(matches!(Encoder::open(&p), Err(X264Error::Preset { .. })));
    }
}
