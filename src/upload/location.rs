//! Upload location: Kasm's "Session Recording Upload Location", parsed and validated at config
//! load, rendered into one object key per clip.
//!
//! Owns [`UploadSettings`] (built by `config.rs` from the TOML file), [`Secret`],
//! [`UploadLocation`], [`KeyTemplate`] and [`ClipVars`]. Does not open stores
//! (`upload::open_store` does) nor decide when to upload (the worker does).
//!
//! # Location forms
//! - `s3://BUCKET/path/{session_id}/{clip_index}.mp4`: AWS, endpoint `s3.<region>.amazonaws.com`.
//! - `s3://BUCKET@HOST[:PORT]/path/...mp4`: any S3-compatible endpoint (HTTPS unless
//!   `allow-http`).
//! - `file:///DIR/...mp4`: the local store. Its root directory is the leading run of path
//!   components that contain no `{`; the rest is the key template. `file:///srv/rec/{username}/
//!   {session_id}-{clip_index}.mp4` stores under `/srv/rec` with keys `{username}/...`; when only
//!   the file name has variables, the root is its parent directory.
//!
//! # Variables
//! `{user_id}`, `{username}`, `{image_friendly_name}`, `{session_id}`, `{hostname}`,
//! `{appliance_id}` (setting `appliance-id`: put it in the key when several appliances share a
//! bucket, since session ids are unique per appliance only),
//! `{start_date}` (session start, `2023-12-12 21:12:45.386547` UTC), `{clip_start_date}`,
//! `{clip_end_date}` (same form), `{clip_index}` (1-based position of the clip's segment in the
//! session; `N.P` for the P-th extra clip when a segment was split into several), `{timestamp_ms}`
//! (clip start in milliseconds since the epoch, e.g. `1706554545220`).
//!
//! # Uniqueness rule (checked at load)
//! Every clip must get its own key. A template is accepted when it has
//! - `{session_id}` together with a per-clip variable (`{clip_index}`, `{clip_start_date}` or
//!   `{timestamp_ms}`: clips of one session are consecutive, so their starts differ), or
//! - a clip time (`{timestamp_ms}` or `{clip_start_date}`) together with `{clip_index}` (two
//!   sessions would need a clip with the same index starting in the same millisecond).
//!
//! # Sanitising (at render)
//! Each value: `/`, `\`, control and other unsafe characters become `_`; an empty value becomes
//! `_`; values are cut at [`TEMPLATE_VALUE_BYTES_MAX`] bytes on a character boundary. Each
//! rendered path component that starts with `.` gets `_` instead (so never `.`/`..`). The
//! template's literal text may hold no `..`, `//`, leading `/`, or `.`-leading component, and
//! its worst-case key must fit [`S3_KEY_BYTES_MAX`], so a rendered key is always valid.
//!
//! # Derived keys
//! Thumbnail: the clip key with `.mp4` replaced by `.jpg`. Manifest:
//! `<directory of the session's first clip key>/<session_id>.manifest.json` (at the top level
//! when the clip key has no directory).

use std::path::PathBuf;

use crate::limits::{S3_KEY_BYTES_MAX, TEMPLATE_VALUE_BYTES_MAX, UPLOAD_LOCATION_BYTES_MAX};

/// Secrets are config's type: one place decides that they never print.
pub use crate::secret::Secret;

/// Default S3 region (also what Garage and MinIO answer to by default).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Upload settings as config.rs builds them from the TOML file (`[upload]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSettings {
    /// The location template (see the module docs).
    pub location: String,
    /// S3 access key id (empty for `file://`).
    pub access_key: String,
    /// S3 secret key (empty for `file://`).
    pub secret_key: Secret,
    /// S3 region; `us-east-1` by default.
    pub region: String,
    /// Talk plain HTTP to a custom endpoint (lab only). HTTPS otherwise.
    pub allow_http: bool,
    /// PEM file of extra CA certificates to trust for the endpoint (private CA).
    pub ca_file: Option<PathBuf>,
    /// Path-style addressing (`https://host/bucket/key`) instead of virtual-hosted style.
    /// Needed by most self-hosted stores (MinIO, Garage, Ceph without wildcard DNS).
    pub path_style: bool,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            location: String::new(),
            access_key: String::new(),
            secret_key: Secret::default(),
            region: DEFAULT_REGION.to_string(),
            allow_http: false,
            ca_file: None,
            path_style: true,
        }
    }
}

