//! MP4 writing: one H.264 video track with variable frame durations, samples streamed to disk
//! as they come, `moov` before `mdat` (faststart) in the finished file.
//!
//! Built on `shiguredo_mp4`'s sans-I/O [`Mp4FileMuxer`]: it reserves room for `moov` up front
//! (`ftyp free mdat`); at the end the real `moov` is written into that room. The reservation is
//! sized for [`MP4_MOOV_RESERVED_SAMPLES`] samples; when a long clip needs more, the file is
//! rewritten once with the exact room (one sequential copy of the clip, rare and cheap compared
//! with encoding), so the result is always faststart.
//!
//! Owns the bytes of one output file, nothing else: the pipeline decides the path (a temp file
//! it renames) and removes it on failure. A sample's duration is only known when the next one
//! arrives (or at the end of the clip), so the muxer is told about each sample one step late.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use shiguredo_mp4::TrackKind;
use shiguredo_mp4::bitstream::h264::{H264SampleEntryConfig, LengthSize, build_avc1_box};
use shiguredo_mp4::boxes::SampleEntry;
use shiguredo_mp4::mux::{
    Mp4FileMuxer, Mp4FileMuxerOptions, Sample, estimate_maximum_moov_box_size,
};

use crate::limits::{MP4_COMPACT_REWRITE_BYTES_MAX, MP4_FREE_BYTES_MAX, MP4_MOOV_RESERVED_SAMPLES};

/// Failures writing an MP4 file.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The file could not be written (disk full, permissions).
    #[error("writing {path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The MP4 library refused the stream (bad SPS/PPS, overflow): a bug or corrupt encoder
    /// output, never transient.
    #[error("mp4 muxer: {0}")]
    Format(String),
}

impl crate::error::Classify for MuxError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Io { source, .. } => source.is_transient(),
            Self::Format(_) => false,
        }
    }
}

/// One sample already on disk, waiting for its duration.
#[derive(Debug, Clone, Copy)]
struct SampleInfo {
    offset: u64,
    size: usize,
    pts: u64,
    keyframe: bool,
}

/// An MP4 file being written.
pub struct Mp4Writer {
    path: PathBuf,
    file: BufWriter<File>,
    muxer: Mp4FileMuxer,
    timescale: NonZeroU32,
    entry: SampleEntry,
    /// Every sample with its final duration (kept for the faststart rewrite of a long clip, or the compaction of a short one).
    done: Vec<(SampleInfo, u32)>,
    pending: Option<SampleInfo>,
    position: u64,
    entry_given: bool,
    /// Bytes reserved for `moov` in front of `mdat`.
    reserved: usize,
}

impl Mp4Writer {
    /// Creates (truncates) `path` and writes the initial boxes.
    ///
    /// # Errors
    /// [`MuxError::Format`] when the SPS/PPS are unusable; [`MuxError::Io`] on write failure.
    pub fn create(
        path: &Path,
        timescale: NonZeroU32,
        sps: &[Vec<u8>],
        pps: &[Vec<u8>],
    ) -> Result<Self, MuxError> {
        let config = H264SampleEntryConfig {
            length_size: LengthSize::FourBytes,
        };
        let avc1 =
            build_avc1_box(sps, pps, &config).map_err(|e| MuxError::Format(e.to_string()))?;
        let reserved = estimate_maximum_moov_box_size(&[MP4_MOOV_RESERVED_SAMPLES]);
        let muxer = new_muxer(reserved)?;
        let io = |source| MuxError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = BufWriter::new(File::create(path).map_err(io)?);
        file.write_all(muxer.initial_boxes_bytes()).map_err(io)?;
        let position = muxer.initial_boxes_bytes().len() as u64;
        Ok(Self {
            path: path.to_owned(),
            file,
            muxer,
            timescale,
            entry: SampleEntry::Avc1(avc1),
            done: Vec::new(),
            pending: None,
            position,
            entry_given: false,
            reserved,
        })
    }

