//! `corral ui`: opens the web console logged in as the caller.

use clap::Args;

use crate::args::{ConnectionArgs, Format, OutputArgs};
use crate::commands::{endpoint, print};
use crate::{CliError, output};

/// Open the web console in a browser. On the local socket corrald makes a one-time link on
/// 127.0.0.1 that logs the browser in as you (it works once, within a minute); against a
/// TCP endpoint it is the console's page, where you log in with your token or certificate.
#[derive(Debug, Clone, Args)]
pub struct UiArgs {
    /// Print the URL instead of opening a browser ($BROWSER, else xdg-open)
    #[arg(long)]
    pub no_browser: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn ui(connection: &ConnectionArgs, args: &UiArgs) -> Result<(), CliError> {
    let link = corral_client::console_link(&endpoint(connection)?).await?;
    let opened = !args.no_browser && open(&link.url);
    match args.output.format {
        Format::Table => {
            let note = match (opened, link.expires_in) {
                (true, _) => "Opened the web console in your browser: ",
                (false, Some(_)) => {
                    "Open this link (once, within a minute) in a browser on this host: "
                }
                (false, None) => "Open the web console: ",
            };
            print(&format!("{note}{}\n", link.url))
        }
        format => {
            let value = serde_json::json!({
                "url": link.url,
                "expires_in_seconds": link.expires_in,
                "opened": opened,
            });
            let text = match format {
                Format::Yaml => output::yaml(&value),
                _ => serde_json::to_string_pretty(&value)? + "\n",
            };
            print(&text)
        }
    }
}

/// Starts a browser on `url` (an argument, never through a shell); whether one started.
fn open(url: &str) -> bool {
    let browser = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "xdg-open".into());
    std::process::Command::new(browser.trim())
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
