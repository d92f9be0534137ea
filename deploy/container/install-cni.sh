#!/bin/sh
# Installs fan-ipam and fan-bridge into the host's CNI plugin directory, and the standard
# plugins the fan configuration list uses (bridge, portmap, loopback) where
# the host has none. Never overwrites a plugin the host already has, except
# fan-ipam and fan-bridge themselves, which are replaced atomically (a running
# plugin keeps its old inode; no "text file busy").
#
#   CNI_BIN_DIR       where plugins go            (default /host/opt/cni/bin)
#   FAN_IPAM          the fan-ipam to install     (default /usr/local/bin/fan-ipam)
#   FAN_BRIDGE        the fan-bridge to install   (default beside FAN_IPAM)
#   CNI_PLUGINS_SRC   standard plugins to copy    (default /usr/lib/cni, Debian's package)
set -eu

dest="${CNI_BIN_DIR:-/host/opt/cni/bin}"
src_ipam="${FAN_IPAM:-/usr/local/bin/fan-ipam}"
src_std="${CNI_PLUGINS_SRC:-/usr/lib/cni}"

src_bridge="${FAN_BRIDGE:-$(dirname "$src_ipam")/fan-bridge}"

mkdir -p "$dest"
for pair in "fan-ipam:$src_ipam" "fan-bridge:$src_bridge"; do
    name="${pair%%:*}"
    src="${pair#*:}"
    tmp="$dest/.$name.$$"
    cp "$src" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$dest/$name"
    echo "install-cni: $name -> $dest/$name"
done

for plugin in bridge portmap loopback; do
    if [ -e "$dest/$plugin" ]; then
        echo "install-cni: $dest/$plugin exists, kept"
    elif [ -x "$src_std/$plugin" ]; then
        tmp="$dest/.$plugin.$$"
        cp "$src_std/$plugin" "$tmp"
        chmod 0755 "$tmp"
        mv -f "$tmp" "$dest/$plugin"
        echo "install-cni: $plugin -> $dest/$plugin"
    else
        echo "install-cni: warning: no $plugin in $dest or $src_std" >&2
    fi
done
