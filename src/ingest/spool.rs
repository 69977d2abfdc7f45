//! Import of recordings guacd wrote itself into the spool directory (owned by the daemon helper).
