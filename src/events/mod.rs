//! Session events, pure: what was typed, copied, transferred and shown during a session, each at
//! its millisecond offset from the start of the clip it belongs to (the clip's video time, so the
//! player seeks that clip to it), plus a per-second activity track for the player's heatmap. The
//! wall-clock time of an event is its clip's start plus the offset; its offset in the session is
//! that minus the session's start. No I/O.
//!
//! Events are taken from the recording itself while the encoder renders a segment (key events,
//! `name` titles, and the event instructions the tap writes for clipboard and file streams), so
//! the tap's segments and guacd's own spool recordings yield the same events from what they
//! contain. OCR adds [`EventKind::ScreenText`] events afterwards, in a job of its own. The
//! events of one clip travel with the clip: one events object beside its MP4 and thumbnail,
//! written by [`format`], its SHA-256 and size in the signed manifest.

pub mod extract;
pub mod format;
pub mod keys;

/// What kind of moment an event is (the search page's kind filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Text typed at the keyboard, one batch (split at pauses and at Enter).
    Typed,
    /// Clipboard contents, either direction.
    Clipboard,
    /// A file transfer, either direction.
    File,
    /// A terminal or window title (`name`).
    Title,
    /// Text read off the screen by OCR.
    ScreenText,
}

impl EventKind {
    /// Every kind, in the order pages list them.
    pub const ALL: [EventKind; 5] = [
        EventKind::Typed,
        EventKind::Clipboard,
        EventKind::File,
        EventKind::Title,
        EventKind::ScreenText,
    ];

    /// The stable name used in URLs, the API and the stored format.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Typed => "typed",
            EventKind::Clipboard => "clipboard",
            EventKind::File => "file",
            EventKind::Title => "title",
            EventKind::ScreenText => "screen_text",
        }
    }

    /// Parses [`EventKind::as_str`]'s names.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the event's text is what a user typed or copied, shown only to users allowed to
    /// see keystrokes (others see that the event happened, not its text).
    pub fn text_is_sensitive(self) -> bool {
        matches!(self, EventKind::Typed | EventKind::Clipboard)
    }
}

/// Which way a clipboard change or file transfer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the user's machine into the remote session (a paste, an upload).
    ToRemote,
    /// From the remote session to the user's machine (a copy, a download).
    FromRemote,
}

/// One event of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds from the clip's start (its video time).
    pub offset_ms: u64,
    /// What happened.
    pub detail: EventDetail,
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self.detail {
            EventDetail::Typed { .. } => EventKind::Typed,
            EventDetail::Clipboard { .. } => EventKind::Clipboard,
            EventDetail::File { .. } => EventKind::File,
            EventDetail::Title { .. } => EventKind::Title,
            EventDetail::ScreenText { .. } => EventKind::ScreenText,
        }
    }

    /// The text a search matches and a snippet shows: typed text with backspaces applied, the
    /// clipboard text (or its mimetype and size), the file's name, the title, the screen text.
    pub fn search_text(&self) -> String {
        match &self.detail {
            EventDetail::Typed { text, .. } => text.clone(),
            EventDetail::Clipboard {
                mimetype,
                size_bytes,
                text,
                ..
            } => match text {
                Some(t) => t.clone(),
                None => format!("{mimetype} ({size_bytes} bytes)"),
            },
            EventDetail::File {
                name,
                mimetype,
                size_bytes,
                ..
            } => format!("{name} {mimetype} ({size_bytes} bytes)"),
            EventDetail::Title { title } => title.clone(),
            EventDetail::ScreenText { text, .. } => text.clone(),
        }
    }
}

/// What an event holds, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    /// One batch of keys.
    Typed {
        /// The keys as guaclog writes them (printable keys as characters, others as `<Tab>`,
        /// `<Ctrl+c>`, `<BackSpace>`, unknown keysyms as `<0xNNNN>`), unechoed printable runs
        /// masked.
        raw: String,
        /// The same batch with backspaces applied and named keys dropped (Enter kept as a
        /// newline): what a search matches.
        text: String,
        /// Printable keys masked because the screen did not echo them (shown as `•••`).
        masked_keys: u32,
        /// Key presses in the batch.
        keys: u32,
    },
    /// A clipboard change.
    Clipboard {
        /// Paste (to remote) or copy (from remote).
        direction: Direction,
        /// Its mimetype.
        mimetype: String,
        /// Its full size.
        size_bytes: u64,
        /// Its text, for `text/*`, cut at the capture limit; `None` for other mimetypes.
        text: Option<String>,
        /// Whether `text` was cut.
        truncated: bool,
    },
    /// A file transfer.
    File {
        /// Upload (to remote) or download (from remote).
        direction: Direction,
        /// The file's name as the stream gave it.
        name: String,
        /// Its mimetype.
        mimetype: String,
        /// Bytes transferred.
        size_bytes: u64,
        /// SHA-256 of the bytes transferred, hex; never the content.
        sha256: String,
        /// Whether the stream ended (`false`: cut by the session's end or a segment limit).
        complete: bool,
    },
    /// A terminal or window title.
    Title {
        /// The title.
        title: String,
    },
    /// Words read off the screen.
    ScreenText {
        /// The text, lines joined by newlines.
        text: String,
        /// The region read, in screen pixels: x, y, width, height.
        region: [u32; 4],
    },
}

/// One second of activity, for the heatmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActivitySecond {
    /// Screen pixels changed in that second (counted once per frame that changed them).
    pub changed_px: u64,
    /// Key presses in that second.
    pub keys: u32,
}

/// The events of one clip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClipEvents {
    /// Events in time order.
    pub events: Vec<Event>,
    /// Offset of `activity[0]`'s second from the clip's start, ms.
    pub activity_start_ms: u64,
    /// Activity per second from `activity_start_ms`.
    pub activity: Vec<ActivitySecond>,
}
