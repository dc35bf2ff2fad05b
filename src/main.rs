use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    switchyard::cli::run(switchyard::cli::Cli::parse())
}
