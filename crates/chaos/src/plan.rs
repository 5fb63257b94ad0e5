//! The workload: a list of steps drawn from a seed. Choices never look at the live system, so
//! a seed always yields the same list, and a run can be replayed with any subset of it.

use serde::{Deserialize, Serialize};

/// VM names the workload uses; few, so operations meet each other.
pub const VMS: usize = 6;
/// Image names.
pub const IMAGES: usize = 2;
/// Volume names.
pub const VOLUMES: usize = 3;
/// Snapshot names.
pub const SNAPSHOTS: usize = 2;

/// One thing the workload does to corrald through its API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// Creates VM `vm` booting the kit's kernel (or volume `volume` by firmware).
    CreateVm {
        /// Which VM.
        vm: usize,
        /// Boot this volume instead of the kit's kernel.
        volume: Option<usize>,
        /// `never`, `on-failure` or `always`.
        policy: String,
        /// `running`, `stopped` or `paused`.
        power: String,
        /// Guest RAM shared for the memory bridge.
        introspection: bool,
    },
    /// Declares `running`.
    Start {
        /// Which VM.
        vm: usize,
    },
    /// Declares `stopped`.
    Stop {
        /// Which VM.
        vm: usize,
        /// Without waiting for the guest.
        force: bool,
    },
    /// Declares `paused`.
    Pause {
        /// Which VM.
        vm: usize,
    },
    /// Declares `running` again after a pause.
    Resume {
        /// Which VM.
        vm: usize,
    },
    /// Asks for a new QEMU.
    Restart {
        /// Which VM.
        vm: usize,
    },
    /// Changes the memory (takes effect at the next start).
    Resize {
        /// Which VM.
        vm: usize,
        /// MiB.
        mib: u64,
    },
    /// Deletes the VM.
    DeleteVm {
        /// Which VM.
        vm: usize,
    },
    /// Imports the kit's boot disk as an image, by path on the daemon's host.
    ImportImage {
        /// Which image.
        image: usize,
    },
    /// Deletes an image.
    DeleteImage {
        /// Which image.
        image: usize,
    },
    /// Creates a volume: a clone of `image`, or empty.
    CreateVolume {
        /// Which volume.
        volume: usize,
        /// Clone this image.
        image: Option<usize>,
    },
    /// Grows a volume.
    GrowVolume {
        /// Which volume.
        volume: usize,
        /// New size, MiB.
        mib: u64,
    },
    /// Deletes a volume.
    DeleteVolume {
        /// Which volume.
        volume: usize,
    },
    /// Takes a snapshot of a VM.
    Snapshot {
        /// Which snapshot.
        snapshot: usize,
        /// Of which VM.
        vm: usize,
        /// With RAM and device state.
        memory: bool,
    },
    /// Restores a snapshot.
    Restore {
        /// Which snapshot.
        snapshot: usize,
    },
    /// Deletes a snapshot.
    DeleteSnapshot {
        /// Which snapshot.
        snapshot: usize,
    },
    /// `corral apply -f` of one manifest: an image, a volume cloned from it and a VM booting
    /// the volume, in an order that puts dependents first.
    Apply {
        /// The index used for the three names.
        set: usize,
    },
}

/// Something that goes wrong around corrald.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum Fault {
    /// SIGKILL of corrald, restarted after `down_ms`.
    KillDaemon {
        /// How long it stays down.
        down_ms: u64,
    },
    /// SIGKILL of corrald `after_ms` into the next operation, which runs concurrently.
    KillDaemonDuring {
        /// Delay after the operation began.
        after_ms: u64,
        /// The operation.
        op: Op,
    },
    /// SIGKILL of the QEMU of a VM.
    KillQemu {
        /// Which VM.
        vm: usize,
    },
    /// SIGSTOP of the QEMU of a VM, SIGCONT after `ms`.
    FreezeQemu {
        /// Which VM.
        vm: usize,
        /// How long it stays frozen.
        ms: u64,
    },
    /// `qemu-img` fails for the next `ops` steps.
    BreakQemuImg {
        /// For how many steps.
        ops: u32,
    },
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Step {
    /// An API operation.
    Op(Op),
    /// A fault.
    Fault(Fault),
}

