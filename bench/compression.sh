#!/usr/bin/env bash
# Response compression against nginx (`gzip on`, and brotli when Debian's
# libnginx-mod-http-brotli-filter is installed), same run, same upstream: for a 16 KiB and a
# 256 KiB JSON body (the bench upstream's /16k.json and /256k.json, API-like records), each
# coding (identity, gzip, br) and each proxy, the serving process's CPU µs per request
# (utime+stime over the requests wrk completed) and the bytes on the wire per response
# (headers and body as curl receives them). Rounds are interleaved, as in bench/ab.sh.
#
#   bench/compression.sh [TAKO_BIN]                      # default target/release/tako-server
#   ROUNDS=3 DURATION=5 CONNS=16 bench/compression.sh
#
# Levels: nginx `gzip_comp_level 1` (its default, zlib) against our gzip level 2 (the pure-Rust
# deflate's level 1 compresses JSON 7 % worse than zlib's), and `brotli_comp_level 3` with a
# 256 KiB window against our brotli quality 3 with a 2^18 window, the same algorithm at the
# same setting (proxy-worker/src/compress/encoder.rs). Build tako-server first
# (`cargo build --release -p tako-server`). Needs wrk, nginx-light, openssl, curl and root for
# the tako users (bench/install.sh). Ports: BASE_PORT (default 29800) upstream, +1 nginx,
# +2/+3 tako-server.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/bench/harness}
BIN=$(readlink -f "${1:-$ROOT/target/release/tako-server}")
[[ -x $BIN ]] || { echo "no tako-server at $BIN (cargo build --release -p tako-server)" >&2; exit 1; }
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-16} BASE_PORT=${BASE_PORT:-29800}
HDR='X-Forwarded-Proto: https'
BROTLI_MODULE=${BROTLI_MODULE:-/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so}

# shellcheck source=harness/lib/side-by-side.sh
source "$HARNESS/lib/side-by-side.sh"
side_by_side_init tako-gz

# nginx: the harness's config with compression added to its http block.
CODINGS="identity gzip"
mkdir -p "$TMP/nginx"
sed -e "s#@TMP@#$TMP#g" -e "s#@WORKERS@#1#g" -e "s#@UPSTREAM@#127.0.0.1:$BASE_PORT#g" \
  -e "s#@PORT@#$((BASE_PORT + 1))#g" -e "s#@TLS_PORT@#$((BASE_PORT + 362))#g" \
  -e "s#@CERT@#$TMP/cert.pem#g" -e "s#@KEY@#$TMP/key.pem#g" -e "s#@PEM@#$TMP/cert.pem#g" \
  "$HARNESS/conf/nginx.conf.tmpl" >"$TMP/nginx.conf"
sed -i "s#^pid .*#pid $TMP/nginx.pid;#" "$TMP/nginx.conf"
ZIP='    gzip on; gzip_comp_level 1; gzip_min_length 1024; gzip_proxied any; gzip_vary on; gzip_types application/json;'
if [[ -f $BROTLI_MODULE ]]; then
  sed -i "1i load_module $BROTLI_MODULE;" "$TMP/nginx.conf"
  ZIP="$ZIP brotli on; brotli_comp_level 3; brotli_window 256k; brotli_min_length 1024; brotli_types application/json;"
  CODINGS="identity gzip br"
else
  echo "nginx has no brotli module ($BROTLI_MODULE): br is measured for tako-server alone" >&2
fi
sed -i "s#^http {#http {\n$ZIP#" "$TMP/nginx.conf"
nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"

dir=$TMP/tako
mkdir -p "$dir" && chmod 755 "$dir"
TAKO_SERVER_BIN=$BIN OURS_PORT=$((BASE_PORT + 2)) OURS_TLS_PORT=$((BASE_PORT + 3)) BENCH_TMP=$dir \
  BENCH_CERT=$TMP/cert.pem BENCH_KEY=$TMP/key.pem BENCH_HOST=localhost WORKERS=1 \
  BENCH_UPSTREAM_BIN=$TMP/bench-upstream setsid "$HARNESS/ours-tako.sh" >"$dir/ours.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
  curl -s -o /dev/null -w '%{http_code}' -H "$HDR" "http://localhost:$((BASE_PORT + 2))/16k.json" 2>/dev/null |
    grep -q 200 && break
  sleep 0.2