/// An invalid upload setting, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upload.{field}: {problem}")]
pub struct SettingsError {
    /// The kebab-case setting name (`location`, `access-key`, `ca-file`...).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl crate::error::Classify for SettingsError {
    fn is_transient(&self) -> bool {
        false
    }
}

fn err(field: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        problem: problem.into(),
    }
}

/// Where objects go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// The embedded local store rooted at this directory.
    Local {
        /// Root directory.
        root: PathBuf,
    },
    /// An S3 bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Base URL (`https://host:port`), AWS's regional endpoint when not given.
        endpoint_url: String,
        /// Whether `endpoint_url` is a custom endpoint (not AWS).
        custom_endpoint: bool,
    },
}

/// A validated location: the store and the key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLocation {
    /// Where objects go.
    pub target: StoreTarget,
    /// How each clip's key is made.
    pub template: KeyTemplate,
}

impl UploadSettings {
    /// Checks every field and parses the location.
    ///
    /// # Errors
    /// A [`SettingsError`] naming the field and the problem.
    pub fn validate(&self) -> Result<UploadLocation, SettingsError> {
        let loc = self.location.trim();
        if loc.len() > UPLOAD_LOCATION_BYTES_MAX {
            return Err(err("location", "longer than 2048 bytes"));
        }
        if let Some(rest) = loc.strip_prefix("file://") {
            return self.validate_file(rest);
        }
        let Some(rest) = loc.strip_prefix("s3://") else {
            return Err(err(
                "location",
                "must start with s3:// or file:// (e.g. s3://bucket/{session_id}/{clip_index}.mp4)",
            ));
        };
        self.validate_s3(rest)
    }

    fn validate_file(&self, rest: &str) -> Result<UploadLocation, SettingsError> {
        if !rest.starts_with('/') {
            return Err(err(
                "location",
                "file:// location needs an absolute path (file:///dir/...)",
            ));
        }
        let parts: Vec<&str> = rest[1..].split('/').collect();
        // Root = leading components without variables, but always leave the file name.
        let n_root = parts[..parts.len() - 1]
            .iter()
            .take_while(|p| !p.contains('{'))
            .count();
        let root: PathBuf = std::iter::once("/")
            .chain(parts[..n_root].iter().copied())
            .collect();
        if parts[..n_root]
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(err(
                "location",
                "file:// directory must be a plain absolute path",
            ));
        }
        let template = KeyTemplate::parse(&parts[n_root..].join("/"))?;
        Ok(UploadLocation {
            target: StoreTarget::Local { root },
            template,
        })
    }

    fn validate_s3(&self, rest: &str) -> Result<UploadLocation, SettingsError> {
        let Some((authority, path)) = rest.split_once('/') else {
            return Err(err("location", "missing object path after the bucket"));
        };
        let (bucket, endpoint) = match authority.split_once('@') {
            Some((b, e)) => (b, Some(e)),
            None => (authority, None),
        };
        check_bucket(bucket)?;
        let template = KeyTemplate::parse(path)?;
        if self.access_key.trim().is_empty() {
            return Err(err("access-key", "required for an s3:// location"));
        }
        if self.secret_key.expose().is_empty() {
            return Err(err("secret-key", "required for an s3:// location"));
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(err("region", "must be a region name like us-east-1"));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            return Err(err(
                "ca-file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
        let (endpoint_url, custom_endpoint) = match endpoint {
            Some(host_port) => {
                check_host_port(host_port)?;
                let scheme = if self.allow_http { "http" } else { "https" };
                (format!("{scheme}://{host_port}"), true)
            }
            None => {
                if self.allow_http {
                    return Err(err(
                        "allow-http",
                        "only applies to a custom endpoint (s3://bucket@host:port/...)",
                    ));
                }
                (format!("https://s3.{}.amazonaws.com", self.region), false)
            }
        };
        Ok(UploadLocation {
            target: StoreTarget::S3 {
                bucket: bucket.to_string(),
                endpoint_url,
                custom_endpoint,
            },
            template,
        })
    }
}

/// S3 bucket naming rules (3-63 characters: lowercase letters, digits, `.`, `-`; starts and ends
/// with a letter or digit).
fn check_bucket(bucket: &str) -> Result<(), SettingsError> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if (3..=63).contains(&bucket.len()) && ok_chars && ok_ends && !bucket.contains("..") {
        Ok(())
    } else {
        Err(err(
            "location",
            format!("bucket name {bucket:?} is invalid (3-63 of a-z 0-9 . -)"),
        ))
    }
}

fn check_host_port(host_port: &str) -> Result<(), SettingsError> {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (host_port, None),
    };
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(err(
            "location",
            format!("endpoint port {p:?} is not a port number"),
        ));
    }
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if host_ok {
        Ok(())
    } else {
        Err(err(
            "location",
            format!("endpoint host {host:?} is invalid"),
        ))
    }
}

