"""The quickstart app: a plain HTTP server from Python 3's standard library.

tako-server starts it with PORT in the environment and sends it traffic once GET /status
answers 200 (its health probe); everything else gets a greeting.
"""

import http.server
import os

PORT = int(os.environ["PORT"])
VERSION = os.environ.get("TAKO_VERSION", "unknown")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.split("?")[0] == "/status":
            body = b"ok\n"
        else:
            body = f"Hello from tako-server ({VERSION})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # One line per request in the app's log (<data-dir>/apps/hello/shared/logs/app.log,
        # `tako-server ctl logs hello`), health probes left out.
        if not self.path.startswith("/status"):
            print("%s %s" % (self.command, self.path), flush=True)


print(f"hello listening on 127.0.0.1:{PORT}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
