#!/usr/bin/env bash
# The 2015 Fan demo with real Docker: two hosts on 172.30.0.0/16, one fan-agent,
# one fan-docker-ipam and one dockerd each, the fan 250.0.0.0/8, a Docker network
# on the agent's bridge whose every address comes from the agent, one busybox
# container per host: ping both ways and "here come the bits" over nc both ways.
# Hosts are network namespaces; dockerd runs under `nsenter --net` with its own
# data/exec roots and socket. Everything is removed at the end, also on Ctrl-C
# or failure.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${FAN_BIN_DIR:-$root/target/debug}"
for b in fan-agent fan-client fan-docker-ipam; do
    [ -x "$bin/$b" ] || { echo "demo-docker: $bin/$b missing; run 'make demo-docker' (it builds first)" >&2; exit 2; }
done
for b in /usr/sbin/dockerd /usr/bin/docker /bin/busybox; do
    [ -x "$b" ] || { echo "demo-docker: $b missing; run scripts/install-deps.sh" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "demo-docker: needs root (network namespaces)" >&2; exit 2; }

id="fandock$$"
work="$(mktemp -d "/tmp/$id.XXXX")"
ul="$id-ul"
pids=()

# shellcheck source=lib/demo-common.sh
. "$root/scripts/lib/demo-common.sh"
dk() { local h="$1"; shift; /usr/bin/docker -H "unix://$work/h$h/docker.sock" "$@"; }
fc() { local h="$1"; shift; "$bin/fan-client" --agent "unix:$work/h$h/agent.sock" "$@"; }

cleanup() {
    local rc=$?
    # A second Ctrl-C must not cut the cleanup short.
    trap '' INT TERM
    trap - EXIT
    step "Cleaning up"
    for h in 28 27; do
        [ -S "$work/h$h/docker.sock" ] || continue
        dk "$h" ps -aq 2>/dev/null | xargs -r /usr/bin/docker -H "unix://$work/h$h/docker.sock" rm -f >/dev/null 2>&1 || true
        dk "$h" network rm fan >/dev/null 2>&1 || true
    done
    # dockerd first, then the plugins, then the agents (reverse start order).
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pids[i]}" 2>/dev/null || true
    done
    # Anything our daemons started that outlived them (shims) names $work.
    for pid in $(pgrep -f "$work" || true); do kill -KILL "$pid" 2>/dev/null || true; done
    grep " $work/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    remove_host_state 28 27
    for h in 28 27; do rm -f "/run/docker/plugins/$id-h$h.sock"; done
    rm -rf "$work"
    echo "   removed containers, dockerd, plugins, agents, namespaces $id-*, pins and $work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Underlay: a switch (bridge) and two hosts, 172.30.0.28/16 and 172.30.0.27/16"
make_underlay 28 27

step "Per host: fan-agent, the fan 250.0.0.0/8, fan-docker-ipam, dockerd"
for h in 28 27; do
    ns="$id-h$h"
    d="$work/h$h"
    start_agent "$h"
    pids+=("$started_pid")
    say "fan-client network create fan-250 --overlay 250.0.0.0/8 --underlay 172.30.0.0/16   (host $ns)"
    fc "$h" network create fan-250 --overlay 250.0.0.0/8 --underlay 172.30.0.0/16 >/dev/null
    "$bin/fan-docker-ipam" --agent "unix://$d/agent.sock" --socket "/run/docker/plugins/$id-h$h.sock" >"$d/ipam.log" 2>&1 &
    pids+=($!)
    say "fan-docker-ipam --socket /run/docker/plugins/$id-h$h.sock"
    nsenter --net="/run/netns/$ns" -- /usr/sbin/dockerd --data-root "$d/docker" --exec-root "$d/dx" \
        -H "unix://$d/docker.sock" --pidfile "$d/docker.pid" --bridge=none --iptables=false \
        --storage-driver vfs >"$d/dockerd.log" 2>&1 &
    pids+=($!)
    say "dockerd --bridge=none --iptables=false ...   (in $ns)"
done
for h in 28 27; do
    for _ in $(seq 300); do dk "$h" version >/dev/null 2>&1 && break; sleep 0.1; done
    dk "$h" version >/dev/null || { echo "dockerd on h$h did not start:"; tail "$work/h$h/dockerd.log"; exit 1; }
done

step "A busybox image (Debian's busybox-static), imported: no registry"
mkdir -p "$work/rootfs/bin" "$work/rootfs/"{proc,sys,dev,etc,tmp}
cp /bin/busybox "$work/rootfs/bin/"
for t in sh ping nc sleep ip cat echo hostname timeout; do ln -s busybox "$work/rootfs/bin/$t"; done
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
for h in 28 27; do dk "$h" import "$work/busybox.tar" fanbox:demo >/dev/null; done
say "docker import busybox.tar fanbox:demo"

step "The Docker network: the agent's bridge, the agent's addresses (fan-client docker recipe)"
declare -A addr
for h in 28 27; do
    cmd="$(fc "$h" docker recipe fan-250 --plugin "$id-h$h" --name fan | grep '^docker network create')"
    say "$cmd"
    # shellcheck disable=SC2086  # the recipe is a command line
    dk "$h" ${cmd#docker } >/dev/null
done

step "One container per host, serving a line on TCP 5000"
for h in 28 27; do
    dk "$h" run -d --name "c$h" --hostname "c$h" --network fan fanbox:demo \
        sh -c 'while true; do echo "here come the bits from $(hostname)" | nc -l -p 5000; done' >/dev/null
    addr[$h]="$(dk "$h" inspect -f '{{.NetworkSettings.Networks.fan.IPAddress}}' "c$h")"
    say "docker run --network fan ... c$h   -> ${addr[$h]}"
done
say "fan-client address list fan-250   (host .28: the agent allocated the container's address)"
fc 28 address list fan-250

step "Ping across hosts, both ways"
say "docker exec c28 ping ${addr[27]}"
dk 28 exec c28 ping -c 3 -i 0.2 "${addr[27]}"
say "docker exec c27 ping ${addr[28]}"
dk 27 exec c27 ping -c 3 -i 0.2 "${addr[28]}"

step "TCP both ways: here come the bits"
say "docker exec c28 nc ${addr[27]} 5000"
dk 28 exec c28 timeout 5 nc "${addr[27]}" 5000
say "docker exec c27 nc ${addr[28]} 5000"
dk 27 exec c27 timeout 5 nc "${addr[28]}" 5000

step "docker rm -f releases the addresses"
dk 28 rm -f c28 >/dev/null
dk 27 rm -f c27 >/dev/null
fc 28 address list fan-250
echo
echo "The demo worked: Docker containers on two hosts talk over the fan, addressed by the agents."
