//! Wiring of the daemon: builds the [`Context`], recovers the queue, starts the I/O executors,
//! encoders, uploaders, spool watcher, disk watch and HTTP server; handles shutdown.
//!
//! Owns no pipeline logic: every stage lives in its own module and receives what it needs from
//! the context (no globals). Start-up order matters and is narrated in [`serve`]: the queue is
//! recovered before systemd hears READY and before any worker pulls work.
//!
//! Submodules: [`logger`] (stderr, journald), [`threads`] (pinned threads and per-core
//! executors), [`sink`] (the queue-backed recording sink), [`status_cmd`] (`session-recorder
//! status`), [`runtime`] (where runtime files such as the HTTP socket live), [`reload`] (the
//! config file read again on SIGHUP and after a settings page save, applied live where it
//! can be; the one-time move of old web settings into the file). The shutdown
//! signal and heartbeats it hands to every loop live one floor down, in [`crate::lifecycle`],
//! so that the stages never import from here.

pub mod fleet_role;
pub mod logger;
pub mod memory;
pub mod ocr_worker;
pub mod reload;
pub mod runtime;
pub mod search_worker;
pub mod sink;
pub mod status_cmd;
pub mod threads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, RawConfig};
use crate::disk::{DiskProbe, DiskWatch, SystemProbe};
use crate::encode::{EncodeWorker, SegmentEncoder};
use crate::error::Classify;
use crate::ingest::recover::{SessionsRecovered, recover_sessions};
use crate::ingest::spool::SpoolImporter;
use crate::ingest::{AdmissionState, RecordingFlags, TapContext, run_tap, watch_upstream};
use crate::limits::{
    DISK_SAMPLE_INTERVAL_MS, MALLOC_TRIM_INTERVAL_MS, SHUTDOWN_GRACE_MS, UPLOAD_THREAD_NICE,
    UPLOADS_CONCURRENT_MAX, WATCHDOG_LOOP_SILENCE_MS_MAX,
};
use crate::manifest::{FleetWriterConfig, ManifestWorker, ManifestWorkerConfig};
use crate::queue::{Queue, QueueCounts, QueueError, QueueOptions};
use crate::serve::{LocalThenRemote, ServeContext, ServeHandle, ServeOptions, UserAddArgs};
use crate::status::StatusBoard;
use crate::upload::{KeyTemplate, ObjectStore, OpenStoreError, SharedStore, StoreTarget};
use crate::upload::{UploadWorker, UploadWorkerConfig};

use crate::lifecycle::{Heartbeats, Shutdown};
use crate::serve::backend_queue::QueueBackend;
use sink::{QueueSink, StoreObjects};
use threads::Workers;

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The settings are unusable (exit 78).
    #[error("bad configuration: {0}")]
    Config(String),
    /// The queue could not be opened or recovered.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The object store could not be set up.
    #[error("object store: {0}")]
    Store(#[from] OpenStoreError),
    /// The HTTP server could not start (bind, certificate).
    #[error("http: {0}")]
    Http(String),
    /// A one-shot command was given input it cannot use (exit 64), such as a password that is
    /// too short.
    #[error("{0}")]
    Usage(String),
    /// A directory could not be created, a thread not started, a signal not hooked.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl AppError {
    /// Whether the cause is the configuration (exit code 78 rather than 70).
    pub fn is_config(&self) -> bool {
        match self {
            AppError::Config(_) => true,
            AppError::Store(OpenStoreError::Settings(_)) => true,
            AppError::Store(OpenStoreError::Store(e)) => e.is_config_problem(),
            _ => false,
        }
    }
}

