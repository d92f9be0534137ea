#!/usr/bin/env bash
# Runs the unit and API tests of the agent, the SDK, the CLI and CNI plugins, the data plane
# and fan-core as the unprivileged user `nobody`: they use the agent on its
# in-memory data plane (fan_agent::testing), so none of them may need root.
# Test binaries are copied to a scratch directory the user nobody can read, so
# the checkout's permissions do not matter. Fails if any binary fails or none ran.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
# The crates whose tests must run without root, by manifest folder.
crates="agent/daemon client/sdk client/cli client/cni-bridge proto/core agent/dataplane"
[ "$(id -u)" = 0 ] || { echo "test-unprivileged: run as root (it switches to nobody)" >&2; exit 2; }

scratch="$(mktemp -d /tmp/fan-unpriv.XXXX)"
trap 'rm -rf "$scratch"' EXIT
chmod 755 "$scratch"
# nobody's own temporary directory (state directories, sockets).
mkdir "$scratch/tmp" && chown nobody "$scratch/tmp"

# The CLI tests run target/debug/fan-client by its absolute path: nobody needs
# to pass through the checkout's directories (x only, nothing becomes readable).
client="$PWD/target/debug/fan-client"
if ! runuser -u nobody -- test -x "$client"; then
    d="$(dirname "$client")"
    while [ "$d" != / ]; do chmod o+x "$d"; d="$(dirname "$d")"; done
    echo "test-unprivileged: gave others search (x) permission on the directories above $client"
fi

# The same build as `make test`'s (whole workspace, same features), so the
# test binaries it made are reused, not rebuilt with other feature sets.
mapfile -t bins < <("$CARGO" test --workspace --features fan-client/tls --no-run \
    --message-format=json 2>/dev/null |
    CRATES="$crates" ROOT="$PWD" python3 -c 'import json, os, sys
dirs = {os.path.join(os.environ["ROOT"], c, "Cargo.toml") for c in os.environ["CRATES"].split()}
for l in sys.stdin:
    m = json.loads(l)
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and m["profile"]["test"] and m.get("manifest_path") in dirs):
        print(m["executable"])')
[ "${#bins[@]}" -gt 0 ] || { echo "test-unprivileged: no test binaries" >&2; exit 1; }

# Namespace tests need root by nature and skip without it: not counted here.
root_only='^(agent_e2e|ebpf_netns|host_netns|nft_anti_spoofing)-'

passed=0
for b in "${bins[@]}"; do
    [[ "$(basename "$b")" =~ $root_only ]] && continue
    cp "$b" "$scratch/"
    exe="$scratch/$(basename "$b")"
    chmod 755 "$exe"
    out="$(cd "$scratch" && HOME="$scratch/tmp" TMPDIR="$scratch/tmp" runuser -u nobody -- "$exe" --test-threads=2 2>&1)" || {
        echo "$out" | tail -30
        echo "test-unprivileged: $(basename "$b") failed as nobody" >&2
        exit 1
    }
    n="$(grep -o '[0-9]* passed' <<<"$out" | awk '{s+=$1} END {print s+0}')"
    passed=$((passed + n))
    printf '  %-40s %4d passed as nobody\n' "$(basename "$b")" "$n"
done
echo "test-unprivileged: $passed tests passed as nobody"
