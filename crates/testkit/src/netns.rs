use std::process::Command;

/// A network namespace of a test's own, deleted on drop with whatever still runs in it: tests
/// that make links, addresses, nftables tables or dnsmasq processes do it there, never in the
/// host's namespace that other tests share.
#[derive(Debug)]
pub struct Netns(String);

impl Netns {
    /// Makes namespace `corral-<tag><pid>`.
    pub fn new(tag: &str) -> Netns {
        let name = format!("corral-{tag}{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip (iproute2): run scripts/setup.sh");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    /// Moves the calling thread into the namespace, with its loopback up: every process it
    /// starts from now on (corrald, `ip`) runs there. Call it from the thread that starts them
    /// (a `#[tokio::test]` runs on one thread).
    pub fn enter(&self) {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.0)).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        ip(&["link", "set", "lo", "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in it (a dnsmasq or QEMU left by a failed run) goes with it.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `ip args…` in the calling thread's namespace; panics with its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2): run scripts/setup.sh");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
