#!/usr/bin/env bash
# The package under a real systemd (issue 20): builds the .deb, boots a Debian 12 root with
# systemd as PID 1 (systemd-nspawn, its own network namespace), installs the package there
# with apt as a user would, checks what the package set up and the unit's sandbox on the
# running processes, deploys a small app over the management socket, and then, under a steady
# load of clients that never retry, restarts, reloads and upgrades the server the ways a host
# does: `systemctl restart` (3), `systemctl reload` (2), a package upgrade, and the Tako CLI's
# upgrade sequence as the deploy user. Ends with one line:
#
#   systemd: <N> requests across <K> restarts, reloads and upgrades, <F> failed
#
# and exits non-zero when a request or a check failed. Run as root on a Debian/Ubuntu host
# (CI: .ci/run). The host's PID 1 need not be systemd.
#
# Environment:
#   TAKO_DEB                 use this .deb instead of building one
#   TAKO_DEB_PROFILE         cargo profile of the build (default deb-fast)
#   TAKO_SYSTEMD_TEST_CACHE  where the Debian root is cached (default /var/cache/tako-systemd-test)
#   TAKO_DEBIAN_MIRROR       Debian mirror (default: the host's first deb.debian.org-style URI)
set -euo pipefail

cd "$(dirname "$0")/.."
WORKSPACE=$PWD
STARTED=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then
    echo "systemd-test.sh must run as root (debootstrap, systemd-nspawn)" >&2
    exit 1
fi

