use std::io::Read;

use clap::Parser;
use corral_daemon::config::{ClusterCommand, Command, LogFormat};
use corral_daemon::{Args, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Command::HashToken { scopes }) = &args.command {
        let mut token = String::new();
        if std::io::stdin().read_to_string(&mut token).is_err() || token.trim().is_empty() {
            eprintln!(
                "error: give the token on stdin, e.g. `head -c 32 /dev/urandom | base64 | tee token | corrald hash-token`"
            );
            return std::process::ExitCode::from(2);
        }
        let scopes = corral_daemon::auth::Scopes {
            vms: true,
            memory: scopes.iter().any(|s| s == "memory"),
            admin: scopes.iter().any(|s| s == "admin"),
        };
        println!("{}", corral_daemon::auth::hash_line(&token, scopes));
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(Command::Cluster(ClusterCommand::Init {
        data_dir,
        server_names,
    })) = &args.command
    {
        let dir = data_dir
            .clone()
            .or_else(|| args.data_dir.clone())
            .unwrap_or_else(corral_daemon::config::default_data_dir_for_me);
        return match corral_daemon::cluster::init(&dir, server_names) {
            Ok(text) => {
                println!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::FenceGuard) = &args.command {
        // Its log is a file (<run-dir>/fence/guard.log): plain text.
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
        let run_dir = args
            .run_dir
            .clone()
            .unwrap_or_else(corral_daemon::config::default_run_dir_for_me);
        let guarded =
            tokio::task::spawn_blocking(move || corral_daemon::fence_guard::run(&run_dir));
        return match guarded.await {
            Ok(Ok(())) => std::process::ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: the fence guard failed: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match Config::resolve(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    match corral_daemon::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
