//! What roles and projects cost per request.
//!
//! ```text
//! cargo run --release -p corral-bench --bin authz -- [--requests 2000] [--creates 300] [--rounds 3]
//! ```
//!
//! One release corrald on TLS, with a project limit on `default` so every create is checked
//! against it. Two identities over the same TLS listener: an `operator` (role checks, project
//! membership, limits) and an `admin` (the single-admin baseline). Rounds alternate between
//! them so that the machine's noise falls on both. Prints list latency p50/p99 for each and
//! their difference (the authorization overhead per request), and creates per second for each
//! with the ratio operator/admin (target ≥ 0.9).

use std::time::{Duration, Instant};

use corral_bench::{flag, percentile};
use corral_client::{Client, Endpoint};
use corral_contract::{
    Credential, Identity, IdentitySpec, Project, ProjectLimits, ProjectSpec, Role, Vm,
};
use corral_testkit::http::TlsSetup;
use corral_testkit::{GuestKit, release_build};

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn identity(admin: &Client, name: &str, role: Role) -> anyhow::Result<String> {
    let spec = IdentitySpec {
        role,
        memory: false,
        projects: vec![],
        credential: Credential::Token { blake3: None },
    };
    let (_, token) = admin
        .create_identity(&Identity::new(name.parse()?, spec))
        .await?;
    token.ok_or_else(|| anyhow::anyhow!("no token for {name}"))
}

fn vm(name: &str, kit: &GuestKit) -> anyhow::Result<Vm> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "memory": "128M",
            "power": "stopped",
            "boot": {"kernel": {"kernel": kit.kernel(), "initrd": kit.initrd()}},
        },
    }))?)
}

async fn bench() -> anyhow::Result<()> {
    let requests: usize = flag("--requests", 2000);
    let creates: usize = flag("--creates", 300);
    let rounds: usize = flag("--rounds", 3);
    eprintln!("building corral-daemon (release)…");
    let corrald = release_build(&["corral-daemon"])?.join("corrald");
    let tls = TlsSetup::new();
    std::fs::write(tls.token_file(), "# identities live in the store\n")?;
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let (daemon, port) = tls.start_with(
        &corrald,
        &[
            "--host-path-allow",
            kit.kernel().parent().unwrap().to_str().unwrap(),
        ],
    );
    let unix = Client::connect(Endpoint::Unix(daemon.socket())).await?;
    unix.create_project(&Project::new(
        "default".parse()?,
        ProjectSpec {
            limits: ProjectLimits {
                vms: Some(1_000_000),
                ..ProjectLimits::default()
            },
        },
    ))
    .await
    .or_else(|e| match e {
        corral_client::ClientError::AlreadyExists { .. } => Ok(Project::new(
            "default".parse().unwrap(),
            ProjectSpec::default(),
        )),
        e => Err(e),
    })?;
    let mut clients = Vec::new();
    for (name, role) in [("operator", Role::Operator), ("admin", Role::Admin)] {
        let token = identity(&unix, name, role).await?;
        let client = Client::connect(Endpoint::Https {
            url: format!("https://localhost:{port}"),
            token: Some(token),
            ca_file: Some(tls.ca_file()),
        })
        .await?;
        clients.push((name, client));
    }
    // Something to list.
    for i in 0..20 {
        unix.create_vm(&vm(&format!("seed-{i}"), &kit)?).await?;
    }

    let mut lists: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    let mut made: Vec<(usize, Duration)> = vec![(0, Duration::ZERO), (0, Duration::ZERO)];
    // Lists first, so that both identities list the same objects; then creates.
    for _ in 0..rounds {
        for (i, (_, client)) in clients.iter().enumerate() {
            for _ in 0..requests / rounds {
                let t0 = Instant::now();
                client.list_vms("").await?;
                lists[i].push(t0.elapsed());
            }
        }
    }
    for round in 0..rounds {
        for (i, (name, client)) in clients.iter().enumerate() {
            let t0 = Instant::now();
            for n in 0..creates / rounds {
                client
                    .create_vm(&vm(&format!("{name}-{round}-{n}"), &kit)?)
                    .await?;
            }
            made[i].0 += creates / rounds;
            made[i].1 += t0.elapsed();
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let rate = |(n, t): (usize, Duration)| n as f64 / t.as_secs_f64();
    println!(
        "authorization, {} lists and {} creates per identity over TLS, {rounds} alternating rounds:",
        requests / rounds * rounds,
        creates / rounds * rounds
    );
    for (i, (name, _)) in clients.iter().enumerate() {
        println!(
            "  {name:<8} list p50 {:>7.0} µs  p99 {:>7.0} µs   creates {:>6.1}/s",
            us(percentile(&lists[i], 0.50)),
            us(percentile(&lists[i], 0.99)),
            rate(made[i])
        );
    }
    println!(
        "  overhead of roles+projects per list: p50 {:+.0} µs, p99 {:+.0} µs",
        us(percentile(&lists[0], 0.50)) - us(percentile(&lists[1], 0.50)),
        us(percentile(&lists[0], 0.99)) - us(percentile(&lists[1], 0.99)),
    );
    println!(
        "  creates/s operator ÷ single admin: {:.2} (target ≥ 0.9)",
        rate(made[0]) / rate(made[1])
    );
    Ok(())
}
