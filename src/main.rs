//! Command line entry point: argv, config load, exit codes (78 bad config, 70 internal).
//!
//! In the `pkg` branch `serve` is a stand-in that only proves the packaging: it validates the
//! config, answers `GET /api/v1/status`, sends READY and pings the watchdog. The daemon
//! helper's real `serve` replaces it; the `doctor` stanza is the one to keep.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use session_recorder::config::{Config, DEFAULT_CONFIG_PATH};
use session_recorder::doctor::{self, DoctorArgs};

/// Exit code for an unusable config (sysexits EX_CONFIG); the unit does not restart on it.
const EXIT_CONFIG: u8 = 78;
/// Exit code for an internal failure (sysexits EX_SOFTWARE).
const EXIT_INTERNAL: u8 = 70;

#[derive(Parser)]
#[command(
    version,
    about = "Records Guacamole sessions and uploads them as MP4 clips"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: std::path::PathBuf,
    },
    /// Check the box end to end and explain what to fix.
    Doctor(DoctorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => match doctor::run(&args) {
            Ok(report) => {
                print!("{report}");
                ExitCode::from(report.exit_code() as u8)
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config } => match Config::load(Some(&config)) {
            Ok((config, _)) => match stand_in_serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("event=serve_failed error={e:#}");
                    ExitCode::from(EXIT_INTERNAL)
                }
            },
            Err(e) => {
                eprintln!("event=config_invalid error={e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// The packaging stand-in for the daemon: status endpoint, READY, watchdog, clean stop on
/// SIGTERM.
fn stand_in_serve(config: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("signal handler")?;
    }
    std::fs::create_dir_all(&config.data_dir).context("create data-dir")?;
    let server = tiny_http::Server::http(config.http.listen)
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", config.http.listen))?;
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec / 2));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    eprintln!(
        "event=ready http={} watchdog_ms={:?}",
        config.http.listen,
        watchdog.map(|d| d.as_millis())
    );
    let mut last_ping = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some(every) = watchdog
            && last_ping.elapsed() >= every
        {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            last_ping = Instant::now();
        }
        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let body = format!(
            "{{\"version\":\"{}\",\"serve\":\"packaging-stand-in\"}}",
            env!("CARGO_PKG_VERSION")
        );
        let response = if request.url() == "/api/v1/status" {
            tiny_http::Response::from_string(body).with_status_code(200)
        } else {
            tiny_http::Response::from_string("not found").with_status_code(404)
        };
        let _ = request.respond(response);
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    eprintln!("event=stopped");
    Ok(())
}
