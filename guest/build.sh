#!/usr/bin/env bash
# Build the Corral guest kit: a Debian cloud kernel, a busybox initramfs, an
# ext4 root disk and (x86_64) a BIOS-bootable disk, for QEMU-based tests.
#
# Usage: guest/build.sh [--arch x86_64|aarch64|all] [--out DIR] [--refresh]
#   --arch     which guest architecture(s) to build (default: all)
#   --out      output directory (default: <repo>/target/guest)
#   --refresh  ask apt again for the newest kernel/busybox package versions
#              (otherwise the versions resolved by the first run are reused,
#              which keeps a no-op run well under a second)
#
# Everything comes from Debian packages fetched with `apt-get download` into
# $OUT/debs and unpacked with `dpkg-deb -x`; the images are built without root
# (cpio -R, mkfs.ext4 -d, mtools). Root is only needed to apt-get install
# missing host tools. See guest/README.md for the guest/test contract.
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$GUEST_DIR/.." && pwd)

ARCHES=all
OUT=$REPO_DIR/target/guest
REFRESH=0

ROOTFS_SIZE=64M
# The initramfs loads these when they are modules; built-in or absent ones are
# just reported. Dependencies (modinfo depends=/softdep pre:) are added and
# ordered automatically.
COMMON_MODULES=(
	virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_mmio virtio_blk virtio_net virtio_console
	crc16 mbcache jbd2 crc32c_generic libcrc32c ext4
	button evdev
	isofs
)
# dropbear (the guest's ssh server) and the shared libraries it links, from
# Debian packages of the guest's architecture.
SSH_PKGS=(dropbear-bin libc6 libcrypt1 libtomcrypt1 libtommath1 zlib1g libgmp10)
X86_64_MODULES=(crc32c_intel)
# QEMU virt's power button is a gpio-keys key on a PL061 GPIO (device tree).
AARCH64_MODULES=(gpio_pl061 gpio_keys)

log() { printf '[guest] %s\n' "$*" >&2; }
die() { printf '[guest] error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '5,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

parse_args() {
	while [ $# -gt 0 ]; do
		case $1 in
		--arch) ARCHES=${2:?--arch needs a value}; shift 2 ;;
		--arch=*) ARCHES=${1#--arch=}; shift ;;
		--out) OUT=${2:?--out needs a value}; shift 2 ;;
		--out=*) OUT=${1#--out=}; shift ;;
		--refresh) REFRESH=1; shift ;;
		-h | --help) usage; exit 0 ;;
		*) usage >&2; die "unknown argument: $1" ;;
		esac
	done
	case $ARCHES in
	all) ARCHES="x86_64 aarch64" ;;
	x86_64 | aarch64) ;;
	*) die "--arch must be x86_64, aarch64 or all (got '$ARCHES')" ;;
	esac
	mkdir -p "$OUT"
	OUT=$(cd "$OUT" && pwd)
	DEBS=$OUT/debs
	WORK=$OUT/work
}

# Per-arch constants.
arch_vars() {
	case $1 in
	x86_64)
		DEB_ARCH=amd64 CONSOLE=ttyS0
		EXTRA_MODULES=("${X86_64_MODULES[@]}") ;;
	aarch64)
		DEB_ARCH=arm64 CONSOLE=ttyAMA0
		EXTRA_MODULES=("${AARCH64_MODULES[@]}") ;;
	esac
	KERNEL_META=linux-image-cloud-$DEB_ARCH
	PKGS_FILE=$DEBS/$1.pkgs
	ARCH_OUT=$OUT/$1
	ARCH_WORK=$WORK/$1
}

# ---------------------------------------------------------------- host tools

