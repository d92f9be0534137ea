#!/usr/bin/env bash
# The 2015 Fan demo, locally: two hosts on 172.30.0.0/16, one agent each, the fan
# 250.0.0.0/8 created with fan-client, one container per host addressed by its
# agent, ping both ways and a 3-second TCP run over the fan vs the underlay.
# Hosts and containers are network namespaces; everything is removed at the end,
# also on Ctrl-C or failure.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${FAN_BIN_DIR:-$root/target/debug}"
for b in fan-agent fan-client; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b missing; run 'make demo' (it builds first)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 2; }

id="fandemo$$"
work="$(mktemp -d "/tmp/$id.XXXX")"
ul="$id-ul"
agent_pids=()

# shellcheck source=lib/demo-common.sh
. "$root/scripts/lib/demo-common.sh"
in_ns() { local ns="$1"; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    step "Cleaning up"
    for pid in "${agent_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${agent_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    remove_host_state 28 27
    rm -rf "$work"
    echo "   removed namespaces $id-*, agents, pins and $work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Underlay: a switch (bridge) and two hosts, 172.30.0.28/16 and 172.30.0.27/16"
make_underlay 28 27

step "One fan-agent per host (gRPC on a unix socket, state in its own directory)"
for h in 28 27; do
    start_agent "$h"
    agent_pids+=("$started_pid")
    say "fan-agent --socket $work/h$h/agent.sock   (pid ${agent_pids[-1]}, host $id-h$h)"
done
fc() { local h="$1"; shift; "$bin/fan-client" --agent "unix:$work/h$h/agent.sock" "$@"; }
say "fan-client info"
fc 28 info

step "Create the fan 250.0.0.0/8 over 172.30.0.0/16 on both hosts"
for h in 28 27; do
    say "fan-client --agent unix:.../h$h/agent.sock network create fan --overlay 250.0.0.0/8 --underlay 172.30.0.0/16"
    fc "$h" network create fan --overlay 250.0.0.0/8 --underlay 172.30.0.0/16
done
say "fan-client network show fan   (host 172.30.0.28 owns 250.0.28.0/24)"
fc 28 network show fan

step "One container per host, its address allocated by the host's agent"
declare -A addr
for h in 28 27; do
    ns="$id-h$h"
    c="$id-c$h"
    json="$(fc "$h" -o json address allocate fan --owner "demo-c$h")"
    addr[$h]="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])' <<<"$json")"
    prefix="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["prefix_length"])' <<<"$json")"
    gw="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["gateway"])' <<<"$json")"
    mtu="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["mtu"])' <<<"$json")"
    ip netns add "$c"
    ip -n "$c" link set lo up
    ip -n "$ns" link add "${id: -6}c$h" type veth peer name eth0 netns "$c"
    ip -n "$ns" link set "${id: -6}c$h" mtu "$mtu" master fan-250 up
    ip -n "$c" addr add "${addr[$h]}/$prefix" dev eth0
    ip -n "$c" link set eth0 mtu "$mtu" up
    ip -n "$c" route add default via "$gw"
    say "container $c: eth0 ${addr[$h]}/$prefix via $gw, mtu $mtu (plugged into fan-250 on $ns)"
done

step "Ping across hosts, both ways, over the fan (IPIP computed from the address)"
say "container on .28 -> ${addr[27]}"
in_ns "$id-c28" ping -c 3 -i 0.2 "${addr[27]}"
say "container on .27 -> ${addr[28]}"
in_ns "$id-c27" ping -c 3 -i 0.2 "${addr[28]}"

step "TCP for 3 seconds: container to container over the fan, then host to host on the underlay"
in_ns "$id-c27" iperf3 -s -D -1 -p 5201 --logfile "$work/iperf-fan.log"
in_ns "$id-h27" iperf3 -s -D -1 -p 5202 --logfile "$work/iperf-ul.log"
sleep 0.3
fan_bps="$(in_ns "$id-c28" iperf3 -c "${addr[27]}" -p 5201 -t 3 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')"
ul_bps="$(in_ns "$id-h28" iperf3 -c 172.30.0.27 -p 5202 -t 3 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')"
python3 - "$fan_bps" "$ul_bps" <<'PY'
import sys
fan, ul = (float(x) for x in sys.argv[1:3])
print(f"   overlay (fan) : {fan/1e9:7.2f} Gbit/s")
print(f"   underlay      : {ul/1e9:7.2f} Gbit/s")
print(f"   fan/underlay  : {fan/ul:7.2f}")
PY

step "What the data plane counted"
fc 28 network show fan
echo
echo "The demo worked: containers on two hosts talk over the fan with no shared state."
