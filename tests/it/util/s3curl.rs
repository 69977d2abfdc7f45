//! Signed S3 requests made with curl's own SigV4, for the Garage helpers (`garage.rs`,
//! `garage_cluster.rs`): they check what the store really holds independently of the code
//! under test. Included by each of them with `#[path]`.

use std::process::Command;

/// A curl command signing with SigV4 as `key`/`secret` in `region`, with `extra` arguments,
/// against `endpoint/path_and_query`.
pub fn command(
    endpoint: &str,
    region: &str,
    (key, secret): (&str, &str),
    extra: &[&str],
    path_and_query: &str,
) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--aws-sigv4"])
        .arg(format!("aws:amz:{region}:s3"))
        .arg("--user")
        .arg(format!("{key}:{secret}"))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(extra)
        .arg(format!("{endpoint}/{path_and_query}"));
    cmd
}

/// Runs `cmd` and returns its stdout; panics with `what` and curl's stderr when it fails.
pub fn stdout(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().expect("run curl");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of every `<tag>` element in an S3 XML answer, in order.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}