# CI starts from a bare Debian 12: install what is missing, and nothing when
# everything is there (the no-op run must not touch apt).
ensure_host_tools() {
	local need_boot=$1 missing=() spec kind what pkg
	# mkfs.* live in /sbin, which a non-login root shell may lack.
	export PATH=$PATH:/usr/sbin:/sbin
	local specs=(
		"cmd:dpkg-deb:dpkg" "cmd:apt-get:apt" "cmd:cpio:cpio" "cmd:gzip:gzip"
		"cmd:mkfs.ext4:e2fsprogs" "cmd:qemu-img:qemu-utils" "cmd:zstd:zstd"
		"cmd:xz:xz-utils" "cmd:sha256sum:coreutils" "cmd:readelf:binutils"
	)
	if [ "$need_boot" = 1 ]; then
		specs+=(
			"cmd:mkfs.vfat:dosfstools" "cmd:mcopy:mtools" "cmd:syslinux:syslinux"
			"file:/usr/lib/syslinux/mbr/mbr.bin:syslinux-common"
			"file:/usr/lib/syslinux/modules/bios/ldlinux.c32:syslinux-common"
		)
	fi
	for spec in "${specs[@]}"; do
		IFS=: read -r kind what pkg <<<"$spec"
		case $kind in
		cmd) command -v "$what" >/dev/null 2>&1 || missing+=("$pkg") ;;
		file) [ -e "$what" ] || missing+=("$pkg") ;;
		esac
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	[ "$(id -u)" = 0 ] || die "missing host packages (install as root): ${missing[*]}"
	log "installing host packages: ${missing[*]}"
	# --no-install-recommends: with recommends, qemu-utils drags in packages
	# that conflict with a backported qemu on some machines.
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
		apt-get update -q >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	fi
}

# ----------------------------------------------------------- package choice

ensure_foreign_arch() {
	local deb_arch=$1
	[ "$deb_arch" = "$(dpkg --print-architecture)" ] && return 0
	dpkg --print-foreign-architectures | grep -qx "$deb_arch" && return 0
	[ "$(id -u)" = 0 ] || die "dpkg architecture $deb_arch not enabled (run as root once)"
	log "enabling dpkg architecture $deb_arch"
	dpkg --add-architecture "$deb_arch"
	apt-get update -q >&2
}

candidate_version() { # PKG:ARCH
	apt-cache show --no-all-versions "$1" 2>/dev/null | awk '/^Version:/ { print $2; exit }'
}

