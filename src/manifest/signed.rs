//! Fleet manifest, format 2: one self-describing, signed JSON document per session and version,
//! written by an appliance to the shared bucket and read by the history role.
//!
//! Owns the JSON shape, its canonical form, ed25519 signing and verification, and the pure
//! checks the history role applies (clip size/SHA-256 against what the store reports). Does no
//! I/O: the manifest worker decides when to write one (`manifest/worker.rs`), the indexer
//! (`fleet/indexer.rs`) fetches and files them.
//!
//! The signature covers the canonical JSON of the whole document without its `signature`
//! member: object keys sorted, no whitespace (see [`canonical_json`]). Any edit of any member,
//! including adding one, breaks it; reordering or re-indenting the file does not.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::clock::format_datetime_ms;
use crate::limits::{FLEET_MANIFEST_BYTES_MAX, MANIFEST_CLIPS_MAX};

/// Version of this JSON layout (format 1 is the unsigned per-session manifest of
/// `manifest/session_json.rs`).
pub const FLEET_MANIFEST_FORMAT: u32 = 2;
/// Signature algorithm name written in the `signature` member.
pub const SIGNATURE_ALG: &str = "ed25519";

/// How a session ended, or that it has not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// Still recording or clips still on their way: this version is partial.
    Live,
    /// Ended normally.
    Closed,
    /// The appliance stopped (crash, power loss) during the session; recovered at restart.
    Interrupted,
    /// Ended, but some of it could not be made into clips (failed encode, clip expired).
    Failed,
}

impl EndState {
    /// Lower-case name, as in the JSON and on the history page.
    pub fn name(self) -> &'static str {
        match self {
            EndState::Live => "live",
            EndState::Closed => "closed",
            EndState::Interrupted => "interrupted",
            EndState::Failed => "failed",
        }
    }
}

/// One clip as listed in a fleet manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetClip {
    /// 0-based position in the session.
    pub index: u32,
    /// Object key of the MP4.
    pub key: String,
    /// Object key of the JPEG thumbnail, when one was uploaded.
    pub thumbnail_key: Option<String>,
    /// Size of the MP4 in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256 of the MP4.
    pub sha256: String,
    /// Clip start, ms since the epoch.
    pub start_ms: u64,
    /// Clip end, ms since the epoch.
    pub end_ms: u64,
    /// The clip's events object (what was typed, copied, transferred, shown), when one was
    /// uploaded; absent in manifests of clips without one, so older manifests verify unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<FleetEventsObject>,
    /// The clip's screen text (OCR) events object, when one was uploaded (it comes after the
    /// clip's upload, in a later version); absent otherwise, so older manifests verify
    /// unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr: Option<FleetEventsObject>,
}

/// A clip's events object in a fleet manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEventsObject {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// The signature member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// Always [`SIGNATURE_ALG`].
    pub alg: String,
    /// Hex of the signer's 32-byte public key.
    pub public_key: String,
    /// Hex of the 64-byte signature over the canonical document without this member.
    pub value: String,
}

/// A fleet manifest (format 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetManifest {
    /// Always [`FLEET_MANIFEST_FORMAT`].
    pub format: u32,
    /// The appliance that recorded the session (setting `appliance-id`).
    pub appliance_id: String,
    /// Increases with every rewrite of this session's manifest; the reader keeps the highest.
    pub version: u64,
    /// True once `state` is an end state and every clip is listed.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// How the session ended ([`EndState::Live`] while partial).
    pub state: EndState,
    /// Session id: from the client or guacd, unique per appliance only (the history role
    /// keys sessions by appliance and id).
    pub session_id: String,
    /// User id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Workspace image / connection name.
    pub image_friendly_name: String,
    /// Protocol (`rdp`, `vnc`, `ssh`...).
    pub protocol: String,
    /// Session start, ms since the epoch.
    pub start_ms: u64,
    /// Session end, when it ended.
    pub end_ms: Option<u64>,
    /// How the session ended (`user_disconnect`, `server_ended`, `guacd_gone`,
    /// `recorder_shutdown`, `disk_critical`, `recording_failed`, `crash`), once known; absent
    /// in manifests written before reasons were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The remote host the session connected to (`host:port`), when known. Absent when
    /// empty, so manifests written before targets were kept verify unchanged, and readers
    /// that do not know the member ignore it (the format stays 2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The peer address the appliance's tap accepted (`ip:port`), when known; absent like
    /// `target`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_addr: String,
    /// Session start as `2023-12-12 21:12:45.386547` (UTC), for people reading the bucket.
    pub start: String,
    /// Total bytes of the listed clips.
    pub total_bytes: u64,
    /// Clips in session order.
    pub clips: Vec<FleetClip>,
    /// The appliance's signature; `None` only in documents that were never signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
}

