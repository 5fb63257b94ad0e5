#!/usr/bin/env bash
# Installs what Corral needs on a Debian machine, idempotently: QEMU and the tools the guest
# kit is built with. Safe to run again; installs nothing that is already there.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need qemu-system-x86_64 qemu-system-x86
need qemu-system-aarch64 qemu-system-arm
need qemu-img qemu-utils
need cpio cpio
need mkfs.ext4 e2fsprogs
[ -x /bin/busybox ] || missing+=(busybox-static)
[ -e /usr/share/seabios/bios-256k.bin ] || missing+=(seabios)
# Guest access: cloud-init seeds (genisoimage), their schema check in tests (cloud-init),
# `corral vm ssh` (ssh, ssh-keygen), the guest kit's dropbear closure (readelf).
need genisoimage genisoimage
need cloud-init cloud-init
need ssh openssh-client
need ssh-keygen openssh-client
need readelf binutils
# Bridge networks: DHCP/DNS and NAT.
need dnsmasq dnsmasq-base
need nft nftables

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  # --no-install-recommends: the recommends pull in a GUI stack, and on machines with a
  # backported qemu-utils they make the install unsolvable.
  if ! as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    # qemu-system-* must match qemu-utils' version; pin qemu-utils to the one that goes with
    # the qemu-system packages apt would install.
    version=$(apt-cache policy qemu-system-common | awk '/Candidate:/ {print $2}')
    log "retrying with qemu-utils=$version"
    as_root apt-get install -y -qq --no-install-recommends --allow-downgrades \
      "${missing[@]/#qemu-utils/qemu-utils=$version}" "qemu-utils=$version"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is missing: install Rust (1.85 or newer) with rustup, then run this again"
  exit 1
fi
