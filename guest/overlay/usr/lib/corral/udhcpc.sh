#!/bin/sh
# udhcpc event script: configure the interface from the lease (busybox ip).
case $1 in
deconfig)
	ip addr flush dev "$interface" 2>/dev/null
	ip link set "$interface" up
	;;
bound | renew)
	ip addr flush dev "$interface" 2>/dev/null
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
	for _r in $router; do
		ip route replace default via "$_r" dev "$interface"
		break
	done
	: >/etc/resolv.conf
	for _d in $dns; do echo "nameserver $_d" >>/etc/resolv.conf; done
	echo "$ip" >"/run/corral-ip-$interface"
	;;
esac
exit 0