/// One template variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `{user_id}`
    UserId,
    /// `{username}`
    Username,
    /// `{image_friendly_name}`
    ImageFriendlyName,
    /// `{session_id}`
    SessionId,
    /// `{start_date}`
    StartDate,
    /// `{clip_start_date}`
    ClipStartDate,
    /// `{clip_end_date}`
    ClipEndDate,
    /// `{clip_index}`
    ClipIndex,
    /// `{timestamp_ms}`
    TimestampMs,
    /// `{hostname}`
    Hostname,
    /// `{appliance_id}`
    ApplianceId,
}

impl Var {
    const ALL: [(&'static str, Var); 11] = [
        ("user_id", Var::UserId),
        ("username", Var::Username),
        ("image_friendly_name", Var::ImageFriendlyName),
        ("session_id", Var::SessionId),
        ("start_date", Var::StartDate),
        ("clip_start_date", Var::ClipStartDate),
        ("clip_end_date", Var::ClipEndDate),
        ("clip_index", Var::ClipIndex),
        ("timestamp_ms", Var::TimestampMs),
        ("hostname", Var::Hostname),
        ("appliance_id", Var::ApplianceId),
    ];

    fn from_name(name: &str) -> Option<Var> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Values of the template variables for one clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipVars {
    /// Kasm/Guacamole user id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Friendly name of the workspace image / connection.
    pub image_friendly_name: String,
    /// Session id.
    pub session_id: String,
    /// Session start, ms since the epoch.
    pub session_start_ms: u64,
    /// Clip start, ms since the epoch.
    pub clip_start_ms: u64,
    /// Clip end, ms since the epoch.
    pub clip_end_ms: u64,
    /// 0-based index of the clip's segment within its session.
    pub clip_index: u32,
    /// 0-based index of the clip within its segment (almost always 0).
    pub clip_part: u32,
    /// Host name of the appliance.
    pub hostname: String,
    /// The appliance's fleet id (setting `appliance-id`).
    pub appliance_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed, validated key template. Rendering it always yields a key that passes
/// [`super::store::check_key`] and ends in `.mp4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    pieces: Vec<Piece>,
    source: String,
}

/// Why a key could not be derived at render time (only for manifests of extreme keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("derived key too long ({len_bytes} bytes > 1024)")]
pub struct KeyTooLong {
    /// Length of the would-be key.
    pub len_bytes: usize,
}

impl KeyTemplate {
    /// Parses and validates a key template (the part after the bucket).
    ///
    /// # Errors
    /// A [`SettingsError`] on field `location` naming the problem: unknown variable, unbalanced
    /// brace, missing `.mp4` ending, unsafe literal path, possible key over 1024 bytes, or a
    /// template that cannot give each clip its own key.
    pub fn parse(template: &str) -> Result<Self, SettingsError> {
        let pieces = parse_pieces(template)?;
        check_literal_paths(template)?;
        match pieces.last() {
            Some(Piece::Lit(l)) if l.ends_with(".mp4") => {}
            _ => return Err(err("location", "template must end with .mp4")),
        }
        if template.ends_with("/.mp4") {
            return Err(err(
                "location",
                "template's file name must have something before .mp4",
            ));
        }
        let lit_bytes: usize = pieces
            .iter()
            .map(|p| if let Piece::Lit(l) = p { l.len() } else { 0 })
            .sum();
        let n_vars = pieces.iter().filter(|p| matches!(p, Piece::Var(_))).count();
        let worst = lit_bytes + n_vars * TEMPLATE_VALUE_BYTES_MAX;
        if worst > S3_KEY_BYTES_MAX {
            return Err(err(
                "location",
                format!("template can produce keys of {worst} bytes; S3 allows 1024"),
            ));
        }
        let has = |v: Var| pieces.contains(&Piece::Var(v));
        let per_clip = has(Var::ClipIndex) || has(Var::ClipStartDate) || has(Var::TimestampMs);
        let clip_time = has(Var::ClipStartDate) || has(Var::TimestampMs);
        let unique = (has(Var::SessionId) && per_clip) || (clip_time && has(Var::ClipIndex));
        if !unique {
            return Err(err(
                "location",
                "template cannot give each clip its own key: use {session_id} with \
                 {clip_index} (or {clip_start_date}/{timestamp_ms}), or a clip time with \
                 {clip_index}",
            ));
        }
        Ok(Self {
            pieces,
            source: template.to_string(),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The clip's object key.
    pub fn render(&self, vars: &ClipVars) -> String {
        let mut key = String::with_capacity(self.source.len() + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => key.push_str(l),
                Piece::Var(v) => key.push_str(&sanitize_value(&value_of(*v, vars))),
            }
        }
        let key = fix_dot_components(&key);
        assert!(
            key.len() <= S3_KEY_BYTES_MAX,
            "template bound violated: {} bytes",
            key.len()
        );
        assert!(key.ends_with(".mp4"), "template lost its .mp4 ending");
        key
    }
}

/// Thumbnail key of a clip key: `.mp4` replaced by `.jpg`.
pub fn thumbnail_key(clip_key: &str) -> String {
    assert!(
        clip_key.ends_with(".mp4"),
        "clip key without .mp4: {clip_key}"
    );
    format!("{}.jpg", &clip_key[..clip_key.len() - 4])
}

/// Events object key of a clip key: `.mp4` replaced by `.events.json` (added to any other key:
/// the history role reads keys from other appliances' manifests).
pub fn events_key(clip_key: &str) -> String {
    beside_clip_key(clip_key, ".events.json")
}

/// OCR events object key of a clip key (screen text): `.mp4` replaced by `.ocr.events.json`.
pub fn ocr_events_key(clip_key: &str) -> String {
    beside_clip_key(clip_key, ".ocr.events.json")
}

/// The key of an object that sits beside a clip: `.mp4` replaced by `ending` (added to any
/// other key).
fn beside_clip_key(clip_key: &str, ending: &str) -> String {
    format!(
        "{}{ending}",
        clip_key.strip_suffix(".mp4").unwrap_or(clip_key)
    )
}

/// Manifest key of a session: `<dir of the first clip key>/<session_id>.manifest.json`.
///
/// # Errors
/// [`KeyTooLong`] when the directory is so long that the manifest key exceeds 1024 bytes.
pub fn manifest_key(first_clip_key: &str, session_id: &str) -> Result<String, KeyTooLong> {
    let name = format!("{}.manifest.json", sanitize_value(session_id));
    let key = match first_clip_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name,
    };
    let key = fix_dot_components(&key);
    if key.len() > S3_KEY_BYTES_MAX {
        return Err(KeyTooLong {
            len_bytes: key.len(),
        });
    }
    Ok(key)
}

fn value_of(v: Var, c: &ClipVars) -> String {
    use crate::clock::format_datetime_ms;
    match v {
        Var::UserId => c.user_id.clone(),
        Var::Username => c.username.clone(),
        Var::ImageFriendlyName => c.image_friendly_name.clone(),
        Var::SessionId => c.session_id.clone(),
        Var::StartDate => format_datetime_ms(c.session_start_ms),
        Var::ClipStartDate => format_datetime_ms(c.clip_start_ms),
        Var::ClipEndDate => format_datetime_ms(c.clip_end_ms),
        // Clip numbers are 1-based everywhere people see them (pages, zip entries, keys).
        Var::ClipIndex if c.clip_part == 0 => (u64::from(c.clip_index) + 1).to_string(),
        Var::ClipIndex => format!("{}.{}", u64::from(c.clip_index) + 1, c.clip_part),
        Var::TimestampMs => c.clip_start_ms.to_string(),
        Var::Hostname => c.hostname.clone(),
        Var::ApplianceId => c.appliance_id.clone(),
    }
}

/// Characters kept as they are in variable values; everything else becomes `_`.
fn is_safe_char(c: char) -> bool {
    c.is_alphanumeric() && !c.is_control()
        || matches!(c, '-' | '_' | '.' | ' ' | ':' | '@' | '+' | '=' | ',')
}

/// Makes one variable value safe inside a key component.
pub fn sanitize_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(TEMPLATE_VALUE_BYTES_MAX));
    for c in value.trim().chars() {
        let c = if is_safe_char(c) { c } else { '_' };
        if out.len() + c.len_utf8() > TEMPLATE_VALUE_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Replaces a leading `.` in every `/`-separated component with `_`.
fn fix_dot_components(key: &str) -> String {
    key.split('/')
        .map(|c| match c.strip_prefix('.') {
            Some(rest) => format!("_{rest}"),
            None => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_pieces(template: &str) -> Result<Vec<Piece>, SettingsError> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                pieces.push(Piece::Lit(rest.to_string()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err(err("location", "unbalanced '}' in template"));
            }
            Some(i) => {
                if i > 0 {
                    pieces.push(Piece::Lit(rest[..i].to_string()));
                }
                let after = &rest[i + 1..];
                let Some(end) = after
                    .find(['{', '}'])
                    .filter(|&e| after.as_bytes()[e] == b'}')
                else {
                    return Err(err("location", "unbalanced '{' in template"));
                };
                let name = &after[..end];
                let var = Var::from_name(name).ok_or_else(|| {
                    let known: Vec<_> = Var::ALL.iter().map(|(n, _)| *n).collect();
                    err(
                        "location",
                        format!("unknown variable {{{name}}}; known: {}", known.join(", ")),
                    )
                })?;
                pieces.push(Piece::Var(var));
                rest = &after[end + 1..];
            }
        }
    }
    Ok(pieces)
}

/// Literal text rules: the template, with each variable standing for a harmless `x`, must be a
/// valid key (no leading `/`, no empty or `.`-leading component, no control characters).
fn check_literal_paths(template: &str) -> Result<(), SettingsError> {
    let mut probe = String::new();
    let mut in_var = false;
    for c in template.chars() {
        match c {
            '{' => in_var = true,
            '}' => {
                in_var = false;
                probe.push('x');
            }
            _ if !in_var => probe.push(c),
            _ => {}
        }
    }
    if probe.contains(['?', '#']) {
        return Err(err("location", "template may not contain '?' or '#'"));
    }
    super::store::check_key(&probe).map_err(|e| match e {
        super::store::StoreError::InvalidKey { reason, .. } => err(
            "location",
            format!("template path is not a valid key: {reason}"),
        ),
        other => err("location", other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::store::check_key;

    fn vars() -> ClipVars {
        ClipVars {
            user_id: "u-42".into(),
            username: "alice".into(),
            image_friendly_name: "Ubuntu Jammy".into(),
            session_id: "5f0c0a8e".into(),
            session_start_ms: 1_702_415_565_386,
            clip_start_ms: 1_706_554_545_220,
            clip_end_ms: 1_706_554_645_220,
            // The fourth segment: `{clip_index}` says 4 (1-based).
            clip_index: 3,
            clip_part: 0,
            hostname: "proxy-1".into(),
            appliance_id: "site-a/proxy 1".into(),
        }
    }

    #[test]
    fn appliance_id_goes_into_the_key_sanitised() {
        let t = KeyTemplate::parse("{appliance_id}/{session_id}-{clip_index}.mp4").unwrap();
        let key = t.render(&vars());
        assert_eq!(key, "site-a_proxy 1/5f0c0a8e-4.mp4");
    }

    fn s3(location: &str) -> UploadSettings {
        UploadSettings {
            location: location.into(),
            access_key: "GK1".into(),
            secret_key: Secret::new("s3cr3t"),
            ..UploadSettings::default()
        }
    }

    #[test]
    fn renders_every_variable() {
        let t = KeyTemplate::parse(
            "rec/{user_id}/{username}/{image_friendly_name}/{start_date}/{session_id}/\
             {clip_index}-{timestamp_ms}-{clip_start_date}-{clip_end_date}-{hostname}.mp4",
        )
        .unwrap();
        let key = t.render(&vars());
        assert_eq!(
            key,
            "rec/u-42/alice/Ubuntu Jammy/2023-12-12 21:12:45.386000/5f0c0a8e/\
             4-1706554545220-2024-01-29 18:55:45.220000-2024-01-29 18:57:25.220000-proxy-1.mp4"
        );
        check_key(&key).unwrap();
        let mut split = vars();
        split.clip_part = 2;
        assert!(t.render(&split).contains("/4.2-1706554545220-"));
        assert_eq!(
            thumbnail_key(&key),
            format!("{}.jpg", &key[..key.len() - 4])
        );
        assert_eq!(
            manifest_key(&key, "5f0c0a8e").unwrap(),
            "rec/u-42/alice/Ubuntu Jammy/2023-12-12 21:12:45.386000/5f0c0a8e/5f0c0a8e.manifest.json"
        );
    }

    #[test]
    fn hostile_values_cannot_escape_or_break_keys() {
        let t =
            KeyTemplate::parse("p/{username}/{session_id}/{image_friendly_name}{clip_index}.mp4")
                .unwrap();
        let hostile = [
            "..",
            ".",
            "../../etc/passwd",
            "/abs",
            "a/b/../c",
            "\u{0}\n\r\t\u{7f}\u{1b}[31m",
            "",
            "   ",
            "..\\..\\win",
            "ÿ€\u{202e}rtl",
            "?query#frag%2F..",
            ".hidden",
        ];
        for h in hostile {
            let mut v = vars();
            v.username = h.into();
            v.session_id = h.into();
            v.image_friendly_name = h.into();
            let key = t.render(&v);
            check_key(&key).unwrap_or_else(|e| panic!("{h:?} -> {key:?}: {e}"));
            assert!(key.starts_with("p/"), "{key}");
            assert_eq!(key.split('/').count(), 4, "{h:?} changed the depth: {key}");
            assert!(!key.contains(['?', '#', '%', '\\']), "{key}");
            let m = manifest_key(&key, h).unwrap();
            check_key(&m).unwrap();
        }
        // Very long values are cut; the key still fits.
        let mut v = vars();
        v.username = "é".repeat(5000);
        v.image_friendly_name = "x".repeat(100_000);
        let key = t.render(&v);
        check_key(&key).unwrap();
        assert!(key.len() <= 4 * TEMPLATE_VALUE_BYTES_MAX + 20);
    }

    #[test]
    fn rejects_bad_templates_with_named_problem() {
        let cases = [
            ("{session_id}/{clip_index}.mkv", "must end with .mp4"),
            ("{session_id}/{clip}.mp4", "unknown variable {clip}"),
            ("{session_id/{clip_index}.mp4", "unbalanced"),
            ("{session_id}}/{clip_index}.mp4", "unbalanced"),
            ("{username}/{clip_index}.mp4", "its own key"),
            ("{session_id}.mp4", "its own key"),
            ("{timestamp_ms}.mp4", "its own key"),
            ("../{session_id}/{clip_index}.mp4", "not a valid key"),
            ("/{session_id}/{clip_index}.mp4", "not a valid key"),
            ("a//{session_id}/{clip_index}.mp4", "not a valid key"),
            ("{session_id}/.mp4", "valid key"),
            ("{session_id}?{clip_index}.mp4", "'?'"),
        ];
        for (t, want) in cases {
            let e = KeyTemplate::parse(t).unwrap_err();
            assert_eq!(e.field, "location");
            assert!(e.to_string().contains(want), "{t}: {e}");
        }
        let long = format!("{}{{session_id}}/{{clip_index}}.mp4", "d/".repeat(450));
        assert!(
            KeyTemplate::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("1024")
        );
        for ok in [
            "{session_id}/{clip_index}.mp4",
            "{session_id}-{timestamp_ms}.mp4",
            "{user_id}/{clip_start_date}-{clip_index}.mp4",
            "{timestamp_ms}_{clip_index}.mp4",
        ] {
            KeyTemplate::parse(ok).unwrap();
        }
    }

    #[test]
    fn parses_location_forms() {
        let l = s3("s3://rec-bucket/kasm/{session_id}/{clip_index}.mp4")
            .validate()
            .unwrap();
        assert_eq!(
            l.target,
            StoreTarget::S3 {
                bucket: "rec-bucket".into(),
                endpoint_url: "https://s3.us-east-1.amazonaws.com".into(),
                custom_endpoint: false
            }
        );
        assert_eq!(l.template.as_str(), "kasm/{session_id}/{clip_index}.mp4");

        let mut s = s3("s3://rec@minio.lab:9000/{session_id}/{clip_index}.mp4");
        s.allow_http = true;
        let l = s.validate().unwrap();
        assert!(matches!(l.target, StoreTarget::S3 { ref endpoint_url, .. }
            if endpoint_url == "http://minio.lab:9000"));
        s.allow_http = false;
        assert!(
            matches!(s.validate().unwrap().target, StoreTarget::S3 { ref endpoint_url, .. }
            if endpoint_url == "https://minio.lab:9000")
        );

        let l = UploadSettings {
            location: "file:///var/lib/rec/{username}/{session_id}-{clip_index}.mp4".into(),
            ..UploadSettings::default()
        }
        .validate()
        .unwrap();
        assert_eq!(
            l.target,
            StoreTarget::Local {
                root: "/var/lib/rec".into()
            }
        );
        assert_eq!(
            l.template.as_str(),
            "{username}/{session_id}-{clip_index}.mp4"
        );
    }

    #[test]
    fn settings_errors_name_the_field() {
        let field = |s: UploadSettings| s.validate().unwrap_err().field;
        assert_eq!(
            field(s("ftp://x/{session_id}/{clip_index}.mp4")),
            "location"
        );
        assert_eq!(
            field(s3("s3://Bad_Bucket/{session_id}/{clip_index}.mp4")),
            "location"
        );
        assert_eq!(
            field(s3("s3://b@host:99999/{session_id}/{clip_index}.mp4")),
            "location"
        );
        let mut x = s3("s3://bucket/{session_id}/{clip_index}.mp4");
        x.access_key.clear();
        assert_eq!(field(x), "access-key");
        let mut x = s3("s3://bucket/{session_id}/{clip_index}.mp4");
        x.secret_key = Secret::default();
        assert_eq!(field(x), "secret-key");
        let mut x = s3("s3://bucket/{session_id}/{clip_index}.mp4");
        x.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(field(x), "ca-file");
        let mut x = s3("s3://bucket/{session_id}/{clip_index}.mp4");
        x.allow_http = true;
        assert_eq!(field(x), "allow-http");
        let mut x = s3("s3://bucket/{session_id}/{clip_index}.mp4");
        x.region = "us east".into();
        assert_eq!(field(x), "region");
    }

    fn s(location: &str) -> UploadSettings {
        UploadSettings {
            location: location.into(),
            ..UploadSettings::default()
        }
    }

    #[test]
    fn secret_debug_is_masked() {
        let x = s3("s3://bucket/{session_id}/{clip_index}.mp4");
        let dbg = format!("{x:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[test]
    fn events_key_sits_beside_the_clip() {
        assert_eq!(events_key("a/b/3.mp4"), "a/b/3.events.json");
        assert_eq!(ocr_events_key("a/b/3.mp4"), "a/b/3.ocr.events.json");
        assert_eq!(ocr_events_key("a/b/3"), "a/b/3.ocr.events.json");
        assert_eq!(thumbnail_key("a/b/3.mp4"), "a/b/3.jpg");
    }
}
