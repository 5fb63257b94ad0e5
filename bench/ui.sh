#!/usr/bin/env bash
# Web console benchmark: corrald with N stopped VMs (default 1000); prints the time from opening
# the console in chromium to its first VM row, and the latency from `corral vm create` to the
# new row in the DOM (p50/p99). Needs scripts/setup.sh (npm packages in ui/, chromium).
#   bench/ui.sh [VMS] [SAMPLES] [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
vms=${1:-1000}
samples=${2:-30}
profile=debug
if [ "${3:-}" = "--release" ]; then profile=release; fi
if [ "$profile" = release ]; then
  cargo build -q --release -p corral-daemon -p corral-cli
else
  cargo build -q -p corral-daemon -p corral-cli
fi
bin="target/$profile"
tmp=$(mktemp -d /tmp/corral-ui-bench.XXXXXX)
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/boot"
: >"$tmp/boot/vmlinuz"
export CORRAL_SOCKET="$tmp/run/corral.sock"
"$bin/corrald" --data-dir "$tmp/data" --run-dir "$tmp/run" --socket "$CORRAL_SOCKET" \
  >"$tmp/corrald.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$CORRAL_SOCKET" ] && break; sleep 0.1; done
echo "creating $vms stopped VMs" >&2
for i in $(seq 1 "$vms"); do
  printf -- '---\nkind: Vm\nmetadata: {name: vm-%04d}\nspec: {memory: 64M, power: stopped, boot: {kernel: {kernel: %s}}}\n' \
    "$i" "$tmp/boot/vmlinuz"
done >"$tmp/vms.yaml"
"$bin/corral" apply -f "$tmp/vms.yaml" >/dev/null
link=$("$bin/corral" ui --no-browser -o json | sed -n 's/.*"url": "\(.*\)".*/\1/p')
(cd ui && node bench/latency.mjs "$link" "$PWD/../$bin/corral" "$tmp/boot/vmlinuz" "$samples")
