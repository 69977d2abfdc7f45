//! Free-space watch on the filesystem holding the spool.
