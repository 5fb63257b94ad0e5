#!/bin/sh
# Guest access, started in the background by /init: the network (DHCP on every
# virtio NIC), the cloud-init NoCloud seed (a small subset: hostname,
# ssh_authorized_keys for root and users, runcmd) and the ssh server.
# Prints CORRAL_NET, CORRAL_CLOUDINIT and CORRAL_SSHD lines for the host.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

SEED=/run/corral-seed

# Strips YAML quoting from a scalar: "json \"style\"" or 'single'.
unquote() {
	case $1 in
	\"*\") _v=${1#\"}; _v=${_v%\"}; printf '%b' "$(printf '%s' "$_v" | sed 's/\\"/"/g')" ;;
	\'*\') _v=${1#\'}; _v=${_v%\'}; printf '%s' "$_v" | sed "s/''/'/g" ;;
	*) printf '%s' "$1" ;;
	esac
}

start_network() {
	ip link set lo up 2>/dev/null
	for _dev in /sys/class/net/*; do
		_if=${_dev##*/}
		[ "$_if" = lo ] && continue
		ip link set "$_if" up
		if udhcpc -i "$_if" -q -n -t 10 -T 3 -s /usr/lib/corral/udhcpc.sh >/dev/null 2>&1; then
			printf 'CORRAL_NET %s ip=%s\n' "$_if" "$(cat "/run/corral-ip-$_if")"
		else
			printf 'CORRAL_NET %s dhcp=failed\n' "$_if"
		fi
	done
}

# Mounts the first block device that is an ISO 9660 filesystem with a
# meta-data file (the NoCloud seed, volume label cidata).
mount_seed() {
	mkdir -p "$SEED"
	for _d in /dev/vd* /dev/sr*; do
		[ -b "$_d" ] || continue
		# The ISO 9660 volume id is at byte 32808.
		_label=$(dd if="$_d" bs=1 skip=32808 count=6 2>/dev/null | tr 'A-Z' 'a-z')
		[ "$_label" = cidata ] || continue
		mount -t iso9660 -o ro "$_d" "$SEED" 2>/dev/null || continue
		[ -f "$SEED/meta-data" ] && return 0
		umount "$SEED"
	done
	return 1
}

add_key() { # USER HOME KEY
	mkdir -p "$2/.ssh"
	chmod 700 "$2/.ssh"
	printf '%s\n' "$3" >>"$2/.ssh/authorized_keys"
	chmod 600 "$2/.ssh/authorized_keys"
	chown -R "$1" "$2/.ssh" 2>/dev/null
}

add_user() { # NAME
	grep -q "^$1:" /etc/passwd && return 0
	_uid=$((1000 + $(wc -l </etc/passwd)))
	echo "$1:x:$_uid:$_uid:$1:/home/$1:/bin/sh" >>/etc/passwd
	echo "$1:x:$_uid:" >>/etc/group
	mkdir -p "/home/$1"
	chown "$_uid:$_uid" "/home/$1"
}

# Reads the subset of user-data Corral's own documents use, line by line:
# top-level scalars and lists, and a users: list of maps.
apply_user_data() {
	_section= _user= _keys=0 _users= _cmds=0
	: >/run/corral-runcmd
	while IFS= read -r _line; do
		case $_line in
		'#'* | '') continue ;;
		hostname:*) _host=$(unquote "${_line#hostname: }"); _section= ;;
		ssh_authorized_keys:*) _section=rootkeys ;;
		users:*) _section=users ;;
		runcmd:*) _section=runcmd ;;
		'- '*)
			_val=$(unquote "${_line#- }")
			case $_section in
			rootkeys) add_key root /root "$_val"; _keys=$((_keys + 1)) ;;
			runcmd) printf '%s\n' "$_val" >>/run/corral-runcmd; _cmds=$((_cmds + 1)) ;;
			users)
				case $_val in
				name:*) _user=$(unquote "${_line#- name: }"); add_user "$_user"; _users="$_users$_user " ;;
				*) _user= ;;
				esac ;;
			esac ;;
		'  - '*)
			if [ "$_section" = userkeys ] && [ -n "$_user" ]; then
				add_key "$_user" "/home/$_user" "$(unquote "${_line#  - }")"
				_keys=$((_keys + 1))
			fi ;;
		'  ssh_authorized_keys:'*) [ -n "$_user" ] && _section=userkeys ;;
		'  '*) ;;
		*) _section= ;;
		esac
		# a "- name:" item ends a user's key list
		case $_line in '- '*) [ "$_section" = userkeys ] && _section=users ;; esac
	done <"$SEED/user-data"
}

apply_seed() {
	mount_seed || return 0
	_host=
	_meta_host=$(sed -n 's/^local-hostname: *//p' "$SEED/meta-data" | head -n1)
	[ -n "$_meta_host" ] && _host=$(unquote "$_meta_host")
	_keys=0 _users= _cmds=0
	if head -n1 "$SEED/user-data" 2>/dev/null | grep -q '^#cloud-config'; then
		apply_user_data
	fi
	[ -n "$_host" ] && hostname "$_host" && echo "$_host" >/etc/hostname
	printf 'CORRAL_CLOUDINIT hostname=%s keys=%s users=%s runcmd=%s\n' \
		"$(hostname)" "$_keys" "${_users% }" "$_cmds"
	if [ "$_cmds" -gt 0 ]; then
		sh /run/corral-runcmd
	fi
	if head -n1 "$SEED/user-data" 2>/dev/null | grep -q '^#!'; then
		sh "$SEED/user-data"
	fi
}

start_sshd() {
	command -v dropbear >/dev/null 2>&1 || return 0
	[ -e /run/corral-ip-eth0 ] || return 0
	_key=/etc/dropbear/dropbear_ed25519_host_key
	[ -s "$_key" ] || dropbearkey -t ed25519 -f "$_key" >/dev/null 2>&1
	# -s: keys only, no passwords; -E: log to stderr (not the console).
	if dropbear -r "$_key" -s -E -p 22 -P /run/dropbear.pid 2>/run/dropbear.log; then
		echo "CORRAL_SSHD port=22"
	else
		echo "CORRAL_SSHD failed: $(cat /run/dropbear.log)"
	fi
}

apply_seed
start_network
start_sshd
