#!/usr/bin/env bash
# How long drains take (issue 22, "Drains without a fixed wait"): for a 2-instance rolling
# deploy, a rollback, a `stop` and an idle scale-down, the time from the command to its
# answer and to the moment the old instances got SIGTERM (their exit), minus the app's own
# start and exit time. Uses the real binary and a Python app that writes, per instance, when
# its script started, when it listened and when SIGTERM reached it.
#
#   bench/drain-times.sh [BIN] [RUNS]     # BIN defaults to target/debug/tako-server, RUNS to 5
#
# Old build for comparison (own worktree and target directory):
#   git worktree add --detach /tmp/old-src <rev>
#   (cd /tmp/old-src && CARGO_TARGET_DIR=/tmp/old-target cargo build -p tako-server)
#   bench/drain-times.sh /tmp/old-target/debug/tako-server
#
# Figures per scenario, medians over RUNS (the machine may be shared: read single runs as
# noise), in milliseconds:
#   answer  command sent → answer received, minus the app's start (script start → listening,
#           the slowest new instance) for commands that start instances;
#   exit    command sent → the last old instance got SIGTERM, minus the same start time.
#           The app's own exit (SIGTERM → gone) is not counted.
# The idle scale-down has no command: its figure is from the master's decision (the
# timestamp of its "idle; scaling down" log line) to SIGTERM. When that decision comes (the
# timeout, checked once a second against activity the workers report once a second) is the
# configuration's and the same in both builds.
# Run as root, the server runs as the deploy user `tako` (no privilege separation, as the
# tests' unprivileged mode) so the release needs no chown dance.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/debug/tako-server}
RUNS=${2:-5}
[[ -x $BIN ]] || { echo "no server binary at $BIN (cargo build -p tako-server)" >&2; exit 1; }
exec python3 - "$BIN" "$RUNS" <<'PY'
import json, os, pwd, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

BIN, RUNS = sys.argv[1], int(sys.argv[2])
HOST = "drain.bench.example.com"

APP = r'''import http.server, os, signal, socketserver, sys, time
t0 = time.time()
marks = os.environ["MARK_DIR"]
inst = os.environ.get("TAKO_INSTANCE", "x")
def mark(what, t):
    with open(os.path.join(marks, "%s.%s.%d" % (what, inst, os.getpid())), "w") as f:
        f.write(repr(t))
def term(*_):
    mark("term", time.time())
    os._exit(0)
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
s = S(("127.0.0.1", int(os.environ["PORT"])), H)
mark("start", t0)
mark("listen", time.time())
s.serve_forever()
'''
MANIFEST = '{"runtime":"node","main":"server.py","start":["python3","{main}"]}'

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tako-drain-")
        os.chmod(self.dir, 0o755)
        self.marks = os.path.join(self.dir, "marks")
        os.makedirs(self.marks)
        os.chmod(self.marks, 0o777)
        self.sock = os.path.join(self.dir, "tako.sock")
        self.http = free_port()
        args = [BIN, "--socket", self.sock, "--port", str(self.http), "--tls-port", str(free_port()),
                "--listen", "127.0.0.1", "--data-dir", os.path.join(self.dir, "data"), "--workers", "2",
                "--no-acme", "--instance-port-offset", "20000"]
        self.user = None
        if os.getuid() == 0:
            self.user = pwd.getpwnam("tako")
            for d in (self.dir,):
                os.chown(d, self.user.pw_uid, self.user.pw_gid)
        os.makedirs(os.path.join(self.dir, "data"))
        if self.user:
            os.chown(os.path.join(self.dir, "data"), self.user.pw_uid, self.user.pw_gid)
        self.err = open(os.path.join(self.dir, "server.stderr"), "w")
        kw = {}
        if self.user:
            kw = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[],
                      env=dict(os.environ, HOME=self.user.pw_dir, USER="tako", RUST_LOG="info"))
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err, start_new_session=True, **kw)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.cmd({"command": "hello", "protocol_version": 3}); break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("server did not come up; see " + self.err.name)

    def cmd(self, c):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(120)
        s.connect(self.sock)
        s.sendall(json.dumps(c).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        return json.loads(buf)

    def ok(self, c):
        r = self.cmd(c)
        if r.get("status") != "ok":
            raise SystemExit("command %s failed: %s" % (c["command"], r))
        return r.get("data")

    def release(self, app, version):
        d = os.path.join(self.dir, "data", "apps", app, "releases", version)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "server.py"), "w") as f: f.write(APP)
        with open(os.path.join(d, "app.json"), "w") as f: f.write(MANIFEST)
        if self.user:
            p = os.path.join(self.dir, "data", "apps")
            for root, dirs, files in os.walk(p):
                for n in [root] + [os.path.join(root, x) for x in files]:
                    os.chown(n, self.user.pw_uid, self.user.pw_gid)
        return d

    def deploy_cmd(self, app, version, instances, idle=300):
        return {"command": "deploy", "app": app, "version": version, "path": self.release(app, version),
                "routes": [HOST if app == "web" else app + "." + HOST], "env": {"MARK_DIR": self.marks},
                "instances": instances, "idle_timeout": idle}

    def status(self, app):
        return self.ok({"command": "status", "app": app})

    def pids(self, app, version=None):
        out = []
        for b in self.status(app).get("builds", []):
            if version and b["version"] != version:
                continue
            out += [i["pid"] for i in b["instances"] if i.get("pid")]
        return out

    def settle(self, app, version, n):
        deadline = time.time() + 60
        while time.time() < deadline:
            st = self.status(app)
            inst = [i for b in st.get("builds", []) for i in b["instances"]]
            if len(inst) == n and all(i["state"] == "healthy" for i in inst) and st["version"] == version:
                return [i["pid"] for i in inst]
            time.sleep(0.02)
        raise SystemExit("app did not settle")

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

