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
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMALL=${SMALL:-2000} LARGE=${LARGE:-12000} CONNS=${CONNS:-8} TOP=${TOP:-0}
command -v valgrind >/dev/null || { echo "bench/cost.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
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
    # Older revisions predate the example: theirs is the same driver.
    if [[ ! -f $src/$EXAMPLE ]]; then
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
    "$1" "$2" "$CONNS" >/dev/null 2>&1
  awk '/^totals:/ {print $2}' "$out"
  if [[ $TOP -gt 0 && $2 == "$LARGE" ]]; then mv "$out" "$TMP/last.out"; else rm -f "$out"; fi
}

for rev in "$@"; do
  bin=$(build "$rev")
  small=$(count "$bin" "$SMALL")
  large=$(count "$bin" "$LARGE")
  awk -v r="$rev" -v s="$small" -v l="$large" -v n=$((LARGE - SMALL)) \
    'BEGIN { printf "%-12s %8.0f instructions per request (user space, worker thread)\n", r, (l - s) / n }'
  if [[ $TOP -gt 0 ]]; then
    callgrind_annotate --inclusive=no "$TMP/last.out" 2>/dev/null |
      awk '/^-+$/ {sep++} sep >= 3 && NF' | head -n "$((TOP + 1))" | cut -c1-150 || true
  fi
done
