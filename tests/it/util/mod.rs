//! Shared helpers for integration tests: locating the shared recordings and reference frames;
//! in submodules, synthetic recordings (`synthetic`), encoding to a temp clip and reading it
//! back with ffprobe (`clip`), a real small filesystem (`tmpfs`), and a loopback lab around the
//! real guacd (`gateway_lab`).

use std::path::PathBuf;

pub mod axe;
pub mod certs;
pub mod clip;
pub mod daemon;
pub mod garage;
pub mod garage_cluster;
pub mod gateway_lab;
pub mod guacd_replay;
pub mod rng;
pub mod s3curl;
pub mod serve_fixture;
pub mod synthetic;
pub mod tmpfs;
pub mod webdriver;

/// The shared directory holding `recordings/` and `reference-frames/`: `$SESSION_RECORDER_SHARED`
/// if set, else `<repo>/../shared`, else `/work/shared`.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESSION_RECORDER_SHARED") {
        return PathBuf::from(dir);
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if beside.join("recordings").is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared")
}

/// Every `.guac` recording in the shared directory, sorted by name.
pub fn recordings() -> Vec<PathBuf> {
    let dir = shared_dir().join("recordings");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "guac"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no recordings in {}", dir.display());
    out
}
