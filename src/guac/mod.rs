//! The Guacamole protocol, pure: an incremental, bounded parser and typed instructions.
//! No I/O; callers feed bytes and get instructions back.
