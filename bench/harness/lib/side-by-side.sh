# Shared set-up of the scripts that run tako-server beside nginx on their own (bench/ab.sh,
# bench/compression.sh): a scratch dir that the app user can read, cleanup of every process
# started, the bench upstream on $BASE_PORT, and a self-signed EC certificate for localhost.
# Source it after setting HARNESS and BASE_PORT; `side_by_side_init PREFIX` does the rest.

side_by_side_cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  [[ -f $TMP/nginx.pid ]] && kill -QUIT "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  for p in "${PIDS[@]}"; do for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
  rm -rf "$TMP"
}

side_by_side_init() { # prefix of the scratch dir under /tmp
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$TMP"
  PIDS=()
  trap side_by_side_cleanup EXIT

  # The bench upstream, where the tako app user can run it.
  local up_target=${XDG_CACHE_HOME:-$HOME/.cache}/bench-upstream-target
  cargo build --release --quiet --manifest-path "$HARNESS/upstream/Cargo.toml" --target-dir "$up_target"
  install -m 755 "$up_target/release/bench-upstream" "$TMP/bench-upstream"
  setsid "$TMP/bench-upstream" "127.0.0.1:$BASE_PORT" >"$TMP/upstream.log" 2>&1 &
  PIDS+=($!)

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$TMP/key.pem" \
    -out "$TMP/cert.pem" -days 30 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null
  chmod 644 "$TMP/key.pem" "$TMP/cert.pem"
}