# Resolve the cloud kernel metapackage to the real image package and pin the
# versions in $PKGS_FILE. apt-cache costs ~1.5 s here, so this only runs when
# nothing is recorded yet or on --refresh.
resolve_packages() {
	local arch=$1 kpkg kver bbver host_arch pkg ver
	if [ -s "$PKGS_FILE" ] && [ "$REFRESH" = 0 ] && grep -q '^ssh-dropbear-bin ' "$PKGS_FILE"; then return 0; fi
	log "$arch: resolving package versions"
	ensure_foreign_arch "$DEB_ARCH"
	kpkg=$(apt-cache depends "$KERNEL_META:$DEB_ARCH" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { sub(/:.*/, "", $2); print $2; exit }')
	if [ -z "$kpkg" ]; then
		apt-get update -q >&2
		kpkg=$(apt-cache depends "$KERNEL_META:$DEB_ARCH" 2>/dev/null |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { sub(/:.*/, "", $2); print $2; exit }')
	fi
	[ -n "$kpkg" ] || die "cannot resolve $KERNEL_META:$DEB_ARCH"
	kver=$(candidate_version "$kpkg:$DEB_ARCH")
	bbver=$(candidate_version "busybox-static:$DEB_ARCH")
	[ -n "$kver" ] && [ -n "$bbver" ] || die "cannot find versions of $kpkg / busybox-static for $DEB_ARCH"
	mkdir -p "$DEBS"
	{
		echo "kernel $kpkg $kver $DEB_ARCH"
		echo "busybox busybox-static $bbver $DEB_ARCH"
		for pkg in "${SSH_PKGS[@]}"; do
			ver=$(candidate_version "$pkg:$DEB_ARCH")
			[ -n "$ver" ] || die "cannot find a version of $pkg for $DEB_ARCH"
			echo "ssh-$pkg $pkg $ver $DEB_ARCH"
		done
		# A foreign busybox cannot run here to list its applets; the host's
		# build of the same package has the same applet set.
		host_arch=$(dpkg --print-architecture)
		if [ "$host_arch" != "$DEB_ARCH" ]; then
			echo "hostbusybox busybox-static $(candidate_version "busybox-static:$host_arch") $host_arch"
		fi
	} >"$PKGS_FILE.tmp"
	mv "$PKGS_FILE.tmp" "$PKGS_FILE"
}

pkg_field() { # ROLE FIELD(2=name 3=version 4=arch)
	awk -v r="$1" -v f="$2" '$1 == r { print $f; exit }' "$PKGS_FILE"
}

deb_file() { # ROLE -> path of the cached .deb (apt escapes the epoch colon)
	local name ver arch
	name=$(pkg_field "$1" 2) ver=$(pkg_field "$1" 3) arch=$(pkg_field "$1" 4)
	[ -n "$name" ] || { echo ""; return 0; }
	echo "$DEBS/${name}_${ver//:/%3a}_${arch}.deb"
}

fetch_debs() {
	local role deb name ver arch
	for role in kernel busybox hostbusybox $(ssh_roles); do
		deb=$(deb_file "$role")
		[ -n "$deb" ] && [ ! -s "$deb" ] || continue
		name=$(pkg_field "$role" 2) ver=$(pkg_field "$role" 3) arch=$(pkg_field "$role" 4)
		ensure_foreign_arch "$arch"
		log "downloading $name:$arch=$ver"
		(cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$name:$arch=$ver" >&2) ||
			{ apt-get update -q >&2 && (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$name:$arch=$ver" >&2); }
		[ -s "$deb" ] || die "download of $name:$arch=$ver did not produce $deb"
	done
}

# Unpack a .deb once per version; later builds (e.g. after editing the init)
# reuse the tree.
unpack_deb() { # DEB DIR
	if [ -e "$2/.unpacked" ]; then return 0; fi
	log "unpacking $(basename "$1")"
	rm -rf "$2"
	mkdir -p "$2"
	dpkg-deb -x "$1" "$2"
	touch "$2/.unpacked"
}

# ----------------------------------------------------------------- the stamp

# Anything that changes the outputs: this script, the guest sources and the
# pinned package versions.
compute_stamp() {
	{
		cat "$GUEST_DIR/build.sh" "$GUEST_DIR/init" "$PKGS_FILE"
		(cd "$GUEST_DIR/overlay" && find . -print0 | LC_ALL=C sort -z |
			xargs -0 stat -c '%n %a %s' && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 cat)
	} | sha256sum | cut -d' ' -f1
}

output_files() { # ARCH
	echo vmlinuz initrd.img rootfs.raw rootfs.qcow2 manifest.json
	[ "$1" = x86_64 ] && echo boot.raw boot.qcow2
	return 0
}

up_to_date() { # ARCH STAMP
	local f
	[ "$(cat "$ARCH_OUT/.stamp" 2>/dev/null)" = "$2" ] || return 1
	for f in $(output_files "$1"); do [ -e "$ARCH_OUT/$f" ] || return 1; done
}

# ------------------------------------------------------------------ modules

# Turn the wanted module list into "NAME PATH" lines in load order, using the
# dependency info embedded in each .ko (the deb ships no modules.dep).
declare -A MOD_PATH MOD_STATE MOD_BUILTIN
MOD_ORDER=() MOD_ABSENT=() MOD_BUILTIN_LIST=()

index_modules() { # MODDIR
	local p n
	MOD_PATH=() MOD_STATE=() MOD_BUILTIN=() MOD_ORDER=() MOD_ABSENT=() MOD_BUILTIN_LIST=()
	while IFS= read -r p; do
		n=${p##*/} n=${n%%.ko*} n=${n//-/_}
		MOD_PATH[$n]=$p
	done < <(cd "$1" && find kernel -name '*.ko*')
	while IFS= read -r p; do
		n=${p##*/} n=${n%%.ko*} n=${n//-/_}
		MOD_BUILTIN[$n]=1
	done <"$1/modules.builtin"
}

modinfo_field() { # FILE FIELD
	local f=$1
	case $f in
	*.ko.xz) xz -dc "$f" ;;
	*.ko.zst) zstd -qdc "$f" ;;
	*.ko.gz) gzip -dc "$f" ;;
	*) cat "$f" ;;
	esac | tr '\0' '\n' | sed -n "s/^$2=//p"
}

visit_module() { # MODDIR NAME
	local dir=$1 name=${2//-/_} dep deps soft
	[ -z "${MOD_STATE[$name]:-}" ] || return 0
	MOD_STATE[$name]=1
	if [ -n "${MOD_BUILTIN[$name]:-}" ]; then MOD_BUILTIN_LIST+=("$name"); return 0; fi
	if [ -z "${MOD_PATH[$name]:-}" ]; then MOD_ABSENT+=("$name"); return 0; fi
	deps=$(modinfo_field "$dir/${MOD_PATH[$name]}" depends)
	# "softdep=pre: a b post: c": the pre: modules must be loaded first.
	soft=$(modinfo_field "$dir/${MOD_PATH[$name]}" softdep | sed -n 's/.*pre:\(.*\)/\1/p' | sed 's/post:.*//')
	for dep in ${deps//,/ }; do visit_module "$dir" "$dep"; done
	# Soft deps often name crypto aliases (crc32c -> crc32c_generic/_intel);
	# follow them only when a module of that exact name exists.
	for dep in $soft; do
		dep=${dep//-/_}
		[ -n "${MOD_PATH[$dep]:-}" ] && visit_module "$dir" "$dep"
	done
	MOD_ORDER+=("$name")
}

# Copy the modules into the initramfs (decompressed: busybox insmod only reads
# plain .ko) and write /etc/corral/modules for the init.
stage_modules() { # MODDIR KVER STAGING
	local dir=$1 kver=$2 st=$3 name src rel
	index_modules "$dir"
	for name in "${COMMON_MODULES[@]}" "${EXTRA_MODULES[@]}"; do visit_module "$dir" "$name"; done
	mkdir -p "$st/etc/corral" "$st/lib/modules/$kver"
	: >"$st/etc/corral/modules"
	for name in "${MOD_ORDER[@]}"; do
		src=$dir/${MOD_PATH[$name]}
		rel=${MOD_PATH[$name]%.xz} rel=${rel%.zst} rel=${rel%.gz}
		mkdir -p "$st/lib/modules/$kver/$(dirname "$rel")"
		case $src in
		*.ko.xz) xz -dc "$src" ;;
		*.ko.zst) zstd -qdc "$src" ;;
		*.ko.gz) gzip -dc "$src" ;;
		*) cat "$src" ;;
		esac >"$st/lib/modules/$kver/$rel"
		echo "$name $rel" >>"$st/etc/corral/modules"
	done
	log "modules (load order): ${MOD_ORDER[*]}"
	log "built in: ${MOD_BUILTIN_LIST[*]:-none}; absent: ${MOD_ABSENT[*]:-none}"
}

# ------------------------------------------------------------------ staging

ssh_roles() { local p; for p in "${SSH_PKGS[@]}"; do printf 'ssh-%s ' "$p"; done; }

# dropbear, dropbearkey and the shared objects they need (their DT_NEEDED
# closure and the dynamic loader), copied from the unpacked packages into the
# same paths as on Debian.
stage_ssh() { # STAGING
	local st=$1 role tree roots=() lib need todo seen=" " interp f
	for role in $(ssh_roles); do
		tree=$ARCH_WORK/$role
		unpack_deb "$(deb_file "$role")" "$tree"
		roots+=("$tree")
	done
	tree=$ARCH_WORK/ssh-dropbear-bin
	install -D -m 755 "$tree/usr/sbin/dropbear" "$st/usr/sbin/dropbear"
	install -D -m 755 "$tree/usr/bin/dropbearkey" "$st/usr/bin/dropbearkey"
	find_lib() { # SONAME -> relative path in a package tree
		local r hit
		for r in "${roots[@]}"; do
			hit=$(cd "$r" && { find lib usr/lib -name "$1" 2>/dev/null || true; } | head -n1)
			[ -n "$hit" ] && { echo "$r $hit"; return 0; }
		done
		return 1
	}
	interp=$(readelf -l "$st/usr/sbin/dropbear" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
	[ -n "$interp" ] || die "dropbear has no ELF interpreter"
	todo=$(readelf -d "$st/usr/sbin/dropbear" "$st/usr/bin/dropbearkey" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)
	todo="$todo $(basename "$interp")"
	while [ -n "${todo// /}" ]; do
		set -- $todo
		lib=$1; shift; todo="$*"
		case $seen in *" $lib "*) continue ;; esac
		seen="$seen$lib "
		read -r tree f < <(find_lib "$lib") || die "no package of (${SSH_PKGS[*]}) has $lib"
		mkdir -p "$st/$(dirname "$f")"
		cp -L "$tree/$f" "$st/$f"
		for need in $(readelf -d "$st/$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
			todo="$todo $need"
		done
	done
	# The loader's absolute path (/lib64/ld-linux-x86-64.so.2): a link to where it was copied.
	if [ ! -e "$st$interp" ]; then
		f=$(cd "$st" && { find lib usr/lib -name "$(basename "$interp")" 2>/dev/null || true; } | head -n1)
		mkdir -p "$st$(dirname "$interp")"
		ln -sf "/$f" "$st$interp"
	fi
	mkdir -p "$st/etc/dropbear"
}

# The part shared by the initramfs and the root disk: busybox with applet
# links, the init and the config overlay.
stage_base() { # STAGING BUSYBOX LIST_BUSYBOX
	local st=$1 bb=$2 lister=$3 applet
	rm -rf "$st"
	mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,mnt,newroot,etc}
	chmod 1777 "$st/tmp"
	chmod 700 "$st/root"
	install -m 755 "$bb" "$st/bin/busybox"
	# --list-full gives each applet's conventional directory. init/linuxrc
	# are left out: /sbin/init must be our script.
	"$lister" --list-full | while IFS= read -r applet; do
		case $applet in "" | sbin/init | linuxrc | bin/busybox) continue ;; esac
		ln -sf /bin/busybox "$st/$applet"
	done
	[ -e "$st/bin/sh" ] || die "busybox applet list has no sh"
	install -m 755 "$GUEST_DIR/init" "$st/init"
	ln -sf /init "$st/sbin/init"
	cp -R "$GUEST_DIR/overlay/." "$st/"
}

busybox_lister() { # ARCH_WORK -> a busybox binary runnable on this host
	if "$1/busybox/bin/busybox" true >/dev/null 2>&1; then
		echo "$1/busybox/bin/busybox"
	else
		unpack_deb "$(deb_file hostbusybox)" "$1/hostbusybox"
		echo "$1/hostbusybox/bin/busybox"
	fi
}

# -------------------------------------------------------------------- images

build_initrd() { # STAGING OUTFILE
	# -R 0:0: files owned by root in the guest even when built as a user.
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$2"
}

build_rootfs() { # STAGING RAW QCOW2
	echo corral-rootfs-ok >"$1/etc/corral-rootfs"
	rm -f "$2"
	# -d populates the fs from a directory without mounting (no root needed);
	# 256-byte inodes avoid the y2038 warning of the "small" profile.
	mkfs.ext4 -q -F -L corral-root -I 256 -E root_owner=0:0 -d "$1" "$2" "$ROOTFS_SIZE" >/dev/null
	qemu-img convert -q -f raw -O qcow2 "$2" "$3"
}

le32() { # N -> 4 little-endian bytes as printf escapes
	printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255))
}

