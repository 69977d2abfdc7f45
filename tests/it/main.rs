//! The integration tests, one module per stage or workflow, linked into one test binary with
//! one shared harness (`util`): one link instead of one per file, and every helper declared once
//! under one name. Run one stage with a filter: `cargo test --test it tap::`.

mod util;

mod crash;
mod daemon;
mod doctor;
mod e2e_browser;
mod encode;
mod encode_bounds;
mod fleet;
mod fleet_search;
mod fleet_search_cluster;
mod full_disk;
mod garage_cluster;
mod gateway;
mod gateway_search;
mod history_browser;
mod layering;
mod ocr;
mod ocr_daemon;
mod packaging;
mod pages_browser;
mod queue;
mod render;
mod search_bench;
mod search_browser;
mod seek_browser;
mod serve;
mod settings_browser;
mod soak;
mod tap;
mod tap_events;
mod upload;
