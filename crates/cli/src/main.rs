//! `corral`, the command line of Corral.
//!
//! Exit codes: 0 ok; 1 failed (an invalid value, a request corrald refused, a VM that ended
//! Failed, a timeout); 2 usage error; 3 not found. Errors print `error: <message>` on
//! standard error.

mod args;
mod auth;
mod commands;
mod console;
mod converge;
mod create;
mod declare;
mod devenv;
mod memory;
mod network;
mod node;
mod output;
mod source;
mod ssh;
mod storage;
mod template;
mod ui;
mod wait;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use corral_client::ClientError;

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A call to corrald failed (3 for not found, else 1).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command could not do what was asked (1).
    #[error("{0}")]
    Failed(String),
    /// The command line asks for something that does not exist (2).
    #[error("{0}")]
    Usage(String),
    /// A manifest that cannot be used (1).
    #[error(transparent)]
    Manifest(#[from] corral_contract::manifest::ManifestError),
    /// Printing failed.
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
    /// Output that cannot be encoded.
    #[error("cannot encode the output: {0}")]
    Encode(#[from] serde_json::Error),
    /// Errors already printed, one by one; the exit code sums them up.
    #[error("some resources failed")]
    Reported(u8),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) => u8::try_from(e.exit_code()).unwrap_or(1),
            CliError::Usage(_) => 2,
            CliError::Reported(code) => *code,
            CliError::Failed(_) | CliError::Manifest(_) | CliError::Io(_) | CliError::Encode(_) => {
                1
            }
        }
    }
}

/// clap's exit code for a command line it refused: a value that does not parse (`--memory
/// lots`, `--cpus 0`, a bad name) is invalid input, 1; anything else about the command line
/// is usage, 2; help and version are 0.
fn clap_exit_code(err: &clap::Error) -> u8 {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
        ErrorKind::ValueValidation => 1,
        _ => 2,
    }
}

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = clap_exit_code(&err);
            // Help goes to stdout, errors to stderr, as clap decides.
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `corral vm list | head`: the reader left; nothing is wrong.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(CliError::Reported(code)) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