def mark(srv, what, pid):
    for n in os.listdir(srv.marks):
        if n.startswith(what + ".") and n.endswith("." + str(pid)):
            with open(os.path.join(srv.marks, n)) as f:
                return float(f.read())
    return None

def wait_gone(pids, limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        if not any(os.path.exists("/proc/%d" % p) for p in pids):
            return
        time.sleep(0.002)
    raise SystemExit("old instances did not exit")

def idle_decision(srv):
    """When the master logged its last idle scale-down decision (its UTC timestamp)."""
    import datetime, re
    srv.err.flush()
    with open(srv.err.name) as f:
        lines = [l for l in f if "idle; scaling down" in l]
    stamp = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]).split()[0]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

def app_start(srv, new_pids):
    """The slowest new instance's own start: script start to listening."""
    spans = []
    for p in new_pids:
        s, l = mark(srv, "start", p), mark(srv, "listen", p)
        if s is not None and l is not None:
            spans.append(l - s)
    return max(spans) if spans else 0.0

def measure(srv, app, command, old, new_version, new_count):
    t0 = time.time()
    srv.ok(command)
    t_answer = time.time()
    wait_gone(old)
    terms = [mark(srv, "term", p) for p in old]
    new = srv.settle(app, new_version, new_count) if new_count else []
    start = app_start(srv, new)
    return ((t_answer - t0 - start) * 1000, (max(terms) - t0 - start) * 1000)

def run_once():
    srv = Server()
    try:
        r = {}
        srv.ok(srv.deploy_cmd("web", "v1", 2))
        old = srv.settle("web", "v1", 2)
        r["rolling deploy (2 instances)"] = measure(srv, "web", srv.deploy_cmd("web", "v2", 2), old, "v2", 2)
        old = srv.settle("web", "v2", 2)
        r["rollback (2 instances)"] = measure(srv, "web", {"command": "rollback", "app": "web", "version": "v1"}, old, "v1", 2)
        old = srv.settle("web", "v1", 2)
        r["stop (2 instances)"] = measure(srv, "web", {"command": "stop", "app": "web"}, old, None, 0)
        # Idle scale-down: an on-demand app with a 1 s idle timeout, woken by one request.
        srv.ok(srv.deploy_cmd("idle", "v1", 0, idle=1))
        deadline = time.time() + 60
        while srv.pids("idle") and time.time() < deadline:
            time.sleep(0.02)
        req = urllib.request.Request("http://127.0.0.1:%d/" % srv.http, headers={"Host": "idle." + HOST, "X-Forwarded-Proto": "https"})
        urllib.request.urlopen(req, timeout=60).read()
        pids = srv.pids("idle")
        wait_gone(pids)
        term = max(mark(srv, "term", p) for p in pids)
        r["idle scale-down (from the master's decision)"] = (None, (term - idle_decision(srv)) * 1000)
        return r
    finally:
        srv.close()

results = {}
for i in range(RUNS):
    for k, v in run_once().items():
        results.setdefault(k, []).append(v)
print("binary: %s, %d runs, medians (ms); single runs in brackets" % (BIN, RUNS))
print("| scenario | command → answer | command → old instances' SIGTERM |")
print("|---|---:|---:|")
for k, vs in results.items():
    ans = [a for a, _ in vs if a is not None]
    ex = [e for _, e in vs]
    fa = "%.0f [%s]" % (statistics.median(ans), " ".join("%.0f" % a for a in ans)) if ans else "-"
    fe = "%.0f [%s]" % (statistics.median(ex), " ".join("%.0f" % e for e in ex))
    print("| %s | %s | %s |" % (k, fa, fe))
PY
