//! `vm console`: an interactive serial console in the terminal.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use corral_client::Client;

use crate::CliError;

/// Ctrl-], as virsh uses it to detach.
const DETACH: u8 = 0x1d;

/// `vm console NAME`: attaches in raw mode on a terminal (Ctrl-] detaches); with stdin not a
/// terminal, sends what it reads and prints output until a second after stdin ends.
pub async fn console(
    client: &Client,
    name: &str,
    read_only: bool,
    scrollback: bool,
) -> Result<(), CliError> {
    let mut session = client.attach_console(name, !read_only, scrollback).await?;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty { Some(RawMode::enable()?) } else { None };
    if tty {
        eprint!("Connected to vm/{name}; escape character is ^]\r\n");
    }
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    // Blocking reads of stdin on their own thread: a terminal cannot be read asynchronously
    // without taking it over.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if stdin_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut out = std::io::stdout();
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let deadline = linger
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365));
        tokio::select! {
            data = session.output.recv() => match data {
                Some(Ok(bytes)) => {
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    if tty { eprint!("\r\nvm/{name}: console closed\r\n"); }
                    return Ok(());
                }
            },
            input = stdin_rx.recv(), if linger.is_none() => match input {
                Some(Some(bytes)) => {
                    if tty && bytes.contains(&DETACH) {
                        let before: Vec<u8> = bytes.iter().copied().take_while(|b| *b != DETACH).collect();
                        if !before.is_empty() && !read_only {
                            let _ = session.input.send(before).await;
                        }
                        eprint!("\r\n");
                        return Ok(());
                    }
                    if read_only {
                        continue;
                    }
                    if session.input.send(bytes).await.is_err() {
                        return Ok(());
                    }
                }
                _ => {
                    if tty {
                        return Ok(());
                    }
                    linger = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            },
            _ = tokio::time::sleep_until(deadline), if linger.is_some() => return Ok(()),
        }
    }
}

/// The terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enable() -> Result<RawMode, CliError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)
            .map_err(|e| CliError::Failed(format!("reading the terminal's settings: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| CliError::Failed(format!("setting the terminal to raw mode: {e}")))?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