impl Classify for AppError {
    fn is_transient(&self) -> bool {
        match self {
            AppError::Config(_) | AppError::Http(_) | AppError::Usage(_) => false,
            AppError::Queue(e) => e.is_transient(),
            AppError::Store(e) => e.is_transient(),
            AppError::Io { source, .. } => source.is_transient(),
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let what = what.into();
    move |source| AppError::Io { what, source }
}

/// Everything a stage may need, built once at start-up and passed down.
#[derive(Clone)]
pub struct Context {
    /// Validated settings.
    pub config: Arc<Config>,
    /// The durable queue.
    pub queue: Arc<Queue>,
    /// Where clips go; a settings reload swaps the store inside.
    pub store: Arc<SharedStore>,
    /// How each clip's object key is made.
    pub key_template: KeyTemplate,
    /// Wall-clock time.
    pub clock: Arc<dyn Clock>,
    /// Free-space probe.
    pub disk: Arc<dyn DiskProbe>,
    /// The snapshot board the HTTP side reads.
    pub status: StatusBoard,
    /// Raised by SIGTERM/SIGINT.
    pub shutdown: Shutdown,
    /// Liveness of the supervised loops (systemd watchdog).
    pub heartbeats: Heartbeats,
    /// The tap's admission gate, fed by the disk watch and the queue sink.
    pub admission: Arc<AdmissionState>,
    /// This appliance's manifest signing key (created in the data dir on first start).
    pub signing_key: Arc<ed25519_dalek::SigningKey>,
    /// The config file the daemon started from; `None` = embedded defaults.
    pub file: Option<PathBuf>,
    /// The file's settings as written (after the one-time move of old web settings).
    pub raw: Arc<RawConfig>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

/// Directories under the data directory.
#[derive(Debug, Clone)]
pub struct DataDirs {
    /// The LMDB environment.
    pub queue: PathBuf,
    /// Segment files.
    pub segments: PathBuf,
    /// Encoded clips and thumbnails.
    pub clips: PathBuf,
}

impl DataDirs {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            queue: data_dir.join("queue"),
            segments: data_dir.join("segments"),
            clips: data_dir.join("clips"),
        }
    }
}

impl Context {
    /// Creates the directories, opens the queue, moves settings an older web page saved in
    /// the queue into `file` (once), and opens the store. A store that cannot be reached or
    /// made yet (a missing bucket directory) does not stop the start: clips wait locally, are
    /// retried, and the status page says why. Does not recover the queue nor start anything.
    ///
    /// # Errors
    /// [`AppError`]: unusable settings, a queue that cannot be opened.
    pub fn open(config: Config, raw: RawConfig, file: Option<PathBuf>) -> Result<Self, AppError> {
        let dirs = DataDirs::new(&config.data_dir);
        for dir in [
            &config.data_dir,
            &config.spool_dir,
            &dirs.segments,
            &dirs.clips,
        ] {
            std::fs::create_dir_all(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let queue = Arc::new(Queue::open(&QueueOptions::new(&dirs.queue), clock.clone())?);
        let (config, raw) = match reload::migrate_legacy_settings(&queue, file.as_deref()) {
            Ok(reload::Migration::Moved(keys)) if !keys.is_empty() => {
                // The file changed: it is what runs.
                let path = file.as_deref().unwrap_or(std::path::Path::new(""));
                let raw =
                    RawConfig::from_file(path).map_err(|e| AppError::Config(e.to_string()))?;
                (
                    raw.validate()
                        .map_err(|e| AppError::Config(e.to_string()))?,
                    raw,
                )
            }
            Ok(_) => (config, raw),
            Err(e) => {
                // The file could not be written: the old settings stay in the queue for the
                // next start, the file's are in force.
                log::error!("event=legacy_settings_not_moved error={e}");
                (config, raw)
            }
        };
        let settings = config.storage.upload_settings();
        let location = settings.validate().map_err(OpenStoreError::from)?;
        if let StoreTarget::Local { root } = &location.target {
            sweep_local_bucket_staging(root);
        }
        let (store, store_problem) =
            crate::upload::open_target_or_later(&settings, &location.target)
                .map_err(OpenStoreError::from)?;
        let store = Arc::new(SharedStore::new(store));
        let status = StatusBoard::new(clock.clone(), config.disk_floor_bytes, config.queue_length);
        if let Some(e) = store_problem {
            log::error!("event=store_not_ready error={e} note=clips_wait_locally_and_are_retried");
            status.record_error("upload", &e.to_string());
            status.update(|s| {
                s.uploads.reachable = Some(false);
                s.uploads.last_error = Some(e.to_string());
            });
        }
        let description = store.describe();
        let signing_key = crate::manifest::keys::load_or_create(&config.data_dir)
            .map_err(|e| AppError::Config(e.to_string()))?;
        let public_key = crate::manifest::keys::public_hex(&signing_key);
        status.update(|s| {
            s.uploads.store = description;
            s.fleet.signing_public_key = Some(public_key);
        });
        Ok(Self {
            config: Arc::new(config),
            queue,
            store,
            key_template: location.template,
            clock,
            disk: Arc::new(SystemProbe),
            status,
            shutdown: Shutdown::new(),
            heartbeats: Heartbeats::new(),
            admission: Arc::new(AdmissionState::new()),
            signing_key: Arc::new(signing_key),
            file,
            raw: Arc::new(raw),
        })
    }

    /// The data directory layout.
    pub fn dirs(&self) -> DataDirs {
        DataDirs::new(&self.config.data_dir)
    }
}

/// Runs the daemon until SIGTERM/SIGINT, then stops cleanly.
///
/// # Errors
/// [`AppError`] when start-up fails; a running daemon logs its errors and keeps going.
pub fn serve(config: Config, raw: RawConfig, file: Option<PathBuf>) -> Result<(), AppError> {
    // 0. Fewer malloc arenas before any worker thread makes its own.
    memory::bound_arenas();
    // 1. Context: directories, queue, store. Nothing runs yet.
    let ctx = Context::open(config, raw, file)?;
    // The history role: index and history only, nothing recorded here.
    if let Some(fleet) = ctx.config.fleet.clone() {
        let raw = (*ctx.raw).clone();
        return fleet_role::serve_role(ctx, raw, fleet);
    }
    let reload_requests = threads::hook_signals(&ctx.shutdown)?;
    // 2. Recovery before anyone pulls work: interrupted encodes and uploads go back to ready;
    //    sessions a crash left open get their files cut to a frame, registered, and end as
    //    interrupted (before the tap could reuse a segment index).
    recover(&ctx)?;
    sweep_temporaries(&ctx.dirs());
    // 3. Workers.
    let mut workers = Workers::new(ctx.shutdown.clone());
    // The first disk sample before any worker looks at the board.
    let mut disk = DiskWatch::new(ctx.config.spool_dir.clone(), ctx.config.disk_floor_bytes);
    publish_disk(&ctx, &mut disk);
    start_spool(&ctx, &mut workers)?;
    let encoder = Arc::new(crate::encode::X264SegmentEncoder::new(
        ctx.config.video.encoder_settings(),
        crate::events::extract::ExtractSettings {
            mask_unechoed_input: ctx.config.search.mask_unechoed_input,
        },
    ));
    // Clips filed from now on are marked for OCR when it is on (before any encoder runs).
    ctx.queue.set_ocr_wanted(ctx.config.search.ocr);
    start_encoders(&ctx, &mut workers, encoder.clone())?;
    if ctx.config.search.ocr {
        ocr_worker::start(&ctx, &mut workers)?;
    }
    let uploads = start_uploaders(&ctx, &mut workers)?;
    start_manifests(&ctx, &mut workers)?;
    let disk_floor = Arc::new(std::sync::atomic::AtomicU64::new(
        ctx.config.disk_floor_bytes,
    ));
    start_housekeeping(&ctx, &mut workers, disk, disk_floor.clone())?;
    let retention = start_retention(&ctx, &mut workers)?;
    workers.start_executors(threads::core_count())?;
    let tap_flags = start_tap(&ctx, &mut workers)?;
    // Settings reload: SIGHUP (`systemctl reload`) and the settings page's saves.
    let reloader = Arc::new(reload::Reloader::new(
        ctx.file.clone(),
        (*ctx.raw).clone(),
        (*ctx.config).clone(),
        reload::LiveParts {
            store: ctx.store.clone(),
            uploads,
            encoder,
            retention,
            disk_floor_bytes: disk_floor,
            tap_flags,
        },
        ctx.status.clone(),
    ));
    threads::serve_reloads(reload_requests, reloader.clone(), ctx.shutdown.clone())?;
    // The appliance checks its own events objects by reading them (its own disk and bucket).
    let search = search_worker::start(
        &ctx,
        &mut workers,
        backend_for(&ctx).history,
        Some(ctx.store.clone()),
        Arc::new(|_, _, _| None),
        ctx.config
            .search
            .ocr
            .then(|| search_worker::ocr_from_queue(ctx.queue.clone())),
    )?;
    let http = start_http(&ctx, (*ctx.raw).clone(), reloader, search)?;
    // 4. systemd: ready, and watchdog pings while every loop is alive.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    start_watchdog(&ctx, &mut workers)?;
    log::info!(
        "event=started version={} data_dir={} spool_dir={} store={:?} encoders={}",
        env!("CARGO_PKG_VERSION"),
        ctx.config.data_dir.display(),
        ctx.config.spool_dir.display(),
        ctx.store.describe(),
        ctx.config.queue_length
    );
    // 5. Stop: wait for the signal, give the loops a grace period, flush the queue.
    ctx.shutdown.wait();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    log::info!("event=stopping");
    if let Some(http) = http {
        http.stop();
    }
    let abandoned = workers.join(Duration::from_millis(SHUTDOWN_GRACE_MS));
    if !abandoned.is_empty() {
        log::warn!(
            "event=abandoned_at_stop threads={} note=interrupted_work_is_redone_after_restart",
            abandoned.join(",")
        );
    }
    ctx.queue.sync()?;
    log::info!("event=stopped");
    Ok(())
}

/// Start-up recovery: the queue's own, then what only the daemon can decide. Runs before any
/// worker, the spool import and the tap start.
///
/// # Errors
/// Queue errors.
pub fn recover(ctx: &Context) -> Result<(), AppError> {
    let report = ctx.queue.recover()?;
    log::info!(
        "event=queue_recovered segments_requeued={} clips_requeued={} segments_writing={} sessions_live={}",
        report.segments_requeued,
        report.clips_requeued,
        report.segments_writing,
        report.sessions_live
    );
    // Sessions a crash left open: their files on disk (the open segment, a roll whose seal
    // did not commit) are cut back to the last complete frame, fsynced and registered, and the
    // sessions end as `Interrupted` at the time of their last write; segments still `Writing`
    // of no open session are sealed with what reached the disk.
    let sessions = recover_sessions(&ctx.queue, &ctx.dirs().segments)?;
    if sessions != SessionsRecovered::default() {
        log::warn!(
            "event=sessions_recovered sessions={} segments={} quarantined={} removed_empty={} \
             bytes_cut={} failed={} orphans_sealed={}",
            sessions.sessions,
            sessions.segments,
            sessions.quarantined,
            sessions.removed,
            sessions.bytes_cut,
            sessions.failed,
            sessions.orphans_sealed
        );
    }
    if sessions.failed > 0 {
        ctx.status.record_error(
            "recovery",
            &format!(
                "{} interrupted session(s) could not be recovered (see the log); retried at \
                 the next start",
                sessions.failed
            ),
        );
    }
    Ok(())
}

fn start_encoders(
    ctx: &Context,
    workers: &mut Workers,
    encoder: Arc<dyn SegmentEncoder>,
) -> Result<(), AppError> {
    let cores = threads::core_ids();
    for slot in 0..ctx.config.queue_length {
        // Round-robin over the cores when there are more encoders than cores.
        let core = (!cores.is_empty()).then(|| cores[slot % cores.len()]);
        let worker = EncodeWorker::new(
            slot,
            core.map(|c| c.id),
            ctx.queue.clone(),
            encoder.clone(),
            ctx.status.clone(),
            ctx.clock.clone(),
            ctx.dirs().clips,
        );
        let heartbeat = ctx.heartbeats.register(&format!("encoder-{slot}"));
        let shutdown = ctx.shutdown.clone();
        workers.spawn(&format!("encoder-{slot}"), core, move || {
            worker.run(&shutdown, &heartbeat)
        })?;
    }
    Ok(())
}

fn start_spool(ctx: &Context, workers: &mut Workers) -> Result<(), AppError> {
    let importer = SpoolImporter::new(
        ctx.config.spool_dir.clone(),
        ctx.dirs().segments,
        ctx.config.segment_bytes_max,
        ctx.queue.clone(),
        ctx.status.clone(),
        ctx.clock.clone(),
    );
    let heartbeat = ctx.heartbeats.register("spool");
    let shutdown = ctx.shutdown.clone();
    workers.spawn("spool", None, move || importer.run(&shutdown, &heartbeat))
}

/// Every [`DISK_SAMPLE_INTERVAL_MS`]: samples free space into the status board (and the tap's
/// admission), and publishes the queue counts; every [`MALLOC_TRIM_INTERVAL_MS`] gives the
/// allocator's free pages back to the kernel ([`memory::trim`]).
fn start_housekeeping(
    ctx: &Context,
    workers: &mut Workers,
    mut disk: DiskWatch,
    disk_floor: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), AppError> {
    let ctx2 = ctx.clone();
    let heartbeat = ctx.heartbeats.register("housekeeping");
    workers.spawn("housekeeping", None, move || {
        let interval = Duration::from_millis(DISK_SAMPLE_INTERVAL_MS);
        let trim_interval = Duration::from_millis(MALLOC_TRIM_INTERVAL_MS);
        let mut trimmed = std::time::Instant::now();
        loop {
            heartbeat.beat();
            disk.set_floor(disk_floor.load(std::sync::atomic::Ordering::Relaxed));
            publish_disk(&ctx2, &mut disk);
            publish_counts(&ctx2);
            if trimmed.elapsed() >= trim_interval {
                memory::trim();
                trimmed = std::time::Instant::now();
            }
            if ctx2.shutdown.sleep(interval) {
                break;
            }
        }
    })
}

/// The retention thread: raw segments after upload, history and audit purge; the worker
/// publishes what it holds and purged.
fn start_retention(
    ctx: &Context,
    workers: &mut Workers,
) -> Result<Arc<crate::upload::RetentionWorker>, AppError> {
    let worker = Arc::new(
        crate::upload::RetentionWorker::new(
            ctx.queue.clone(),
            ctx.clock.clone(),
            ctx.config.retention,
            ctx.dirs().segments,
        )
        .skipping(ctx.status.writing_segments().clone()),
    );
    let handle = worker.clone();
    let (shutdown, board) = (ctx.shutdown.clone(), ctx.status.clone());
    let heartbeat = ctx.heartbeats.register("retention");
    workers.spawn("retention", None, move || {
        threads::lower_priority(UPLOAD_THREAD_NICE);
        worker.run(&shutdown, &heartbeat, &board);
    })?;
    Ok(handle)
}

fn publish_disk(ctx: &Context, watch: &mut DiskWatch) {
    let state = watch.sample(ctx.disk.as_ref());
    ctx.admission.set_disk_state(state);
    let free = watch.free_bytes();
    ctx.status.update(|s| {
        s.disk.state = state;
        s.disk.free_bytes = free;
    });
}

fn publish_counts(ctx: &Context) {
    match ctx.queue.counts() {
        Ok(c) => {
            let map = counts_map(&c);
            ctx.status.update(|s| {
                s.uploads.backlog = c.clips.ready + c.clips.retrying + c.clips.failed;
                s.uploads.oldest_waiting_ms = c.oldest_waiting_clip_created_ms;
                s.uploads.active = c.clips.uploading;
                s.queue_counts = map;
            });
        }
        Err(e) => {
            log::error!("event=queue_counts_failed error={e}");
            ctx.status.record_error("queue", &e.to_string());
        }
    }
}

/// The queue counts as the status board's flat map (`segments_sealed`, `clips_ready`...).
pub fn counts_map(c: &QueueCounts) -> std::collections::BTreeMap<String, u64> {
    let mut map: std::collections::BTreeMap<String, u64> = c
        .named()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    map.insert("queue_map_bytes".to_string(), c.map_bytes as u64);
    map
}

/// Upload threads: as many as encoders (capped by the upload limit), at a lower CPU priority
/// so that uploads never starve the encoders.
fn start_uploaders(ctx: &Context, workers: &mut Workers) -> Result<Arc<UploadWorker>, AppError> {
    let concurrency = ctx.config.queue_length.min(UPLOADS_CONCURRENT_MAX);
    let worker = Arc::new(UploadWorker::new(
        ctx.queue.clone(),
        ctx.store.clone(),
        ctx.key_template.clone(),
        ctx.clock.clone(),
        UploadWorkerConfig {
            concurrency,
            retention_hours: ctx.config.retention_hours,
            hostname: hostname(),
            appliance_id: ctx.config.appliance_id.clone(),
        },
    ));
    for n in 0..concurrency {
        let name = format!("upload-{n}");
        let (worker, shutdown) = (worker.clone(), ctx.shutdown.clone());
        let heartbeat = ctx.heartbeats.register(&name);
        let board = ctx.status.clone();
        workers.spawn(&name, None, move || {
            threads::lower_priority(UPLOAD_THREAD_NICE);
            worker.run(&shutdown, &heartbeat, &board);
        })?;
    }
    Ok(worker)
}

/// The manifest thread, at the uploads' lower CPU priority: writes the manifests the queue
/// says are owed (signed fleet manifests and format 1 per-session manifests).
fn start_manifests(ctx: &Context, workers: &mut Workers) -> Result<(), AppError> {
    let worker = ManifestWorker::new(
        ctx.queue.clone(),
        ctx.store.clone(),
        ctx.clock.clone(),
        ManifestWorkerConfig {
            hostname: hostname(),
            fleet: Some(FleetWriterConfig {
                appliance_id: ctx.config.appliance_id.clone(),
                prefix: ctx.config.storage.manifest_prefix.clone(),
                key: ctx.signing_key.clone(),
            }),
        },
    );
    let (shutdown, board) = (ctx.shutdown.clone(), ctx.status.clone());
    let heartbeat = ctx.heartbeats.register("manifest");
    workers.spawn("manifest", None, move || {
        threads::lower_priority(UPLOAD_THREAD_NICE);
        worker.run(&shutdown, &heartbeat, &board);
    })
}

/// Removes the staging files a killed upload left in the local bucket's `.tmp/` (the daemon is
/// the only writer of its bucket directory, and nothing is staged before it starts).
fn sweep_local_bucket_staging(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root.join(".tmp")) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().is_file() && std::fs::remove_file(entry.path()).is_ok() {
            log::info!(
                "event=stale_staging_removed file={}",
                entry.path().display()
            );
        }
    }
}

/// Removes temporaries an earlier run left behind when it was killed mid-write: `*.tmp` of
/// the spool import and the encoder, `*.partial` of the MP4 writer, `*.faststart` of the MP4
/// writer's `moov` rewrite. None is referenced by the queue (files are registered only after
/// their rename).
pub fn sweep_temporaries(dirs: &DataDirs) {
    for root in [&dirs.segments, &dirs.clips] {
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if [".tmp", ".partial", ".faststart"]
                    .iter()
                    .any(|end| name.ends_with(end))
                    && std::fs::remove_file(&path).is_ok()
                {
                    log::info!("event=stale_temporary_removed file={}", path.display());
                }
            }
        }
    }
}