/// What the session looks like when a manifest is made (everything but the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInput {
    /// See [`FleetManifest::appliance_id`].
    pub appliance_id: String,
    /// See [`FleetManifest::version`].
    pub version: u64,
    /// See [`FleetManifest::state`]; `Live` makes a partial manifest.
    pub state: EndState,
    /// See [`FleetManifest::session_id`].
    pub session_id: String,
    /// See [`FleetManifest::user_id`].
    pub user_id: String,
    /// See [`FleetManifest::username`].
    pub username: String,
    /// See [`FleetManifest::image_friendly_name`].
    pub image_friendly_name: String,
    /// See [`FleetManifest::protocol`].
    pub protocol: String,
    /// See [`FleetManifest::start_ms`].
    pub start_ms: u64,
    /// See [`FleetManifest::end_ms`].
    pub end_ms: Option<u64>,
    /// See [`FleetManifest::end_reason`].
    pub end_reason: Option<String>,
    /// See [`FleetManifest::target`].
    pub target: String,
    /// See [`FleetManifest::client_addr`].
    pub client_addr: String,
    /// Clips in session order (indexes are assigned here).
    pub clips: Vec<FleetClip>,
}

/// A manifest that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// More clips than [`MANIFEST_CLIPS_MAX`].
    #[error("session has {0} clips, more than a manifest lists")]
    TooManyClips(usize),
}

impl crate::error::Classify for BuildError {
    fn is_transient(&self) -> bool {
        false
    }
}

impl FleetManifest {
    /// Builds and signs a manifest.
    ///
    /// # Errors
    /// [`BuildError::TooManyClips`].
    pub fn signed(input: ManifestInput, key: &SigningKey) -> Result<Self, BuildError> {
        if input.clips.len() > MANIFEST_CLIPS_MAX {
            return Err(BuildError::TooManyClips(input.clips.len()));
        }
        let mut clips = input.clips;
        for (n, c) in clips.iter_mut().enumerate() {
            c.index = u32::try_from(n).unwrap_or(u32::MAX);
        }
        let mut m = Self {
            format: FLEET_MANIFEST_FORMAT,
            appliance_id: input.appliance_id,
            version: input.version,
            is_final: input.state != EndState::Live,
            state: input.state,
            session_id: input.session_id,
            user_id: input.user_id,
            username: input.username,
            image_friendly_name: input.image_friendly_name,
            protocol: input.protocol,
            start_ms: input.start_ms,
            end_ms: input.end_ms,
            end_reason: input.end_reason,
            target: input.target,
            client_addr: input.client_addr,
            start: format_datetime_ms(input.start_ms),
            total_bytes: clips.iter().map(|c| c.size_bytes).sum(),
            clips,
            signature: None,
        };
        let body = canonical_json(&m.unsigned_value());
        let sig = key.sign(&body);
        m.signature = Some(ManifestSignature {
            alg: SIGNATURE_ALG.into(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
            value: hex::encode(sig.to_bytes()),
        });
        Ok(m)
    }

    /// Pretty JSON, ready for the bucket.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain strings, integers and enums: serialising cannot fail.
        serde_json::to_vec_pretty(self).expect("manifest serialises")
    }

    fn unsigned_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("manifest serialises");
        if let Some(obj) = v.as_object_mut() {
            obj.remove("signature");
        }
        v
    }
}

/// Why a document in the manifest prefix is not indexed at all (counted, shown on the status
/// page, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Larger than [`FLEET_MANIFEST_BYTES_MAX`].
    #[error("manifest of {0} bytes is larger than allowed")]
    TooLarge(usize),
    /// Not JSON, or not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// `format` missing or not one this program reads.
    #[error("unknown manifest format {0:?}")]
    UnknownVersion(Option<u64>),
    /// JSON of the right format but the wrong shape (missing member, wrong type).
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

