//! A zip archive written on the fly as a [`Read`]: stored entries (MP4 does not compress), each
//! followed by a data descriptor so the CRC is computed while streaming, ZIP64 records when an
//! entry or an offset passes 4 GiB. No temporary copy, no seeking: the "download all clips of a
//! session" response body.
//!
//! Written by hand rather than with the `zip` crate because that crate's writer wants `Seek`
//! (or buffers) and we answer through a non-seekable chunked HTTP body.

use std::io::{self, Read};

/// One file of the archive; the bytes are opened only when the archive reaches it.
pub struct ZipEntry {
    /// The name inside the archive (UTF-8, no leading `/`).
    pub name: String,
    /// The expected size; it decides whether the entry needs ZIP64 records.
    pub size: u64,
    /// Modification time, ms since the epoch.
    pub mtime_ms: u64,
    /// Opens the bytes.
    pub open: Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>,
}

struct Written {
    name: String,
    zip64: bool,
    crc: u32,
    size: u64,
    offset: u64,
    dos_time: u16,
    dos_date: u16,
}

enum State {
    NextEntry,
    Data {
        reader: Box<dyn Read + Send>,
        crc: u32,
        size: u64,
    },
    Done,
}

/// The archive as a byte stream.
pub struct ZipStream {
    entries: std::vec::IntoIter<ZipEntry>,
    current: Option<(String, bool, u64, u16, u16, u64)>,
    written: Vec<Written>,
    state: State,
    out: Vec<u8>,
    out_pos: usize,
    offset: u64,
}

const U32_MAX: u64 = 0xFFFF_FFFF;
const FLAG_DESCRIPTOR: u16 = 0x0008;
const FLAG_UTF8: u16 = 0x0800;

impl ZipStream {
    /// An archive of `entries`, in order.
    pub fn new(entries: Vec<ZipEntry>) -> Self {
        Self {
            entries: entries.into_iter(),
            current: None,
            written: Vec::new(),
            state: State::NextEntry,
            out: Vec::new(),
            out_pos: 0,
            offset: 0,
        }
    }

    /// The archive's length in bytes, known up front because entries are stored: each
    /// entry's local header, bytes and data descriptor, the central directory and its end
    /// records. An entry whose bytes turn out to differ from its `size` ends the stream with
    /// an error, so this length is never silently wrong.
    pub fn len_of(entries: &[ZipEntry]) -> u64 {
        let mut offset = 0u64;
        let mut cd = 0u64;
        for e in entries {
            let name = e.name.len() as u64;
            let zip64 = e.size >= U32_MAX;
            let entry_offset = offset;
            offset += 30 + name + if zip64 { 20 } else { 0 };
            offset += e.size;
            offset += if zip64 { 24 } else { 16 };
            let mut extra = 0;
            if zip64 {
                extra += 16;
            }
            if entry_offset >= U32_MAX {
                extra += 8;
            }
            cd += 46 + name + if extra > 0 { extra + 4 } else { 0 };
        }
        let count = entries.len() as u64;
        let needs64 = offset >= U32_MAX || cd >= U32_MAX || count >= 0xFFFF;
        offset + cd + if needs64 { 56 + 20 } else { 0 } + 22
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.offset += bytes.len() as u64;
    }

