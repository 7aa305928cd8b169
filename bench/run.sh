#!/usr/bin/env bash
# Benchmarks tako-server against nginx, HAProxy and Caddy on this machine: the harness
# (bench/harness/, README.md there) starts the same upstream behind every proxy, runs the same load
# generators interleaved over several rounds, and prints each figure as a ratio to nginx
# from the same run. tako-server is plugged in through the harness's ours-tako.sh adapter,
# built in release mode (LTO, one codegen unit).
#
#   bench/run.sh                                   # the harness's default scenarios
#   ROUNDS=3 DURATION=5 SCENARIOS="http https h2 http-cached" bench/run.sh
#
# Every knob of the harness (ROUNDS, DURATION, SCENARIOS, WORKERS, PIN, QUIET_WAIT, …) passes
# through. Needs: wrk nginx-light haproxy caddy nghttp2-client socat curl (bench/install.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/bench/harness}
[[ -x $HARNESS/run.sh ]] || { echo "no harness at $HARNESS (set BENCH_HARNESS)" >&2; exit 1; }
if [[ ${SKIP_TAKO_BUILD:-0} != 1 ]]; then
  cargo build --release -p tako-server --manifest-path "$ROOT/Cargo.toml" >&2
fi
export TAKO_SERVER_BIN=${TAKO_SERVER_BIN:-$ROOT/target/release/tako-server}
export OURS_TLS_PORT=${OURS_TLS_PORT:-29444}
# Plain HTTP from loopback counts as already HTTPS with this header (no 307 redirect).
export OURS_HTTP_HEADERS=${OURS_HTTP_HEADERS:-X-Forwarded-Proto: https}
export OURS_CMD="exec $HARNESS/ours-tako.sh"
# Results of every run land in bench/out/<timestamp>/ (git-ignored).
export OUT=${OUT:-$ROOT/bench/out/$(date +%Y%m%d-%H%M%S)}
exec "$HARNESS/run.sh" "$@"
