//! What every CLI end-to-end test file shares.

use std::path::PathBuf;

/// The `corrald` built beside the `corral` under test (cargo builds every binary of the
/// workspace before integration tests, so a missing one means a partial build).
pub fn corrald_binary() -> PathBuf {
    let corral = PathBuf::from(env!("CARGO_BIN_EXE_corral"));
    let corrald = corral.with_file_name("corrald");
    assert!(
        corrald.exists(),
        "{} is missing: build the workspace (cargo build -p corral-daemon) before these tests",
        corrald.display()
    );
    corrald
}
