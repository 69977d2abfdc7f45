//! Command line entry point: argv, config load, log level, exit codes (0 ok, 64 bad arguments
//! = EX_USAGE, 78 bad config = EX_CONFIG, 70 internal = EX_SOFTWARE). Nothing else: every
//! subcommand's work lives in its module.
//!
//! The daemon (`serve`) logs at info; one-shot commands (`user`, `status`, `encode`, `doctor`)
//! print their own output and log only warnings and errors unless `-v` (info) or `-vv` (debug)
//! is given. `SESSION_RECORDER_LOG` overrides both.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{ArgAction, Parser, Subcommand};
use log::LevelFilter;
use session_recorder::app::{self, logger::Logger, status_cmd};
use session_recorder::config::Config;

/// Exit code for an unusable config (sysexits EX_CONFIG); the unit does not restart on it.
const EXIT_CONFIG: u8 = 78;
/// Exit code for an internal failure (sysexits EX_SOFTWARE).
const EXIT_INTERNAL: u8 = 70;
/// Exit code for bad command-line arguments (sysexits EX_USAGE), as clap's own errors.
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "session-recorder",
    version,
    about = "Records Guacamole sessions and uploads them as H.264 MP4 clips"
)]
struct Cli {
    /// More log lines on stderr: -v info, -vv debug (the daemon logs info by default).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (embedded defaults when no config file exists).
    Serve {
        /// The config file (default /etc/session-recorder/config.toml when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Convert recordings to MP4 (a drop-in for guacenc's flags).
    Encode(session_recorder::encode::cli::EncodeArgs),
    /// Read a recording's screen text by OCR and print its screen text events.
    Ocr(session_recorder::ocr::cli::OcrArgs),
    /// Manage the web users of the history pages.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the box end to end and explain what to fix (exit 1 when recording is blocked).
    Doctor(session_recorder::doctor::DoctorArgs),
    /// Show the daemon's status (from its HTTP endpoint, or from the queue when it is down).
    Status {
        /// The daemon's base URL, e.g. http://127.0.0.1:8480.
        #[arg(long, conflicts_with = "data_dir")]
        url: Option<String>,
        /// Read the queue in this data directory instead of asking the daemon.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file naming the HTTP address and data directory.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add (or replace) a user; prints a generated password unless --password-stdin.
    Add {
        #[command(flatten)]
        args: session_recorder::serve::UserAddArgs,
        /// The config file naming the data directory.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn config_failure(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_CONFIG,
        error: e.into(),
    }
}

fn internal(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_INTERNAL,
        error: e.into(),
    }
}

/// The log level: `serve` logs info, one-shot commands warnings only; each `-v` adds a level.
fn log_level(command: &Command, verbose: u8) -> LevelFilter {
    let base = match command {
        Command::Serve { .. } => LevelFilter::Info,
        _ => LevelFilter::Warn,
    };
    match (base, verbose) {
        (l, 0) => l,
        (LevelFilter::Warn, 1) => LevelFilter::Info,
        (LevelFilter::Warn, 2) | (LevelFilter::Info, 1) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // clap's usage errors take EX_USAGE like ours; --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    Logger::install_from_env(log_level(&cli.command, cli.verbose));
    let result = match cli.command {
        Command::Doctor(args) => return doctor(&args),
        Command::Serve { config } => serve(config),
        Command::User(UserCommand::Add { args, config }) => user_add(&args, config),
        Command::Encode(args) => session_recorder::encode::cli::run(&args).map_err(internal),
        Command::Ocr(args) => session_recorder::ocr::cli::run(&args).map_err(internal),
        Command::Status {
            url,
            data_dir,
            config,
        } => status(url, data_dir, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            log::error!("event=exit code={} error={:#}", f.code, f.error);
            ExitCode::from(f.code)
        }
    }
}

fn serve(config: Option<PathBuf>) -> Result<(), Failure> {
    let file = Config::file_in_use(config.as_deref());
    let (config, raw) = Config::load(config.as_deref()).map_err(config_failure)?;
    app::serve(config, raw, file).map_err(|e| {
        if e.is_config() {
            config_failure(e)
        } else {
            internal(e)
        }
    })
}

fn user_add(
    args: &session_recorder::serve::UserAddArgs,
    config: Option<PathBuf>,
) -> Result<(), Failure> {
    let permissions = args.check().map_err(|e| Failure {
        code: EXIT_USAGE,
        error: anyhow::anyhow!(e),
    })?;
    let (config, _) = Config::load(config.as_deref()).map_err(config_failure)?;
    let added = app::user_add(&config, args).map_err(|e| match e {
        app::AppError::Usage(_) => Failure {
            code: EXIT_USAGE,
            error: anyhow::anyhow!(e),
        },
        e => internal(e),
    })?;
    match added {
        Some(password) => println!("password for {}: {password}", args.name),
        None => println!("saved user {} ({})", args.name, permissions.names()),
    }
    Ok(())
}

fn doctor(args: &session_recorder::doctor::DoctorArgs) -> ExitCode {
    match session_recorder::doctor::run(args) {
        Ok(report) => {
            print!("{report}");
            ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(EXIT_INTERNAL))
        }
        Err(e) => {
            log::error!("event=exit code={EXIT_CONFIG} error={e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn status(
    url: Option<String>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(), Failure> {
    let text = match (url, data_dir) {
        (Some(url), _) => status_cmd::fetch(&url).map_err(internal)?,
        (None, Some(dir)) => status_cmd::offline(&dir).map_err(internal)?,
        (None, None) => {
            // Ask the configured daemon; when it does not answer, read its queue.
            let (config, _) = Config::load(config.as_deref()).map_err(config_failure)?;
            let url = format!("http://{}", config.http.listen);
            match status_cmd::fetch(&url) {
                Ok(text) => text,
                Err(e) => {
                    log::info!("event=daemon_unreachable url={url} error={e}");
                    status_cmd::offline(&config.data_dir)
                        .with_context(|| format!("daemon at {url} unreachable ({e})"))
                        .map_err(internal)?
                }
            }
        }
    };
    println!("{text}");
    Ok(())
}