log() { printf '[%4ss] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
FAILED_CHECKS=()
check_fail() { FAILED_CHECKS+=("$*"); log "CHECK FAILED: $*"; }

# --- Tools ----------------------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nsenter >/dev/null || need+=(util-linux)
command -v dpkg-deb >/dev/null || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- The package ----------------------------------------------------------------------------
WORK=$(mktemp -d /var/tmp/tako-systemd-test.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID=
CPID=

teardown() {
    local rc=$?
    # Best effort from here on: the exit status is the test's, not the cleanup's.
    set +e
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # SIGTERM to systemd-nspawn asks the container's systemd to power off; SIGKILL after.
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        wait "$NSPAWN_PID" 2>/dev/null || true
    fi
    # Mounts nspawn may have left behind (it cleans up after itself normally).
    if [ -d "$ROOT" ]; then
        grep -o " $ROOT[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

if [ -n "${TAKO_DEB:-}" ]; then
    DEB=$TAKO_DEB
else
    PROFILE=${TAKO_DEB_PROFILE:-deb-fast}
    if ! cargo deb --version >/dev/null 2>&1; then
        cargo install cargo-deb --locked
    fi
    log "building the .deb (profile $PROFILE)"
    mkdir -p "$WORK/deb"
    cargo deb -p tako-server --profile "$PROFILE" --output "$WORK/deb/" >"$WORK/cargo-deb.log" 2>&1 || {
        tail -50 "$WORK/cargo-deb.log" >&2
        exit 1
    }
    DEB=$(ls "$WORK"/deb/tako-server_*.deb)
fi
VERSION=$(dpkg-deb -f "$DEB" Version)
# The upgrade: the same build repacked with a higher version (the package's scripts and unit
# are what an upgrade exercises; the binary may stay the same).
UP_VERSION="${VERSION}+up1"
mkdir -p "$WORK/repack"
dpkg-deb -R "$DEB" "$WORK/repack/pkg"
sed -i "s/^Version: .*/Version: $UP_VERSION/" "$WORK/repack/pkg/DEBIAN/control"
dpkg-deb --root-owner-group -b "$WORK/repack/pkg" "$WORK/repack/tako-server_up.deb" >/dev/null
log "package $VERSION, upgrade $UP_VERSION"

# --- The Debian root, cached by suite, mirror and package list ----------------------------------
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,python3,curl,sudo,ca-certificates
MIRROR=${TAKO_DEBIAN_MIRROR:-$(
    { grep -hoE '^URIs: *https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
      grep -hoE '^deb +(\[[^]]*\] +)?https?://[^ ]+/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $NF}'
    } | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${TAKO_SYSTEMD_TEST_CACHE:-/var/cache/tako-systemd-test}
KEY=$(printf '%s\n' "$SUITE" minbase "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
CACHED=$CACHE/root-$KEY
if [ ! -x "$CACHED/usr/lib/systemd/systemd" ]; then
    log "debootstrap $SUITE from $MIRROR into $CACHED"
    mkdir -p "$CACHE"
    rm -rf "$CACHED.tmp"
    timeout 900 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$CACHED.tmp" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || {
        tail -30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    mv "$CACHED.tmp" "$CACHED"
fi
# Every run starts from a clean copy: installing the package changes the root.
cp -a "$CACHED" "$ROOT"
echo tako-systemd-test >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 tako-systemd-test\n::1 localhost\n' >"$ROOT/etc/hosts"
mkdir -p "$ROOT/srv/tako-test"
cp "$DEB" "$ROOT/srv/tako-test/tako-server_${VERSION}.deb"
cp "$WORK/repack/tako-server_up.deb" "$ROOT/srv/tako-test/tako-server_${UP_VERSION}.deb"

# --- Boot ---------------------------------------------------------------------------------------
# --private-network: the container has only its own loopback, so the server's ports 80 and
# 443 and every request stay inside it. --register=no/--keep-unit: no systemd on the host.
log "booting the root with systemd-nspawn"
systemd-nspawn --register=no --keep-unit --private-network --console=read-only -q -b \
    -M tako-systemd-test -D "$ROOT" >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 1 300); do
    CPID=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$CPID" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$CPID" ]; then
    cat "$WORK/console.log" >&2
    echo "the container's systemd did not start" >&2
    exit 1
fi

# Runs a command inside the container, with a clean environment.
in_c() {
    nsenter -t "$CPID" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}
# As the deploy user, the way the Tako CLI runs over SSH.
as_tako() {
    in_c runuser -u tako -- env HOME=/home/tako "$@"
}

state=
for _ in $(seq 1 600); do
    state=$(in_c systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.1
done
case "$state" in
running) log "systemd is running" ;;
degraded)
    log "systemd is degraded: $(in_c systemctl --failed --no-legend --plain | tr '\n' ' ')"
    ;;
*)
    cat "$WORK/console.log" >&2
    echo "the container's systemd did not finish booting (state: $state)" >&2
    exit 1
    ;;
esac

# --- Install ------------------------------------------------------------------------------------
log "apt install ./tako-server_${VERSION}.deb"
if ! in_c timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "/srv/tako-test/tako-server_${VERSION}.deb" >"$WORK/apt-install.log" 2>&1; then
    cat "$WORK/apt-install.log" >&2
    exit 1
fi

journal() { in_c journalctl -u tako-server --no-pager -o short-monotonic "$@" 2>/dev/null || true; }

wait_active() {
    local s=
    for _ in $(seq 1 300); do
        s=$(in_c systemctl is-active tako-server 2>/dev/null || true)
        [ "$s" = active ] && return 0
        sleep 0.1
    done
    check_fail "tako-server is '$s', not active"
    journal -n 60 >&2
    return 1
}
wait_active && log "tako-server started on its own after the install"
[ "$(in_c systemctl is-enabled tako-server 2>/dev/null)" = enabled ] || check_fail "tako-server is not enabled"

# Users, directories, sysctl, sudoers.
for u in tako tako-proxy tako-app; do
    in_c getent passwd "$u" >/dev/null || check_fail "user $u missing"
done
[ "$(in_c getent passwd tako | cut -d: -f6,7)" = /home/tako:/bin/bash ] || check_fail "tako's home or shell"
[ "$(in_c getent passwd tako-proxy | cut -d: -f7)" = /usr/sbin/nologin ] || check_fail "tako-proxy's shell"
expect_stat() { # path "mode user group"
    local got
    got=$(in_c stat -c '%a %U %G' "$1" 2>/dev/null || echo missing)
    [ "$got" = "$2" ] || check_fail "$1 is '$got', expected '$2'"
}
expect_stat /run/tako "1770 root tako"
expect_stat /opt/tako "755 root root"
expect_stat /opt/tako/apps "755 tako tako"
expect_stat /var/lib/tako-app "700 tako-app tako-app"
expect_stat /home/tako "750 tako tako"
expect_stat /etc/sudoers.d/tako-server "440 root root"
expect_stat /var/run/tako/tako.sock "660 root tako"
in_c visudo -c -q -f /etc/sudoers.d/tako-server || check_fail "visudo -c on /etc/sudoers.d/tako-server"
# The sysctl: net.ipv4 is per network namespace, so the container's own value counts.
migrate=$(in_c cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || echo "?")
[ "$migrate" = 1 ] || check_fail "net.ipv4.tcp_migrate_req is $migrate inside the container"

# --- The sandbox --------------------------------------------------------------------------------
in_c systemd-analyze security --no-pager tako-server >"$WORK/security.txt" 2>&1 || true
EXPOSURE=$(grep -oE 'Overall exposure level for tako-server.service: [0-9.]+ [A-Z]+' "$WORK/security.txt" | sed 's/.*: //')
log "systemd-analyze security tako-server: ${EXPOSURE:-?}"
grep -E '^✗' "$WORK/security.txt" | sed 's/^/    /' >&2 || true

# Container-side checks in one Python program: /proc of the master and its roles.
cat >"$ROOT/srv/tako-test/procs.py" <<'PY'
"""Checks the unit's sandbox on the running master and the roles' own privilege drops."""
import json, os, pwd, subprocess, sys

CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
        "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
        "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}
failed = []
def fail(msg):
    failed.append(msg)
    print("CHECK FAILED: " + msg)

def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out

def prop(name):
    return subprocess.run(["systemctl", "show", "-p", name, "--value", "tako-server"],
                          capture_output=True, text=True).stdout.strip()

main = int(prop("MainPID"))
bound = 0
for name in prop("CapabilityBoundingSet").split():
    bound |= 1 << CAPS[name.upper()]
st = status(main)
print(f"master pid {main}: uid {st['Uid'].split()[0]} CapBnd {st['CapBnd']} CapEff {st['CapEff']} NoNewPrivs {st['NoNewPrivs']} Seccomp {st['Seccomp']}")
if int(st["CapBnd"], 16) != bound:
    fail(f"master CapBnd {st['CapBnd']} is not the unit's {bound:016x}")
if st["NoNewPrivs"] != "1":
    fail("master has no no_new_privs")
if st["Seccomp"] != "2":
    fail("master runs without the unit's seccomp filter")

# Read-only and hidden paths, seen from the master's mount namespace.
def in_master(cmd):
    return subprocess.run(["nsenter", "-t", str(main), "-m", "--", "sh", "-c", cmd],
                          capture_output=True, text=True)
for path in ["/usr", "/etc", "/var/lib", "/boot" if os.path.isdir("/boot") else "/srv"]:
    r = in_master(f"touch {path}/.tako-rw-probe 2>&1; rm -f {path}/.tako-rw-probe")
    if "Read-only file system" not in r.stdout:
        fail(f"{path} is writable for the service: {r.stdout.strip()}")
for path in ["/opt/tako", "/run/tako"]:
    r = in_master(f"touch {path}/.tako-rw-probe && rm {path}/.tako-rw-probe && echo ok")
    if r.stdout.strip() != "ok":
        fail(f"{path} is not writable for the service: {r.stderr.strip()}")
r = in_master("ls -A /home /root | tr '\\n' ' '")
if r.stdout.split() not in ([], ["/home:", "/root:"]):
    fail(f"/home or /root visible to the service: {r.stdout.strip()}")
r = in_master("ls /dev | wc -l")
if int(r.stdout.strip() or 0) > 30:
    fail("the service sees the full /dev (PrivateDevices)")
print("read-only: /usr /etc /var/lib; writable: /opt/tako /run/tako; /home and /root empty")

# Roles: the processes the master reports.
out = subprocess.run(["/usr/bin/tako-server", "ctl", "--json", "processes"],
                     capture_output=True, text=True)
procs = json.loads(out.stdout)
procs = procs.get("data", procs)
procs = procs.get("processes", procs) if isinstance(procs, dict) else procs
uid_of = {u: pwd.getpwnam(u).pw_uid for u in ["tako-proxy", "tako-app"]}
seen = set()
for p in procs:
    role, pid = p.get("role"), p.get("pid")
    if role == "master" or not pid:
        continue
    try:
        s = status(pid)
    except FileNotFoundError:
        continue
    uid = int(s["Uid"].split()[0])
    eff, bnd = int(s["CapEff"], 16), int(s["CapBnd"], 16)
    print(f"{role} pid {pid}: uid {uid} CapEff {s['CapEff']} CapBnd {s['CapBnd']} NoNewPrivs {s['NoNewPrivs']} Seccomp {s['Seccomp']}")
    seen.add(role)
    if bnd & ~bound:
        fail(f"{role} {pid} has a bounding set beyond the unit's")
    if role == "worker":
        if uid != uid_of["tako-proxy"]:
            fail(f"worker {pid} runs as uid {uid}, not tako-proxy")
        if eff != 0:
            fail(f"worker {pid} keeps capabilities {s['CapEff']}")
    if role == "instance" or role == "app":
        if uid != uid_of["tako-app"] or eff != 0:
            fail(f"app {pid} runs as uid {uid} with CapEff {s['CapEff']}")
for role in ["worker", "launcher"]:
    if role not in seen:
        fail(f"no {role} process found in {procs}")
sys.exit(1 if failed else 0)
PY
log "sandbox of the running service:"
if ! in_c python3 /srv/tako-test/procs.py >"$WORK/procs.txt" 2>&1; then
    check_fail "sandbox checks (below)"
fi
sed 's/^/    /' "$WORK/procs.txt" >&2
if journal | grep -E 'sandbox not applied|Operation not permitted|Read-only file system|EPERM' >"$WORK/sandbox-errors.txt"; then
    check_fail "the service logged sandbox errors"
    sed 's/^/    /' "$WORK/sandbox-errors.txt" | head -20 >&2
fi

# --- The app ------------------------------------------------------------------------------------
APP=demo
APP_HOST=demo.test
REL=/opt/tako/apps/$APP/releases/v1
as_tako mkdir -p "$REL"
cat >"$ROOT$REL/server.py" <<'PY'
import http.server, os, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = ("ok %d %s\n" % (os.getpid(), self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
PY
echo '{"runtime":"node","main":"server.py","start":["python3","{main}"]}' >"$ROOT$REL/app.json"
in_c chown tako:tako "$REL/server.py" "$REL/app.json"
DEPLOY="{\"command\":\"deploy\",\"app\":\"$APP\",\"version\":\"v1\",\"path\":\"$REL\",\"routes\":[\"$APP_HOST\"],\"env\":{},\"instances\":2,\"idle_timeout\":300}"
log "deploying $APP over the management socket (as tako)"
if ! echo "$DEPLOY" | as_tako timeout 120 tako-server ctl raw - >"$WORK/deploy.txt" 2>&1 \
    || ! grep -q '"status":"ok"' "$WORK/deploy.txt"; then
    cat "$WORK/deploy.txt" >&2
    journal -n 40 >&2
    check_fail "deploy"
fi
expect_stat "$REL" "755 tako tako"

serves() {
    in_c curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $APP_HOST" \
        -H 'X-Forwarded-Proto: https' http://127.0.0.1/ 2>/dev/null | grep -qx 200 &&
        in_c curl -sk -o /dev/null -w '%{http_code}' --max-time 5 --resolve "$APP_HOST:443:127.0.0.1" \
            "https://$APP_HOST/" 2>/dev/null | grep -qx 200
}
for _ in $(seq 1 100); do serves && break; sleep 0.2; done
serves || check_fail "the app does not answer over HTTP and HTTPS after the deploy"

# App processes under the sandbox: uid, capabilities.
in_c python3 /srv/tako-test/procs.py >"$WORK/procs2.txt" 2>&1 || check_fail "role checks with the app running"
grep -E '^(instance|app)' "$WORK/procs2.txt" | sed 's/^/    /' >&2 || true

# --- Load ---------------------------------------------------------------------------------------
cat >"$ROOT/srv/tako-test/load.py" <<'PY'
"""Clients that never retry: keep-alive and a new connection per request, HTTP and HTTPS.

Runs until /srv/tako-test/stop exists; writes its counts to /srv/tako-test/progress every
0.2 s and every failure to stdout as it happens.
"""
import http.client, os, ssl, sys, threading, time

HOST = sys.argv[1]
STOP = "/srv/tako-test/stop"
PROGRESS = "/srv/tako-test/progress"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
lock = threading.Lock()
counts = {"ok": 0, "failed": 0}

def record(ok, what=""):
    with lock:
        counts["ok" if ok else "failed"] += 1
    if not ok:
        print(f"{time.strftime('%H:%M:%S')} FAIL {what}", flush=True)

def client(name, tls, keep_alive):
    conn, i = None, 0
    while not os.path.exists(STOP):
        i += 1
        reused = conn is not None
        try:
            if conn is None:
                conn = (http.client.HTTPSConnection("127.0.0.1", 443, timeout=30, context=ctx)
                        if tls else http.client.HTTPConnection("127.0.0.1", 80, timeout=30))
            headers = {"Host": HOST}
            if not tls:
                headers["X-Forwarded-Proto"] = "https"
            if not keep_alive:
                headers["Connection"] = "close"
            conn.request("GET", f"/load/{name}?i={i}", headers=headers)
            r = conn.getresponse()
            body = r.read()
            if r.status == 200 and body.startswith(b"ok "):
                record(True)
            else:
                record(False, f"{name} #{i}: status {r.status} {body[:80]!r}")
            if r.will_close or not keep_alive:
                conn.close()
                conn = None
        except Exception as e:
            record(False, f"{name} #{i} ({'reused' if reused else 'new'} connection): {e!r}")
            try:
                conn.close()
            except Exception:
                pass
            conn = None
        time.sleep(0.01)
    if conn is not None:
        conn.close()

threads = [threading.Thread(target=client, args=(f"{'https' if tls else 'http'}-{'ka' if ka else 'new'}-{n}", tls, ka), daemon=True)
           for tls in (False, True) for ka in (True, False) for n in (1, 2)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    with lock:
        line = f"{counts['ok']} {counts['failed']}\n"
    with open(PROGRESS + ".tmp", "w") as f:
        f.write(line)
    os.replace(PROGRESS + ".tmp", PROGRESS)
    time.sleep(0.2)
with open(PROGRESS, "w") as f:
    f.write(f"{counts['ok']} {counts['failed']}\n")
print(f"DONE {counts['ok']} {counts['failed']}", flush=True)
PY
rm -f "$ROOT/srv/tako-test/stop" "$ROOT/srv/tako-test/progress"
log "starting the load (8 clients: HTTP and HTTPS, keep-alive and new connections, no retries)"
in_c python3 /srv/tako-test/load.py "$APP_HOST" >"$WORK/load.txt" 2>&1 &
LOAD_PID=$!

ok_count() { cut -d' ' -f1 "$ROOT/srv/tako-test/progress" 2>/dev/null || echo 0; }
failed_count() { cut -d' ' -f2 "$ROOT/srv/tako-test/progress" 2>/dev/null || echo 0; }
# Waits (at most 60 s) until `n` more requests succeeded: traffic flows again.
wait_traffic() {
    local from n=$1 what=$2
    from=$(ok_count)
    for _ in $(seq 1 600); do
        [ "$(ok_count)" -ge $((from + n)) ] && return 0
        sleep 0.1
    done
    check_fail "no traffic after $what ($(ok_count) ok, $(failed_count) failed)"
    return 1
}
wait_traffic 200 "the start of the load"

STEPS=0
# One step: the command, then the service active, the app serving, traffic flowing.
step() {
    local what=$1
    shift
    local t0 f0
    t0=$(date +%s%N)
    f0=$(failed_count)
    if ! "$@" >"$WORK/step.txt" 2>&1; then
        check_fail "$what: $(tr '\n' ' ' <"$WORK/step.txt")"
    fi
    STEPS=$((STEPS + 1))
    wait_active || true
    serves || check_fail "the app does not answer after $what"
    wait_traffic 100 "$what" || true
    log "$what: $((($(date +%s%N) - t0) / 1000000)) ms, $(($(failed_count) - f0)) failed requests so far in this step"
}

for i in 1 2 3; do
    step "systemctl restart ($i)" in_c systemctl restart tako-server
done
for i in 1 2; do
    step "systemctl reload ($i)" in_c systemctl reload tako-server
done
step "apt install (upgrade to $UP_VERSION)" in_c timeout 300 env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "/srv/tako-test/tako-server_${UP_VERSION}.deb"
[ "$(in_c dpkg-query -W -f '${Version}' tako-server)" = "$UP_VERSION" ] || check_fail "the upgrade did not install"

# The Tako CLI's upgrade sequence (docs/operations.md, "Upgrade"), as the deploy user.
cli_upgrade() {
    local owner sock info port tls_port
    owner="upgrade-systemd-test-$(date +%s)-$$"
    sock=/run/tako/tako-$owner.sock
    as_tako tako-server ctl --json raw "{\"command\":\"enter_upgrading\",\"owner\":\"$owner\"}" | grep -q '"status":"ok"' ||
        { echo "enter_upgrading refused"; return 1; }
    info=$(as_tako tako-server ctl --json server-info)
    port=$(echo "$info" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("data",d); print(d.get("http_port", d.get("port", 80)))' 2>/dev/null || echo 80)
    tls_port=$(echo "$info" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("data",d); print(d.get("https_port", d.get("tls_port", 443)))' 2>/dev/null || echo 443)
    # The stock CLI starts /usr/local/bin/tako-server, where install.sh puts it; the package
    # installs /usr/bin/tako-server.
    as_tako sh -c "nohup /usr/bin/tako-server --socket $sock --data-dir /opt/tako --port $port --tls-port $tls_port --renewal-interval-hours 12 --instance-port-offset 10000 > /opt/tako/upgrade-logs/candidate-$owner.log 2>&1 &"
    local up=
    for _ in $(seq 1 240); do
        if as_tako tako-server ctl --socket "$sock" --json raw '{"command":"hello","protocol_version":3}' 2>/dev/null | grep -q '"status":"ok"'; then
            up=1
            break
        fi
        sleep 0.5
    done
    [ -n "$up" ] || { echo "the candidate never answered on $sock"; in_c cat "/opt/tako/upgrade-logs/candidate-$owner.log"; return 1; }
    as_tako sudo -n /usr/bin/systemctl restart tako-server || { echo "sudo systemctl restart failed"; return 1; }
    for _ in $(seq 1 240); do
        as_tako tako-server ctl --json server-info >/dev/null 2>&1 && break
        sleep 0.5
    done
    as_tako tako-server ctl --json raw "{\"command\":\"exit_upgrading\",\"owner\":\"$owner\"}" | grep -q '"status":"ok"' ||
        { echo "exit_upgrading refused"; return 1; }
    # The candidate (a stand-in when it runs as tako) exits once the mode is normal again.
    for _ in $(seq 1 100); do
        in_c test -S "$sock" || break
        sleep 0.2
    done
    in_c sed 's/^/candidate: /' "/opt/tako/upgrade-logs/candidate-$owner.log" | tail -5
}
step "the Tako CLI's upgrade sequence" cli_upgrade
sed 's/^/    /' "$WORK/step.txt" >&2

touch "$ROOT/srv/tako-test/stop"
for _ in $(seq 1 600); do
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.1
done
wait "$LOAD_PID" 2>/dev/null || true
REQUESTS=$(ok_count)
FAILED=$(failed_count)
REQUESTS=$((REQUESTS + FAILED))
if [ "$FAILED" -gt 0 ]; then
    grep FAIL "$WORK/load.txt" | head -30 | sed 's/^/    /' >&2
fi

# --- sudo for the deploy user ----------------------------------------------------------------
sudo_ok() { as_tako sudo -n "$@" >/dev/null 2>&1 || check_fail "sudo refused to tako: $*"; }
sudo_refused() {
    if as_tako sudo -n "$@" >/dev/null 2>&1; then check_fail "sudo allowed to tako: $*"; fi
}
sudo_ok /usr/bin/systemctl is-active tako-server
sudo_ok /usr/bin/systemctl status tako-server
sudo_ok /usr/bin/journalctl -u tako-server --since '3 days ago' --no-pager -o cat
# The follow form runs until killed: `timeout` ends it (status 124) unless sudo refused it.
rc=0
as_tako timeout 3 sudo -n /usr/bin/journalctl -u tako-server -f --no-pager -o cat >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 124 ] || check_fail "sudo journalctl -u tako-server -f did not follow (status $rc)"
sudo_refused /usr/bin/journalctl -u tako-server --vacuum-time=1s
sudo_refused journalctl -u tako-server --vacuum-time=1s
sudo_refused /usr/bin/journalctl -u tako-server --rotate
sudo_refused /usr/bin/journalctl -u ssh --since '3 days ago' --no-pager -o cat
sudo_refused /usr/bin/systemctl stop tako-server
sudo_refused /usr/bin/systemctl restart tako-server --now
sudo_refused /bin/sh -c id
log "sudo: the CLI's command lines run, others are refused"

# --- Notifications from an app -----------------------------------------------------------------
# An app that tries to talk to systemd: through $NOTIFY_SOCKET (it gets none) and straight to
# /run/systemd/notify. With NotifyAccess=main systemd ignores both.
NREL=/opt/tako/apps/notifier/releases/v1
as_tako mkdir -p "$NREL"
cat >"$ROOT$NREL/server.py" <<'PY'
import http.server, os, socket

def notify(msg):
    sent = []
    for path in [os.environ.get("NOTIFY_SOCKET"), "/run/systemd/notify"]:
        if not path:
            continue
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(msg, path)
            sent.append(path)
        except OSError as e:
            sent.append(f"{path}: {e}")
    return sent

results = [notify(b"MAINPID=1"), notify(b"STOPPING=1"), notify(b"FDSTOREREMOVE=1\nFDNAME=http-0.0.0.0-80")]
print("notify attempts:", results, "NOTIFY_SOCKET:", os.environ.get("NOTIFY_SOCKET"), flush=True)

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("ok %s\n" % os.environ.get("NOTIFY_SOCKET")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
PY
echo '{"runtime":"node","main":"server.py","start":["python3","{main}"]}' >"$ROOT$NREL/app.json"
in_c chown tako:tako "$NREL/server.py" "$NREL/app.json"
MAIN_BEFORE=$(in_c systemctl show -p MainPID --value tako-server)
echo "{\"command\":\"deploy\",\"app\":\"notifier\",\"version\":\"v1\",\"path\":\"$NREL\",\"routes\":[\"notifier.test\"],\"env\":{},\"instances\":1,\"idle_timeout\":300}" |
    as_tako timeout 120 tako-server ctl raw - >"$WORK/notifier.txt" 2>&1 || true
grep -q '"status":"ok"' "$WORK/notifier.txt" || check_fail "deploy of the notifying app: $(cat "$WORK/notifier.txt")"
sleep 2
MAIN_AFTER=$(in_c systemctl show -p MainPID --value tako-server)
[ "$MAIN_BEFORE" = "$MAIN_AFTER" ] || check_fail "MainPID changed from $MAIN_BEFORE to $MAIN_AFTER after the app's notifications"
[ "$(in_c systemctl is-active tako-server)" = active ] || check_fail "the service is not active after the app's notifications"
in_c systemctl show -p NFileDescriptorStore --value tako-server >"$WORK/nfd.txt" 2>/dev/null || true
[ "$(cat "$WORK/nfd.txt")" != 0 ] || check_fail "the FD store lost its listeners"
in_c grep -h 'notify attempts' /opt/tako/apps/notifier/shared/logs/*.log 2>/dev/null | tail -1 | sed 's/^/    app: /' >&2 || true
serves || check_fail "the app does not answer after the notifications"
log "an app's MAINPID=1, STOPPING=1 and FDSTOREREMOVE=1 changed nothing (MainPID $MAIN_AFTER, FD store $(cat "$WORK/nfd.txt"))"

# --- Result -------------------------------------------------------------------------------------
if journal | grep -E 'sandbox not applied|Operation not permitted|Read-only file system' >"$WORK/sandbox-errors.txt"; then
    check_fail "the service logged sandbox errors"
    sed 's/^/    /' "$WORK/sandbox-errors.txt" | head -20 >&2
fi
log "exposure ${EXPOSURE:-?}; ${#FAILED_CHECKS[@]} failed checks"
for c in "${FAILED_CHECKS[@]}"; do echo "  failed: $c" >&2; done
if [ "$FAILED" -gt 0 ] || [ ${#FAILED_CHECKS[@]} -gt 0 ]; then
    journal -n 80 >"$WORK/journal-tail.txt"
    sed 's/^/    journal: /' "$WORK/journal-tail.txt" >&2
fi
echo "systemd: $REQUESTS requests across $STEPS restarts, reloads and upgrades, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ ${#FAILED_CHECKS[@]} -eq 0 ]