# BIOS disk: syslinux MBR + one FAT16 partition at 1 MiB with syslinux,
# vmlinuz, initrd.img. Built with mtools, so no loop devices or root.
build_boot_disk() { # DIR(with vmlinuz, initrd.img) RAW QCOW2
	local dir=$1 raw=$2 qcow=$3 start=2048 part_mib part_sectors cfg
	local payload=$(($(stat -c %s "$dir/vmlinuz") + $(stat -c %s "$dir/initrd.img")))
	part_mib=$((payload / 1048576 + 8))
	[ "$part_mib" -ge 32 ] || part_mib=32
	part_sectors=$((part_mib * 2048))
	rm -f "$raw"
	truncate -s $(((start + part_sectors) * 512)) "$raw"
	dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
	# Partition 1: active, type 0x0e (FAT16 LBA), CHS fields saturated (LBA only).
	printf "\\x80\\xfe\\xff\\xff\\x0e\\xfe\\xff\\xff$(le32 $start)$(le32 $part_sectors)" |
		dd of="$raw" bs=1 seek=446 conv=notrunc status=none
	printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none
	# -h: hidden sectors = partition start, which the syslinux VBR adds to
	# its sector numbers when loading ldlinux.sys.
	mkfs.vfat -F 16 -n CORRALBOOT --offset "$start" -h "$start" "$raw" $((part_sectors / 2)) >/dev/null
	cfg=$(mktemp)
	cat >"$cfg" <<-EOF
		SERIAL 0 115200
		DEFAULT corral
		PROMPT 0
		TIMEOUT 0
		LABEL corral
		  LINUX /vmlinuz
		  INITRD /initrd.img
		  APPEND console=ttyS0 quiet panic=-1
	EOF
	MTOOLS_SKIP_CHECK=1 mcopy -o -i "$raw@@$((start * 512))" "$dir/vmlinuz" "$dir/initrd.img" ::/
	MTOOLS_SKIP_CHECK=1 mcopy -o -i "$raw@@$((start * 512))" "$cfg" ::/syslinux.cfg
	rm -f "$cfg"
	syslinux --install --offset $((start * 512)) "$raw"
	qemu-img convert -q -f raw -O qcow2 "$raw" "$qcow"
}

