//! The stored events object of one clip, pure: versioned JSON, written beside the clip's MP4 and
//! thumbnail and put in the bucket with them. JSON so that an auditor's own tools can read it;
//! it is small next to the clip (text and a few numbers per event).
//!
//! The stored types are this module's own ([`EventsFileV1`] and its parts), with the
//! conversions to and from the domain types ([`super::ClipEvents`]) next to them. A reader
//! refuses a format it does not know, an object over [`EVENTS_OBJECT_BYTES_MAX`], and events
//! out of time order.

use serde::{Deserialize, Serialize};

use super::{ActivitySecond, ClipEvents, Direction, Event, EventDetail};

/// The format this build writes.
pub const EVENTS_FORMAT_VERSION: u32 = 1;
/// The largest events object a reader accepts (one clip's events; a clip's text is capped at the
/// tap, so a real one stays far below this).
pub const EVENTS_OBJECT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// An events object that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EventsFormatError {
    /// Not JSON, or not the shape of any known format.
    #[error("events object is malformed: {0}")]
    Malformed(String),
    /// A format newer than this build.
    #[error("events object format {found} is not known (this build reads up to {known})")]
    UnknownFormat {
        /// The format it says it has.
        found: u32,
        /// The newest this build reads.
        known: u32,
    },
    /// Larger than [`EVENTS_OBJECT_BYTES_MAX`].
    #[error("events object of {bytes} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Events not in time order.
    #[error("events object has events out of time order at event {index}")]
    OutOfOrder {
        /// The first event earlier than the one before it.
        index: usize,
    },
}

impl crate::error::Classify for EventsFormatError {
    fn is_transient(&self) -> bool {
        false
    }
}

/// Format 1 of the events object.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventsFileV1 {
    /// Always 1.
    pub format: u32,
    /// Offset of the first activity second from the clip's start, ms.
    pub activity_start_ms: u64,
    /// Per second: `[changed_px, keys]`.
    pub activity: Vec<(u64, u32)>,
    /// Events in time order.
    pub events: Vec<StoredEventV1>,
}

/// One stored event (format 1).
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredEventV1 {
    /// Milliseconds from the clip's start.
    pub offset_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub detail: StoredDetailV1,
}

/// A stored direction (format 1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredDirectionV1 {
    /// A paste or upload.
    ToRemote,
    /// A copy or download.
    FromRemote,
}

/// A stored event's body (format 1), tagged by `kind`.
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredDetailV1 {
    Typed {
        raw: String,
        text: String,
        masked_keys: u32,
        keys: u32,
    },
    Clipboard {
        direction: StoredDirectionV1,
        mimetype: String,
        size_bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        truncated: bool,
    },
    File {
        direction: StoredDirectionV1,
        name: String,
        mimetype: String,
        size_bytes: u64,
        sha256: String,
        complete: bool,
    },
    Title {
        title: String,
    },
    ScreenText {
        text: String,
        region: [u32; 4],
    },
}

impl From<Direction> for StoredDirectionV1 {
    fn from(d: Direction) -> Self {
        match d {
            Direction::ToRemote => StoredDirectionV1::ToRemote,
            Direction::FromRemote => StoredDirectionV1::FromRemote,
        }
    }
}

impl From<StoredDirectionV1> for Direction {
    fn from(d: StoredDirectionV1) -> Self {
        match d {
            StoredDirectionV1::ToRemote => Direction::ToRemote,
            StoredDirectionV1::FromRemote => Direction::FromRemote,
        }
    }
}

impl From<&EventDetail> for StoredDetailV1 {
    fn from(d: &EventDetail) -> Self {
        match d.clone() {
            EventDetail::Typed {
                raw,
                text,
                masked_keys,
                keys,
            } => StoredDetailV1::Typed {
                raw,
                text,
                masked_keys,
                keys,
            },
            EventDetail::Clipboard {
                direction,
                mimetype,
                size_bytes,
                text,
                truncated,
            } => StoredDetailV1::Clipboard {
                direction: direction.into(),
                mimetype,
                size_bytes,
                text,
                truncated,
            },
            EventDetail::File {
                direction,
                name,
                mimetype,
                size_bytes,
                sha256,
                complete,
            } => StoredDetailV1::File {
                direction: direction.into(),
                name,
                mimetype,
                size_bytes,
                sha256,
                complete,
            },
            EventDetail::Title { title } => StoredDetailV1::Title { title },
            EventDetail::ScreenText { text, region } => StoredDetailV1::ScreenText { text, region },
        }
    }
}

