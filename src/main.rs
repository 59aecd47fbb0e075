//! The `lifeboat` binary: parse arguments, set up logging, run, map errors to exit codes.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