json_list() { # items... -> ["a","b"]
	local out="" i
	for i in "$@"; do out="$out${out:+,}\"$i\""; done
	printf '[%s]' "$out"
}

write_manifest() { # ARCH KVER DIR
	local arch=$1 kver=$2 dir=$3 f files=""
	for f in $(output_files "$arch"); do
		[ "$f" = manifest.json ] && continue
		files="$files${files:+,
    }\"$f\": {\"path\": \"$f\", \"size\": $(stat -c %s "$dir/$f")}"
	done
	cat >"$dir/manifest.json" <<-EOF
		{
		  "arch": "$arch",
		  "kernel_version": "$kver",
		  "kernel_package": "$(pkg_field kernel 2)",
		  "kernel_package_version": "$(pkg_field kernel 3)",
		  "busybox_version": "$(pkg_field busybox 3)",
		  "console": "$CONSOLE",
		  "default_cmdline": "console=$CONSOLE quiet panic=-1",
		  "modules": $(json_list "${MOD_ORDER[@]}"),
		  "modules_builtin": $(json_list "${MOD_BUILTIN_LIST[@]}"),
		  "modules_absent": $(json_list "${MOD_ABSENT[@]}"),
		  "files": {
		    $files
		  }
		}
	EOF
}

# --------------------------------------------------------------------- main

