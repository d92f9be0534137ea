#!/usr/bin/env bash
# Smoke test of the VM runner and of the stock-kernel IPIP fan shape.  Meant to run INSIDE the VM:
#
#   tests/vm/fan-vm -- bash tests/vm/smoke.sh
#
# Two "hosts" (network namespaces) on a veth underlay, 172.30.0.28/16 and 172.30.0.27/16; on each
# an ipip device with no remote (local <underlay addr> dev <underlay>), a fan bridge with the
# host's /24 slice of 250.0.0.0/8 and one "container" namespace behind it; one onlink route per
# remote slice through the ipip device.  Then container <-> container pings, and the ipip
# devices' counters must show the traffic went through them.  Exits 0 on success.
set -euo pipefail

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
step() { echo "smoke: $*"; }

step "kernel $(uname -r) ($(uname -v))"
[ "$(id -u)" = 0 ] || fail "must run as root"

if ! modprobe ipip; then
    fail "modprobe ipip failed (this kernel has no ipip module? run through tests/vm/fan-vm)"
fi
[ -d /sys/module/ipip ] || fail "ipip not loaded after modprobe"
step "ipip loaded: $(grep -E '^ipip ' /proc/modules | cut -d' ' -f1-3)"
# Ubuntu's fan patch would create /proc/sys/net/fan once ipip is loaded; the stock kernel has none.
if [ -e /proc/sys/net/fan ]; then
    fail "/proc/sys/net/fan exists: this is a fan-patched kernel, not the stock one"
fi
step "/proc/sys/net/fan absent (stock kernel, no fan patch), as expected"

id="fhe-$$"
h28="$id-h28" h27="$id-h27" c28="$id-c28" c27="$id-c27"
cleanup() {
    for ns in "$c28" "$c27" "$h28" "$h27"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
for ns in "$h28" "$h27" "$c28" "$c27"; do ip netns add "$ns"; done
# Cheap forms on purpose (every exec and every mount costs under TCG): `ip -n NS -batch` for
# the ip work, nsenter --net (setns only) instead of `ip netns exec` (which also builds a mount
# namespace and remounts /sys each time).
nsx() { local ns="$1"; shift; nsenter --net="/run/netns/$ns" "$@"; }

# Underlay: one veth pair between the two hosts.
ip link add ul0 netns "$h28" type veth peer name ul0 netns "$h27"

setup_host() { # <host ns> <container ns> <underlay addr> <host byte>
    local h="$1" c="$2" addr="$3" b="$4"
    nsx "$h" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward
        echo 2 >/proc/sys/net/ipv4/conf/all/rp_filter
        echo 2 >/proc/sys/net/ipv4/conf/default/rp_filter'
    ip -n "$h" -batch - <<EOF_H
link set lo up
addr add $addr/16 dev ul0
link set ul0 up
# The fan tunnel: ipip with no fixed remote; the outer destination is the gateway of the route.
link add fan0 type ipip local $addr dev ul0
link set fan0 up
# Fan bridge carrying this host's slice, and one container on it.
link add fan-250-0-$b mtu 1480 type bridge
addr add 250.0.$b.1/24 dev fan-250-0-$b
link set fan-250-0-$b up
link add veth$b mtu 1480 type veth peer name eth0 netns $c
link set veth$b master fan-250-0-$b up
EOF_H
    ip -n "$c" -batch - <<EOF_C
link set lo up
addr add 250.0.$b.2/24 dev eth0
link set eth0 up
route add default via 250.0.$b.1
EOF_C
}
setup_host "$h28" "$c28" 172.30.0.28 28
setup_host "$h27" "$c27" 172.30.0.27 27
ip -n "$h28" route add 250.0.27.0/24 via 172.30.0.27 dev fan0 onlink
ip -n "$h27" route add 250.0.28.0/24 via 172.30.0.28 dev fan0 onlink
step "built: $h28 (172.30.0.28, fan-250-0-28 250.0.28.1/24, $c28 250.0.28.2)"
step "       $h27 (172.30.0.27, fan-250-0-27 250.0.27.1/24, $c27 250.0.27.2)"
ip -n "$h28" -d link show fan0 | sed 's/^/smoke:   h28 /'
ip -n "$h28" route show | sed 's/^/smoke:   h28 route /'

nsx "$c28" ping -c 3 -i 0.2 -W 5 250.0.27.2 || fail "ping 250.0.28.2 -> 250.0.27.2"
nsx "$c27" ping -c 3 -i 0.2 -W 5 250.0.28.2 || fail "ping 250.0.27.2 -> 250.0.28.2"

# The packets must have travelled through the ipip devices, not some other path.
for h in "$h28" "$h27"; do
    read -r rx tx < <(nsx "$h" awk '$1 == "fan0:" {print $3, $11}' /proc/net/dev)
    step "$h fan0: rx_packets=$rx tx_packets=$tx"
    [ "${tx:-0}" -ge 6 ] && [ "${rx:-0}" -ge 6 ] || fail "$h: fan0 counters too low, traffic did not use the ipip tunnel"
done
step "PASS: container <-> container over ipip (no remote + onlink routes) on $(uname -r)"
