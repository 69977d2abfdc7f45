//! The daemon's logger: the `log` facade, one line per event on stderr.
//!
//! Lines read `LEVEL target: message` where the message already carries `key=value` context
//! (house style). When stderr is connected to the journal (`JOURNAL_STREAM` is set, systemd does
//! that for services), each line starts with a `<N>` syslog priority instead of the level
//! name and has no timestamp (journald stamps it), so `journalctl -p warning` works. Installed
//! once by `main.rs`; nothing else in the crate knows about it.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// A minimal stderr logger.
#[derive(Debug)]
pub struct Logger {
    level: LevelFilter,
    journald: bool,
}

impl Logger {
    /// A logger at `level`; `journald` selects `<N>` priority prefixes.
    pub fn new(level: LevelFilter, journald: bool) -> Self {
        Self { level, journald }
    }

    /// Installs a logger at `default` level, configured from the environment:
    /// `JOURNAL_STREAM` selects journald prefixes, `SESSION_RECORDER_LOG` (`error`..`trace`)
    /// overrides the level. Calling it twice keeps the first logger.
    pub fn install_from_env(default: LevelFilter) {
        let level = std::env::var("SESSION_RECORDER_LOG")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        let journald = std::env::var_os("JOURNAL_STREAM").is_some();
        if log::set_boxed_logger(Box::new(Logger::new(level, journald))).is_ok() {
            log::set_max_level(level);
        }
    }

    /// Formats one record as the line written to stderr (newline included).
    pub fn format(&self, record: &Record<'_>) -> String {
        // Keep events on one line whatever the message holds.
        let message = record.args().to_string().replace('\n', " ");
        if self.journald {
            format!(
                "<{}>{}: {message}\n",
                syslog_priority(record.level()),
                record.target()
            )
        } else {
            format!(
                "{} {:5} {}: {message}\n",
                crate::clock::format_datetime_ms(crate::clock::Clock::now_ms(
                    &crate::clock::SystemClock
                )),
                record.level(),
                record.target()
            )
        }
    }
}

/// The syslog priority journald understands for a log level.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.format(record);
        // One write call per line so concurrent threads do not interleave inside a line; a
        // closed stderr must not take the daemon down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(journald: bool, level: Level, msg: &str) -> String {
        let logger = Logger::new(LevelFilter::Trace, journald);
        logger.format(
            &Record::builder()
                .args(format_args!("{msg}"))
                .level(level)
                .target("session_recorder::app")
                .build(),
        )
    }

    #[test]
    fn journald_lines_carry_priorities() {
        assert_eq!(
            line(true, Level::Warn, "event=x key=1"),
            "<4>session_recorder::app: event=x key=1\n"
        );
        assert!(line(true, Level::Error, "e").starts_with("<3>"));
        assert!(line(true, Level::Debug, "e").starts_with("<7>"));
    }

    #[test]
    fn one_line_per_event() {
        let l = line(false, Level::Info, "a\nb");
        assert_eq!(l.matches('\n').count(), 1, "{l}");
        assert!(l.contains("INFO"), "{l}");
        assert!(l.ends_with("session_recorder::app: a b\n"), "{l}");
    }
}