build_arch() {
	local arch=$1 stamp kdir kver new f lister
	arch_vars "$arch"
	if [ -s "$PKGS_FILE" ] && [ "$REFRESH" = 0 ]; then
		stamp=$(compute_stamp)
		if up_to_date "$arch" "$stamp"; then
			log "$arch: up to date ($ARCH_OUT)"
			return 0
		fi
	fi
	resolve_packages "$arch"
	stamp=$(compute_stamp)
	if up_to_date "$arch" "$stamp"; then
		log "$arch: up to date ($ARCH_OUT)"
		return 0
	fi
	fetch_debs

	kdir=$ARCH_WORK/kernel-$(pkg_field kernel 3)
	unpack_deb "$(deb_file kernel)" "$kdir"
	# Drop trees of kernel versions no longer pinned (~100 MB each).
	find "$ARCH_WORK" -mindepth 1 -maxdepth 1 -name 'kernel-*' ! -path "$kdir" -exec rm -rf {} +
	unpack_deb "$(deb_file busybox)" "$ARCH_WORK/busybox"
	kver=$(cd "$kdir/lib/modules" && ls | head -n1)
	{ [ -n "$kver" ] && [ -f "$kdir/boot/vmlinuz-$kver" ]; } || die "no kernel found in $(deb_file kernel)"

	new=$ARCH_WORK/out
	rm -rf "$new"
	mkdir -p "$new"
	# arm64's vmlinuz-* in Debian is already a plain Image, which QEMU's
	# -kernel takes as is; decompress only if a gzip'd one ever shows up.
	if [ "$(head -c2 "$kdir/boot/vmlinuz-$kver" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
		gzip -dc "$kdir/boot/vmlinuz-$kver" >"$new/vmlinuz"
	else
		cp "$kdir/boot/vmlinuz-$kver" "$new/vmlinuz"
	fi

	log "$arch: building initrd.img (kernel $kver)"
	lister=$(busybox_lister "$ARCH_WORK")
	stage_base "$ARCH_WORK/initramfs" "$ARCH_WORK/busybox/bin/busybox" "$lister"
	stage_modules "$kdir/lib/modules/$kver" "$kver" "$ARCH_WORK/initramfs"
	stage_ssh "$ARCH_WORK/initramfs"
	build_initrd "$ARCH_WORK/initramfs" "$new/initrd.img"

	log "$arch: building rootfs.raw/rootfs.qcow2 ($ROOTFS_SIZE ext4)"
	stage_base "$ARCH_WORK/rootfs" "$ARCH_WORK/busybox/bin/busybox" "$lister"
	stage_ssh "$ARCH_WORK/rootfs"
	build_rootfs "$ARCH_WORK/rootfs" "$new/rootfs.raw" "$new/rootfs.qcow2"

	if [ "$arch" = x86_64 ]; then
		log "$arch: building boot.raw/boot.qcow2 (syslinux, BIOS)"
		build_boot_disk "$new" "$new/boot.raw" "$new/boot.qcow2"
	fi

	write_manifest "$arch" "$kver" "$new"
	mkdir -p "$ARCH_OUT"
	rm -f "$ARCH_OUT/.stamp"
	for f in $(output_files "$arch"); do mv -f "$new/$f" "$ARCH_OUT/$f"; done
	echo "$stamp" >"$ARCH_OUT/.stamp"
	rm -rf "$new" "$ARCH_WORK/initramfs" "$ARCH_WORK/rootfs"
	log "$arch: done -> $ARCH_OUT"
}

main() {
	parse_args "$@"
	local arch need_boot=0
	# Test runners may start several builds at once; serialise them per $OUT.
	exec 9>"$OUT/.lock"
	flock 9
	case " $ARCHES " in *" x86_64 "*) need_boot=1 ;; esac
	ensure_host_tools "$need_boot"
	for arch in $ARCHES; do build_arch "$arch"; done
}

main "$@"
