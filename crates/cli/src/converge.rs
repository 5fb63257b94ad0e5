//! `corral apply -f … --wait`: after applying, follow every resource of the manifest until it
//! is where it was declared (VMs in their declared power state, everything else Ready),
//! printing each change of state, and name each one that failed or did not get there in time.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_client::{Client, ClientError, is_observed};
use corral_contract::{Kind, NetworkPhase, Phase, Power, StoragePhase};
use tokio::time::Instant;

use crate::CliError;
use crate::commands::print;

/// One applied resource and where it should get.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// For a VM, its declared power state.
    pub power: Option<Power>,
    /// The project its manifest names, if any (else the connection's).
    pub project: Option<String>,
}

/// Where a resource stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not there yet; the words say where it is.
    Working(String),
    /// Where it was declared.
    Done(String),
    /// It failed; the words say why.
    Failed(String),
}

/// Follows `targets` until each is done or failed, or `timeout` passes.
pub async fn wait_all(
    client: &Client,
    targets: Vec<Target>,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let mut last: BTreeMap<String, State> = BTreeMap::new();
    loop {
        let mut pending = 0;
        for t in &targets {
            let what = format!("{}/{}", t.kind.as_str().to_lowercase(), t.name);
            let state = match state(client, t).await {
                Ok(state) => state,
                // corrald restarting: keep waiting.
                Err(ClientError::Unavailable { .. }) => State::Working("unreachable".into()),
                Err(e) => State::Failed(e.to_string()),
            };
            if last.get(&what) != Some(&state) {
                let words = match &state {
                    State::Working(w) | State::Done(w) => w.clone(),
                    State::Failed(w) => format!("failed: {w}"),
                };
                print(&format!("{what}: {words}\n"))?;
                last.insert(what, state.clone());
            }
            if matches!(state, State::Working(_)) {
                pending += 1;
            }
        }
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut bad = 0;
    for (what, state) in &last {
        match state {
            State::Done(_) => {}
            State::Failed(why) => {
                eprintln!("error: {what} failed: {why}");
                bad += 1;
            }
            State::Working(where_) => {
                eprintln!(
                    "error: {what} did not get there within {}: {where_}",
                    humantime::format_duration(timeout)
                );
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(CliError::Reported(1));
    }
    Ok(())
}

fn storage_state(phase: StoragePhase, message: Option<String>) -> State {
    let message = message.unwrap_or_default();
    match phase {
        StoragePhase::Ready => State::Done("Ready".into()),
        StoragePhase::Failed => State::Failed(message),
        StoragePhase::Pending if message.is_empty() => State::Working("Pending".into()),
        StoragePhase::Pending => State::Working(format!("Pending ({message})")),
    }
}

async fn state(client: &Client, t: &Target) -> Result<State, ClientError> {
    let name = t.name.as_str();
    let client = &match &t.project {
        Some(p) => client.clone().in_project(Some(p), false)?,
        None => client.clone(),
    };
    Ok(match t.kind {
        Kind::Vm => {
            let vm = client.get_vm(name).await?;
            let want = match t.power.unwrap_or(vm.spec.power) {
                Power::Running => Phase::Running,
                Power::Stopped => Phase::Stopped,
                Power::Paused => Phase::Paused,
            };
            let phase = vm.status.phase;
            let message = vm.status.message.clone().unwrap_or_default();
            if !is_observed(&vm) {
                State::Working(format!("{phase}, not yet seen by its controller"))
            } else if phase == want {
                State::Done(phase.to_string())
            } else if phase == Phase::Failed {
                State::Failed(message)
            } else if message.is_empty() {
                State::Working(phase.to_string())
            } else {
                State::Working(format!("{phase} ({message})"))
            }
        }
        Kind::Image => {
            let i = client.get_image(name).await?;
            storage_state(i.status.phase, i.status.message)
        }
        Kind::Volume => {
            let v = client.get_volume(name).await?;
            storage_state(v.status.phase, v.status.message)
        }
        Kind::Snapshot => {
            let s = client.get_snapshot(name).await?;
            storage_state(s.status.phase, s.status.message)
        }
        Kind::Network => {
            let n = client.get_network(name).await?;
            match n.status.phase {
                NetworkPhase::Ready => State::Done("Ready".into()),
                NetworkPhase::Failed => State::Failed(n.status.message.unwrap_or_default()),
                phase => State::Working(phase.to_string()),
            }
        }
        // Manifests never hold identities (see manifest.rs); one in force is done.
        Kind::Identity | Kind::Project | Kind::Source | Kind::Node => {
            State::Done("in force".into())
        }
    })
}
