//! Command line entry point: argv, config load, exit codes. Nothing else.

fn main() {
    println!("session-recorder {}", env!("CARGO_PKG_VERSION"));
}