/// This machine's name for `{hostname}` in key templates.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// The tap on executor 0: binds now (a busy port fails the start), accepts until stop.
/// Returns the recording flags a settings reload changes (`None` without a tap).
fn start_tap(
    ctx: &Context,
    workers: &mut Workers,
) -> Result<Option<Arc<RecordingFlags>>, AppError> {
    if !ctx.config.tap.enabled {
        return Ok(None);
    }
    let addr = ctx.config.tap.listen;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(io_err(format!("cannot listen on {addr} for the tap")))?;
    let sink = Arc::new(QueueSink::new(
        ctx.queue.clone(),
        ctx.admission.clone(),
        ctx.status.clone(),
    ));
    let tap = TapContext::new(
        ctx.config.tap_settings(),
        ctx.admission.clone(),
        sink,
        ctx.clock.clone(),
        Some(ctx.status.clone()),
    );
    let flags = tap.flags.clone();
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    workers.drop_at_stop(Box::new(stop_tx));
    let upstream = ctx.config.tap.upstream.clone();
    ctx.status.update(|s| s.tap.upstream = upstream);
    let (watcher, watch_stop) = (tap.clone(), stop_rx.clone());
    let job: threads::IoJob = Box::new(move |ex| {
        Box::pin(async move {
            // Beside accepting: watch guacd (a status problem while it is down) and learn the
            // configured protocols' `args` up front, since a session refused at admission
            // must never touch guacd, and without the list the first refused session of a
            // protocol would have to ask guacd for it.
            ex.spawn(watch_upstream(watcher, watch_stop)).detach();
            let listener = match smol::net::TcpListener::try_from(listener) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("event=tap_failed error={e}");
                    return;
                }
            };
            if let Err(e) = run_tap(tap, listener, ex, stop_rx).await {
                log::error!("event=tap_failed error={e}");
            }
        })
    });
    if !workers.spawn_io(0, job) {
        log::error!("event=tap_not_started reason=no_executor");
    }
    Ok(Some(flags))
}