impl From<StoredDetailV1> for EventDetail {
    fn from(d: StoredDetailV1) -> Self {
        match d {
            StoredDetailV1::Typed {
                raw,
                text,
                masked_keys,
                keys,
            } => EventDetail::Typed {
                raw,
                text,
                masked_keys,
                keys,
            },
            StoredDetailV1::Clipboard {
                direction,
                mimetype,
                size_bytes,
                text,
                truncated,
            } => EventDetail::Clipboard {
                direction: direction.into(),
                mimetype,
                size_bytes,
                text,
                truncated,
            },
            StoredDetailV1::File {
                direction,
                name,
                mimetype,
                size_bytes,
                sha256,
                complete,
            } => EventDetail::File {
                direction: direction.into(),
                name,
                mimetype,
                size_bytes,
                sha256,
                complete,
            },
            StoredDetailV1::Title { title } => EventDetail::Title { title },
            StoredDetailV1::ScreenText { text, region } => EventDetail::ScreenText { text, region },
        }
    }
}

/// The events object's bytes for `events`.
pub fn to_bytes(events: &ClipEvents) -> Vec<u8> {
    let file = EventsFileV1 {
        format: EVENTS_FORMAT_VERSION,
        activity_start_ms: events.activity_start_ms,
        activity: events
            .activity
            .iter()
            .map(|a| (a.changed_px, a.keys))
            .collect(),
        events: events
            .events
            .iter()
            .map(|e| StoredEventV1 {
                offset_ms: e.offset_ms,
                detail: (&e.detail).into(),
            })
            .collect(),
    };
    serde_json::to_vec(&file).expect("events serialize: plain data")
}

/// Reads an events object.
pub fn from_bytes(bytes: &[u8]) -> Result<ClipEvents, EventsFormatError> {
    if bytes.len() > EVENTS_OBJECT_BYTES_MAX {
        return Err(EventsFormatError::TooLarge {
            bytes: bytes.len(),
            max: EVENTS_OBJECT_BYTES_MAX,
        });
    }
    #[derive(Deserialize)]
    struct Probe {
        format: u32,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| EventsFormatError::Malformed(e.to_string()))?;
    if probe.format != EVENTS_FORMAT_VERSION {
        return Err(EventsFormatError::UnknownFormat {
            found: probe.format,
            known: EVENTS_FORMAT_VERSION,
        });
    }
    let file: EventsFileV1 =
        serde_json::from_slice(bytes).map_err(|e| EventsFormatError::Malformed(e.to_string()))?;
    let events: Vec<Event> = file
        .events
        .into_iter()
        .map(|e| Event {
            offset_ms: e.offset_ms,
            detail: e.detail.into(),
        })
        .collect();
    if let Some(index) = events
        .windows(2)
        .position(|w| w[1].offset_ms < w[0].offset_ms)
    {
        return Err(EventsFormatError::OutOfOrder { index: index + 1 });
    }
    Ok(ClipEvents {
        events,
        activity_start_ms: file.activity_start_ms,
        activity: file
            .activity
            .into_iter()
            .map(|(changed_px, keys)| ActivitySecond { changed_px, keys })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClipEvents {
        ClipEvents {
            events: vec![
                Event {
                    offset_ms: 1200,
                    detail: EventDetail::Typed {
                        raw: "echo hi<Return>".into(),
                        text: "echo hi\n".into(),
                        masked_keys: 0,
                        keys: 8,
                    },
                },
                Event {
                    offset_ms: 3000,
                    detail: EventDetail::Clipboard {
                        direction: Direction::ToRemote,
                        mimetype: "image/png".into(),
                        size_bytes: 4096,
                        text: None,
                        truncated: false,
                    },
                },
                Event {
                    offset_ms: 3000,
                    detail: EventDetail::File {
                        direction: Direction::FromRemote,
                        name: "list.csv".into(),
                        mimetype: "text/csv".into(),
                        size_bytes: 12,
                        sha256: "ab".repeat(32),
                        complete: true,
                    },
                },
                Event {
                    offset_ms: 4000,
                    detail: EventDetail::Title {
                        title: "root@erp: ~".into(),
                    },
                },
                Event {
                    offset_ms: 5000,
                    detail: EventDetail::ScreenText {
                        text: "DROP TABLE".into(),
                        region: [0, 16, 640, 18],
                    },
                },
            ],
            activity_start_ms: 1000,
            activity: vec![
                ActivitySecond {
                    changed_px: 10,
                    keys: 8,
                },
                ActivitySecond::default(),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let events = sample();
        assert_eq!(from_bytes(&to_bytes(&events)).unwrap(), events);
    }

    #[test]
    fn refuses_unknown_format_garbage_and_disorder() {
        assert!(matches!(
            from_bytes(br#"{"format":2}"#),
            Err(EventsFormatError::UnknownFormat { found: 2, known: 1 })
        ));
        assert!(matches!(
            from_bytes(b"\x00\x01not json"),
            Err(EventsFormatError::Malformed(_))
        ));
        let mut events = sample();
        events.events.swap(0, 4);
        assert!(matches!(
            from_bytes(&to_bytes(&events)),
            Err(EventsFormatError::OutOfOrder { index: 1 })
        ));
    }
}