impl Rejected {
    /// Short counter name for the status page.
    pub fn counter(&self) -> &'static str {
        match self {
            Rejected::TooLarge(_) => "too_large",
            Rejected::NotJson(_) => "not_json",
            Rejected::UnknownVersion(_) => "unknown_version",
            Rejected::Malformed(_) => "malformed",
        }
    }
}

/// The integrity verdict of a manifest (and, later, of its clips).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Integrity {
    /// Signed by a trusted key, signature valid, clips match.
    Verified {
        /// Hex public key that signed it.
        public_key: String,
    },
    /// Not trusted: shown as "integrity: failed" with the reason.
    Failed {
        /// Why, in words.
        reason: String,
    },
}

impl Integrity {
    /// Whether it is [`Integrity::Verified`].
    pub fn ok(&self) -> bool {
        matches!(self, Integrity::Verified { .. })
    }

    /// Words for the history page.
    pub fn words(&self) -> String {
        match self {
            Integrity::Verified { .. } => "integrity: verified".into(),
            Integrity::Failed { reason } => format!("integrity: failed ({reason})"),
        }
    }

    fn failed(reason: impl Into<String>) -> Self {
        Integrity::Failed {
            reason: reason.into(),
        }
    }
}

/// A parsed document and what its signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The manifest (format 1 documents are lifted into format 2 as unsigned, final, closed).
    pub manifest: FleetManifest,
    /// The signature verdict.
    pub integrity: Integrity,
}

/// The public keys the history role trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeSet<[u8; 32]>,
}