    /// Appends one access unit (length-prefixed NALs) shown from `pts` (timescale units,
    /// strictly increasing) until the next sample or the end.
    ///
    /// # Errors
    /// [`MuxError::Io`] on write failure; [`MuxError::Format`] if the muxer refuses.
    pub fn push(&mut self, data: &[u8], pts: u64, keyframe: bool) -> Result<(), MuxError> {
        if let Some(prev) = self.pending {
            assert!(pts > prev.pts, "sample timestamps must increase");
        }
        self.close_pending(pts)?;
        self.file.write_all(data).map_err(|source| MuxError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.pending = Some(SampleInfo {
            offset: self.position,
            size: data.len(),
            pts,
            keyframe,
        });
        self.position += data.len() as u64;
        Ok(())
    }

    /// Number of samples written so far.
    pub fn samples(&self) -> usize {
        self.done.len() + usize::from(self.pending.is_some())
    }

    /// Ends the clip at `end_pts` (the last sample lasts until then), writes `moov` in front of
    /// `mdat` and syncs the file. Returns the file size in bytes.
    ///
    /// # Errors
    /// [`MuxError::Io`] on write failure; [`MuxError::Format`] when there is no sample.
    pub fn finish(mut self, end_pts: u64) -> Result<u64, MuxError> {
        let Some(last) = self.pending else {
            return Err(MuxError::Format("no video sample".into()));
        };
        self.close_pending(end_pts.max(last.pts + 1))?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| MuxError::Io { path, source }
        };
        let finalized = self.muxer.finalize().map_err(fmt_err)?;
        let moov_bytes = finalized.moov_box_size();
        // A short clip (an idle session, a few frames) would carry most of the room reserved
        // for a long one's `moov` as a `free` box: 17 kB of a 50 kB still-screen clip. Copying
        // a small clip once is cheaper than storing and uploading that forever.
        let wasted = self.reserved.saturating_sub(moov_bytes);
        let compact = wasted > MP4_FREE_BYTES_MAX && self.position <= MP4_COMPACT_REWRITE_BYTES_MAX;
        if !finalized.is_faststart_enabled() || compact {
            self.file.flush().map_err(io(&self.path))?;
            drop(self.file);
            return rewrite_faststart(
                &self.path,
                &self.done,
                moov_bytes,
                self.timescale,
                &self.entry,
            );
        }
        let mut file = self.file.into_inner().map_err(|e| MuxError::Io {
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        for (offset, bytes) in finalized.offset_and_bytes_pairs() {
            file.seek(SeekFrom::Start(offset)).map_err(io(&self.path))?;
            file.write_all(bytes).map_err(io(&self.path))?;
        }
        file.sync_all().map_err(io(&self.path))?;
        Ok(self.position)
    }

    /// Tells the muxer about the pending sample now that its end time is known.
    fn close_pending(&mut self, next_pts: u64) -> Result<(), MuxError> {
        let Some(info) = self.pending.take() else {
            return Ok(());
        };
        let duration = u32::try_from(next_pts - info.pts)
            .map_err(|_| MuxError::Format("sample duration exceeds u32".into()))?;
        let entry = (!self.entry_given).then(|| self.entry.clone());
        self.entry_given = true;
        self.muxer
            .append_sample(&sample(info, duration, self.timescale, entry))
            .map_err(fmt_err)?;
        self.done.push((info, duration));
        Ok(())
    }
}

fn new_muxer(reserved_moov_bytes: usize) -> Result<Mp4FileMuxer, MuxError> {
    Mp4FileMuxer::with_options(Mp4FileMuxerOptions {
        reserved_moov_box_size: reserved_moov_bytes,
        ..Default::default()
    })
    .map_err(fmt_err)
}

fn sample(
    info: SampleInfo,
    duration: u32,
    timescale: NonZeroU32,
    entry: Option<SampleEntry>,
) -> Sample {
    Sample {
        track_kind: TrackKind::Video,
        sample_entry: entry,
        keyframe: info.keyframe,
        timescale,
        duration,
        composition_time_offset: None,
        data_offset: info.offset,
        data_size: info.size,
    }
}

fn fmt_err(e: shiguredo_mp4::mux::MuxError) -> MuxError {
    MuxError::Format(e.to_string())
}

/// Rewrites `path` with `moov_bytes` of room before `mdat`: copies the sample bytes once into a
/// sibling file, then renames it over `path`.
fn rewrite_faststart(
    path: &Path,
    samples: &[(SampleInfo, u32)],
    moov_bytes: usize,
    timescale: NonZeroU32,
    entry: &SampleEntry,
) -> Result<u64, MuxError> {
    // Room for the exact moov plus slack: offsets grow, which never makes moov larger unless
    // stco turns into co64 (past 4 GiB), which the slack covers. Below 4 GiB offsets stay
    // 32-bit and the moov keeps its size: a few bytes of slack do.
    let last_end = samples.last().map_or(0, |(s, _)| s.offset + s.size as u64);
    let slack = if last_end < u64::from(u32::MAX) / 2 {
        64
    } else {
        moov_bytes / 2 + 1024
    };
    let mut muxer = new_muxer(moov_bytes + slack)?;
    let tmp = path.with_extension("faststart");
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| MuxError::Io { path: p, source }
    };
    let result = (|| {
        let mut src = File::open(path).map_err(io(path))?;
        let mut dst = File::create(&tmp).map_err(io(&tmp))?;
        let head = muxer.initial_boxes_bytes().len() as u64;
        dst.write_all(muxer.initial_boxes_bytes())
            .map_err(io(&tmp))?;
        let first = samples.first().map_or(0, |(s, _)| s.offset);
        let last = samples.last().map_or(0, |(s, _)| s.offset + s.size as u64);
        src.seek(SeekFrom::Start(first)).map_err(io(path))?;
        let copied =
            std::io::copy(&mut (&mut src).take(last - first), &mut dst).map_err(io(&tmp))?;
        if copied != last - first {
            return Err(MuxError::Format("clip shorter than its samples".into()));
        }
        for (i, (info, duration)) in samples.iter().enumerate() {
            let mut moved = *info;
            moved.offset = info.offset - first + head;
            let entry = (i == 0).then(|| entry.clone());
            muxer
                .append_sample(&sample(moved, *duration, timescale, entry))
                .map_err(fmt_err)?;
        }
        let finalized = muxer.finalize().map_err(fmt_err)?;
        if !finalized.is_faststart_enabled() {
            return Err(MuxError::Format(
                "moov does not fit the reserved room".into(),
            ));
        }
        for (offset, bytes) in finalized.offset_and_bytes_pairs() {
            dst.seek(SeekFrom::Start(offset)).map_err(io(&tmp))?;
            dst.write_all(bytes).map_err(io(&tmp))?;
        }
        dst.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        Ok(head + (last - first))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::convert::I420;
    use crate::encode::x264::{Encoder, X264Params};

    /// Top-level box types and sizes of an MP4 file.
    fn top_boxes(bytes: &[u8]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let mut size = u64::from(u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()));
            let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
            if size == 1 {
                size = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
            }
            out.push((kind, size));
            assert!(size >= 8, "box size");
            at += size as usize;
        }
        assert_eq!(at, bytes.len(), "boxes cover the file");
        out
    }

    fn write_clip(path: &Path, frames: usize) -> u64 {
        let params = X264Params {
            width: 32,
            height: 32,
            fps: 10,
            timebase_den: 10_000,
            qp: 23,
            preset: "ultrafast",
            threads: 1,
        };
        let mut enc = Encoder::open(&params).unwrap();
        let h = enc.headers().unwrap();
        let mut mp4 =
            Mp4Writer::create(path, NonZeroU32::new(10_000).unwrap(), &h.sps, &h.pps).unwrap();
        let mut pic = I420::new(32, 32);
        for i in 0..frames {
            pic.planes_mut().0.fill((i % 200) as u8 + 16);
            let pts = i as u64 * 1000 + (i as u64 % 3) * 200;
            let f = enc.encode(&pic, pts as i64, i == 0).unwrap().unwrap();
            mp4.push(f.data, pts, f.keyframe).unwrap();
        }
        mp4.finish(frames as u64 * 1000 + 500).unwrap()
    }

    /// Writes a clip of `frames` samples and checks its size and that moov precedes mdat.
    fn assert_faststart(path: &Path, frames: usize) {
        let size = write_clip(path, frames);
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        let kinds: Vec<String> = top_boxes(&bytes).into_iter().map(|(k, _)| k).collect();
        let moov = kinds.iter().position(|k| k == "moov").expect("moov");
        let mdat = kinds.iter().position(|k| k == "mdat").expect("mdat");
        assert!(moov < mdat, "{kinds:?}");
    }

    #[test]
    fn moov_precedes_mdat() {
        let dir = tempfile::tempdir().unwrap();
        assert_faststart(&dir.path().join("a.mp4"), 20);
    }

    #[test]
    fn long_clip_is_rewritten_faststart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.mp4");
        assert_faststart(&path, MP4_MOOV_RESERVED_SAMPLES * 2);
        assert!(!path.with_extension("faststart").exists(), "no leftover");
    }
}
