//! Integration tests of the OCR job on a real recording: the screen text of a shared terminal
//! recording is read, written as `<clip>.ocr.events.json` in the events format, and holds
//! words known to be on its screen at offsets inside the clip. Needs `tesseract` with the
//! English model (scripts/install-deps installs it; without it the test says so and skips).

mod util;

use session_recorder::events::{EventDetail, format};
use session_recorder::ocr::OcrError;
use session_recorder::ocr::tesseract::Tesseract;
use session_recorder::ocr::worker::{OcrJob, ocr_events_path, read_clip};

fn tesseract_or_skip() -> Option<Tesseract> {
    let t = Tesseract::default();
    match t.check() {
        Ok(()) => Some(t),
        Err(OcrError::TesseractMissing) => {
            eprintln!("SKIPPED: tesseract is not installed (scripts/install-deps installs it)");
            None
        }
        Err(e) => panic!("tesseract is installed but unusable: {e}"),
    }
}

#[test]
fn the_ocr_job_finds_known_words_on_a_terminal_recording() {
    let Some(tesseract) = tesseract_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("1.mp4");
    let job = OcrJob {
        clip: 0,
        segment_path: util::shared_dir().join("recordings/ssh-green-800x600.guac"),
        start_state_path: None,
        clip_path: clip.clone(),
    };
    let mut yields = 0;
    let (path, report) = read_clip(&job, &tesseract, &mut || yields += 1).expect("read clip");
    assert_eq!(path, ocr_events_path(&clip));
    assert!(
        yields >= 1,
        "the job offers to yield before Tesseract calls"
    );
    let stored = format::from_bytes(&std::fs::read(&path).expect("events object"))
        .expect("a valid events object");
    assert_eq!(stored.events, report.events);
    let mut text = String::new();
    for e in &stored.events {
        assert!(
            e.offset_ms < 46_000,
            "offset {} inside the clip",
            e.offset_ms
        );
        let EventDetail::ScreenText { text: t, region } = &e.detail else {
            panic!("only screen text: {e:?}");
        };
        assert!(region[0] + region[2] <= 800 && region[1] + region[3] <= 600);
        text.push_str(t);
        text.push('\n');
    }
    for word in [
        "Debian",
        "WARRANTY",
        "ghostscript",
        "gitconfig",
        "uucp",
        "guactest@vm",
    ] {
        assert!(text.contains(word), "{word:?} not read; read:\n{text}");
    }
    let repeats = text.lines().filter(|l| l.contains("uname -a; id")).count();
    assert_eq!(
        repeats, 1,
        "a line still on screen is reported once:\n{text}"
    );
}

#[test]
fn a_missing_tesseract_is_a_clear_transient_error() {
    use session_recorder::error::Classify;
    let t = Tesseract::new("/nonexistent/tesseract");
    let e = t.check().expect_err("no such program");
    assert!(matches!(e, OcrError::TesseractMissing), "{e:?}");
    assert!(e.is_transient(), "installing it heals it");
    assert!(e.to_string().contains("apt-get install tesseract-ocr"));
}
