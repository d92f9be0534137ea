#!/usr/bin/env bash
# Prints the benchmark figures (release build); nothing is asserted.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 2; }
exec "$root/target/release/fan-bench" "$@"
