#!/usr/bin/env python3
"""Open N TLS connections, do one HTTP/1.1 keep-alive request on each, hold them.

    tls_hold.py HOST PORT N [--sni NAME] [--parallel K] [--timeout S]

Prints "READY ok=<n> failed=<n> statuses=<code:count,...>" on stdout once every
connection has finished its request (or failed), then keeps every successful
connection open until it gets SIGTERM/SIGINT. Used by bench/conns.sh to measure
the server's RSS with N idle, already-used TLS connections. No certificate checks.
"""
import argparse
import asyncio
import collections
import resource
import signal
import ssl
import sys


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def read_response(reader):
    """Reads one response (Content-Length or chunked body); returns the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--sni", default="localhost")
    ap.add_argument("--host-header", default="localhost")
    ap.add_argument("--parallel", type=int, default=64,
                    help="handshakes in flight at once (keeps the listen backlog from overflowing)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per connection, seconds")
    args = ap.parse_args()

    limit = raise_nofile()
    if limit < args.n + 64:
        print(f"RLIMIT_NOFILE is {limit}, too low for {args.n} connections", file=sys.stderr)
        sys.exit(2)

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    request = f"GET / HTTP/1.1\r\nHost: {args.host_header}\r\n\r\n".encode()

    sem = asyncio.Semaphore(args.parallel)
    held = []          # (reader, writer): keeps the connections open
    statuses = collections.Counter()
    failures = collections.Counter()

    async def one():
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(args.host, args.port, ssl=ctx,
                                            server_hostname=args.sni), args.timeout)
                writer.write(request)
                await writer.drain()
                status = await asyncio.wait_for(read_response(reader), args.timeout)
            except Exception as e:  # noqa: BLE001 - counted and reported, never fatal
                failures[type(e).__name__] += 1
                return
            statuses[status] += 1
            held.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(args.n)))
    st = ",".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-"
    fl = ",".join(f"{k}:{v}" for k, v in sorted(failures.items())) or "-"
    print(f"READY ok={len(held)} failed={sum(failures.values())} statuses={st} failures={fl}",
          flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for _, w in held:
        w.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
