//! The durable LMDB queue. The only module that touches LMDB.