/// The HTTP(S) server, reading the status board and the queue.
fn start_http(
    ctx: &Context,
    raw: RawConfig,
    reloader: Arc<reload::Reloader>,
    search: Option<Arc<crate::search::SearchIndex>>,
) -> Result<Option<ServeHandle>, AppError> {
    if !ctx.config.http.enabled {
        return Ok(None);
    }
    let admission = ctx.admission.clone();
    // Runtime files under systemd's RuntimeDirectory or the data dir, never loose in /tmp; and
    // the leftovers of the old layout from a killed daemon go.
    runtime::remove_stale_legacy_dirs(&std::env::temp_dir());
    let env_dir = std::env::var("RUNTIME_DIRECTORY").ok();
    let socket_dir = runtime::prepare_socket_dir(&runtime::runtime_dir(
        env_dir.as_deref(),
        &ctx.config.data_dir,
    ));
    let serve_ctx = ServeContext {
        http: ctx.config.http.clone(),
        board: ctx.status.clone(),
        backend: backend_for(ctx),
        clips: Arc::new(LocalThenRemote::new(Some(Arc::new(StoreObjects(
            ctx.store.clone(),
        ))))),
        admission: Arc::new(move || admission.admission_report()),
        raw_config: raw,
        settings: crate::serve::SettingsHooks {
            file: ctx.file.clone(),
            reload: Arc::new(move || reloader.reload("settings page")),
        },
        clock: ctx.clock.clone(),
        options: ServeOptions {
            socket_dir,
            search,
            ..ServeOptions::default()
        },
    };
    let handle = crate::serve::start(serve_ctx).map_err(|e| AppError::Http(e.to_string()))?;
    Ok(Some(handle))
}