impl TrustedKeys {
    /// Parses hex public keys (64 hex digits each).
    ///
    /// # Errors
    /// The first key that is not 32 bytes of hex or not a valid curve point, in words.
    pub fn from_hex<S: AsRef<str>>(keys: &[S]) -> Result<Self, String> {
        let mut out = BTreeSet::new();
        for k in keys {
            out.insert(parse_public_key(k.as_ref())?.to_bytes());
        }
        Ok(Self { keys: out })
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &VerifyingKey) -> bool {
        self.keys.contains(key.as_bytes())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (then every manifest fails integrity).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses one hex ed25519 public key.
///
/// # Errors
/// Wrong length, not hex, or not a valid key, in words.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| format!("{hex_key:?} is not hex"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{hex_key:?} is not 32 bytes (64 hex digits)"))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| format!("{hex_key:?} is not an ed25519 key"))
}

/// Parses a document from the bucket and verifies its signature against `trusted`.
///
/// # Errors
/// [`Rejected`] when the document cannot be read as a manifest at all; a readable manifest
/// that is unsigned or badly signed is `Ok` with [`Integrity::Failed`].
pub fn parse_and_verify(bytes: &[u8], trusted: &TrustedKeys) -> Result<Parsed, Rejected> {
    if bytes.len() > FLEET_MANIFEST_BYTES_MAX {
        return Err(Rejected::TooLarge(bytes.len()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Rejected::NotJson(e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(Rejected::NotJson("not an object".into()));
    };
    let format = obj.get("format").and_then(|f| f.as_u64());
    match format {
        Some(1) => return lift_format_1(value),
        Some(2) => {}
        other => return Err(Rejected::UnknownVersion(other)),
    }
    let manifest: FleetManifest =
        serde_json::from_value(value.clone()).map_err(|e| Rejected::Malformed(e.to_string()))?;
    let integrity = verify_signature(&value, manifest.signature.as_ref(), trusted);
    Ok(Parsed {
        manifest,
        integrity,
    })
}

fn verify_signature(
    value: &serde_json::Value,
    sig: Option<&ManifestSignature>,
    trusted: &TrustedKeys,
) -> Integrity {
    let Some(sig) = sig else {
        return Integrity::failed("unsigned");
    };
    if sig.alg != SIGNATURE_ALG {
        return Integrity::failed(format!("unknown signature algorithm {:?}", sig.alg));
    }
    let Ok(key) = parse_public_key(&sig.public_key) else {
        return Integrity::failed("signature names an invalid public key");
    };
    if !trusted.contains(&key) {
        return Integrity::failed(format!("signed by an untrusted key {}", sig.public_key));
    }
    let sig_bytes: Option<[u8; 64]> = hex::decode(&sig.value).ok().and_then(|b| b.try_into().ok());
    let Some(sig_bytes) = sig_bytes else {
        return Integrity::failed("signature is not 64 bytes of hex");
    };
    let mut unsigned = value.clone();
    if let Some(obj) = unsigned.as_object_mut() {
        obj.remove("signature");
    }
    let body = canonical_json(&unsigned);
    match key.verify(&body, &Signature::from_bytes(&sig_bytes)) {
        Ok(()) => Integrity::Verified {
            public_key: sig.public_key.clone(),
        },
        Err(_) => Integrity::failed("bad signature (the manifest was changed after signing)"),
    }
}

/// Format 1 (the unsigned per-session manifest): readable, never trusted.
fn lift_format_1(value: serde_json::Value) -> Result<Parsed, Rejected> {
    let m: crate::manifest::session_json::SessionManifest =
        serde_json::from_value(value).map_err(|e| Rejected::Malformed(e.to_string()))?;
    let clips = m
        .clips
        .iter()
        .map(|c| FleetClip {
            index: c.index,
            key: c.key.clone(),
            thumbnail_key: c.thumbnail_key.clone(),
            size_bytes: c.size_bytes,
            sha256: c.sha256.clone(),
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            events: None,
            ocr: None,
        })
        .collect();
    Ok(Parsed {
        manifest: FleetManifest {
            format: 1,
            appliance_id: m.hostname,
            version: 0,
            is_final: true,
            state: EndState::Closed,
            session_id: m.session_id,
            user_id: m.user_id,
            username: m.username,
            end_reason: m.end_reason,
            target: m.target,
            client_addr: m.client_addr,
            image_friendly_name: m.image_friendly_name,
            protocol: String::new(),
            start_ms: m.start_ms,
            end_ms: Some(m.end_ms),
            start: m.start,
            total_bytes: m.total_bytes,
            clips,
            signature: None,
        },
        integrity: Integrity::failed("unsigned (format 1)"),
    })
}

/// What the store reports for a clip object (HEAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClip {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256 metadata, if any.
    pub sha256_hex: Option<String>,
}

/// Checks a listed clip against what the store holds. `None` = the object is gone.
///
/// # Errors
/// The mismatch in words (becomes [`Integrity::Failed`] of the session).
pub fn check_clip(clip: &FleetClip, stored: &StoredClip) -> Result<(), String> {
    if stored.size_bytes != clip.size_bytes {
        return Err(format!(
            "clip {} is {} bytes in the bucket, {} in the manifest",
            clip.index, stored.size_bytes, clip.size_bytes
        ));
    }
    match &stored.sha256_hex {
        Some(s) if s.eq_ignore_ascii_case(&clip.sha256) => Ok(()),
        Some(s) => Err(format!(
            "clip {} has SHA-256 {s} in the bucket, {} in the manifest",
            clip.index, clip.sha256
        )),
        None => Err(format!(
            "clip {} carries no SHA-256 in the bucket",
            clip.index
        )),
    }
}

/// The bytes that are signed: JSON with object keys sorted and no whitespace. Independent of
/// how the document was indented or ordered in the file, and of serde_json's map features.
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (n, k) in keys.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                // A string always serialises.
                out.extend(serde_json::to_vec(k).expect("string serialises"));
                out.push(b':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("scalar serialises")),
    }
}

/// The written-at time encoded in a manifest object key (`writer::version_key`), if the name has that form.
pub fn written_ms_of_key(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let digits = name.get(..13)?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn input() -> ManifestInput {
        ManifestInput {
            appliance_id: "proxy-1".into(),
            version: 3,
            state: EndState::Closed,
            session_id: "sess-1".into(),
            user_id: "u1".into(),
            username: "alice".into(),
            image_friendly_name: "Ubuntu".into(),
            protocol: "vnc".into(),
            start_ms: 1_000,
            end_ms: Some(9_000),
            end_reason: None,
            target: String::new(),
            client_addr: String::new(),
            clips: (0..2)
                .map(|i| FleetClip {
                    index: 99,
                    key: format!("a/s/clip-{i}.mp4"),
                    thumbnail_key: Some(format!("a/s/clip-{i}.jpg")),
                    size_bytes: 100 + i,
                    sha256: "ab".repeat(32),
                    start_ms: 1_000 + i * 4_000,
                    end_ms: 4_999 + i * 4_000,
                    events: None,
                    ocr: None,
                })
                .collect(),
        }
    }

    fn trusted(keys: &[&SigningKey]) -> TrustedKeys {
        let hexes: Vec<String> = keys
            .iter()
            .map(|k| hex::encode(k.verifying_key().as_bytes()))
            .collect();
        TrustedKeys::from_hex(&hexes).unwrap()
    }

    #[test]
    fn signed_manifest_verifies_and_round_trips() {
        let k = key(7);
        let m = FleetManifest::signed(input(), &k).unwrap();
        assert!(m.is_final);
        assert_eq!(m.total_bytes, 201);
        assert_eq!(m.clips[1].index, 1);
        let p = parse_and_verify(&m.to_json(), &trusted(&[&k])).unwrap();
        assert!(p.integrity.ok(), "{:?}", p.integrity);
        assert_eq!(p.manifest, m);
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(v["format"], 2);
        assert_eq!(v["final"], true);
        assert_eq!(v["state"], "closed");
    }

    #[test]
    fn target_and_client_address_are_signed_members_when_known() {
        let k = key(7);
        // Without them, no member: documents signed before they existed verify unchanged.
        let plain = FleetManifest::signed(input(), &k).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain.to_json()).unwrap();
        assert!(v.get("target").is_none() && v.get("client_addr").is_none());
        let mut i = input();
        i.target = "erp.example:3389".into();
        i.client_addr = "10.1.2.3:50123".into();
        let m = FleetManifest::signed(i, &k).unwrap();
        let json = m.to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            (v["format"].as_u64(), v["target"].as_str()),
            (Some(2), Some("erp.example:3389"))
        );
        let p = parse_and_verify(&json, &trusted(&[&k])).unwrap();
        assert!(p.integrity.ok(), "{:?}", p.integrity);
        assert_eq!(p.manifest.client_addr, "10.1.2.3:50123");
        // The target is under the signature like every member.
        let forged = String::from_utf8(json)
            .unwrap()
            .replace("erp.example", "hr.example");
        let p = parse_and_verify(forged.as_bytes(), &trusted(&[&k])).unwrap();
        assert!(!p.integrity.ok());
    }

