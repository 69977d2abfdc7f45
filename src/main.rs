//! Command line entry point: argv, config load, exit codes (0 ok, 78 bad config = EX_CONFIG,
//! 70 internal = EX_SOFTWARE). Nothing else: every subcommand's work lives in its module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use session_recorder::app::{self, logger::Logger, status_cmd};
use session_recorder::config::Config;

/// Exit code for an unusable config (sysexits EX_CONFIG); the unit does not restart on it.
const EXIT_CONFIG: u8 = 78;
/// Exit code for an internal failure (sysexits EX_SOFTWARE).
const EXIT_INTERNAL: u8 = 70;

#[derive(Parser)]
#[command(
    name = "session-recorder",
    version,
    about = "Records Guacamole sessions and uploads them as H.264 MP4 clips"
)]
struct Cli {
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

fn main() -> ExitCode {
    Logger::install_from_env();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(args) => return doctor(&args),
        Command::Serve { config } => serve(config),
        Command::User(UserCommand::Add { args, config }) => user_add(&args, config),
        Command::Encode(args) => session_recorder::encode::cli::run(&args).map_err(internal),
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
    let (config, _) = Config::load(config.as_deref()).map_err(config_failure)?;
    if let Some(password) = app::user_add(&config, args).map_err(internal)? {
        println!("password for {}: {password}", args.name);
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
