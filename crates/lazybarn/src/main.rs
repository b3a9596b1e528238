//! `lazybarn`: the command line. Parses arguments and hands them to the
//! library; `lazybarn up` starts a whole cluster on this machine, the other
//! subcommands run one piece each (see `lazybarn --help`).

use std::process::ExitCode;

use clap::Parser;
use lazybarn::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match lazybarn::run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each error's message already holds its causes.
            eprintln!("lazybarn: {error}");
            ExitCode::FAILURE
        }
    }
}
