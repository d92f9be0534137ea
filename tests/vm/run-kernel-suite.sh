#!/usr/bin/env bash
# The kernel suite (`make test-kernels`): the data-plane tests that need ipip.ko, run inside a
# VM that boots Debian's stock kernel (tests/vm/fan-vm), because this machine's kernel has no
# ipip module.
#
#   1. tests/vm/setup.sh           the VM kernel and initramfs (a no-op when cached)
#   2. cargo build / test --no-run  fan-agent and the two test binaries, on the host
#   3. one VM boot running both binaries with --ignored and FAN_KERNEL_SUITE=1:
#        fan-dataplane lib, ipip::kernel_tests   backends driven directly in namespaces
#        fan-e2e tests/kernels.rs                real agents, containers, mixed backends
#
#   4. a second VM boot under Debian's 6.12 (bookworm-backports, its own cache), whose kernel
#      has netkit (this machine's has not): fan-e2e tests/netkit.rs and tests/fast_path.rs
#
# Prints the BENCH figures again at the end, and the suite's duration. Exit status: 0 when every
# test passed. Environment: CARGO (default cargo), CARGO_TARGET_DIR as usual, FAN_VM_* as
# documented in tests/vm/fan-vm, FAN_KERNEL_SUITE_TIMEOUT (seconds for the VM, default 540).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cargo="${CARGO:-cargo}"
timeout="${FAN_KERNEL_SUITE_TIMEOUT:-540}"
t0=$SECONDS

log() { printf 'kernel suite: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (the VM runner and the tests need it)"; exit 2; }

log "preparing the VM (tests/vm/setup.sh)"
"$here/setup.sh"
# The netkit kernel: Debian's backports, in a cache of its own.
netkit_cache="${FAN_VM_NETKIT_CACHE:-/var/cache/fan-vm-bookworm-backports}"
log "preparing the netkit VM (bookworm-backports kernel in $netkit_cache)"
FAN_VM_CACHE="$netkit_cache" FAN_VM_APT_SUITE=bookworm-backports "$here/setup.sh"

cd "$root"
log "building fan-agent and the test binaries"
# The same packages and features as `make build` and `make test`, so their
# artifacts are reused: a narrower -p selection unifies features differently
# and rebuilds half the dependency tree (1.5 GB more disk, minutes more).
"$cargo" build --quiet --workspace --features fan-client/tls --bins
# The executables of the test targets, from cargo's JSON messages.
bins="$("$cargo" test --quiet --no-run --message-format=json --workspace --features fan-client/tls \
    --lib --test kernels --test netkit --test fast_path --test cni_bridge |
    python3 -c '
import json, sys
found = {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        found[m["target"]["name"]] = m["executable"]
print(*(found.get(n, "-") for n in ("fan_dataplane", "kernels", "netkit", "fast_path", "cni_bridge")))
')"
read -r dataplane_bin kernels_bin netkit_bin fast_path_bin cni_bridge_bin <<<"$bins"
for b in "$dataplane_bin" "$kernels_bin" "$netkit_bin" "$fast_path_bin" "$cni_bridge_bin"; do
    [ -x "$b" ] || { log "test binaries not found ($bins)"; exit 2; }
done
agent_dir="$(dirname "$(dirname "$kernels_bin")")"
[ -x "$agent_dir/fan-agent" ] || { log "no fan-agent next to the test binaries in $agent_dir"; exit 2; }
t_build=$SECONDS

out="$(mktemp /tmp/fan-kernel-suite.XXXXXX)"
trap 'rm -f "$out"' EXIT
log "running the suite in the VM (timeout ${timeout}s)"
set +e
FAN_KERNEL_SUITE=1 FAN_BIN_DIR="$agent_dir" "$here/fan-vm" --timeout "$timeout" -- bash -c '
    status=0
    echo "== kernel $(uname -r): fan-dataplane ipip::kernel_tests"
    "$1" --ignored --test-threads=1 --nocapture ipip::kernel_tests:: || status=1
    echo "== kernel $(uname -r): fan-e2e kernels"
    "$2" --ignored --test-threads=1 --nocapture || status=1
    exit $status
' fan-kernel-suite "$dataplane_bin" "$kernels_bin" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
log "running the netkit tests in the 6.12 VM (timeout ${timeout}s)"
FAN_BIN_DIR="$agent_dir" FAN_VM_CACHE="$netkit_cache" "$here/fan-vm" --timeout "$timeout" -- bash -c '
    status=0
    echo "== kernel $(uname -r): fan-e2e netkit"
    # A skip here is a failure: this kernel has netkit.
    out="$("$1" --test-threads=1 --nocapture 2>&1)" || status=1
    printf "%s\n" "$out"
    case "$out" in *skipped:*) echo "netkit tests skipped on $(uname -r)"; status=1 ;; esac
    echo "== kernel $(uname -r): fan-e2e fast_path"
    "$2" --test-threads=2 || status=1
    echo "== kernel $(uname -r): fan-e2e cni_bridge (fan-bridge makes netkit pairs here)"
    "$3" --nocapture || status=1
    exit $status
' fan-netkit-suite "$netkit_bin" "$fast_path_bin" "$cni_bridge_bin" 2>&1 | tee -a "$out"
netkit_rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] && rc=$netkit_rc
set -e

echo
echo "== kernel suite figures"
grep -ho 'BENCH.*' "$out" || echo "(none printed)"
counts="$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
    END { printf "%d passed, %d failed", p, f }' "$out")"
echo "== kernel suite: $counts;" \
    "build $((t_build - t0)) s, VM run $((SECONDS - t_build)) s, total $((SECONDS - t0)) s; exit status $rc"
exit "$rc"
