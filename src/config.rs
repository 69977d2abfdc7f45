//! Settings: TOML file -> validated `Config`.
