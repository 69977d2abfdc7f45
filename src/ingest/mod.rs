//! The guacd tap, segment writer, spool import and admission gate.
pub mod spool;
