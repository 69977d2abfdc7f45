//! Command line entry point: argv, config load, exit codes. Nothing else.
//!
//! (encode branch: a minimal `encode` sub-command to exercise the encoder; the lead merges the
//! real entry point by hand.)

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Encode Guacamole recordings to H.264 MP4 (guacenc-compatible flags).
    Encode(session_recorder::encode::cli::EncodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Encode(args) => match session_recorder::encode::cli::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
