#!/usr/bin/env python3
"""load.tsv + rss.tsv from bench/conns.sh -> markdown tables (medians over rounds)."""
import csv
import statistics
import sys


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="{:,.0f}"):
    return "—" if x is None else spec.format(x)


def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}×"


def load_table(load):
    out = []
    targets = list(dict.fromkeys(r["target"] for r in load))
    out.append("## HTTP keep-alive load (wrk, plain HTTP)\n")
    out.append("| conns | target | req/s | p50 ms | p99 ms | socket errors c/r/w/t | non-2xx | "
               "proxy CPU µs/req | proxy CPU % | other % | req/s × nginx | µs/req × nginx | p99 × nginx |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for conns in dict.fromkeys(r["conns"] for r in load):
        stats = {}
        for t in targets:
            rs = [r for r in load if r["conns"] == conns and r["target"] == t]
            if not rs:
                continue
            def n(r, k):
                return int(r[k])
            rps = med([n(r, "ok") / (n(r, "duration_us") / 1e6) if n(r, "duration_us") else 0 for r in rs])
            p50 = med([n(r, "p50_us") / 1000 for r in rs if n(r, "p50_us") >= 0])
            p99 = med([n(r, "p99_us") / 1000 for r in rs if n(r, "p99_us") >= 0])
            us = med([n(r, "proxy_ticks") / n(r, "clk_tck") * 1e6 / n(r, "ok") if n(r, "ok") else None
                      for r in rs])
            cpu = med([100 * n(r, "proxy_ticks") / n(r, "clk_tck") / float(r["wall_s"]) for r in rs])
            other = med([max(0.0, 100 * (n(r, "busy_ticks") - n(r, "softirq_ticks") - n(r, "proxy_ticks")
                                         - n(r, "upstream_ticks") - n(r, "wrk_ticks"))
                             / n(r, "clk_tck") / float(r["wall_s"])) for r in rs])
            errs = "/".join(str(sum(n(r, k) for r in rs))
                            for k in ("err_connect", "err_read", "err_write", "err_timeout"))
            non2xx = sum(n(r, "non2xx") for r in rs)
            stats[t] = dict(rps=rps, p50=p50, p99=p99, us=us, cpu=cpu, other=other, errs=errs, non2xx=non2xx)
        base = stats.get("nginx", {})
        for t, s in stats.items():
            out.append(f"| {conns} | {t} | {fmt(s['rps'])} | {fmt(s['p50'], '{:.2f}')} | {fmt(s['p99'], '{:.2f}')} "
                       f"| {s['errs']} | {s['non2xx']} | {fmt(s['us'], '{:.1f}')} | {fmt(s['cpu'])} "
                       f"| {fmt(s['other'])} | {ratio(s['rps'], base.get('rps'))} "
                       f"| {ratio(s['us'], base.get('us'))} | {ratio(s['p99'], base.get('p99'))} |")
    out.append("")
    out.append("req/s counts 2xx responses only. socket errors: wrk connect/read/write/timeout. "
               "proxy CPU = utime+stime of the proxy's processes (nginx master+workers; tako-server "
               "master+children without app instances) per 2xx response. other % = CPU (of one core) "
               "used on the machine by anything but proxy, upstream and wrk during the run.\n")
    return out


def rss_table(rss):
    out = []
    if not rss:
        return out
    conns = rss[0]["conns"]
    out.append(f"## RSS with {conns} idle TLS connections (HTTP/1.1, one request each)\n")
    out.append("| target | idle MB (fresh) | before MB | with conns MB | KB per conn | opened / failed | "
               "established | processes | with × nginx | KB/conn × nginx |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    stats = {}
    for t in dict.fromkeys(r["target"] for r in rss):
        rs = [r for r in rss if r["target"] == t]
        def n(r, k):
            return int(r[k])
        idle = med([n(r, "idle_kb") / 1024 for r in rs])
        before = med([n(r, "before_kb") / 1024 for r in rs])
        ok = [r for r in rs if n(r, "with_kb") >= 0]
        withmb = med([n(r, "with_kb") / 1024 for r in ok])
        per = med([(n(r, "with_kb") - n(r, "before_kb")) / n(r, "opened") for r in ok if n(r, "opened")])
        opened = "/".join([str(med([n(r, "opened") for r in rs])), str(sum(n(r, "failed") for r in rs))])
        est = med([n(r, "estab") for r in rs])
        procs = med([n(r, "nprocs") for r in rs])
        stats[t] = dict(idle=idle, before=before, withmb=withmb, per=per, opened=opened, est=est, procs=procs,
                        note="; ".join(sorted({r["note"] for r in rs})))
    base = stats.get("nginx", {})
    for t, s in stats.items():
        out.append(f"| {t} | {fmt(s['idle'], '{:.1f}')} | {fmt(s['before'], '{:.1f}')} | "
                   f"{fmt(s['withmb'], '{:.1f}')} | {fmt(s['per'], '{:.1f}')} | {s['opened']} | "
                   f"{fmt(s['est'])} | {fmt(s['procs'])} | {ratio(s['withmb'], base.get('withmb'))} | "
                   f"{ratio(s['per'], base.get('per'))} |")
    out.append("")
    out.append("Sum of VmRSS over the proxy's processes. idle (fresh) = right after start; before = just before "
               "the client opened its connections; KB per conn = (with − before) / opened. established = TCP "
               "connections in ESTABLISHED state on the server's TLS port at the measurement. Client details: "
               + "; ".join(f"{t}: {s['note']}" for t, s in stats.items()) + "\n")
    return out


def main():
    load = rows(sys.argv[1])
    rss = rows(sys.argv[2])
    out = ["# High concurrency and RSS (bench/conns.sh)\n"]
    with open(sys.argv[3]) as f:
        out += ["```", f.read().rstrip(), "```", ""]
    if len(sys.argv) > 4 and sys.argv[4]:
        out += [sys.argv[4] + "\n"]
    out += load_table(load)
    out += rss_table(rss)
    print("\n".join(out))


if __name__ == "__main__":
    main()
