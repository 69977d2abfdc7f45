//! The snapshot board that workers publish to and the HTTP side reads from.
