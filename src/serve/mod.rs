//! The HTTP(S) side: status page, session history, playback, downloads, audit log.