done

NGINX_W=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)
TAKO_W=""
for w in $(pgrep -f '__role worker'); do
  m=$(awk '{print $4}' "/proc/$w/stat")
  tr '\0' ' ' <"/proc/$m/cmdline" 2>/dev/null | grep -q -- "--port $((BASE_PORT + 2)) " && TAKO_W=$w
done
[[ -n $NGINX_W && -n $TAKO_W ]] || { echo "could not find the serving processes" >&2; cat "$dir/ours.log" >&2; exit 1; }

port_of() { [[ $1 == nginx ]] && echo $((BASE_PORT + 1)) || echo $((BASE_PORT + 2)); }
pid_of() { [[ $1 == nginx ]] && echo "$NGINX_W" || echo "$TAKO_W"; }

# Bytes on the wire, once per case: they do not vary between requests.
echo "bytes on the wire per response (headers + body), and the body's coding:"
printf '%-6s %-10s %-9s %9s %9s %s\n' proxy body accept headers body content-encoding
for body in 16k.json 256k.json; do
  for coding in $CODINGS; do
    for p in nginx tako; do
      out=$(curl -s -o /dev/null -H "$HDR" -H "Accept-Encoding: $coding" -D "$TMP/h" \
        -w '%{size_header} %{size_download}' "http://localhost:$(port_of $p)/$body")
      enc=$(awk -F': ' 'tolower($1)=="content-encoding" {gsub("\r",""); print $2}' "$TMP/h")
      printf '%-6s %-10s %-9s %9s %9s %s\n' "$p" "$body" "$coding" ${out} "${enc:--}"
    done
  done
done

one() { # proxy body coding
  local pid u0 s0 u1 s1 reqs tick
  pid=$(pid_of "$1")
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "$HDR" -H "Accept-Encoding: $3" \
    "http://localhost:$(port_of "$1")/$2" >"$TMP/wrk.out"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  reqs=$(awk '/requests in/{print $1}' "$TMP/wrk.out")
  tick=$(getconf CLK_TCK)
  awk -v p="$1" -v b="$2" -v c="$3" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v r="$reqs" -v t="$tick" -v d="$DURATION" \
    'BEGIN { printf "%s %s %s %.1f %.1f\n", p, b, c, (u+s)*1e6/t/r, r/d }' >>"$TMP/results"
}
echo
echo "conns=$CONNS duration=${DURATION}s rounds=$ROUNDS bin=$BIN"
for r in $(seq "$ROUNDS"); do
  for body in 16k.json 256k.json; do
    for coding in $CODINGS; do
      # Alternate who goes first, so a drift of the machine hits both alike.
      if ((r % 2)); then one nginx $body $coding; one tako $body $coding
      else one tako $body $coding; one nginx $body $coding; fi
    done
  done
done
echo "CPU µs per request of the serving process (mean over rounds), req/s, ratio to nginx:"
awk '{k=$2" "$3; cpu[$1" "k]+=$4; rps[$1" "k]+=$5; n[$1" "k]++; keys[k]=1}
     END { printf "%-10s %-9s %12s %12s %10s %10s %8s\n", "body", "accept", "nginx µs", "tako µs", "nginx r/s", "tako r/s", "cpu x";
           for (k in keys) { split(k, a, " ");
             nc=cpu["nginx "k]/n["nginx "k]; tc=cpu["tako "k]/n["tako "k];
             printf "%-10s %-9s %12.1f %12.1f %10.0f %10.0f %8.2f\n", a[1], a[2], nc, tc, rps["nginx "k]/n["nginx "k], rps["tako "k]/n["tako "k], tc/nc } }' \
  "$TMP/results" | sort -k1,1 -k2,2
