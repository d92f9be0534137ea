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

# --- engines (tests/tests/engines.rs, make demo-docker): Debian's own container
# engines and a static busybox for the test image. Their services are not
# started here (the tests run their own daemons in namespaces).
check dockerd docker.io
check podman podman
check containerd containerd
check ctr containerd
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
# --- end engines

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d: packages with services (docker.io, containerd) must not
    # start them on install; the tests run their own daemons.
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    [ -z "$created_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

# The Python SDK test generates its client from proto/ with grpcio-tools.
venv="${FAN_PYENV:-$(cd "$(dirname "$0")/.." && pwd)/target/pyenv}"
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' >/dev/null 2>&1; then
    echo "install-deps: python venv with grpcio and grpcio-tools in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check grpcio==1.76.0 grpcio-tools==1.76.0 protobuf
fi
