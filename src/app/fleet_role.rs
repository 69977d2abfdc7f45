//! Wiring of the history role (`serve` with a `[fleet]` section): the role's own queue (users,
//! web logins, audit log), the fleet index, its indexer thread and its clip verifier thread
//! (unless `fleet.verify-bytes-per-s` is 0), and the ordinary HTTP server over
//! [`FleetBackend`]. No tap, spool, encoders or uploaders run.
//!
//! Owns no fleet logic (see `crate::fleet`); only starts it, publishes its status and stops it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sink::StoreObjects;
use super::threads::{self, Workers};
use super::{AppError, Context};
use crate::config::{FleetConfig, RawConfig};
use crate::fleet::index::{FleetIndex, INDEX_DIR};
use crate::fleet::indexer::{Indexer, Pacer, PassReport, VerifyStep};
use crate::lifecycle::Heartbeats;
use crate::limits::SHUTDOWN_GRACE_MS;
use crate::serve::backend_fleet::FleetBackend;
use crate::serve::backend_queue::QueueBackend;
use crate::serve::{LocalThenRemote, ServeContext, ServeOptions};
use crate::status::{FleetIndexStatus, StatusBoard};
use crate::upload::StoreTarget;

/// Everything the role runs on.
#[derive(Clone)]
pub struct Role {
    /// The index.
    pub index: Arc<FleetIndex>,
    /// The indexer.
    pub indexer: Arc<Indexer>,
    /// The HTTP side's history source.
    pub backend: Arc<FleetBackend>,
    /// The HTTP side's accounts and audit log: the role's own queue.
    pub accounts: Arc<QueueBackend>,
    /// The bucket.
    pub store: Arc<dyn crate::upload::ObjectStore>,
}

/// Opens the role's index, store and backend.
///
/// # Errors
/// [`AppError`] when the index or the store cannot be opened.
pub fn open_role(ctx: &Context, fleet: &FleetConfig) -> Result<Role, AppError> {
    let index = Arc::new(
        FleetIndex::open(&ctx.config.data_dir.join(INDEX_DIR))
            .map_err(|e| AppError::Http(format!("fleet index: {e}")))?,
    );
    let settings = ctx.config.storage.upload_settings();
    let store = crate::upload::open_target(&settings, &fleet.target)
        .map_err(crate::upload::OpenStoreError::from)?;
    let location_prefix = match &fleet.target {
        StoreTarget::S3 { bucket, .. } => format!("s3://{bucket}/"),
        StoreTarget::Local { root } => format!("file://{}/", root.display()),
    };
    let accounts = Arc::new(QueueBackend::new(
        ctx.queue.clone(),
        ctx.clock.clone(),
        String::new(),
    ));
    let backend = Arc::new(FleetBackend::new(index.clone(), location_prefix));
    let indexer = Arc::new(Indexer::new(
        store.clone(),
        index.clone(),
        &fleet.prefix,
        fleet.trusted_keys.clone(),
    ));
    Ok(Role {
        index,
        indexer,
        backend,
        accounts,
        store,
    })
}