/// Pings the systemd watchdog at half its interval, only while every loop beats.
fn start_watchdog(ctx: &Context, workers: &mut Workers) -> Result<(), AppError> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return Ok(());
    }
    let heartbeats = ctx.heartbeats.clone();
    let shutdown = ctx.shutdown.clone();
    let max_silence =
        Duration::from_millis(WATCHDOG_LOOP_SILENCE_MS_MAX).min(Duration::from_micros(usec));
    workers.spawn("watchdog", None, move || {
        let interval = Duration::from_micros(usec / 2);
        loop {
            let stale = heartbeats.stale(max_silence);
            if stale.is_empty() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                log::error!("event=watchdog_withheld stale_loops={}", stale.join(","));
            }
            if shutdown.sleep(interval) {
                break;
            }
        }
    })
}

/// The HTTP side's storage: the queue. Clip locations in the history and in audit entries read
/// as Kasm's do: `s3://BUCKET/KEY`, or `file:///ROOT/KEY` for the embedded local bucket.
fn backend_for(ctx: &Context) -> crate::serve::Backend {
    let prefix = match ctx
        .config
        .storage
        .upload_settings()
        .validate()
        .map(|l| l.target)
    {
        Ok(StoreTarget::S3 { bucket, .. }) => format!("s3://{bucket}/"),
        Ok(StoreTarget::Local { root }) => format!("file://{}/", root.display()),
        // Validated at start-up already; keep the history working whatever happens.
        Err(_) => String::new(),
    };
    crate::serve::Backend::of(Arc::new(
        QueueBackend::new(ctx.queue.clone(), ctx.clock.clone(), prefix)
            .with_thumb_key(crate::serve::remote_store::thumb_key_of),
    ))
}

/// `session-recorder user add`: stores a web user in the queue of `config`'s data directory
/// (the daemon may be running: LMDB allows a second process). Returns the generated password
/// when none was read from stdin.
///
/// # Errors
/// Bad name, permissions or password; the queue cannot be opened or written.
pub fn user_add(config: &Config, args: &UserAddArgs) -> Result<Option<String>, AppError> {
    let dirs = DataDirs::new(&config.data_dir);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let queue = Arc::new(Queue::open(&QueueOptions::new(&dirs.queue), clock.clone())?);
    let backend = QueueBackend::new(queue, clock.clone(), String::new());
    let mut stdin = std::io::stdin().lock();
    crate::serve::user_add_cli(args, &backend, &mut stdin, clock.now_ms()).map_err(|e| match e {
        crate::serve::ServeError::BadInput(m) => AppError::Usage(m),
        e => AppError::Http(e.to_string()),
    })
}
