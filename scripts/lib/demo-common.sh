# Shared by demo.sh and demo-docker.sh: output helpers, the two-host underlay and
# starting one fan-agent per host. Source it after setting $id (the unique name
# prefix), $ul (the underlay namespace), $work (the scratch directory) and $bin.
# shellcheck shell=bash

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   $ %s\n' "$*"; }

# make_underlay H...: a switch (bridge in namespace $ul) and one host namespace
# $id-hH per argument, its eth0 addressed 172.30.0.H/16.
make_underlay() {
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    ip netns add "$ul"
    ip -n "$ul" link add br0 type bridge
    ip -n "$ul" link set br0 up
    local h ns
    for h in "$@"; do
        ns="$id-h$h"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$ns" link add eth0 type veth peer name "${id: -6}u$h"
        ip -n "$ns" link set "${id: -6}u$h" netns "$ul"
        ip -n "$ul" link set "${id: -6}u$h" master br0 up
        ip -n "$ns" addr add "172.30.0.$h/16" dev eth0
        ip -n "$ns" link set eth0 up
        say "host $ns: eth0 172.30.0.$h/16"
    done
}

# start_agent H: fan-agent in host $id-hH, socket and state under $work/hH; sets
# $started_pid (a child of this shell, so callers can `wait` for it) once the
# socket exists.
start_agent() {
    local h="$1" d="$work/h$1"
    mkdir -p "$d"
    nsenter --net="/run/netns/$id-h$h" -- "$bin/fan-agent" --socket "$d/agent.sock" \
        --state-dir "$d/state" --bpffs-dir "/sys/fs/bpf/$id-h$h" >"$d/agent.log" 2>&1 &
    started_pid=$!
    for _ in $(seq 200); do [ -S "$d/agent.sock" ] && break; sleep 0.05; done
}

# remove_host_state H...: the namespaces $id-*, the bpffs pins of each host.
remove_host_state() {
    local ns h
    for ns in $(ip netns list | awk '{print $1}' | grep "^$id-" || true); do ip netns del "$ns" || true; done
    for h in "$@"; do
        umount -l "/sys/fs/bpf/$id-h$h" 2>/dev/null || true
        rm -rf "/sys/fs/bpf/$id-h$h"
    done
}
