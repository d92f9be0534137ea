#!/bin/sh
# Keeps this node's fan network and its CNI configuration list in place:
# creates the network with `fan-client network create` (idempotent: the same
# spec again is a no-op), then writes the list `fan-ipam conflist` prints
# (bridge + fan-ipam + portmap, with the bridge and MTU the agent reports)
# into the CNI configuration directory, atomically and only when it changed.
# `fan-ipam conflist` fails while the network is not ready, so a runtime
# never sees the list before the data path works.
#
#   FAN_NETWORK        network id                     (default fan)
#   FAN_OVERLAY        overlay CIDR                   (required)
#   FAN_UNDERLAY       underlay, fanctl style         (required; e.g. eth0/16, 10.0.0.0/16)
#   FAN_HOST_RESERVE, FAN_BRIDGE, FAN_MTU, FAN_BACKEND  optional network settings
#   FAN_AGENT          agent target                   (default unix:///run/fan/agent.sock)
#   CNI_CONF_DIR       where the list goes            (default /host/etc/cni/net.d)
#   CNI_CONF_NAME      its file name                  (default 10-fan.conflist)
#   CNI_VERSION        the list's cniVersion          (default 1.0.0; 1.1.0 needs plugins speaking spec 1.1.0)
#   FAN_SYNC_INTERVAL  seconds between passes (a failed pass is retried after 2 s);
#                      0 = one pass, exit status = its success (default 60)
set -u

network="${FAN_NETWORK:-fan}"
agent="${FAN_AGENT:-unix:///run/fan/agent.sock}"
conf_dir="${CNI_CONF_DIR:-/host/etc/cni/net.d}"
conf_name="${CNI_CONF_NAME:-10-fan.conflist}"
cni_version="${CNI_VERSION:-1.0.0}"
interval="${FAN_SYNC_INTERVAL:-60}"

if [ -z "${FAN_OVERLAY:-}" ] || [ -z "${FAN_UNDERLAY:-}" ]; then
    echo "fan-network: FAN_OVERLAY and FAN_UNDERLAY are required" >&2
    exit 2
fi

one_pass() {
    set -- network create "$network" --overlay "$FAN_OVERLAY" --underlay "$FAN_UNDERLAY"
    [ -n "${FAN_HOST_RESERVE:-}" ] && set -- "$@" --host-reserve "$FAN_HOST_RESERVE"
    [ -n "${FAN_BRIDGE:-}" ] && set -- "$@" --bridge "$FAN_BRIDGE"
    [ -n "${FAN_MTU:-}" ] && [ "${FAN_MTU}" != 0 ] && set -- "$@" --mtu "$FAN_MTU"
    [ -n "${FAN_BACKEND:-}" ] && set -- "$@" --backend "$FAN_BACKEND"
    fan-client --agent "$agent" "$@" >/dev/null || return 1

    mkdir -p "$conf_dir" || return 1
    tmp="$conf_dir/.$conf_name.$$"
    if ! fan-ipam conflist "$network" --agent "$agent" --cni-version "$cni_version" >"$tmp"; then
        rm -f "$tmp"
        return 1
    fi
    if cmp -s "$tmp" "$conf_dir/$conf_name"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$conf_dir/$conf_name" || return 1
        echo "fan-network: wrote $conf_dir/$conf_name"
    fi
}

if [ "$interval" = 0 ]; then
    one_pass
    exit $?
fi
while :; do
    if one_pass; then
        sleep "$interval"
    else
        echo "fan-network: pass failed; retrying in 2s" >&2
        sleep 2
    fi
done
