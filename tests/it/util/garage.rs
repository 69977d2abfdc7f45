//! Test harness: a real single-node Garage S3 server on 127.0.0.1 (scripts/s3-test-server),
//! stopped by PID when dropped, plus curl helpers that check what the store really holds
//! independently of the code under test.
//!
//! Tests that need Garage fail with a clear message when `garage` is not on PATH; only with
//! env `SESSION_RECORDER_SKIP_S3=1` do they print a notice and skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::s3curl;
pub use s3curl::xml_values;

use session_recorder::upload::{S3Config, Secret, UploadSettings};

/// The repository root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a process exists and is not a zombie (PID 1 in containers may never reap it).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A running (or stopped) Garage with its data directory.
pub struct Garage {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub key: String,
    pub secret: String,
    pub bucket: String,
    pub pid: Option<u32>,
}

/// Starts a fresh Garage, or returns `None` (after saying so) when `garage` is missing and
/// `SESSION_RECORDER_SKIP_S3=1`. Panics with instructions when it is missing otherwise.
pub fn garage_or_skip(test: &str) -> Option<Garage> {
    let found = Command::new("sh")
        .args(["-c", "command -v garage"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("SESSION_RECORDER_SKIP_S3").as_deref() == Ok("1") {
            eprintln!("SKIPPED {test}: garage not on PATH and SESSION_RECORDER_SKIP_S3=1");
            return None;
        }
        panic!(
            "{test} needs the Garage S3 server: `garage` is not on PATH. Run \
             scripts/install-garage (or set SESSION_RECORDER_SKIP_S3=1 to skip S3 tests)"
        );
    }
    Some(Garage::start())
}

impl Garage {
    /// Starts a new server in a fresh temp dir.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("garage-test-")
            .tempdir()
            .expect("tempdir");
        let mut g = Garage {
            dir,
            endpoint: String::new(),
            key: String::new(),
            secret: String::new(),
            bucket: String::new(),
            pid: None,
        };
        g.restart();
        g
    }

    /// (Re)starts the server on the same directory (same ports, key and objects).
    pub fn restart(&mut self) {
        assert!(self.pid.is_none(), "restart of a running server");
        let out = Command::new(repo_root().join("scripts/s3-test-server"))
            .arg("start")
            .arg(self.dir.path())
            .output()
            .expect("run scripts/s3-test-server");
        assert!(
            out.status.success(),
            "s3-test-server start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "endpoint" => self.endpoint = v.to_string(),
                "key" => self.key = v.to_string(),
                "secret" => self.secret = v.to_string(),
                "bucket" => self.bucket = v.to_string(),
                "pid" => self.pid = Some(v.parse().expect("pid")),
                _ => {}
            }
        }
        assert!(self.pid.is_some(), "no pid from s3-test-server");
    }

    /// Stops the server gracefully, by PID.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new(repo_root().join("scripts/s3-test-server"))
                .args(["stop", &pid.to_string()])
                .status();
        }
    }

    /// Kills the server with SIGKILL, by PID, and waits until it is gone.
    pub fn kill9(&mut self) {
        let pid = self.pid.take().expect("server running");
        // SAFETY: kill(2) on a PID we started; no memory is involved.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        while alive(pid) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// `host:port` of the S3 API.
    pub fn host_port(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// Settings for an `s3://bucket@127.0.0.1:port/<template>` location over plain HTTP.
    pub fn settings(&self, bucket: &str, template: &str) -> UploadSettings {
        UploadSettings {
            location: format!("s3://{bucket}@{}/{template}", self.host_port()),
            access_key: self.key.clone(),
            secret_key: Secret::new(self.secret.clone()),
            allow_http: true,
            path_style: true,
            ..UploadSettings::default()
        }
    }

    /// A direct S3 client config for this server.
    pub fn s3_config(&self) -> S3Config {
        S3Config::new(
            &self.endpoint,
            &self.bucket,
            &self.key,
            Secret::new(self.secret.clone()),
        )
    }

    /// Runs curl with SigV4 against `path_and_query` (after the endpoint); returns stdout.
    pub fn curl(&self, extra: &[&str], path_and_query: &str) -> String {
        let cmd = s3curl::command(
            &self.endpoint,
            "us-east-1",
            (&self.key, &self.secret),
            extra,
            path_and_query,
        );
        s3curl::stdout(cmd, "curl")
    }

    /// Keys in the bucket under `prefix` (ListObjectsV2, read with curl).
    pub fn list_keys(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.replace('/', "%2F");
        let xml = self.curl(&[], &format!("{}?list-type=2&prefix={prefix}", self.bucket));
        assert!(xml.contains("<ListBucketResult"), "list failed: {xml}");
        xml_values(&xml, "Key")
    }

    /// Every key in the bucket under `prefix`, following continuation tokens past the 1000
    /// keys one ListObjectsV2 page holds.
    pub fn list_all_keys(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.replace('/', "%2F");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // curl's SigV4 signs the query as written: parameters must already be in sorted
            // order, or the store answers "Invalid signature".
            let mut query = format!("{}?", self.bucket);
            if let Some(t) = &token {
                let t: String = t
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                query.push_str(&format!("continuation-token={t}&"));
            }
            query.push_str(&format!("list-type=2&prefix={prefix}"));
            let xml = self.curl(&[], &query);
            assert!(xml.contains("<ListBucketResult"), "list failed: {xml}");
            keys.extend(xml_values(&xml, "Key"));
            token = xml_values(&xml, "NextContinuationToken").into_iter().next();
            if token.is_none() || !xml.contains("<IsTruncated>true</IsTruncated>") {
                return keys;
            }
        }
    }

    /// Number of multipart uploads in progress in the bucket.
    pub fn multipart_uploads(&self) -> usize {
        let xml = self.curl(&[], &format!("{}?uploads=", self.bucket));
        assert!(
            xml.contains("<ListMultipartUploadsResult"),
            "list uploads failed: {xml}"
        );
        xml_values(&xml, "UploadId").len()
    }

    /// Response headers of a HEAD of `key`, lower-cased names.
    pub fn head_headers(&self, key: &str) -> String {
        self.curl(&["-I"], &format!("{}/{key}", self.bucket))
            .to_lowercase()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `len` pseudo-random bytes (the test `util::rng::Rng`, seeded) to `path`; returns the
/// hex SHA-256.
pub fn write_random_file(path: &Path, len: usize, seed: u64) -> String {
    use sha2::Digest;
    use std::io::Write;
    let mut rng = crate::util::rng::Rng::new(seed);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    file.flush().expect("flush");
    hex::encode(hasher.finalize())
}

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