    fn start_entry(&mut self, e: ZipEntry) -> io::Result<()> {
        let zip64 = e.size >= U32_MAX;
        let (dos_time, dos_date) = dos_datetime(e.mtime_ms);
        let offset = self.offset;
        let mut h = Vec::with_capacity(64 + e.name.len());
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes());
        h.extend_from_slice(&(FLAG_DESCRIPTOR | FLAG_UTF8).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // stored
        h.extend_from_slice(&dos_time.to_le_bytes());
        h.extend_from_slice(&dos_date.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // crc in the descriptor
        let sz = if zip64 { u32::MAX } else { 0 };
        h.extend_from_slice(&sz.to_le_bytes());
        h.extend_from_slice(&sz.to_le_bytes());
        h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(if zip64 { 20u16 } else { 0 }).to_le_bytes());
        h.extend_from_slice(e.name.as_bytes());
        if zip64 {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&0u64.to_le_bytes());
            h.extend_from_slice(&0u64.to_le_bytes());
        }
        self.emit(&h);
        let reader = (e.open)()?;
        self.current = Some((e.name, zip64, offset, dos_time, dos_date, e.size));
        self.state = State::Data {
            reader,
            crc: 0,
            size: 0,
        };
        Ok(())
    }

    fn finish_entry(&mut self, crc: u32, size: u64) -> io::Result<()> {
        let Some((name, zip64, offset, dos_time, dos_date, expected)) = self.current.take() else {
            unreachable!("finish_entry is only called in the Data state");
        };
        if size != expected {
            // The archive's announced length counted `expected` bytes.
            return Err(io::Error::other(format!(
                "zip entry {name} has {size} bytes, {expected} expected"
            )));
        }
        if !zip64 && size >= U32_MAX {
            return Err(io::Error::other(format!(
                "zip entry {name} grew past 4 GiB after its header was written"
            )));
        }
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        if zip64 {
            d.extend_from_slice(&size.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        } else {
            d.extend_from_slice(&(size as u32).to_le_bytes());
            d.extend_from_slice(&(size as u32).to_le_bytes());
        }
        self.emit(&d);
        self.written.push(Written {
            name,
            zip64,
            crc,
            size,
            offset,
            dos_time,
            dos_date,
        });
        self.state = State::NextEntry;
        Ok(())
    }

    fn write_central_directory(&mut self) {
        let cd_start = self.offset;
        let written = std::mem::take(&mut self.written);
        for w in &written {
            let mut extra = Vec::new();
            if w.zip64 || w.size >= U32_MAX {
                extra.extend_from_slice(&w.size.to_le_bytes());
                extra.extend_from_slice(&w.size.to_le_bytes());
            }
            if w.offset >= U32_MAX {
                extra.extend_from_slice(&w.offset.to_le_bytes());
            }
            let sizes_in_extra = w.zip64 || w.size >= U32_MAX;
            let needs64 = !extra.is_empty();
            let mut c = Vec::with_capacity(64 + w.name.len());
            c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            c.extend_from_slice(&(0x0300u16 | 45).to_le_bytes()); // made by: unix, 4.5
            c.extend_from_slice(&(if needs64 { 45u16 } else { 20 }).to_le_bytes());
            c.extend_from_slice(&(FLAG_DESCRIPTOR | FLAG_UTF8).to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes());
            c.extend_from_slice(&w.dos_time.to_le_bytes());
            c.extend_from_slice(&w.dos_date.to_le_bytes());
            c.extend_from_slice(&w.crc.to_le_bytes());
            let sz = if sizes_in_extra {
                u32::MAX
            } else {
                w.size as u32
            };
            c.extend_from_slice(&sz.to_le_bytes());
            c.extend_from_slice(&sz.to_le_bytes());
            c.extend_from_slice(&(w.name.len() as u16).to_le_bytes());
            let extra_len = if needs64 { extra.len() + 4 } else { 0 };
            c.extend_from_slice(&(extra_len as u16).to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // comment
            c.extend_from_slice(&0u16.to_le_bytes()); // disk
            c.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            c.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
            let off = if w.offset >= U32_MAX {
                u32::MAX
            } else {
                w.offset as u32
            };
            c.extend_from_slice(&off.to_le_bytes());
            c.extend_from_slice(w.name.as_bytes());
            if needs64 {
                c.extend_from_slice(&1u16.to_le_bytes());
                c.extend_from_slice(&(extra.len() as u16).to_le_bytes());
                c.extend_from_slice(&extra);
            }
            self.emit(&c);
        }
        let cd_size = self.offset - cd_start;
        let count = written.len() as u64;
        let needs64 = cd_start >= U32_MAX || cd_size >= U32_MAX || count >= 0xFFFF;
        if needs64 {
            let eocd64_at = self.offset;
            let mut z = Vec::with_capacity(76);
            z.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            z.extend_from_slice(&44u64.to_le_bytes());
            z.extend_from_slice(&(0x0300u16 | 45).to_le_bytes());
            z.extend_from_slice(&45u16.to_le_bytes());
            z.extend_from_slice(&0u32.to_le_bytes());
            z.extend_from_slice(&0u32.to_le_bytes());
            z.extend_from_slice(&count.to_le_bytes());
            z.extend_from_slice(&count.to_le_bytes());
            z.extend_from_slice(&cd_size.to_le_bytes());
            z.extend_from_slice(&cd_start.to_le_bytes());
            z.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            z.extend_from_slice(&0u32.to_le_bytes());
            z.extend_from_slice(&eocd64_at.to_le_bytes());
            z.extend_from_slice(&1u32.to_le_bytes());
            self.emit(&z);
        }
        let mut e = Vec::with_capacity(22);
        e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        let n16 = count.min(0xFFFF) as u16;
        e.extend_from_slice(&n16.to_le_bytes());
        e.extend_from_slice(&n16.to_le_bytes());
        e.extend_from_slice(&(cd_size.min(U32_MAX) as u32).to_le_bytes());
        e.extend_from_slice(&(cd_start.min(U32_MAX) as u32).to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        self.emit(&e);
        self.state = State::Done;
    }
}

impl Read for ZipStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                if self.out_pos == self.out.len() {
                    self.out.clear();
                    self.out_pos = 0;
                }
                return Ok(n);
            }
            match &mut self.state {
                State::Done => return Ok(0),
                State::NextEntry => match self.entries.next() {
                    Some(e) => self.start_entry(e)?,
                    None => self.write_central_directory(),
                },
                State::Data { reader, crc, size } => {
                    let n = reader.read(buf)?;
                    if n == 0 {
                        let (c, s) = (*crc, *size);
                        self.finish_entry(c, s)?;
                        continue;
                    }
                    *crc = crc32_update(*crc, &buf[..n]);
                    *size += n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

/// MS-DOS time and date fields for `ms` (UTC; DOS cannot say earlier than 1980).
fn dos_datetime(ms: u64) -> (u16, u16) {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return (0, (1 << 5) | 1);
    };
    if t.year() < 1980 {
        return (0, (1 << 5) | 1);
    }
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    let date =
        (((t.year() - 1980).min(127) as u16) << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    (time, date)
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Continues a CRC-32 (IEEE) over `data`.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, data: Vec<u8>) -> ZipEntry {
        ZipEntry {
            name: name.into(),
            size: data.len() as u64,
            mtime_ms: 1_706_554_545_220,
            open: Box::new(move || Ok(Box::new(io::Cursor::new(data)) as Box<dyn Read + Send>)),
        }
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32_update(0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn zip_crate_reads_what_we_stream() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut z = ZipStream::new(vec![
            entry("clip-1.mp4", a.clone()),
            entry("clip-2.mp4", b"hello".to_vec()),
            entry("empty.mp4", vec![]),
        ]);
        let mut bytes = Vec::new();
        // Small reads exercise the state machine's buffering.
        let mut buf = [0u8; 7];
        loop {
            let n = z.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        let entries_again = vec![
            entry("clip-1.mp4", a.clone()),
            entry("clip-2.mp4", b"hello".to_vec()),
            entry("empty.mp4", vec![]),
        ];
        assert_eq!(ZipStream::len_of(&entries_again), bytes.len() as u64);
        let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes)).expect("valid zip");
        assert_eq!(archive.len(), 3);
        let mut out = Vec::new();
        archive
            .by_name("clip-1.mp4")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, a);
        let mut out = Vec::new();
        archive
            .by_name("clip-2.mp4")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn an_entry_shorter_than_announced_fails_the_stream() {
        let mut short = entry("clip-1.mp4", b"12345".to_vec());
        short.size = 9;
        let mut z = ZipStream::new(vec![short]);
        let mut out = Vec::new();
        assert!(z.read_to_end(&mut out).is_err());
    }
}
