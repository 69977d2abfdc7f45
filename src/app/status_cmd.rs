//! `session-recorder status`: the daemon's status as JSON on stdout, from its HTTP endpoint
//! `GET /api/v1/status` when it runs, or from the queue itself when it does not.
//!
//! Owns a tiny HTTP/1.0 GET (loopback, plain HTTP: the daemon's own listener) and the offline
//! summary. Called by `main.rs` only.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{DataDirs, counts_map};
use crate::clock::SystemClock;
use crate::queue::{Queue, QueueOptions};

/// The status endpoint's path.
pub const STATUS_PATH: &str = "/api/v1/status";

/// Largest status response read.
const RESPONSE_BYTES_MAX: u64 = 4 << 20;

/// Why no status could be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    /// The URL is not `http://HOST:PORT[/...]`.
    #[error("bad status URL {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
    /// The daemon did not answer.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The daemon answered something else than 200 with JSON.
    #[error("{url} answered: {status_line}")]
    BadResponse {
        /// The URL.
        url: String,
        /// Its first line.
        status_line: String,
    },
    /// There is no queue in the data directory.
    #[error("no queue in {0} (has the daemon ever run with this data directory?)")]
    NoQueue(String),
    /// The queue could not be read.
    #[error("queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
}

impl crate::error::Classify for StatusCmdError {
    fn is_transient(&self) -> bool {
        matches!(self, StatusCmdError::Unreachable { .. })
    }
}

/// Fetches `GET {base}/api/v1/status` and returns the body (JSON), pretty-printed when it is
/// JSON.
///
/// # Errors
/// [`StatusCmdError`].
pub fn fetch(base: &str) -> Result<String, StatusCmdError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| StatusCmdError::BadUrl(base.to_string()))?;
    let host = rest.split('/').next().unwrap_or_default();
    let url = format!("http://{host}{STATUS_PATH}");
    let unreachable = |source| StatusCmdError::Unreachable {
        url: url.clone(),
        source,
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|_| StatusCmdError::BadUrl(base.to_string()))?
        .next()
        .ok_or_else(|| StatusCmdError::BadUrl(base.to_string()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    let request = format!(
        "GET {STATUS_PATH} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default().to_string();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(StatusCmdError::BadResponse { url, status_line });
    }
    Ok(match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| body.to_string()),
        Err(_) => body.to_string(),
    })
}

/// Reads the queue in `data_dir` and returns its counts as JSON.
///
/// # Errors
/// [`StatusCmdError::NoQueue`] when there is none; queue errors.
pub fn offline(data_dir: &Path) -> Result<String, StatusCmdError> {
    let dir = DataDirs::new(data_dir).queue;
    if !dir.join("data.mdb").is_file() {
        return Err(StatusCmdError::NoQueue(data_dir.display().to_string()));
    }
    let queue = Queue::open(&QueueOptions::new(&dir), Arc::new(SystemClock))?;
    let counts = queue.counts()?;
    let value = serde_json::json!({
        "source": "queue",
        "daemon": "not reachable",
        "data_dir": data_dir.display().to_string(),
        "queue_counts": counts_map(&counts),
        "oldest_waiting_clip_created_ms": counts.oldest_waiting_clip_created_ms,
    });
    Ok(serde_json::to_string_pretty(&value).unwrap_or_default())
}
