//! The admission gate: may a session that must be recorded start now?
//!
//! [`AdmissionState`] is a shared cell the daemon updates (disk state from the disk watch,
//! settings problems from config validation, queue health from the queue) and the tap reads on
//! every new session and, for the disk, periodically during live recorded sessions. Tests set
//! it directly to simulate each condition. It does not probe anything itself and does no I/O;
//! the per-session checks that need I/O (sink, segment directory) are in the tap.
//!
//! Status codes, chosen from the Guacamole protocol's list and documented for operators:
//! - free disk below the floor (`Low`), `Critical`, or unknown: `0x0201 SERVER_BUSY`;
//! - invalid settings, queue not writable, segment directory not writable: `0x0200
//!   SERVER_ERROR`;
//! - guacd unreachable: `0x0208 UPSTREAM_UNAVAILABLE`; bad or slow handshake: `0x0300
//!   CLIENT_BAD_REQUEST` / `0x0308 CLIENT_TIMEOUT`; too many connections: `0x0201`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::disk::DiskState;

use super::handshake::StatusCode;

/// Why a session is refused (or closed): the text and code sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The Guacamole status code.
    pub code: StatusCode,
    /// A clear message for the person at the client.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Shared facts the gate decides on. Cheap to read from any thread.
#[derive(Debug)]
pub struct AdmissionState {
    disk: AtomicU8,
    settings_problem: Mutex<Option<String>>,
    queue_problem: Mutex<Option<String>>,
    /// guacd unreachable (the tap's watch): every session fails, recorded or not.
    upstream_problem: Mutex<Option<String>>,
}

impl Default for AdmissionState {
    fn default() -> Self {
        Self::new()
    }
}

fn disk_to_u8(d: DiskState) -> u8 {
    match d {
        DiskState::Available => 0,
        DiskState::Low => 1,
        DiskState::Critical => 2,
        DiskState::Unknown => 3,
    }
}

fn disk_from_u8(v: u8) -> DiskState {
    match v {
        0 => DiskState::Available,
        1 => DiskState::Low,
        2 => DiskState::Critical,
        _ => DiskState::Unknown,
    }
}

impl AdmissionState {
    /// A gate that refuses until the disk watch has reported (disk state `Unknown`).
    pub fn new() -> Self {
        Self {
            disk: AtomicU8::new(disk_to_u8(DiskState::Unknown)),
            settings_problem: Mutex::new(None),
            queue_problem: Mutex::new(None),
            upstream_problem: Mutex::new(None),
        }
    }

    /// Publishes the disk state (the disk watch calls this on every sample).
    pub fn set_disk_state(&self, state: DiskState) {
        self.disk.store(disk_to_u8(state), Ordering::Release);
    }

    /// The last published disk state.
    pub fn disk_state(&self) -> DiskState {
        disk_from_u8(self.disk.load(Ordering::Acquire))
    }

    /// Publishes a settings problem (`None` when the settings are valid).
    pub fn set_settings_problem(&self, problem: Option<String>) {
        *self
            .settings_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Publishes a queue problem (`None` when the queue is writable).
    pub fn set_queue_problem(&self, problem: Option<String>) {
        *self.queue_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Publishes whether guacd answers (the tap's watch and every session's connect): `None`
    /// when it does, else the reason. Sessions still try guacd themselves (it may be back);
    /// the report says no while it is down.
    pub fn set_upstream_problem(&self, problem: Option<String>) {
        *self
            .upstream_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Whether a new session that must be recorded may start, judged on the shared facts.
    ///
    /// # Errors
    /// The refusal to send to the client.
    pub fn check(&self) -> Result<(), Refusal> {
        match self.disk_state() {
            DiskState::Available => {}
            DiskState::Low => {
                return Err(Refusal::new(
                    StatusCode::ServerBusy,
                    "Session recording unavailable: free disk space is below the floor; \
                     this session must be recorded, so it cannot start",
                ));
            }
            DiskState::Critical => {
                return Err(Refusal::new(
                    StatusCode::ServerBusy,
                    "Session recording unavailable: the disk is critically full; \
                     this session must be recorded, so it cannot start",
                ));
            }
            DiskState::Unknown => {
                return Err(Refusal::new(
                    StatusCode::ServerBusy,
                    "Session recording unavailable: free disk space cannot be determined; \
                     this session must be recorded, so it cannot start",
                ));
            }
        }
        if let Some(p) = &*self
            .settings_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            return Err(Refusal::new(
                StatusCode::ServerError,
                format!("Session recording unavailable: invalid recorder settings ({p})"),
            ));
        }
        if let Some(p) = &*self.queue_problem.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(Refusal::new(
                StatusCode::ServerError,
                format!(
                    "Session recording unavailable: the recording queue cannot be written ({p})"
                ),
            ));
        }
        Ok(())
    }

    /// For `GET /api/v1/admission`: `Ok` (200) when recorded sessions are admitted, the reason
    /// otherwise (503).
    ///
    /// # Errors
    /// The reason new recorded sessions are refused.
    pub fn admission_report(&self) -> Result<(), String> {
        self.check().map_err(|r| r.message)?;
        match &*self
            .upstream_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(p) => Err(format!(
                "The remote desktop gateway (guacd) is unavailable ({p}); no session can start"
            )),
            None => Ok(()),
        }
    }
}

/// For `GET /api/v1/admission`: `Ok` (200) or the reason new recorded sessions are refused
/// (503). Same as [`AdmissionState::admission_report`].
///
/// # Errors
/// The reason new recorded sessions are refused.
pub fn admission_report(state: &AdmissionState) -> Result<(), String> {
    state.admission_report()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_until_the_disk_is_known_then_on_each_problem() {
        let a = AdmissionState::new();
        assert_eq!(a.check().unwrap_err().code, StatusCode::ServerBusy);
        a.set_disk_state(DiskState::Available);
        assert_eq!(a.admission_report(), Ok(()));
        a.set_disk_state(DiskState::Low);
        assert!(
            a.admission_report()
                .unwrap_err()
                .contains("below the floor")
        );
        a.set_disk_state(DiskState::Available);
        a.set_settings_problem(Some("video.framerate: 0".into()));
        let r = a.check().unwrap_err();
        assert_eq!(r.code, StatusCode::ServerError);
        assert!(r.message.contains("video.framerate"));
        a.set_settings_problem(None);
        a.set_queue_problem(Some("map full".into()));
        assert!(a.admission_report().unwrap_err().contains("queue"));
        a.set_queue_problem(None);
        assert!(a.check().is_ok());
    }

    #[test]
    fn the_report_says_no_while_guacd_is_unreachable() {
        let a = AdmissionState::new();
        a.set_disk_state(DiskState::Available);
        a.set_upstream_problem(Some("connection refused".into()));
        let reason = a.admission_report().unwrap_err();
        assert!(reason.contains("guacd") && reason.contains("connection refused"));
        // Sessions still try guacd themselves.
        assert!(a.check().is_ok());
        a.set_upstream_problem(None);
        assert_eq!(a.admission_report(), Ok(()));
    }
}
