#!/usr/bin/env bash
# High-concurrency keep-alive load and RSS with many idle TLS connections:
# nginx vs tako-server ("ours"), side by side, ratios to nginx from the same run.
# It measures what bench/run.sh (the harness in bench/harness/) does not (that harness runs 64
# connections and records RSS only when idle or after its loads).
#
#   bench/conns.sh                     # defaults below
#   CONNS_LIST="200" RSS_CONNS=300 DURATION=3 bench/conns.sh     # a quick check
#
# Knobs (environment):
#   TAKO_SERVER_BIN=target/release/tako-server (of this repo; build it with
#                           cargo build --release -p tako-server)
#   CONNS_LIST="1000 5000"  wrk connection counts for the HTTP keep-alive load
#   DURATION=10 WARMUP=2    seconds per measurement / per unmeasured warm-up wrk run
#   THREADS=2               wrk threads
#   RSS_CONNS=5000          idle TLS connections held open for the RSS measurement
#   WORKERS=1               nginx worker_processes / tako-server --workers
#   ROUNDS=1                rounds; the target order rotates every round
#   TARGETS="nginx ours"
#   BASE_PORT=29600         upstream; nginx +1 (TLS +2), ours +3 (TLS +4)
#   NOFILE=200000           fd limit set for this script and everything it starts
#   TAKO_EXTRA_ARGS=        extra tako-server args (default: --instance-port-offset so
#                           that app instances listen from BASE_PORT+100 up)
#   BENCH_HARNESS=bench/harness   the harness (nginx template, adapter, upstream)
#   OUT=bench/out/conns-<timestamp>
#
# What counts as the proxy: nginx = master + workers; ours = the tako-server
# master and all its descendants except app instances (processes whose
# /proc/PID/exe is the bench upstream binary); the ours-tako.sh wrapper shell is
# not counted. CPU = utime+stime from /proc/PID/stat (CLK_TCK ticks).
set -euo pipefail
{ # one block: bash parses it whole, so editing this file cannot disturb a running copy

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_HARNESS=${BENCH_HARNESS:-$HERE/harness}
TAKO_SERVER_BIN=${TAKO_SERVER_BIN:-$REPO/target/release/tako-server}
CONNS_LIST=${CONNS_LIST:-"1000 5000"}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
RSS_CONNS=${RSS_CONNS:-5000}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-"nginx ours"}
BASE_PORT=${BASE_PORT:-29600}
NOFILE=${NOFILE:-200000}
BENCH_HOST=localhost
OUT=${OUT:-$HERE/out/conns-$(date +%Y%m%d-%H%M%S)}

UPSTREAM_BIN=$BENCH_HARNESS/upstream/target/release/bench-upstream
WRK_LUA=$BENCH_HARNESS/lib/wrk-report.lua
NGINX_TMPL=$BENCH_HARNESS/conf/nginx.conf.tmpl
OURS_ADAPTER=$BENCH_HARNESS/ours-tako.sh
HOLD=$HERE/lib-conns/tls_hold.py

B=$BASE_PORT
declare -A PORT=([upstream]=$B [nginx]=$((B + 1)) [ours]=$((B + 3)))
declare -A TLS_PORT=([nginx]=$((B + 2)) [ours]=$((B + 4)))
declare -A ROOT_PID=() IDLE_RSS=()
STARTED=()
HOLD_PID=""
NGINX_NOTE=""
BEFORE_BREAKDOWN=""
XH=()

for t in wrk nginx openssl curl nc python3 ss setsid; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 2; }
done
if [[ ! -x $UPSTREAM_BIN || $BENCH_HARNESS/upstream/src/main.rs -nt $UPSTREAM_BIN ]]; then
  echo "building the bench upstream (cargo build --release)" >&2
  cargo build --release --quiet --manifest-path "$BENCH_HARNESS/upstream/Cargo.toml" >&2
fi
for f in "$UPSTREAM_BIN" "$WRK_LUA" "$NGINX_TMPL" "$OURS_ADAPTER" "$HOLD"; do
  [[ -e $f ]] || { echo "missing: $f" >&2; exit 2; }
