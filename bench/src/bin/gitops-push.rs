//! Time from `git push` to the VM Running, as a ratio to `corral apply -f` of the same
//! manifest to Running, in the same run against the same corrald.
//!
//! `cargo run --release -p corral-bench --bin gitops-push -- [--runs 5] [--interval 1]`
//!
//! A `git daemon` serves a repository a Git source follows every `--interval` seconds; each
//! run pushes a commit adding one running VM (the guest kit's kernel) and polls until its
//! phase is Running; the baseline applies the same VM from a file. The push's figure includes
//! the wait for the next fetch: half an interval on average.

use std::time::{Duration, Instant};

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GitServer, GuestKit, git, release_build};

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn until_running(cli: &Cli, name: &str, from: Instant) -> Duration {
    loop {
        let out = cli.run(&["vm", "get", name, "-o", "json"]);
        if out.status.success() {
            let vm: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if vm["status"]["phase"] == "Running" {
                return from.elapsed();
            }
        }
        assert!(
            from.elapsed() < Duration::from_secs(120),
            "{name} not Running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs = flag("--runs", 5);
    let interval = flag("--interval", 1);
    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    let vm = |name: &str| {
        format!(
            "kind: Vm\nmetadata: {{name: {name}}}\nspec:\n  memory: 128M\n  boot: {{kernel: {{kernel: {k}, initrd: {i}, cmdline: 'console=ttyS0 quiet'}}}}\n",
            k = kit.kernel().display(),
            i = kit.initrd().display()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(dir.path());
    let work = server.work().to_owned();
    server.commit(&[("vms/.keep.yaml", Some("# none yet\n"))], "empty");

    // Release binaries, as a user runs them (built here if they are not yet).
    let bin = release_build(&["corral-daemon", "corral-cli"]).expect("a release build");
    let d = Corrald::start(bin.join("corrald")).expect("corrald");
    let cli = Cli::new(bin.join("corral"), &d);
    let url = format!("git://127.0.0.1:{}/repo.git", server.port());
    let every = format!("{interval}s");
    cli.ok(&[
        "source",
        "create",
        "lab",
        "--git",
        &url,
        "--path",
        "vms",
        "--interval",
        &every,
    ]);
    let (mut pushed, mut applied) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("apply-{i}");
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, vm(&name)).unwrap();
        let started = Instant::now();
        cli.ok(&["apply", "-f", file.to_str().unwrap()]);
        applied.push(until_running(&cli, &name, started));

        let name = format!("git-{i}");
        std::fs::write(work.join(format!("vms/{name}.yaml")), vm(&name)).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", &name]);
        let started = Instant::now();
        server.push();
        pushed.push(until_running(&cli, &name, started));
    }
    drop(server);
    let (p, a) = (median(pushed), median(applied));
    println!(
        "{runs} runs, source interval {interval} s (expected wait for the next fetch: half of it)"
    );
    println!(
        "corral apply -f → Running, median: {:.0} ms",
        a.as_secs_f64() * 1e3
    );
    println!(
        "git push → Running, median:        {:.0} ms",
        p.as_secs_f64() * 1e3
    );
    println!(
        "ratio: {:.2}x; less half an interval: {:.2}x",
        p.as_secs_f64() / a.as_secs_f64(),
        (p.as_secs_f64() - interval as f64 / 2.0).max(0.0) / a.as_secs_f64()
    );
}