    #[test]
    fn reindented_file_still_verifies() {
        let k = key(7);
        let m = FleetManifest::signed(input(), &k).unwrap();
        let compact = serde_json::to_vec(&m).unwrap();
        assert!(
            parse_and_verify(&compact, &trusted(&[&k]))
                .unwrap()
                .integrity
                .ok()
        );
    }

    #[test]
    fn tampered_manifest_fails() {
        let k = key(7);
        let json =
            String::from_utf8(FleetManifest::signed(input(), &k).unwrap().to_json()).unwrap();
        for (from, to) in [
            ("\"alice\"", "\"mallory\""),
            ("\"size_bytes\": 100", "\"size_bytes\": 101"),
            ("\"final\": true", "\"final\": true, \"extra\": 1"),
        ] {
            assert!(json.contains(from), "{from}");
            let edited = json.replacen(from, to, 1);
            let p = parse_and_verify(edited.as_bytes(), &trusted(&[&k])).unwrap();
            assert!(!p.integrity.ok(), "edit {from} -> {to} accepted");
            assert!(p.integrity.words().contains("bad signature"));
        }
    }

    #[test]
    fn wrong_key_fails() {
        let m = FleetManifest::signed(input(), &key(7)).unwrap();
        let p = parse_and_verify(&m.to_json(), &trusted(&[&key(8)])).unwrap();
        assert!(
            p.integrity.words().contains("untrusted key"),
            "{:?}",
            p.integrity
        );
        // A forger who swaps in their own public key is still untrusted.
        let forged = FleetManifest::signed(input(), &key(9)).unwrap();
        let p = parse_and_verify(&forged.to_json(), &trusted(&[&key(7)])).unwrap();
        assert!(!p.integrity.ok());
        // A trusted key with someone else's signature value.
        let mut swapped = m.clone();
        swapped.signature.as_mut().unwrap().value = forged.signature.unwrap().value;
        let p = parse_and_verify(&swapped.to_json(), &trusted(&[&key(7)])).unwrap();
        assert!(p.integrity.words().contains("bad signature"));
    }