done
if [[ " $TARGETS " == *" ours "* && ! -x $TAKO_SERVER_BIN ]]; then
  echo "TAKO_SERVER_BIN=$TAKO_SERVER_BIN is not an executable" >&2; exit 2
fi
UPSTREAM_BIN_REAL=$(readlink -f "$UPSTREAM_BIN")
TAKO_BIN_REAL=$(readlink -f "$TAKO_SERVER_BIN" 2>/dev/null || echo "$TAKO_SERVER_BIN")

# 5000 client connections + as many upstream connections + wrk's and the
# holder's own: far above the default 20000-fd hard limit is not needed, but
# the hard limit is raised (root) so the soft limit can follow.
# (In a container the hard limit may be fixed, e.g. at 20000: then the soft
# limit goes to it, which is still enough for one nginx worker with 5000 client
# + 5000 upstream connections.)
ulimit -Hn "$NOFILE" 2>/dev/null || true
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

NOFILE_NOTE=""
if (( $(ulimit -n) < NOFILE )); then
  NOFILE_NOTE="fd limit: could not raise to $NOFILE (hard limit $(ulimit -Hn)); running with $(ulimit -n)"
fi
mkdir -p "$OUT/logs" "$OUT/conf"
TMP=$(mktemp -d /tmp/connsbench.XXXXXX)
chmod 755 "$TMP"           # nginx workers run as nobody and must traverse it
LOG=$OUT/run.log
RAW=$OUT/load.tsv
RSSF=$OUT/rss.tsv
CLK_TCK=$(getconf CLK_TCK)

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# ---------------------------------------------------------------- processes
tree_pids() {  # all descendants of a PID, inclusive, from one ps snapshot
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { q[1] = root; n = 1; i = 1
          while (i <= n) { p = q[i++]; printf "%s ", p
            m = split(kids[p], a, " "); for (j = 1; j <= m; j++) q[++n] = a[j] } }'
}
# The processes that count as target t's proxy (see the header).
proxy_pids() {
  local t=$1 p root
  root=${ROOT_PID[$t]}
  if [[ $t == ours ]]; then
    # ROOT_PID[ours] is the ours-tako.sh wrapper; the server is its child
    # running TAKO_SERVER_BIN.
    root=""
    for p in $(tree_pids "${ROOT_PID[$t]}"); do
      if [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$TAKO_BIN_REAL" ]]; then root=$p; break; fi
    done
    [[ -n $root ]] || return 0
  fi
  for p in $(tree_pids "$root"); do
    [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$UPSTREAM_BIN_REAL" ]] && continue
    [[ -e /proc/$p ]] && printf '%s ' "$p"
  done
}
# Upstream work while t is measured: the standalone upstream, plus app instances
# (the bench upstream binary) in t's tree.
upstream_pids() {
  local t=$1 p
  tree_pids "${ROOT_PID[upstream]}"
  for p in $(tree_pids "${ROOT_PID[$t]}"); do
    [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$UPSTREAM_BIN_REAL" ]] && printf '%s ' "$p"
  done
  return 0
}
cpu_ticks() {  # utime+stime summed over PIDs (exited threads included)
  local s=0 p f
  for p in "$@"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    local a=($f)
    s=$(( s + a[11] + a[12] ))     # stat fields 14, 15
  done
  echo "$s"
}
mem_kb() {  # VmRSS|VmHWM summed over PIDs, kB
  local key=$1; shift; local s=0 p v
  for p in "$@"; do
    v=$(awk -v k="$key:" '$1 == k { print $2 }' "/proc/$p/status" 2>/dev/null) || true
    s=$(( s + ${v:-0} ))
  done
  echo "$s"
}
self_child_ticks() {  # CPU of this shell's reaped children (wrk)
  local line a
  read -r line < /proc/$$/stat
  a=(${line##*) })
  echo $(( a[13] + a[14] ))
}
busy_jiffies() {  # "busy softirq" over all CPUs
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, $8 }' /proc/stat
}
breakdown() {  # "name=kB ..." per process; tako-server children are named by their __role
  local p name
  for p in "$@"; do
    name=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "__role") { print $(i + 1); exit } }')
    [[ -n $name ]] || name=$(cat "/proc/$p/comm" 2>/dev/null)
    printf '%s=%s ' "${name:-?}" "$(mem_kb VmRSS "$p")"
  done
}
estab() {  # established TCP connections whose local port is $1
  ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
}

start_bg() {  # name logfile cmd...
  local name=$1 logf=$2; shift 2
  setsid "$@" >"$logf" 2>&1 &
  ROOT_PID[$name]=$!
  STARTED+=("$!")
  log "started $name pid ${ROOT_PID[$name]}: $*"
}
wait_port() {  # port name tenths
  local i
  for ((i = 0; i < ${3:-100}; i++)); do
    kill -0 "${ROOT_PID[$2]}" 2>/dev/null || { log "ERROR: $2 exited (see $OUT/logs/$2.log)"; return 1; }
    nc -z 127.0.0.1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "ERROR: $2 did not listen on $1"; return 1
}
port_free() {
  if nc -z 127.0.0.1 "$1" 2>/dev/null; then log "ERROR: port $1 is already in use (set BASE_PORT)"; return 1; fi
}

stop_hold() {
  [[ -n $HOLD_PID ]] || return 0
  kill -TERM "$HOLD_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$HOLD_PID" 2>/dev/null || true
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
}
stop_all() {
  local p i alive
  stop_hold
  # ours-tako.sh stops tako-server and its apps on SIGTERM (it runs in its own
  # session, and tako-server in yet another one, so signal the wrapper only);
  # nginx and the upstream get SIGTERM to their session's process group.
  for p in "${STARTED[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < 100; i++)); do
    alive=0
    for p in "${STARTED[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for p in "${STARTED[@]}"; do
    kill -0 "$p" 2>/dev/null && log "pid $p did not stop on SIGTERM; SIGKILL to its group"
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
  STARTED=()
}
cleanup() { trap '' INT TERM; stop_all; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup
{
  echo "date: $(date -Is)"; echo "host: $(uname -srm)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) x $(nproc)"
  echo "knobs: CONNS_LIST=\"$CONNS_LIST\" DURATION=$DURATION WARMUP=$WARMUP THREADS=$THREADS RSS_CONNS=$RSS_CONNS WORKERS=$WORKERS ROUNDS=$ROUNDS TARGETS=\"$TARGETS\" NOFILE=$(ulimit -n)"
  echo "tako-server: $TAKO_SERVER_BIN ($(stat -c '%y' "$TAKO_SERVER_BIN" 2>/dev/null | cut -d. -f1))"
  echo "versions: $(nginx -v 2>&1 | tr -d '\n'); $(wrk -v 2>&1 | head -1); $(openssl version); $(python3 --version)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >> "$LOG"
[[ -z $NOFILE_NOTE ]] || log "$NOFILE_NOTE"

CERT=$TMP/cert.pem; KEY=$TMP/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$KEY" -out "$CERT" \
  -days 30 -subj "/CN=$BENCH_HOST" -addext "subjectAltName=DNS:$BENCH_HOST,DNS:localhost,IP:127.0.0.1" 2>/dev/null

MAXC=$RSS_CONNS
for c in $CONNS_LIST; do (( c > MAXC )) && MAXC=$c; done
if (( $(ulimit -n) < 2 * MAXC + 256 )); then
  log "WARN: fd limit $(ulimit -n) is below 2 x $MAXC + 256: nginx (client + upstream fds) may run out"
fi

start_upstream() {
  port_free "${PORT[upstream]}" || exit 1
  start_bg upstream "$OUT/logs/upstream.log" "$UPSTREAM_BIN" "127.0.0.1:${PORT[upstream]}"
  wait_port "${PORT[upstream]}" upstream
}

start_nginx() {
  local cfg=$TMP/nginx.conf wc need
  mkdir -p "$TMP/nginx"
  sed -e "s#@TMP@#$TMP#g" -e "s#@WORKERS@#$WORKERS#g" -e "s#@UPSTREAM@#127.0.0.1:${PORT[upstream]}#g" \
      -e "s#@PORT@#${PORT[nginx]}#g" -e "s#@TLS_PORT@#${TLS_PORT[nginx]}#g" \
      -e "s#@CERT@#$CERT#g" -e "s#@KEY@#$KEY#g" "$NGINX_TMPL" > "$cfg"
  # worker_connections counts client AND upstream connections of a worker: under
  # keep-alive load every client connection can have an upstream one in flight.
  wc=$(awk '$1 == "worker_connections" { gsub(";", "", $2); print $2 }' "$cfg")
  need=$(( 2 * MAXC + 1024 ))
  if [[ -n $wc && $wc -lt $need ]]; then
    sed -i -E "s/^([[:space:]]*worker_connections)[[:space:]]+[0-9]+;/\1 $need;/" "$cfg"
    NGINX_NOTE="nginx: worker_connections raised from $wc (template) to $need (2 x $MAXC + 1024) in the rendered config"
  else
    NGINX_NOTE="nginx: worker_connections $wc (template), enough for $MAXC client connections"
  fi
  log "$NGINX_NOTE"
  cp "$cfg" "$OUT/conf/nginx.conf"
  start_bg nginx "$OUT/logs/nginx.log" nginx -p "$TMP" -c "$cfg" -e "$TMP/nginx-error.log" -g 'daemon off;'
  wait_port "${PORT[nginx]}" nginx && wait_port "${TLS_PORT[nginx]}" nginx
}

start_ours() {
  # App instances get ports from 10000 up; a tako-server someone runs by hand
  # may hold those, so ours' instances are moved away (to BASE_PORT + 100 up).
  local extra=${TAKO_EXTRA_ARGS-}
  if [[ -z ${TAKO_EXTRA_ARGS+x} ]] && "$TAKO_SERVER_BIN" --help 2>&1 | grep -q -- '--instance-port-offset'; then
    extra="--instance-port-offset $(( BASE_PORT + 100 - 10000 ))"
  fi
  start_bg ours "$OUT/logs/ours.log" env TAKO_SERVER_BIN="$TAKO_SERVER_BIN" TAKO_EXTRA_ARGS="$extra" \
    OURS_PORT="${PORT[ours]}" OURS_TLS_PORT="${TLS_PORT[ours]}" BENCH_TMP="$TMP" \
    BENCH_CERT="$CERT" BENCH_KEY="$KEY" BENCH_HOST="$BENCH_HOST" WORKERS="$WORKERS" \
    BENCH_UPSTREAM_BIN="$UPSTREAM_BIN" "$OURS_ADAPTER"
  wait_port "${PORT[ours]}" ours 600 && wait_port "${TLS_PORT[ours]}" ours 600 || return 1
  local i
  # the adapter deploys the app after the ports open; wait until it serves
  for ((i = 0; i < 300; i++)); do
    [[ $(http_body ours) == "Hello, world!" ]] && return 0
    kill -0 "${ROOT_PID[ours]}" 2>/dev/null || { log "ERROR: ours exited (see $OUT/logs/ours.log)"; return 1; }
    sleep 0.2
  done
  log "ERROR: ours did not serve the upstream body within 60 s"; return 1
}

# Plain HTTP to ours needs X-Forwarded-Proto (else 307 to https); nginx gets none.
# URLs use 127.0.0.1 (IPv4 loopback for sure) with Host: localhost, the routed host.
xfp() { XH=(-H "Host: $BENCH_HOST"); [[ $1 == ours ]] && XH+=(-H 'X-Forwarded-Proto: https'); return 0; }
http_body() {
  xfp "$1"
  curl -s --max-time 5 "${XH[@]}" "http://127.0.0.1:${PORT[$1]}/" || true
}
sanity() {
  local t=$1 body
  body=$(http_body "$t")
  [[ $body == "Hello, world!" ]] || { log "SANITY FAIL $t http body='$body'"; return 1; }
  body=$(curl -sk --http1.1 --max-time 5 --resolve "$BENCH_HOST:${TLS_PORT[$t]}:127.0.0.1" "https://$BENCH_HOST:${TLS_PORT[$t]}/") || true
  [[ $body == "Hello, world!" ]] || { log "SANITY FAIL $t https body='$body'"; return 1; }
  log "sanity ok: $t (proxy pids: $(proxy_pids "$t"))"
}

# ---------------------------------------------------------------- RSS with idle TLS connections
printf 'round\ttarget\tconns\topened\tfailed\testab\tidle_kb\tbefore_kb\twith_kb\thwm_kb\tnprocs\tnote\n' > "$RSSF"
measure_rss() {  # target round
  local t=$1 r=$2 pids before with hwm line ok failed est rest i ready=0
  local holdout=$OUT/logs/hold.$t.r$r.txt
  pids=$(proxy_pids "$t")
  before=$(mem_kb VmRSS $pids); BEFORE_BREAKDOWN=$(breakdown $pids)
  python3 "$HOLD" 127.0.0.1 "${TLS_PORT[$t]}" "$RSS_CONNS" --sni "$BENCH_HOST" > "$holdout" 2>&1 &
  HOLD_PID=$!
  for ((i = 0; i < 3000; i++)); do         # up to 300 s for the handshakes
    grep -q '^READY' "$holdout" 2>/dev/null && { ready=1; break; }
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ $ready != 1 ]]; then
    log "ERROR: TLS holder for $t did not get ready (see $holdout)"; stop_hold
    printf '%s\t%s\t%s\t0\t%s\t0\t%s\t%s\t-1\t-1\t0\tholder failed\n' "$r" "$t" "$RSS_CONNS" "$RSS_CONNS" \
      "${IDLE_RSS[$t]}" "$before" >> "$RSSF"
    return 0
  fi
  sleep 2                                  # let the server settle (lazy frees, timers)
  line=$(grep '^READY' "$holdout")
  ok=$(sed -E 's/.*ok=([0-9]+).*/\1/' <<<"$line"); failed=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$line")
  rest=$(sed -E 's/^READY ok=[0-9]+ failed=[0-9]+ //' <<<"$line")
  est=$(estab "${TLS_PORT[$t]}")
  pids=$(proxy_pids "$t")
  with=$(mem_kb VmRSS $pids); hwm=$(mem_kb VmHWM $pids)
  log "rss r$r $t per process, kB: before ${BEFORE_BREAKDOWN}| with $(breakdown $pids)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$RSS_CONNS" "$ok" "$failed" "$est" \
    "${IDLE_RSS[$t]}" "$before" "$with" "$hwm" "$(echo $pids | wc -w)" "$rest" >> "$RSSF"
  log "rss r$r $t: $ok/$RSS_CONNS TLS conns open (failed $failed, $est established on the server port, $rest): before ${before} kB, with ${with} kB, +$(( ok ? (with - before) * 1024 / ok : 0 )) B/conn"
  stop_hold
  # wait until the server has seen the closes, so the next measurement starts clean
  for ((i = 0; i < 100; i++)); do [[ $(estab "${TLS_PORT[$t]}") -lt 10 ]] && break; sleep 0.1; done
}

# ---------------------------------------------------------------- keep-alive load
printf 'conns\tround\ttarget\trequests\tok\tduration_us\tp50_us\tp99_us\terr_connect\terr_read\terr_write\terr_timeout\tnon2xx\tproxy_ticks\tupstream_ticks\twrk_ticks\tbusy_ticks\tsoftirq_ticks\tclk_tck\twall_s\n' > "$RAW"
run_wrk() {  # target conns duration outfile
  local t=$1 c=$2 d=$3
  xfp "$t"
  wrk -t "$THREADS" -c "$c" -d "${d}s" --timeout 5s -s "$WRK_LUA" "${XH[@]}" \
    "http://127.0.0.1:${PORT[$t]}/" > "$4" 2>&1 || true
}
measure_load() {  # target conns round
  local t=$1 c=$2 r=$3 outf=$OUT/logs/load.c$2.$1.r$3.txt
  local pids upids c0 c1 u0 u1 g0 g1 j0 j1 t0 t1 res
  pids=$(proxy_pids "$t"); upids=$(upstream_pids "$t")
  c0=$(cpu_ticks $pids); u0=$(cpu_ticks $upids); j0=$(busy_jiffies)
  t0=$(date +%s.%N); g0=$(self_child_ticks)
  run_wrk "$t" "$c" "$DURATION" "$outf"
  g1=$(self_child_ticks); t1=$(date +%s.%N)
  c1=$(cpu_ticks $pids); u1=$(cpu_ticks $upids); j1=$(busy_jiffies)
  res=$(awk '/^WRK_RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
               printf "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d", v["requests"], v["requests"] - v["non2xx"],
                 v["duration_us"], v["p50_us"], v["p99_us"], v["err_connect"], v["err_read"], v["err_write"],
                 v["err_timeout"], v["non2xx"]; f = 1 }
             END { if (!f) printf "0\t0\t1\t-1\t-1\t0\t0\t0\t0\t0" }' "$outf")
  local jb0 js0 jb1 js1
  read -r jb0 js0 <<<"$j0"; read -r jb1 js1 <<<"$j1"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$r" "$t" "$res" $((c1 - c0)) $((u1 - u0)) \
    $((g1 - g0)) $((jb1 - jb0)) $((js1 - js0)) "$CLK_TCK" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" >> "$RAW"
  grep -q '^WRK_RESULT' "$outf" || log "WARN: no WRK_RESULT from wrk (see $outf)"
  log "load c=$c r$r $t: $(cut -f1-3,5- <<<"$res" | tr '\t' ' ') | proxy $((c1 - c0)) ticks, upstream $((u1 - u0)), wrk $((g1 - g0))"
}

# ---------------------------------------------------------------- main
start_upstream
ACTIVE=()
for t in $TARGETS; do
  port_free "${PORT[$t]}" && port_free "${TLS_PORT[$t]}" || { log "skip $t: port in use"; continue; }
  ok=0
  case $t in
    nginx) start_nginx && ok=1 ;;
    ours) start_ours && ok=1 ;;
    *) log "unknown target $t" ;;
  esac
  if [[ $ok == 1 ]] && sanity "$t"; then ACTIVE+=("$t"); else log "skip $t: failed to start or sanity check"; fi
