//! Tesseract as a child process: one call per stacked image, the image on its stdin (PGM), its
//! words back as TSV. The child runs with `OMP_THREAD_LIMIT=1` in its own environment (set
//! after start it does nothing, and unlimited it spends about 5x the CPU on spinning threads)
//! and at [`TESSERACT_NICE`], so it only takes CPU nothing else wants. Called by
//! [`super::read_recording`]; `tesseract` (5.3, `tesseract-ocr` and `tesseract-ocr-eng`) must
//! be on `PATH`, else [`OcrError::TesseractMissing`].

use std::io::Write;
use std::process::{Command, Stdio};

use image::GrayImage;

use super::OcrError;

/// Niceness of the Tesseract child (19: the lowest priority).
pub const TESSERACT_NICE: i32 = 19;
/// Page segmentation mode: sparse text (reads scattered desktop text and terminal rows alike).
pub const TESSERACT_PSM: u32 = 11;
/// Words read with less confidence than this (0 to 100) are dropped as noise.
pub const WORD_CONFIDENCE_MIN: f32 = 30.0;
/// `nice`'s exit status when the program it should start does not exist.
const NICE_NOT_FOUND_STATUS: i32 = 127;
/// The most TSV bytes read back from one call.
pub const TSV_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One word as Tesseract read it, in the image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct TsvWord {
    /// Left edge.
    pub left: u32,
    /// Top edge.
    pub top: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Confidence, 0 to 100.
    pub conf: f32,
    /// The text.
    pub text: String,
}

/// How Tesseract is started.
#[derive(Debug, Clone)]
pub struct Tesseract {
    program: String,
}

impl Default for Tesseract {
    fn default() -> Self {
        Self {
            program: "tesseract".to_owned(),
        }
    }
}

impl Tesseract {
    /// Tesseract started as `program` (a name on `PATH` or a path).
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Checks that Tesseract starts and has the English model.
    ///
    /// # Errors
    /// [`OcrError::TesseractMissing`] when it is not installed; [`OcrError::Tesseract`] when it
    /// fails or lacks `eng`.
    pub fn check(&self) -> Result<(), OcrError> {
        let out = self
            .command()
            .arg("--list-langs")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        if out.status.code() == Some(NICE_NOT_FOUND_STATUS) {
            return Err(OcrError::TesseractMissing);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.lines().any(|l| l.trim() == "eng") {
            return Err(OcrError::Tesseract(format!(
                "{} --list-langs has no eng model (status {}; apt-get install tesseract-ocr-eng)",
                self.program, out.status
            )));
        }
        Ok(())
    }

    /// Reads the words of `image`.
    ///
    /// # Errors
    /// [`OcrError::TesseractMissing`], or [`OcrError::Tesseract`] when it fails.
    pub fn read(&self, image: &GrayImage) -> Result<Vec<TsvWord>, OcrError> {
        let mut child = self
            .command()
            .args(["-", "-", "--psm", &TESSERACT_PSM.to_string(), "tsv"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let pgm = to_pgm(image);
        let writer = std::thread::spawn(move || stdin.write_all(&pgm));
        let out = child
            .wait_with_output()
            .map_err(|e| OcrError::Tesseract(format!("waiting for tesseract: {e}")))?;
        let written = writer.join().unwrap_or(Ok(()));
        if out.status.code() == Some(NICE_NOT_FOUND_STATUS) {
            return Err(OcrError::TesseractMissing);
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            return Err(OcrError::Tesseract(format!(
                "tesseract exited with {}: {}",
                out.status,
                stderr.chars().take(500).collect::<String>()
            )));
        }
        if let Err(e) = written {
            return Err(OcrError::Tesseract(format!("writing to tesseract: {e}")));
        }
        if out.stdout.len() > TSV_BYTES_MAX {
            return Err(OcrError::Tesseract(format!(
                "tesseract wrote {} bytes, over {TSV_BYTES_MAX}",
                out.stdout.len()
            )));
        }
        Ok(parse_tsv(&String::from_utf8_lossy(&out.stdout)))
    }

    fn command(&self) -> Command {
        let mut c = Command::new("nice");
        c.args(["-n", &TESSERACT_NICE.to_string(), &self.program])
            .env("OMP_THREAD_LIMIT", "1");
        c
    }

    fn spawn_error(&self, e: std::io::Error) -> OcrError {
        if e.kind() == std::io::ErrorKind::NotFound {
            OcrError::TesseractMissing
        } else {
            OcrError::Tesseract(format!("starting {}: {e}", self.program))
        }
    }
}

/// The image as binary PGM (P5), which Tesseract reads from stdin without a decoder.
fn to_pgm(image: &GrayImage) -> Vec<u8> {
    let header = format!("P5\n{} {}\n255\n", image.width(), image.height());
    let mut out = Vec::with_capacity(header.len() + image.as_raw().len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(image.as_raw());
    out
}

/// The words (level 5 rows) of Tesseract's TSV at or above [`WORD_CONFIDENCE_MIN`].
pub fn parse_tsv(tsv: &str) -> Vec<TsvWord> {
    tsv.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.splitn(12, '\t').collect();
            if f.len() != 12 || f[0] != "5" {
                return None;
            }
            let n = |i: usize| f[i].parse::<u32>().ok();
            let word = TsvWord {
                left: n(6)?,
                top: n(7)?,
                width: n(8)?,
                height: n(9)?,
                conf: f[10].parse().ok()?,
                text: f[11].trim().to_owned(),
            };
            (word.conf >= WORD_CONFIDENCE_MIN && !word.text.is_empty()).then_some(word)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_words_are_read_and_noise_dropped() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
                   1\t1\t0\t0\t0\t0\t0\t0\t100\t50\t-1\t\n\
                   5\t1\t1\t1\t1\t1\t10\t20\t30\t16\t96.5\tfindme-42\n\
                   5\t1\t1\t1\t1\t2\t50\t20\t30\t16\t12.0\t~~\n\
                   5\t1\t1\t1\t1\t3\t90\t20\t30\t16\t91\t \n";
        let got = parse_tsv(tsv);
        assert_eq!(
            got,
            vec![TsvWord {
                left: 10,
                top: 20,
                width: 30,
                height: 16,
                conf: 96.5,
                text: "findme-42".into()
            }]
        );
    }

    #[test]
    fn pgm_header_names_the_size() {
        let pgm = to_pgm(&GrayImage::new(3, 2));
        assert!(pgm.starts_with(b"P5\n3 2\n255\n"));
        assert_eq!(pgm.len(), 11 + 6);
    }
}
