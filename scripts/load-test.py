#!/usr/bin/env python3
"""Load test of `refusal-lens serve`, bounded and on loopback only.

    scripts/load-test.py [--clients 16] [--jobs 48] [--reads 2000] [--model smollm2-135m]
                         [--max-new-tokens 4] [--addr 127.0.0.1:PORT] [--bin PATH]

Without --addr it starts its own server (port 0, a temporary data directory, --queue sized to
the jobs) from --bin (default: the release binary, else the debug one) and stops it at the end.
CLIENTS threads each submit generate jobs and follow their Server-Sent Events to the end
(retrying after Retry-After on 503), then hammer the read endpoints (models, results, share
page). Prints throughput and latency percentiles; exits 1 if an accepted job is lost, a stream
ends without an outcome, or any answer is a 5xx other than 503.

Limits keep it a test, not an attack: at most 64 clients, 1000 jobs, 100000 reads, and only
127.0.0.1 / ::1 / localhost.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


def request(method, url, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def follow(url):
    """The events of one job until its outcome (or the stream's end)."""
    events = []
    with urllib.request.urlopen(url, timeout=600) as res:
        for raw in res:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                event = json.loads(line[6:])
                events.append(event)
                if event["type"] in ("succeeded", "failed", "cancelled"):
                    break
    return events


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.jobs = []  # (seconds, outcome, result_id)
        self.rejected = 0
        self.errors = []
        self.reads = []  # seconds

    def add(self, field, value):
        with self.lock:
            getattr(self, field).append(value)


def client(base, n_jobs, args, stats, results):
    for i in range(n_jobs):
        body = {"kind": "generate", "args": {
            "model": args.model, "prompt": f"Load test prompt {i}: say hello",
            "max-new-tokens": args.max_new_tokens}}
        start = time.monotonic()
        while True:
            status, headers, text = request("POST", base + "/api/jobs", body)
            if status != 503:
                break
            with stats.lock:
                stats.rejected += 1
            time.sleep(min(float(headers.get("Retry-After", "1")), 2.0))
        if status != 202:
            stats.add("errors", f"submit: {status} {text[:200]!r}")
            continue
        job = json.loads(text)
        events = follow(base + job["events_url"])
        outcome = events[-1]["type"] if events else "no events"
        result = events[-1].get("result_id") if events else None
        stats.add("jobs", (time.monotonic() - start, outcome, result))
        if result:
            with stats.lock:
                results.append(result)


def reader(base, n, results, stats):
    paths = ["/api/models"]
    for i in range(n):
        if results:
            rid = results[i % len(results)]
            paths = ["/api/models", f"/api/results/{rid}", f"/r/{rid}", f"/api/jobs/{rid}"]
        path = paths[i % len(paths)]
        start = time.monotonic()
        status, _, text = request("GET", base + path)
        stats.add("reads", time.monotonic() - start)
        if status >= 500:
            stats.add("errors", f"GET {path}: {status} {text[:200]!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--jobs", type=int, default=48, help="jobs in all")
    p.add_argument("--reads", type=int, default=2000, help="GET requests in all")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--addr", help="a running server (loopback only)")
    p.add_argument("--bin", help="refusal-lens binary for the server this script starts")
    args = p.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.jobs <= 1000 and 0 <= args.reads <= 100000):
        sys.exit("load-test: at most 64 clients, 1000 jobs and 100000 reads")

    server = None
    if args.addr:
        host = args.addr.rsplit(":", 1)[0]
        if host not in LOOPBACK:
            sys.exit(f"load-test: {args.addr} is not a loopback address; this script only tests a local server")
        base = f"http://{args.addr}"
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/refusal-lens/target"))
        binary = args.bin or next((str(b) for b in (target / "release/refusal-lens", target / "debug/refusal-lens") if b.exists()), None)
        if not binary:
            sys.exit("load-test: no refusal-lens binary; build it (cargo build --release -p refusal-lens) or pass --bin")
        data = tempfile.mkdtemp(prefix="refusal-lens-load-")
        server = subprocess.Popen(
            [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data, "--queue", str(max(16, args.jobs))],
            stdout=subprocess.PIPE, stderr=open(Path(data) / "server.log", "w"), text=True)
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            server.kill()
            sys.exit(f"load-test: the server did not start (see {data}/server.log)")
        base = line.split(" ", 2)[2].strip()
        threading.Thread(target=lambda: server.stdout.read(), daemon=True).start()
        print(f"load-test: server at {base}, data in {data}")

    stats, results = Stats(), []
    try:
        per = [args.jobs // args.clients + (1 if i < args.jobs % args.clients else 0) for i in range(args.clients)]
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(base, n, args, stats, results)) for n in per if n]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        job_wall = time.monotonic() - t0

        t0 = time.monotonic()
        per = [args.reads // args.clients] * args.clients
        threads = [threading.Thread(target=reader, args=(base, n, results, stats)) for n in per if n]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        read_wall = time.monotonic() - t0
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)

    latencies = [s for s, _, _ in stats.jobs]
    outcomes = {}
    for _, o, _ in stats.jobs:
        outcomes[o] = outcomes.get(o, 0) + 1
    lost = [o for _, o, r in stats.jobs if o != "succeeded" or not r]
    print(f"jobs: {len(stats.jobs)} finished of {args.jobs} ({outcomes}), {stats.rejected} answers 503 "
          f"(retried), {job_wall:.1f} s, {len(stats.jobs) / job_wall:.2f} jobs/s")
    print(f"job latency (submit to outcome): p50 {pct(latencies, 50):.2f} s, p95 {pct(latencies, 95):.2f} s, "
          f"max {max(latencies, default=float('nan')):.2f} s")
    if stats.reads:
        print(f"reads: {len(stats.reads)} in {read_wall:.1f} s, {len(stats.reads) / read_wall:.0f} req/s, "
              f"p50 {pct(stats.reads, 50) * 1000:.1f} ms, p95 {pct(stats.reads, 95) * 1000:.1f} ms")
    unique = len(set(results))
    ok = not lost and not stats.errors and len(stats.jobs) == args.jobs and unique == len(results)
    for e in stats.errors[:10]:
        print("error:", e)
    print(f"load-test: {'passed' if ok else 'FAILED'} ({unique} distinct results)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
