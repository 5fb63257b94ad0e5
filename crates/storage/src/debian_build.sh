#!/usr/bin/env bash
# Builds a bootable Debian disk image from Debian packages, for `corral image build`.
#
#   build.sh OUT SUITE SIZE_BYTES MIRROR [PACKAGE...]
#
# Writes OUT/image.qcow2 and OUT/packages.tsv (`name<TAB>version`, one per installed package).
# corrald runs this with a fixed argument vector (never through a user-supplied string): the
# suite and package names were validated against Debian's naming rules before.
#
# Layout (BIOS, SeaBIOS boots it from virtio-blk): an MBR with
#   1. a FAT16 partition with syslinux, the Debian kernel and its initramfs, and
#   2. an ext4 root labelled corral-root, filling the rest.
# syslinux loads the kernel straight away (no menu, no timeout): under TCG this costs a fraction
# of a second, where GRUB's menu, modules and a UEFI firmware's init cost several seconds.
# Nothing needs a loop device or a mount: mkfs.vfat/mkfs.ext4 write at offsets, mtools copies.
set -euo pipefail

out=$1 suite=$2 size=$3 mirror=$4
shift 4
log() { printf 'corral-image-build: %s\n' "$*" >&2; }

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

# What every image holds; the user's packages come on top. cloud-init reads Corral's NoCloud
# seed (hostname, users, keys) and nothing else (no slow probing of cloud metadata services);
# root may log in with the keys Corral authorises for it, as on Corral's other guests.
# qemu-guest-agent answers the host; growpart grows the root
# partition to the volume's size at first boot.
base=(
  systemd-sysv udev dbus linux-image-cloud-amd64 initramfs-tools
  ifupdown isc-dhcp-client iproute2 netbase openssh-server sudo
  cloud-init cloud-guest-utils e2fsprogs qemu-guest-agent ca-certificates
)
include=$(printf '%s,' "${base[@]}" "$@")

log "mmdebstrap $suite (${#base[@]} base packages + $# requested) from $mirror"
# --mode=auto: root when corrald runs as root (it does), else unshare with subuids.
mmdebstrap --mode=auto --variant=apt --format=directory \
  --include="${include%,}" \
  --customize-hook='echo "LABEL=corral-root / ext4 defaults,errors=remount-ro 0 1" >"$1/etc/fstab"' \
  --customize-hook='echo debian >"$1/etc/hostname"' \
  --customize-hook='printf "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n" >"$1/etc/network/interfaces"' \
  --customize-hook='printf "datasource_list: [ NoCloud, None ]\ndisable_root: false\n" >"$1/etc/cloud/cloud.cfg.d/90-corral.cfg"' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*_key* "$1/etc/machine-id"; touch "$1/etc/machine-id"' \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service >/dev/null 2>&1 || true' \
  "$suite" "$root" "$mirror" >&2

dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package}\t${Version}\n' >"$work/packages.tsv"

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || { log "no kernel or initramfs in /boot"; exit 1; }

le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
start=2048
boot_sectors=$(((($(stat -c %s "$kernel") + $(stat -c %s "$initrd")) / 1048576 + 16) * 2048))
root_start=$((start + boot_sectors))
total_sectors=$((size / 512))
root_sectors=$((total_sectors - root_start))
[ "$root_sectors" -gt 0 ] || { log "size $size is too small"; exit 1; }
raw="$work/disk.raw"
truncate -s $((total_sectors * 512)) "$raw"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
# Partition 1: active FAT16 (LBA); partition 2: Linux. CHS fields saturated (LBA only).
{
  printf "\\x80\\xfe\\xff\\xff\\x0e\\xfe\\xff\\xff$(le32 $start)$(le32 $boot_sectors)"
  printf "\\x00\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32 $root_start)$(le32 $root_sectors)"
} | dd of="$raw" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none
mkfs.vfat -F 16 -n CORRALBOOT --offset "$start" -h "$start" "$raw" $((boot_sectors / 2)) >/dev/null
cat >"$work/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=corral-root ro quiet console=tty0 console=ttyS0,115200n8
EOF
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
export MTOOLS_SKIP_CHECK=1
mcopy -o -i "$raw@@$((start * 512))" "$work/vmlinuz" "$work/initrd.img" "$work/syslinux.cfg" ::/
syslinux --install --offset $((start * 512)) "$raw"
log "ext4 root ($((root_sectors / 2048)) MiB)"
mkfs.ext4 -q -F -L corral-root -E offset=$((root_start * 512)) -d "$root" "$raw" $((root_sectors / 2))k
qemu-img convert -q -f raw -O qcow2 "$raw" "$work/image.qcow2"
mv "$work/packages.tsv" "$work/image.qcow2" "$out/"
log "done: $(wc -l <"$out/packages.tsv") packages"
