use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::{Corrald, GuestKit};

/// How long a console or phase wait polls before the test fails (a bound, never a timing
/// claim: TCG guests on a loaded machine are slow).
pub const PATIENCE: Duration = Duration::from_secs(240);

/// A binary of this workspace built beside the running test (`target/<profile>/<name>`), e.g.
/// `corrald` for the CLI's tests. Panics, naming the build to run, when it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace) before these tests",
        path.display()
    );
    path
}

/// The `corral` CLI pointed at one [`Corrald`] (its unix socket, or TCP with TLS and a token),
/// with asserting runners: [`Cli::ok`], [`Cli::fails`], [`Cli::json`], and waits on what a VM
/// prints on its console ([`Cli::wait_console`]) or the phase an object reaches
/// ([`Cli::wait_phase`]). Every failure message ends with the daemon's log.
#[derive(Debug, Clone)]
pub struct Cli<'a> {
    binary: PathBuf,
    daemon: &'a Corrald,
    env: Vec<(OsString, OsString)>,
    tls: Option<(String, PathBuf, String)>,
}

impl<'a> Cli<'a> {
    /// `binary` (e.g. `env!("CARGO_BIN_EXE_corral")`) on `daemon`'s unix socket.
    pub fn new(binary: impl Into<PathBuf>, daemon: &'a Corrald) -> Cli<'a> {
        Cli {
            binary: binary.into(),
            daemon,
            env: Vec::new(),
            tls: None,
        }
    }

    /// With an environment variable set for every run (e.g. `CORRAL_SSH_DIR`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cli<'a> {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Over TCP instead: `--server url --ca-file ca` with the token in `CORRAL_TOKEN`.
    pub fn tls(mut self, url: &str, ca: &Path, token: &str) -> Cli<'a> {
        self.tls = Some((url.to_owned(), ca.to_owned(), token.to_owned()));
        self
    }