    #[test]
    fn unsigned_fails() {
        let mut m = FleetManifest::signed(input(), &key(7)).unwrap();
        m.signature = None;
        let p = parse_and_verify(&m.to_json(), &trusted(&[&key(7)])).unwrap();
        assert_eq!(p.integrity, Integrity::failed("unsigned"));
        assert_eq!(p.integrity.words(), "integrity: failed (unsigned)");
    }

    #[test]
    fn format_1_is_read_but_not_trusted() {
        let c = crate::manifest::session_json::ManifestClip::new(
            0,
            "k.mp4".into(),
            None,
            5,
            "cd".repeat(32),
            1,
            2,
        );
        let old = crate::manifest::session_json::SessionManifest::new(
            "s",
            "u",
            "n",
            "i",
            "h",
            1,
            2,
            vec![c],
        )
        .unwrap();
        let p = parse_and_verify(&old.to_json(), &trusted(&[&key(7)])).unwrap();
        assert!(!p.integrity.ok());
        assert_eq!(p.manifest.appliance_id, "h");
        assert_eq!(p.manifest.clips[0].key, "k.mp4");
    }

    #[test]
    fn bad_input_is_rejected_with_a_counter() {
        let t = trusted(&[&key(7)]);
        let e = parse_and_verify(b"not json", &t).unwrap_err();
        assert_eq!(e.counter(), "not_json");
        let e = parse_and_verify(b"[1,2]", &t).unwrap_err();
        assert_eq!(e.counter(), "not_json");
        let e = parse_and_verify(br#"{"format": 3}"#, &t).unwrap_err();
        assert_eq!(e, Rejected::UnknownVersion(Some(3)));
        let e = parse_and_verify(br#"{"session_id": "x"}"#, &t).unwrap_err();
        assert_eq!(e, Rejected::UnknownVersion(None));
        let e = parse_and_verify(br#"{"format": 2, "session_id": "x"}"#, &t).unwrap_err();
        assert_eq!(e.counter(), "malformed");
        let big = vec![b' '; FLEET_MANIFEST_BYTES_MAX + 1];
        assert_eq!(
            parse_and_verify(&big, &t).unwrap_err().counter(),
            "too_large"
        );
    }

    #[test]
    fn sha_mismatch_is_reported() {
        let m = FleetManifest::signed(input(), &key(7)).unwrap();
        let c = &m.clips[0];
        let good = StoredClip {
            size_bytes: 100,
            sha256_hex: Some("AB".repeat(32)),
        };
        assert_eq!(check_clip(c, &good), Ok(()));
        let other_sha = StoredClip {
            sha256_hex: Some("cd".repeat(32)),
            ..good.clone()
        };
        assert!(check_clip(c, &other_sha).unwrap_err().contains("SHA-256"));
        let other_size = StoredClip {
            size_bytes: 99,
            ..good.clone()
        };
        assert!(check_clip(c, &other_size).unwrap_err().contains("bytes"));
        let none = StoredClip {
            sha256_hex: None,
            ..good
        };
        assert!(check_clip(c, &none).is_err());
    }

    #[test]
    fn version_keys_sort_by_write_time() {
        let a = crate::manifest::writer::version_key("manifests/", 999, "p/1", "s", 2);
        let b = crate::manifest::writer::version_key("manifests", 1_000, "a", "s", 1);
        assert_eq!(a, "manifests/0000000000999-p_1-s-v0000000002.json");
        assert!(a < b);
        assert_eq!(written_ms_of_key(&b), Some(1_000));
        assert_eq!(written_ms_of_key("x/abc.json"), None);
        assert_eq!(
            crate::manifest::writer::version_key("", 1, "a", "s", 1),
            "0000000000001-a-s-v0000000001.json"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":[{"z":1,"a":2}],"a":"x"}"#).unwrap();
        assert_eq!(canonical_json(&v), br#"{"a":"x","b":[{"a":2,"z":1}]}"#);
    }
}
