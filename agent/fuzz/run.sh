#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target for an equal share of FUZZ_SECONDS
# (default 60 s in all) and fails on the first crash or panic, whose input
# libFuzzer writes under agent/fuzz/artifacts/<target>/ (replay it with
# `cargo fuzz run <target> <file>` here).
set -euo pipefail
cd "$(dirname "$0")"

total=${FUZZ_SECONDS:-60}
targets=(config_file core_parsers agent_validation agent_requests dhcp_packet)
per=$((total / ${#targets[@]}))
((per >= 1)) || per=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# The project's machines have one stable toolchain and can fetch no other:
# RUSTC_BOOTSTRAP lets it take cargo-fuzz's -Z flags. No sanitizer: the code
# under test is safe Rust, where panics, overflows (debug assertions on) and
# the targets' own assertions are what we look for.
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none --debug-assertions)

echo "fuzz: building ${targets[*]}"
cargo fuzz build "${flags[@]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target"
    echo "fuzz: $target for ${per} s (corpus agent/fuzz/corpus/$target, seeds agent/fuzz/seeds/$target)"
    if ! cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$per" -dict=fan.dict -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED (the input is under agent/fuzz/artifacts/$target/)"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
    echo "fuzz: $target ok: ${runs:-?} inputs, ${cov:-cov: ?}, corpus $(find "corpus/$target" -type f | wc -l) files"
done
echo "fuzz: ${#targets[@]} targets, ${per} s each, no crash"
