#!/usr/bin/env bash
# Corral's main job on this machine, from a fresh clone: installs what is missing, builds,
# builds the guest kit, starts corrald on the embedded store (unless one already answers),
# creates and boots a VM, prints the line from the guest's console that proves it booted,
# and lists the VMs. The daemon and the VM keep running afterwards for the tour in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
guest/build.sh --arch x86_64
echo "==> building corrald and corral (release)" >&2
cargo build --quiet --release --locked -p corral-daemon -p corral-cli
export PATH="$PWD/target/release:$PATH"
kit="$PWD/target/guest/x86_64"

if ! corral vm list >/dev/null 2>&1; then
  log="$PWD/target/corrald.log"
  echo "==> starting corrald (log: $log)" >&2
  nohup corrald >>"$log" 2>&1 &
  for _ in $(seq 100); do
    corral vm list >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

# Start from a clean slate so the script can be run again.
corral vm delete demo --wait >/dev/null 2>&1 || true
corral vm create demo --kernel "$kit/vmlinuz" --initrd "$kit/initrd.img" \
  --cmdline "console=ttyS0 quiet" --memory 256M --label app=demo --wait

echo "==> waiting for the guest to say it booted" >&2
line=""
for _ in $(seq 120); do
  line=$(corral vm console demo --log | grep -m1 CORRAL_BOOT_OK || true)
  [ -n "$line" ] && break
  sleep 0.5
done
if [ -z "$line" ]; then
  echo "error: the guest printed no boot marker; its console says:" >&2
  corral vm console demo --log >&2
  exit 1
fi
echo "guest console: $line"
corral vm list
cat <<'TOUR'

Next: `export PATH="$PWD/target/release:$PATH"`, then
  corral vm get demo -o yaml        # the declared spec and the observed status
  corral vm pause demo; corral vm resume demo
  corral vm stop demo --wait        # ACPI power-off; the guest shuts down
  corral vm delete demo --wait      # stops QEMU, removes its files, then the object
TOUR