done
[[ ${#ACTIVE[@]} -gt 0 ]] || { log "no target started"; exit 1; }
n=${#ACTIVE[@]}
sleep 1
for t in "${ACTIVE[@]}"; do
  pids=$(proxy_pids "$t"); IDLE_RSS[$t]=$(mem_kb VmRSS $pids)
  log "idle RSS $t: ${IDLE_RSS[$t]} kB over $(echo $pids | wc -w) processes ($(for p in $pids; do printf '%s=%s ' "$p" "$(cat /proc/$p/comm 2>/dev/null)"; done))"
done

# RSS first, on servers that have not yet seen the big loads: "before" is then
# the freshly started server, as a quiet production proxy would look.
for r in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    measure_rss "${ACTIVE[$(( (k + r - 1) % n ))]}" "$r"
  done
done

for c in $CONNS_LIST; do
  if [[ $WARMUP -gt 0 ]]; then
    for t in "${ACTIVE[@]}"; do run_wrk "$t" "$c" "$WARMUP" "$OUT/logs/load.c$c.$t.warmup.txt"; done
  fi
  for r in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
      measure_load "${ACTIVE[$(( (k + r - 1) % n ))]}" "$c" "$r"
    done
  done
done
for t in "${ACTIVE[@]}"; do
  pids=$(proxy_pids "$t")
  log "final RSS $t: $(mem_kb VmRSS $pids) kB (HWM sum $(mem_kb VmHWM $pids) kB)"
done

stop_all
python3 "$HERE/lib-conns/summarize.py" "$RAW" "$RSSF" "$OUT/machine.txt" "$(printf '%s\n\n' "$NGINX_NOTE" "$NOFILE_NOTE")" | tee "$OUT/summary.md"
log "results in $OUT"
exit 0
}
