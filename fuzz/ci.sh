#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (FUZZ_SECONDS each, default 40) from its committed
# seeds; any crash, leak or timeout fails the run (libFuzzer exits non-zero). New inputs go to
# a scratch corpus, so the committed seeds stay small. Used by .ci/run.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-40}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build

for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target" "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    # The outer timeout is a bound on a hung target, well past -max_total_time.
    if ! timeout --kill-after=10 "$((seconds * 2 + 60))" \
        cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
        tail -n 60 "$scratch/$target.log" >&2
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units)' "$scratch/$target.log" || true
done
