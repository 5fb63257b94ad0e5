#!/usr/bin/env bash
# Corral's main job on this machine, from a fresh clone: installs what is missing, builds,
# builds the guest kit, boots a VM through Corral's QEMU backend and prints the line from the
# guest's console that proves it booted.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
guest/build.sh --arch x86_64
cargo run --quiet --release --locked -p corral-qemu --example boot -- "${1:-x86_64}"
