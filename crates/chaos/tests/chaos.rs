//! The fault-injection suite as the test suite runs it: one seeded, bounded run of 1,000
//! operations with faults (about five minutes here) against a real corrald and real QEMU
//! guests, then every invariant.
//! Set CORRAL_CHAOS_SEED to run another seed; `corral-chaos --soak` runs longer.

use std::process::Command;

#[test]
fn a_thousand_operations_with_faults_converge() {
    let seed = std::env::var("CORRAL_CHAOS_SEED").unwrap_or_else(|_| "20261204".into());
    let out_dir = corral_testkit::workspace_root().join("target/chaos");
    let status = Command::new(env!("CARGO_BIN_EXE_corral-chaos"))
        .args(["--seed", &seed, "--ops", "1000", "--shrink-minutes", "3"])
        .arg("--out")
        .arg(&out_dir)
        .status()
        .expect("running corral-chaos");
    assert!(
        status.success(),
        "corral-chaos failed (seed {seed}): see its output above"
    );
}
