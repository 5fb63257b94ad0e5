//! A Git repository served by a real `git daemon` (Debian's git, installed by
//! `scripts/setup.sh`), with a work tree that commits and pushes to it: what the tests and
//! benchmarks of Git sources follow.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `git` in `dir` as a fixed committer and returns its trimmed standard output; panics
/// with git's own message when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .output()
        .expect("git (Debian package git) is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository `repo.git` served over `git://` on a free loopback port, and a work tree
/// whose `origin` it is. The daemon is killed on drop.
#[derive(Debug)]
pub struct GitServer {
    daemon: Child,
    port: u16,
    served: PathBuf,
    work: PathBuf,
}

impl GitServer {
    /// Makes `served/repo.git` and `work/` under `dir` and starts `git daemon` for them;
    /// returns once it accepts connections.
    pub fn start(dir: &Path) -> GitServer {
        let (served, work) = (dir.join("served"), dir.join("work"));
        std::fs::create_dir_all(&served).expect("served dir");
        std::fs::create_dir_all(&work).expect("work dir");
        git(&served, &["init", "-q", "--bare", "repo.git"]);
        git(&work, &["init", "-q", "-b", "main"]);
        let bare = served.join("repo.git");
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let daemon = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", served.display()))
            .arg(&served)
            // Its per-connection children outlive it briefly: they must not hold the
            // caller's output open.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        GitServer {
            daemon,
            port,
            served,
            work,
        }
    }

    /// The repository's URL: `git://localhost:PORT/repo.git`.
    pub fn url(&self) -> String {
        format!("git://localhost:{}/repo.git", self.port)
    }

    /// The port git daemon listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The work tree.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// The bare repository.
    pub fn bare(&self) -> PathBuf {
        self.served.join("repo.git")
    }

    /// Writes `files` (path in the work tree, text; `None` removes it), commits them (an
    /// empty commit when nothing changed), force-pushes to `main` and returns the commit id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, text) in files {
            let file = self.work.join(path);
            match text {
                Some(text) => {
                    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                    std::fs::write(&file, text).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&file);
                }
            }
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.push()
    }

    /// Force-pushes the work tree's HEAD to `main` and returns its commit id.
    pub fn push(&self) -> String {
        git(
            &self.work,
            &["push", "-q", "--force", "origin", "HEAD:main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
