#!/usr/bin/env bash
# Runs Corral's whole test suite: installs what is missing, builds the guest kit, checks
# formatting and lints, then runs every test — the end-to-end ones boot real QEMU guests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
guest/build.sh --arch all

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
# Doctests first, so that the run ends on nextest's summary of every other test.
echo "==> doctests" >&2
cargo test --workspace --doc --locked --quiet
echo "==> tests" >&2
cargo nextest run --workspace --locked --profile "${CORRAL_TEST_PROFILE:-ci}" "$@"
