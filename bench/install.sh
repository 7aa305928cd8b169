#!/usr/bin/env bash
# Installs the peers and load generators the benchmark uses (Debian packages).
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  wrk nginx-light libnginx-mod-http-brotli-filter haproxy caddy nghttp2-client socat netcat-openbsd \
  curl openssl >/dev/null
