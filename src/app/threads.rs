//! Threads of the daemon: named, optionally pinned OS threads for blocking loops (encoders,
//! spool, disk watch, watchdog), one smol `LocalExecutor` per core for async I/O (the tap), and
//! the signal thread that raises the shutdown.
//!
//! Owns spawning, pinning and joining with a grace period; not what the threads do.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use core_affinity::CoreId;
use smol::LocalExecutor;

use super::AppError;
use crate::lifecycle::Shutdown;

/// A future factory sent to an executor thread: built there (so the future need not be
/// `Send`), given the executor so it can spawn its own tasks.
pub type IoJob =
    Box<dyn FnOnce(Rc<LocalExecutor<'static>>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The cores this process may run on (empty when the platform does not say).
pub fn core_ids() -> Vec<CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// How many executors to run: one per core, at least one.
pub fn core_count() -> usize {
    core_ids().len().max(1)
}

/// The daemon's threads.
pub struct Workers {
    shutdown: Shutdown,
    threads: Vec<(String, JoinHandle<()>)>,
    executors: Vec<smol::channel::Sender<IoJob>>,
    /// Values whose drop tells a part to stop (channel senders), dropped first at stop.
    stop_tokens: Vec<Box<dyn Send>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .field("executors", &self.executors.len())
            .finish()
    }
}

impl Workers {
    /// No threads yet.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            threads: Vec::new(),
            executors: Vec::new(),
            stop_tokens: Vec::new(),
        }
    }

    /// Starts `body` on a thread called `name`, pinned to `core` when given (pinning that
    /// fails is logged, not fatal).
    ///
    /// # Errors
    /// The OS refused a thread.
    pub fn spawn(
        &mut self,
        name: &str,
        core: Option<CoreId>,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), AppError> {
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    log::warn!("event=pin_failed thread={thread_name} core={}", core.id);
                }
                body();
            })
            .map_err(super::io_err(format!("cannot start thread {name}")))?;
        self.threads.push((name.to_string(), handle));
        Ok(())
    }

    /// Starts `count` executor threads `io-N`, each pinned to core N, each running a smol
    /// `LocalExecutor` until shutdown.
    ///
    /// # Errors
    /// The OS refused a thread.
    pub fn start_executors(&mut self, count: usize) -> Result<(), AppError> {
        let cores = core_ids();
        for n in 0..count {
            let (tx, rx) = smol::channel::unbounded::<IoJob>();
            self.spawn(&format!("io-{n}"), cores.get(n).copied(), move || {
                run_executor(rx)
            })?;
            self.executors.push(tx);
        }
        Ok(())
    }

    /// Runs `job` on executor `n % count`. Returns false when no executor runs.
    pub fn spawn_io(&self, n: usize, job: IoJob) -> bool {
        if self.executors.is_empty() {
            return false;
        }
        self.executors[n % self.executors.len()]
            .try_send(job)
            .is_ok()
    }

    /// Keeps `token` until stop; dropping it is the part's stop signal.
    pub fn drop_at_stop(&mut self, token: Box<dyn Send>) {
        self.stop_tokens.push(token);
    }

    /// Stops the executors and waits up to `grace` for every thread; returns the names of the
    /// threads still running then (left to die with the process).
    pub fn join(mut self, grace: Duration) -> Vec<String> {
        self.shutdown.request();
        self.stop_tokens.clear();
        self.executors.clear();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.threads.iter().any(|(_, h)| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut abandoned = Vec::new();
        for (name, handle) in self.threads {
            if handle.is_finished() {
                if handle.join().is_err() {
                    log::error!("event=thread_panicked thread={name}");
                }
            } else {
                abandoned.push(name);
            }
        }
        abandoned
    }
}

/// One executor: spawns every job it receives until the job channel closes (at shutdown),
/// then waits for those jobs to finish (the tap seals and closes its sessions first).
fn run_executor(jobs: smol::channel::Receiver<IoJob>) {
    let ex = Rc::new(LocalExecutor::new());
    let spawner = ex.clone();
    smol::block_on(ex.run(async move {
        let mut tasks = Vec::new();
        while let Ok(job) = jobs.recv().await {
            tasks.push(spawner.spawn(job(spawner.clone())));
        }
        for task in tasks {
            task.await;
        }
    }));
}

/// SIGHUPs not yet served (`systemctl reload`): read by [`serve_reloads`].
pub type ReloadRequests = std::sync::mpsc::Receiver<()>;

/// Raises `shutdown` on the first SIGTERM or SIGINT; each SIGHUP becomes a reload request.
/// Installed before anything runs, so an early SIGHUP is a request, never a kill.
///
/// # Errors
/// The signal handlers could not be installed.
pub fn hook_signals(shutdown: &Shutdown) -> Result<ReloadRequests, AppError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(super::io_err("cannot install signal handlers"))?;
    let shutdown = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("event=signal_received signal={sig}");
                if sig == SIGHUP {
                    let _ = tx.send(());
                } else {
                    shutdown.request();
                    break;
                }
            }
        })
        .map_err(super::io_err("cannot start the signal thread"))?;
    Ok(rx)
}

/// Serves reload requests on a thread of its own until `shutdown`.
///
/// # Errors
/// The thread could not be started.
pub fn serve_reloads(
    requests: ReloadRequests,
    reloader: std::sync::Arc<super::reload::Reloader>,
    shutdown: Shutdown,
) -> Result<(), AppError> {
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            while !shutdown.is_requested() {
                match requests.recv_timeout(std::time::Duration::from_millis(
                    crate::limits::RELOAD_POLL_MS,
                )) {
                    Ok(()) => {
                        // Problems are logged and shown on the status page by the reloader.
                        let _ = reloader.reload("sighup");
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .map_err(super::io_err("cannot start the reload thread"))?;
    Ok(())
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: per-thread). Failure is logged.
pub fn lower_priority(nice: i32) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id changes only this
    // thread's nice value.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc != 0 {
        log::warn!(
            "event=nice_failed nice={nice} error={}",
            std::io::Error::last_os_error()
        );
    }
}
