# A tiny app for the launcher's integration tests. Behaviour is chosen by MODE.
import http.server, json, os, signal, subprocess, sys, threading, time

mode = os.environ.get("MODE", "ok")
port = int(os.environ["PORT"])
fail_file = os.environ.get("FAIL_FILE", "")

if mode == "crash":
    sys.stderr.write("boom\n")
    sys.stderr.flush()
    sys.exit(3)
if mode == "silent":
    time.sleep(3600)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "child":
    subprocess.Popen(["sleep", "3600"])

print("env " + json.dumps(dict(os.environ), sort_keys=True), flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ok = (
            self.path == "/status"
            and self.headers.get("Host") == "tako.internal"
            and not (fail_file and os.path.exists(fail_file))
        )
        body = b"ok" if ok else b"failing"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if mode == "spam":
    def spam():
        filler = "x" * 93
        for i in range(100000):
            print(f"spam {i:06d} {filler}")
        print("spam-done", flush=True)

    threading.Thread(target=spam, daemon=True).start()

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
