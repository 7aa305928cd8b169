#!/usr/bin/env bash
# The worker's user-space instructions per proxied plain-HTTP keep-alive request, counted by
# callgrind: a figure that does not move with a shared machine's load, for A/B checks of
# changes too small for bench/ab.sh to see. The kernel's part is not counted (see ab.sh).
# Two runs of one build agree within 0.1 %; two builds that differ off the hot path can still
# differ by about 1 % (LTO inlines differently), so read steps under 1 % as noise.
#
#   bench/cost.sh                 # the working tree
#   bench/cost.sh main HEAD~3 .   # git revisions ("." is the working tree), one line each
#
# Each revision is built in release (the shipped profile) with its own target directory under
# target/cost/. It runs proxy-worker/examples/request_cost twice under callgrind, with
# SMALL and LARGE requests (defaults 2000 and 12000, over CONNS=8 connections), and reports
# (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL): start-up and shut-down cancel out. With TOP=N it
# also prints the N functions with the most instructions of their own in the larger run.
# Needs valgrind.
#
# MODE picks the scenario (the example's third argument): keepalive (the default, the series
# in BENCHMARKS.md), close (a new connection per request), body16k (a 16 KiB response body),
# download1m and upload1m (a 1 MiB response or request body; fewer requests by default),
# json16k (a 16 KiB JSON answer compression would take, to a client that accepts only
# identity), json16k-gzip and json16k-br (the same answer encoded).
# With SYSCALLS=1 it also runs both sizes under `strace -ff` and reports the worker thread's
# system calls per request, the most frequent first (needs strace).
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${MODE:-keepalive}
case $MODE in
  download1m | upload1m) small_default=40 large_default=240 ;;
  close) small_default=1000 large_default=6000 ;;
  *) small_default=2000 large_default=12000 ;;
esac
SMALL=${SMALL:-$small_default} LARGE=${LARGE:-$large_default} CONNS=${CONNS:-8} TOP=${TOP:-0}
SYSCALLS=${SYSCALLS:-0}
command -v valgrind >/dev/null || { echo "bench/cost.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ $SYSCALLS == 0 ]] || command -v strace >/dev/null || { echo "SYSCALLS=1 needs strace" >&2; exit 1; }
[[ $# -gt 0 ]] || set -- .
EXAMPLE=proxy-worker/examples/request_cost.rs

TMP=$(mktemp -d /tmp/tako-cost.XXXXXX)
cleanup() {
  # The worktrees are added in a subshell (`$(build ...)`): remove their directories, then
  # let git forget them.
  rm -rf "$TMP"
  git -C "$ROOT" worktree prune
}
trap cleanup EXIT

build() { # rev -> path of the example binary
  local rev=$1 src target
  if [[ $rev == . ]]; then
    src=$ROOT target=$ROOT/target/cost/worktree
  else
    local sha
    sha=$(git -C "$ROOT" rev-parse --short "$rev^{commit}")
    src=$TMP/src-$sha target=$ROOT/target/cost/$sha
    git -C "$ROOT" worktree add --quiet --detach "$src" "$sha"
    # Older revisions predate the example (or its modes): theirs is the same driver.
    if [[ ! -f $src/$EXAMPLE || $MODE != keepalive ]]; then
      mkdir -p "$(dirname "$src/$EXAMPLE")"
      cp "$ROOT/$EXAMPLE" "$src/$EXAMPLE"
    fi
  fi
  cargo build --quiet --release --example request_cost -p tako-proxy-worker \
    --manifest-path "$src/Cargo.toml" --target-dir "$target" >&2
  echo "$target/release/examples/request_cost"
}

count() { # bin requests -> instructions collected in the worker
  local out=$TMP/cg.$RANDOM.out
  valgrind --tool=callgrind --toggle-collect='*worker_thread*' --callgrind-out-file="$out" \
    "$1" "$2" "$CONNS" "$MODE" >/dev/null 2>&1
  awk '/^totals:/ {print $2}' "$out"
  if [[ $TOP -gt 0 && $2 == "$LARGE" ]]; then mv "$out" "$TMP/last.out"; else rm -f "$out"; fi
}

trace() { # bin requests -> "name count" lines for the worker thread's system calls
  local dir=$TMP/st.$RANDOM tid
  mkdir "$dir"
  strace -ff -qq -o "$dir/t" "$1" "$2" "$CONNS" "$MODE" >/dev/null 2>"$dir/err"
  tid=$(awk '/^worker_tid/ {print $2}' "$dir/err")
  # One line per call ("name(args) = result"; a call another thread interrupted is split
  # into "<unfinished ...>" and "<... name resumed>": the first half counts).
  grep -v -e '^+++' -e '^---' -e 'resumed>' "$dir/t.$tid" | sed -E 's/\(.*//' | sort | uniq -c |
    awk '{print $2, $1}'
  rm -rf "$dir"
}

for rev in "$@"; do
  bin=$(build "$rev")
  small=$(count "$bin" "$SMALL")
  large=$(count "$bin" "$LARGE")
  awk -v r="$rev" -v m="$MODE" -v s="$small" -v l="$large" -v n=$((LARGE - SMALL)) \
    'BEGIN { printf "%-12s %8.0f instructions per request (user space, worker thread, %s)\n", r, (l - s) / n, m }'
  if [[ $SYSCALLS != 0 ]]; then
    trace "$bin" "$SMALL" >"$TMP/sys.small"
    trace "$bin" "$LARGE" >"$TMP/sys.large"
    # Calls per request: the difference of the two runs, like the instructions.
    awk -v n=$((LARGE - SMALL)) '
      NR == FNR { small[$1] = $2; next }
      { d = ($2 - small[$1]) / n; if (d > 0.005) printf "%.2f %s\n", d, $1 }' \
      "$TMP/sys.small" "$TMP/sys.large" | sort -rn |
      awk -v r="$rev" '{ total += $1; list = list " " $2 " " $1 }
        END { printf "%-12s %8.2f syscalls per request (worker thread):%s\n", r, total, list }'
  fi
  if [[ $TOP -gt 0 ]]; then
    callgrind_annotate --inclusive=no "$TMP/last.out" 2>/dev/null |
      awk '/^-+$/ {sep++} sep >= 3 && NF' | head -n "$((TOP + 1))" | cut -c1-150 || true
  fi
done
