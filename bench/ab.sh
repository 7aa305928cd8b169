#!/usr/bin/env bash
# A/B check of plain-HTTP keep-alive CPU per request: nginx and two tako-server builds side by
# side, loaded in turn with the same wrk command for several rounds, each serving process's
# utime+stime divided by the requests it served. Interleaving cancels most of a shared
# machine's drift; for the published ratios use bench/run.sh.
#
#   bench/ab.sh OLD_BIN NEW_BIN               # e.g. a build of main and a build of a branch
#   ROUNDS=5 DURATION=4 CONNS=64 bench/ab.sh target-base/release/tako-server target/release/tako-server
#
# Needs what bench/run.sh needs (wrk, nginx-light, openssl, python3, curl) and root for the
# tako users. Ports: BASE_PORT (default 29700) upstream, +1 nginx, +2/+3 A, +4/+5 B.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/bench/harness}
A_BIN=$(readlink -f "${1:?usage: bench/ab.sh OLD_BIN NEW_BIN}")
B_BIN=$(readlink -f "${2:?usage: bench/ab.sh OLD_BIN NEW_BIN}")
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-64} BASE_PORT=${BASE_PORT:-29700}
HDR='X-Forwarded-Proto: https'

# shellcheck source=harness/lib/side-by-side.sh
source "$HARNESS/lib/side-by-side.sh"
side_by_side_init tako-ab

mkdir -p "$TMP/nginx"
sed -e "s#@TMP@#$TMP#g" -e "s#@WORKERS@#1#g" -e "s#@UPSTREAM@#127.0.0.1:$BASE_PORT#g" \
  -e "s#@PORT@#$((BASE_PORT + 1))#g" -e "s#@TLS_PORT@#$((BASE_PORT + 361))#g" \
  -e "s#@CERT@#$TMP/cert.pem#g" -e "s#@KEY@#$TMP/key.pem#g" -e "s#@PEM@#$TMP/cert.pem#g" \
  "$HARNESS/conf/nginx.conf.tmpl" >"$TMP/nginx.conf"
sed -i "s#^pid .*#pid $TMP/nginx.pid;#" "$TMP/nginx.conf"
nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"

start_tako() { # name bin port
  local dir=$TMP/$1
  mkdir -p "$dir" && chmod 755 "$dir"
  TAKO_SERVER_BIN=$2 OURS_PORT=$3 OURS_TLS_PORT=$(($3 + 1)) BENCH_TMP=$dir BENCH_CERT=$TMP/cert.pem \
    BENCH_KEY=$TMP/key.pem BENCH_HOST=localhost WORKERS=1 BENCH_UPSTREAM_BIN=$TMP/bench-upstream \
    setsid "$HARNESS/ours-tako.sh" >"$dir/ours.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    curl -s -o /dev/null -w '%{http_code}' -H "$HDR" "http://localhost:$3/" 2>/dev/null | grep -q 200 && return 0
    sleep 0.2
  done
  echo "$1 did not come up; see $dir/ours.log" >&2
  cat "$dir/ours.log" >&2
  exit 1
}
start_tako a "$A_BIN" $((BASE_PORT + 2))
start_tako b "$B_BIN" $((BASE_PORT + 4))

# The serving process of each: nginx's worker, and the tako worker whose master listens there.
worker_on() { # port
  local w m
  for w in $(pgrep -f '__role worker'); do
    m=$(awk '{print $4}' "/proc/$w/stat")
    tr '\0' ' ' <"/proc/$m/cmdline" 2>/dev/null | grep -q -- "--port $1 " && { echo "$w"; return; }
  done
}
NGINX_W=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)
A_W=$(worker_on $((BASE_PORT + 2)))
B_W=$(worker_on $((BASE_PORT + 4)))
[[ -n $NGINX_W && -n $A_W && -n $B_W ]] || { echo "could not find the serving processes" >&2; exit 1; }

one() { # name pid port
  local u0 s0 u1 s1 reqs
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$2/stat")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "$HDR" "http://localhost:$3/" >"$TMP/wrk.$1"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$2/stat")
  reqs=$(awk '/requests in/{print $1}' "$TMP/wrk.$1")
  local tick; tick=$(getconf CLK_TCK)
  awk -v n="$1" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v r="$reqs" -v t="$tick" \
    'BEGIN { printf "%-5s usr %5.2f  sys %5.2f  total %5.2f us/req\n", n, u*1e6/t/r, s*1e6/t/r, (u+s)*1e6/t/r }' |
    tee -a "$TMP/results"
}
echo "conns=$CONNS duration=${DURATION}s rounds=$ROUNDS  a=$A_BIN  b=$B_BIN"
for r in $(seq "$ROUNDS"); do
  one nginx "$NGINX_W" $((BASE_PORT + 1))
  one a "$A_W" $((BASE_PORT + 2))
  one b "$B_W" $((BASE_PORT + 4))
done
echo "mean over rounds:"
awk '{u[$1]+=$3; s[$1]+=$5; t[$1]+=$7; n[$1]++}
     END { for (k in u) printf "%-5s usr %5.2f  sys %5.2f  total %5.2f us/req  (x nginx %.3f)\n", k, u[k]/n[k], s[k]/n[k], t[k]/n[k], (t[k]/n[k])/(t["nginx"]/n["nginx"]) }' \
  "$TMP/results" | sort
