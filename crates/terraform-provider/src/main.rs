//! `terraform-provider-corral`: started by Terraform, never by hand (it says so if it is).

use std::process::ExitCode;

fn main() -> ExitCode {
    // Logs go to stderr, which go-plugin reads and shows with TF_LOG=DEBUG.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("terraform-provider-corral: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(corral_terraform_provider::plugin::serve(
        corral_terraform_provider::provider(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-corral: {e}");
            ExitCode::FAILURE
        }
    }
}