/// The steps of a run of `ops` operations from `seed`; about one step in eight is a fault.
pub fn steps(seed: u64, ops: usize) -> Vec<Step> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut steps = Vec::with_capacity(ops + ops / 4);
    let mut count = 0;
    while count < ops {
        if rng.u32(0..8) == 0 {
            let fault = fault(&mut rng);
            if matches!(fault, Fault::KillDaemonDuring { .. }) {
                count += 1;
            }
            steps.push(Step::Fault(fault));
        } else {
            steps.push(Step::Op(op(&mut rng)));
            count += 1;
        }
    }
    steps
}

fn op(rng: &mut fastrand::Rng) -> Op {
    let vm = rng.usize(0..VMS);
    let volume = rng.usize(0..VOLUMES);
    let image = rng.usize(0..IMAGES);
    let snapshot = rng.usize(0..SNAPSHOTS);
    // Weights: lifecycle first, storage second, manifests now and then.
    match rng.u32(0..100) {
        0..=19 => Op::CreateVm {
            vm,
            volume: (rng.u32(0..4) == 0).then_some(volume),
            policy: ["never", "on-failure", "always"][rng.usize(0..3)].into(),
            power: ["running", "running", "running", "stopped", "paused"][rng.usize(0..5)].into(),
            introspection: rng.u32(0..4) == 0,
        },
        20..=27 => Op::Start { vm },
        28..=35 => Op::Stop {
            vm,
            force: rng.bool(),
        },
        36..=40 => Op::Pause { vm },
        41..=46 => Op::Resume { vm },
        47..=52 => Op::Restart { vm },
        53..=55 => Op::Resize {
            vm,
            mib: [128, 160, 192][rng.usize(0..3)],
        },
        56..=61 => Op::DeleteVm { vm },
        62..=68 => Op::ImportImage { image },
        69..=70 => Op::DeleteImage { image },
        71..=77 => Op::CreateVolume {
            volume,
            image: (rng.u32(0..3) != 0).then_some(image),
        },
        78..=79 => Op::GrowVolume {
            volume,
            mib: [128, 192, 256][rng.usize(0..3)],
        },
        80..=83 => Op::DeleteVolume { volume },
        84..=87 => Op::Snapshot {
            snapshot,
            vm,
            memory: rng.bool(),
        },
        88..=89 => Op::Restore { snapshot },
        90..=92 => Op::DeleteSnapshot { snapshot },
        _ => Op::Apply {
            set: rng.usize(0..2),
        },
    }
}

fn fault(rng: &mut fastrand::Rng) -> Fault {
    match rng.u32(0..100) {
        0..=19 => Fault::KillDaemon {
            down_ms: rng.u64(0..1500),
        },
        20..=44 => Fault::KillDaemonDuring {
            after_ms: rng.u64(0..400),
            op: op(rng),
        },
        45..=69 => Fault::KillQemu {
            vm: rng.usize(0..VMS),
        },
        70..=84 => Fault::FreezeQemu {
            vm: rng.usize(0..VMS),
            ms: rng.u64(500..4000),
        },
        _ => Fault::BreakQemuImg {
            ops: rng.u32(3..12),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_steps() {
        assert_eq!(steps(7, 300), steps(7, 300));
        assert_ne!(steps(7, 300), steps(8, 300));
        let ops = steps(7, 300)
            .iter()
            .filter(|s| matches!(s, Step::Op(_) | Step::Fault(Fault::KillDaemonDuring { .. })))
            .count();
        assert_eq!(ops, 300);
    }

    #[test]
    fn steps_round_trip_through_json_for_replays() {
        let steps = steps(3, 100);
        let json = serde_json::to_string(&steps).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Step>>(&json).unwrap(), steps);
    }
}