/// Runs the history role until SIGTERM/SIGINT.
///
/// # Errors
/// [`AppError`] when start-up fails.
pub fn serve_role(ctx: Context, raw: RawConfig, fleet: FleetConfig) -> Result<(), AppError> {
    threads::hook_signals(&ctx.shutdown)?;
    let role = open_role(&ctx, &fleet)?;
    ctx.status.update(|s| {
        s.fleet.index = Some(FleetIndexStatus {
            location: fleet.index.clone(),
            trusted_keys: fleet.trusted_keys_hex.clone(),
            ..FleetIndexStatus::default()
        });
        s.uploads.store = role.store.describe();
    });
    publish_counts(&ctx.status, &role);
    let mut workers = Workers::new(ctx.shutdown.clone());
    start_indexer(&ctx, &mut workers, &role, &fleet, &ctx.heartbeats)?;
    if fleet.verify_bytes_per_s > 0 {
        start_verifier(&ctx, &mut workers, &role, &fleet)?;
    }
    // The fleet's events objects and screen text (OCR) objects are fetched from the bucket and
    // checked against the SHA-256 and size the clip's signed manifest holds (a mismatch or a
    // corrupt object is skipped and counted; the session still plays).
    let search = super::search_worker::start(
        &ctx,
        &mut workers,
        role.backend.clone(),
        Some(role.store.clone()),
        super::search_worker::expected_from_fleet_index(role.index.clone()),
        Some(super::search_worker::ocr_from_fleet_index(
            role.index.clone(),
        )),
    )?;
    let http = if ctx.config.http.enabled {
        let serve_ctx = ServeContext {
            http: ctx.config.http.clone(),
            board: ctx.status.clone(),
            backend: crate::serve::Backend {
                history: role.backend.clone(),
                accounts: role.accounts.clone(),
            },
            clips: Arc::new(LocalThenRemote::new(Some(Arc::new(StoreObjects(
                role.store.clone(),
            ))))),
            // The role records nothing: there is no admission gate to report.
            admission: Arc::new(|| Ok(())),
            raw_config: raw,
            settings: crate::serve::SettingsHooks::none(),
            clock: ctx.clock.clone(),
            options: ServeOptions {
                search,
                ..ServeOptions::default()
            },
        };
        Some(crate::serve::start(serve_ctx).map_err(|e| AppError::Http(e.to_string()))?)
    } else {
        None
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    log::info!(
        "event=started role=fleet_history version={} index={:?} trusted_keys={}",
        env!("CARGO_PKG_VERSION"),
        fleet.index,
        fleet.trusted_keys.len()
    );
    ctx.shutdown.wait();
    log::info!("event=stopping");
    if let Some(http) = http {
        http.stop();
    }
    let _ = workers.join(Duration::from_millis(SHUTDOWN_GRACE_MS));
    log::info!("event=stopped");
    Ok(())
}

/// The indexer loop: a poll every interval, a full rescan every rescan interval. A failing
/// pass leaves the index as it was (the history keeps being served) and shows on the status
/// page until a pass succeeds.
fn start_indexer(
    ctx: &Context,
    workers: &mut Workers,
    role: &Role,
    fleet: &FleetConfig,
    heartbeats: &Heartbeats,
) -> Result<(), AppError> {
    let (indexer, board, shutdown) = (
        role.indexer.clone(),
        ctx.status.clone(),
        ctx.shutdown.clone(),
    );
    let role_for_counts = role.clone();
    let clock = ctx.clock.clone();
    let heartbeat = heartbeats.register("fleet-indexer");
    let (poll, rescan) = (
        Duration::from_millis(fleet.poll_interval_ms),
        Duration::from_millis(fleet.rescan_interval_ms),
    );
    workers.spawn("fleet-indexer", None, move || {
        let mut last_rescan = Instant::now();
        while !shutdown.is_requested() {
            heartbeat.beat();
            let full = last_rescan.elapsed() >= rescan;
            let started = Instant::now();
            let result = if full {
                indexer.rescan()
            } else {
                indexer.poll()
            };
            let took_ms = started.elapsed().as_millis() as u64;
            let now_ms = clock.now_ms();
            match &result {
                Ok(report) => {
                    if full {
                        last_rescan = Instant::now();
                    }
                    log_pass(full, report, took_ms);
                    if report.filed > 0 || report.skipped > 0 || report.gone > 0 || full {
                        publish_counts(&board, &role_for_counts);
                    }
                }
                Err(e) => log::warn!("event=fleet_pass_failed full={full} error={e}"),
            }
            board.update(|s| {
                if let Some(ix) = &mut s.fleet.index {
                    ix.last_poll_ms = Some(now_ms);
                    ix.last_poll_duration_ms = took_ms;
                    match &result {
                        Ok(r) => {
                            ix.reachable = Some(true);
                            ix.last_error = None;
                            ix.last_poll_requests = r.requests;
                            if full {
                                ix.last_rescan_ms = Some(now_ms);
                            }
                        }
                        Err(e) => {
                            ix.reachable = Some(false);
                            ix.last_error = Some(e.to_string());
                        }
                    }
                }
            });
            if shutdown.sleep(poll) {
                break;
            }
        }
    })
}

/// The clip verifier loop: hashes every clip of the index once, at `verify-bytes-per-s`, from
/// the oldest session on; when all are hashed it waits a poll interval and looks again (new
/// sessions). A store error waits a poll interval too; the verdicts so far are kept.
fn start_verifier(
    ctx: &Context,
    workers: &mut Workers,
    role: &Role,
    fleet: &FleetConfig,
) -> Result<(), AppError> {
    let (role, board, shutdown) = (role.clone(), ctx.status.clone(), ctx.shutdown.clone());
    let heartbeat = ctx.heartbeats.register("fleet-verifier");
    let (rate, poll) = (
        fleet.verify_bytes_per_s,
        Duration::from_millis(fleet.poll_interval_ms),
    );
    workers.spawn("fleet-verifier", None, move || {
        let mut pacer = Pacer::new(rate);
        let mut after = None;
        let pause = |d: Duration| {
            heartbeat.beat();
            shutdown.sleep(d)
        };
        while !shutdown.is_requested() {
            heartbeat.beat();
            let idle = match role.indexer.verify_next(after, &mut pacer, &pause) {
                Ok(VerifyStep::Session {
                    cursor,
                    verified,
                    failed,
                }) => {
                    after = Some(cursor);
                    if verified + failed > 0 {
                        publish_counts(&board, &role);
                    }
                    false
                }
                Ok(VerifyStep::Continue(cursor)) => {
                    after = Some(cursor);
                    false
                }
                Ok(VerifyStep::End) => {
                    after = None;
                    true
                }
                Ok(VerifyStep::Stopped) => break,
                Err(e) => {
                    log::warn!("event=fleet_verify_failed error={e}");
                    true
                }
            };
            if idle {
                if shutdown.sleep(poll) {
                    break;
                }
                pacer.reset();
            }
        }
    })
}

fn log_pass(full: bool, r: &PassReport, took_ms: u64) {
    if r.filed > 0 || r.skipped > 0 || r.gone > 0 {
        log::info!(
            "event=fleet_pass full={full} listed={} filed={} skipped={} gone={} requests={} ms={took_ms}",
            r.listed,
            r.filed,
            r.skipped,
            r.gone,
            r.requests
        );
    }
}

/// Index counts and the appliance list, to the status board and the filter menu.
fn publish_counts(board: &StatusBoard, role: &Role) {
    match role.index.counts_and_appliances() {
        Ok((c, appliances)) => {
            role.backend.set_appliances(appliances);
            board.update(|s| {
                if let Some(ix) = &mut s.fleet.index {
                    ix.counts = c.clone();
                }
            });
        }
        Err(e) => log::error!("event=fleet_index_unreadable error={e}"),
    }
}