    /// The daemon this runs against.
    pub fn daemon(&self) -> &'a Corrald {
        self.daemon
    }

    /// A `corral` command with the connection set, for tests that pipe its stdin or stdout.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env_remove("CORRAL_SERVER").env_remove("CORRAL_TOKEN");
        match &self.tls {
            None => {
                cmd.env("CORRAL_SOCKET", self.daemon.socket());
            }
            Some((url, ca, token)) => {
                cmd.env_remove("CORRAL_SOCKET")
                    .env("CORRAL_TOKEN", token)
                    .args(["--server", url, "--ca-file"])
                    .arg(ca);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `corral args` with no stdin and returns what happened.
    pub fn run<A: AsRef<str>>(&self, args: &[A]) -> Output {
        self.command()
            .args(args.iter().map(AsRef::as_ref))
            .stdin(Stdio::null())
            .output()
            .expect("running corral")
    }

    /// Runs `corral args`, asserts it succeeded, and returns its stdout as bytes.
    #[track_caller]
    pub fn ok_bytes<A: AsRef<str>>(&self, args: &[A]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "corral {:?} failed ({}): {}{}",
            shown(args),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        out.stdout
    }

    /// Runs `corral args`, asserts it succeeded, and returns its stdout.
    #[track_caller]
    pub fn ok<A: AsRef<str>>(&self, args: &[A]) -> String {
        String::from_utf8(self.ok_bytes(args)).expect("UTF-8 output")
    }

    /// Runs `corral args` and parses its stdout as JSON (pass `-o json` where needed).
    #[track_caller]
    pub fn json<A: AsRef<str>>(&self, args: &[A]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("corral {:?}: not JSON ({e}): {out}", shown(args)))
    }

    /// Asserts that `corral args` exits with `code` and says `stderr_has` on stderr; returns
    /// the stderr.
    #[track_caller]
    pub fn fails<A: AsRef<str>>(&self, args: &[A], code: i32, stderr_has: &str) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let args = shown(args);
        assert_eq!(out.status.code(), Some(code), "corral {args:?}: {stderr}");
        assert!(
            stderr.contains(stderr_has),
            "corral {args:?}: expected {stderr_has:?} in: {stderr}"
        );
        stderr
    }

    /// `corral KIND get NAME -o json`.
    #[track_caller]
    pub fn get(&self, kind: &str, name: &str) -> serde_json::Value {
        self.json(&[kind, "get", name, "-o", "json"])
    }

    /// The names `corral vm list -o json` shows.
    #[track_caller]
    pub fn vm_names(&self) -> Vec<String> {
        self.json(&["vm", "list", "-o", "json"])
            .as_array()
            .expect("an array")
            .iter()
            .map(|vm| {
                vm["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// What `vm` printed on its console so far (`corral vm console VM --log`).
    #[track_caller]
    pub fn console_log(&self, vm: &str) -> String {
        self.ok(&["vm", "console", vm, "--log"])
    }

    /// Polls the console log of `vm` until `done` holds (within [`PATIENCE`]) and returns it;
    /// `what` names what was awaited in the failure message.
    #[track_caller]
    pub fn wait_console_until(&self, vm: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.console_log(vm);
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{vm}: no {what} on the console within {PATIENCE:?}:\n{}{}",
                tail(&log),
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the console log of `vm` contains `needle`, and returns the log.
    #[track_caller]
    pub fn wait_console(&self, vm: &str, needle: &str) -> String {
        self.wait_console_until(vm, &format!("{needle:?}"), |log| log.contains(needle))
    }

    /// Waits for the `index`th (from 0) console line of `vm` that starts with `prefix`, and
    /// returns it without its line ending.
    #[track_caller]
    pub fn wait_console_line(&self, vm: &str, prefix: &str, index: usize) -> String {
        let what = format!("{prefix} line #{index}");
        let log = self.wait_console_until(vm, &what, |log| {
            lines_starting(log, prefix).nth(index).is_some()
        });
        lines_starting(&log, prefix)
            .nth(index)
            .expect("just seen")
            .to_owned()
    }

    /// Polls `corral KIND get NAME -o json` until `status.phase` is `phase` (within
    /// [`PATIENCE`]), and returns the object.
    #[track_caller]
    pub fn wait_phase(&self, kind: &str, name: &str, phase: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let object = self.get(kind, name);
            if object["status"]["phase"] == phase {
                return object;
            }
            assert!(
                Instant::now() < deadline,
                "{kind} {name} not {phase} within {PATIENCE:?}: {object}{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until `corral KIND get NAME` says it is gone (exit 3).
    #[track_caller]
    pub fn wait_gone(&self, kind: &str, name: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.run(&[kind, "get", name]).status.code() != Some(3) {
            assert!(
                Instant::now() < deadline,
                "{kind} {name} was not deleted{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Attaches to `vm`'s console as its writer (`corral vm console VM --no-scrollback`, in
    /// pipe mode).
    pub fn attach(&self, vm: &str) -> Console {
        let mut child = self
            .command()
            .args(["vm", "console", vm, "--no-scrollback"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("corral vm console");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Console {
            vm: vm.to_owned(),
            child,
            stdin,
            lines,
        }
    }

    fn daemon_log(&self) -> String {
        format!("\n--- corrald log (end) ---\n{}", tail(&self.daemon.log()))
    }
}

/// A `corral vm console` attached to a VM, see [`Cli::attach`]. Dropping it kills the CLI.
#[derive(Debug)]
pub struct Console {
    vm: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Console {
    /// Types `line` every `every` until a line containing `answer` comes back, within
    /// `patience`. Write the line so that the guest computes the answer (`echo $((40+2))`):
    /// the echo of what was typed must not match.
    #[track_caller]
    pub fn type_until(&mut self, line: &str, answer: &str, every: Duration, patience: Duration) {
        let stdin = self.stdin.as_mut().expect("the console is open");
        let deadline = Instant::now() + patience;
        let mut seen = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: no {answer:?} on the console within {patience:?}; saw {seen:?}",
                self.vm
            );
            writeln!(stdin, "{line}").expect("typing on the console");
            stdin.flush().expect("typing on the console");
            let until = Instant::now() + every;
            while let Ok(l) = self
                .lines
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                if l.contains(answer) {
                    return;
                }
                seen.push(l);
            }
        }
    }

    /// Closes the console's input and waits for the CLI to exit.
    pub fn close(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("waiting for corral vm console")
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn shown<A: AsRef<str>>(args: &[A]) -> Vec<&str> {
    args.iter().map(AsRef::as_ref).collect()
}

fn lines_starting<'l>(log: &'l str, prefix: &'l str) -> impl Iterator<Item = &'l str> {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(move |l| l.starts_with(prefix))
}

/// The last 4000 bytes of `text`, for failure messages.
pub fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(4000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `vm create NAME` arguments booting the guest kit's kernel and initramfs with `cmdline`
/// and 256 MiB; a test adds its own options after them.
pub fn kit_vm_args(kit: &GuestKit, name: &str, cmdline: &str) -> Vec<String> {
    [
        "vm",
        "create",
        name,
        "--kernel",
        kit.kernel().to_str().expect("UTF-8 path"),
        "--initrd",
        kit.initrd().to_str().expect("UTF-8 path"),
        "--cmdline",
        cmdline,
        "--memory",
        "256M",
    ]
    .map(str::to_owned)
    .to_vec()
}
