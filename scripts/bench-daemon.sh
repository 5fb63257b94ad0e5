#!/usr/bin/env bash
# The corrald benchmark (issue 3): corral vs raw QEMU and vs libvirt on this machine, and
# 10,000 VM objects through the API. Installs libvirt (the peer it measures against) when
# missing; the benchmark program starts and stops libvirtd itself.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
guest/build.sh --arch x86_64
if ! command -v virsh >/dev/null 2>&1 || [ ! -x /usr/sbin/libvirtd ]; then
  echo "==> installing libvirt (the peer this benchmark compares against)" >&2
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
fi
cargo build --quiet --release --locked -p corral-daemon -p corral-cli
exec cargo run --quiet --release --locked -p corral-bench --bin daemon -- "$@"
