#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian 12 machine,
# skipping what is already there. Idempotent; run as root.
set -euo pipefail

need_apt=()
check() { # check COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || need_apt+=("$2")
}
check clang clang
check llvm-strip llvm
check nft nftables
check iperf3 iperf3
check tcpdump tcpdump
check ip iproute2
check tc iproute2
check ping iputils-ping
check nsenter util-linux
check python3 python3
[ -e /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
[ -x /usr/lib/cni/host-local ] || need_apt+=(containernetworking-plugins)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Python SDK test generates its client from proto/ with grpcio-tools.
venv="${FAN_PYENV:-$(cd "$(dirname "$0")/.." && pwd)/target/pyenv}"
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' >/dev/null 2>&1; then
    echo "install-deps: python venv with grpcio and grpcio-tools in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check grpcio==1.76.0 grpcio-tools==1.76.0 protobuf
fi

# --- contract helper: the buf CLI (npm, pinned) for `make check-proto`. ---
bufdir="$(cd "$(dirname "$0")/.." && pwd)/target/buf"
if ! "$bufdir/node_modules/.bin/buf" --version 2>/dev/null | grep -qx 1.75.0; then
    command -v npm >/dev/null 2>&1 || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends npm >/dev/null
    }
    echo "install-deps: @bufbuild/buf 1.75.0 in $bufdir"
    mkdir -p "$bufdir"
    npm install --silent --no-audit --no-fund --prefix "$bufdir" @bufbuild/buf@1.75.0
fi
# --- end contract helper ---
