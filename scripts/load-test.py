#!/usr/bin/env python3
"""Load test of `refusal-lens serve`, bounded and on loopback only.

    scripts/load-test.py [--clients 16] [--jobs 48] [--reads 2000] [--model smollm2-135m]
                         [--max-new-tokens 4] [--slow-clients 32] [--cancel-storm 64]
                         [--header-timeout-s S] [--addr 127.0.0.1:PORT] [--bin PATH]

Without --addr it starts its own server (port 0, a temporary data directory, --queue sized to
the jobs, --header-timeout-s 2) from --bin (default: the release binary, else the debug one) and
stops it at the end. Four cases run one after the other:

- jobs: CLIENTS threads each submit generate jobs and follow their Server-Sent Events to the
  end (retrying after Retry-After on 503);
- reads: they hammer the read endpoints (models, results, share page);
- slow headers (slowloris; --slow-clients N, 0 skips): N connections send a request head that
  never ends (one more header line a second) while a normal client must still get
  GET /api/models 200, and the server must close each of them (429 past its per-address
  limit counts as a refusal). --header-timeout-s is the server's (default 2 for the server
  this script starts, 10 for one given by --addr); the bound is that + 10 s;
- cancel storm (--cancel-storm N, 0 skips): CLIENTS threads submit N jobs as fast as they can,
  cancel each right after its 202 (every third twice: a second cancel may answer 409) and
  retry 503 (queue full, with Retry-After) after a short sleep; then every job must reach a
  final state and the queue must take and run a fresh job.

Prints throughput, latency percentiles and counts; exits 1 if an accepted job is lost, a stream
ends without an outcome, any answer is a 5xx other than 503, a normal client is not served or a
slow connection is not closed within the bound, or a cancelled job never finishes.

Limits keep it a test, not an attack: at most 64 clients, 1000 jobs, 100000 reads, 256 slow
connections, 1000 storm jobs, and only 127.0.0.1 / ::1 / localhost.
"""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}
FINAL = ("succeeded", "failed", "cancelled")
# Seconds the cancel storm's jobs get to reach a final state once the last one was submitted.
DRAIN_S = 120


def request(method, url, body=None, timeout=600):
    """Status, headers (looked up case-insensitively: the server sends them lowercase), body."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def follow(url):
    """The events of one job until its outcome (or the stream's end)."""
    events = []
    with urllib.request.urlopen(url, timeout=600) as res:
        for raw in res:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                event = json.loads(line[6:])
                events.append(event)
                if event["type"] in FINAL:
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


def job_body(args, i):
    return {"kind": "generate", "args": {
        "model": args.model, "prompt": f"Load test prompt {i}: say hello",
        "max-new-tokens": args.max_new_tokens}}


def client(base, n_jobs, args, stats, results):
    for i in range(n_jobs):
        body = job_body(args, i)
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


def served(url, deadline):
    """Seconds until GET url answers 200 (a 429 or a dropped connection is retried), the 429s
    met on the way, and why not if the deadline passed first."""
    start, refused, why = time.monotonic(), 0, "no answer"
    while time.monotonic() < deadline:
        try:
            status, _, text = request("GET", url, timeout=max(0.1, deadline - time.monotonic()))
        except (OSError, urllib.error.URLError) as e:  # timeouts and resets too
            why = repr(e)
        else:
            if status == 200:
                return time.monotonic() - start, refused, None
            if status != 429:
                return None, refused, f"{status} {text[:200]!r}"
            refused += 1
            why = "429"
        time.sleep(0.1)
    return None, refused, why


def slow_headers(base, n, header_timeout):
    """N connections that never finish their request head: the server must keep serving others
    and close each (they are allowed header_timeout + 10 s). Returns (summary, errors)."""
    url = urllib.parse.urlsplit(base)
    bound = header_timeout + 10
    errors = []
    conns = []  # each: socket, when opened, seconds until the server closed it, its answer
    for _ in range(n):
        try:
            sock = socket.create_connection((url.hostname, url.port), timeout=5)
            sock.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError as e:
            errors.append(f"slow connection: {e!r}")
            continue
        sock.setblocking(False)
        conns.append({"sock": sock, "opened": time.monotonic(), "closed": None, "answer": b""})

    def watch():
        # One more header line a second, as slowloris does: the deadline is for the whole head,
        # so bytes that keep trickling in must not keep a connection open.
        next_line = time.monotonic() + 1
        while True:
            now = time.monotonic()
            live = {c["sock"]: c for c in conns if c["closed"] is None and now - c["opened"] < bound}
            if not live:
                return
            readable, _, _ = select.select(list(live), [], [], 0.1)
            for sock in readable:
                c = live[sock]
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:  # reset by the server: closed as well
                    data = b""
                if data:
                    c["answer"] += data
                else:
                    c["closed"] = time.monotonic() - c["opened"]
            if now >= next_line:
                next_line = now + 1
                for c in live.values():
                    if c["closed"] is None and not c["answer"]:
                        try:
                            c["sock"].send(b"X-Slow: 1\r\n")
                        except OSError:
                            pass  # closed: the next recv says so
    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    took, refused, why = served(base + "/api/models", start + bound)
    open_then = sum(c["closed"] is None for c in conns)
    watcher.join()
    for c in conns:
        c["sock"].close()

    if took is None:
        errors.append(f"slow headers: a normal GET /api/models was not served within {bound} s ({why})")
    refusals = [c for c in conns if c["answer"].startswith(b"HTTP/1.1 429")]
    closed = [c["closed"] for c in conns if c["closed"] is not None and c not in refusals]
    left = [c for c in conns if c["closed"] is None]
    if left:
        errors.append(f"slow headers: {len(left)} connections still open after {bound} s "
                      f"(first answer: {left[0]['answer'][:80]!r})")
    served_text = f"served in {took:.2f} s" if took is not None else "NOT served"
    after = f" after {min(closed):.1f}-{max(closed):.1f} s" if closed else ""
    summary = (f"slow headers: {len(conns)} connections, {len(refusals)} refused with 429, "
               f"{len(closed)} closed by the server{after}, {len(left)} left open (bound {bound} s); "
               f"a normal GET /api/models {served_text} with {open_then} slow ones open "
               f"({refused} answers 429 on the way)")
    return summary, errors


class Storm:
    """What the cancel storm's threads count, and its errors."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "cancelled": 0, "409": 0, "503": 0}
        self.accepted = []  # job ids
        self.errors = []

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def call(self, method, url, body=None):
        """request(), with no answer, a 5xx but 503 and a 503 without Retry-After recorded as
        errors; their status is None (the caller has nothing more to record)."""
        try:
            status, headers, text = request(method, url, body, timeout=60)
        except (OSError, urllib.error.URLError) as e:
            self.errors.append(f"{method} {url}: {e!r}")
            return None, {}, b""
        if status >= 500 and status != 503 or status == 503 and "Retry-After" not in headers:
            self.errors.append(f"{method} {url}: {status} {text[:200]!r}")
            return None, headers, text
        return status, headers, text


def storm_worker(base, jobs, args, storm):
    for i in jobs:
        deadline = time.monotonic() + DRAIN_S  # a queue that never frees up fails, not spins
        while True:
            status, _, text = storm.call("POST", base + "/api/jobs", job_body(args, i))
            if status != 503 or time.monotonic() > deadline:
                break
            storm.count("503")
            time.sleep(0.05)  # not Retry-After's 30 s: cancels free places at once
        if status != 202:
            if status is not None:
                storm.errors.append(f"storm submit: {status} {text[:200]!r}")
            continue
        job = json.loads(text)["id"]
        storm.count("accepted")
        with storm.lock:
            storm.accepted.append(job)
        # Every third job is cancelled twice: the second finds it finished (409) or still
        # stopping (202).
        for _ in range(2 if i % 3 == 0 else 1):
            status, _, text = storm.call("DELETE", f"{base}/api/jobs/{job}")
            if status == 202:
                storm.count("cancelled")
            elif status == 409:
                storm.count("409")
            elif status is not None:
                storm.errors.append(f"cancel {job}: {status} {text[:200]!r}")


def job_state(base, job, storm):
    """The job's recorded state, checked against its newest event while the server has it;
    None (an error recorded) when it is not answered."""
    status, _, text = storm.call("GET", f"{base}/api/jobs/{job}")
    if status is not None and status != 200:
        storm.errors.append(f"GET job {job}: {status} {text[:200]!r}")
    if status != 200:
        return None
    record = json.loads(text)
    event = (record.get("last_event") or {}).get("type")
    if record["state"] in FINAL and event in FINAL and event != record["state"]:
        storm.errors.append(f"job {job}: recorded {record['state']}, its last event {event}")
    return record["state"]


def run_threads(target, arg_lists):
    """TARGET run on a thread per argument tuple, all at once; the seconds until all are done."""
    t0 = time.monotonic()
    threads = [threading.Thread(target=target, args=a) for a in arg_lists]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def cancel_storm(base, n, args):
    """N jobs submitted and cancelled at once from CLIENTS threads; then every one must finish
    and the queue must run a fresh job. Returns (summary, errors)."""
    storm = Storm()
    per = [list(range(k, n, args.clients)) for k in range(min(args.clients, n))]
    storm_wall = run_threads(storm_worker, [(base, jobs, args, storm) for jobs in per])

    t0 = time.monotonic()
    pending, outcomes = set(storm.accepted), {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        while pending and time.monotonic() < t0 + DRAIN_S:
            ids = sorted(pending)
            for job, state in zip(ids, pool.map(lambda j: job_state(base, j, storm), ids)):
                # An unanswered job is not asked again: its error is recorded once.
                if state in FINAL or state is None:
                    pending.discard(job)
                    outcomes[state or "error"] = outcomes.get(state or "error", 0) + 1
            if pending:
                time.sleep(0.2)
    drain = time.monotonic() - t0
    if pending:
        storm.errors.append(f"cancel storm: {len(pending)} jobs not finished {DRAIN_S} s after "
                            f"the storm (e.g. {sorted(pending)[0]})")

    # The queue is free again: a fresh job is taken at once and runs to its result.
    status, _, text = storm.call("POST", base + "/api/jobs", job_body(args, n))
    if status == 202:
        events = follow(base + json.loads(text)["events_url"])
        fresh = events[-1]["type"] if events else "no events"
    else:
        fresh = f"not accepted ({status} {text[:200]!r})"
    if fresh != "succeeded":
        storm.errors.append(f"cancel storm: a fresh job after it: {fresh}")

    c = storm.counts
    summary = (f"cancel storm: {c['accepted']} of {n} jobs accepted in {storm_wall:.1f} s, "
               f"{c['cancelled']} cancels answered 202, {c['409']} answered 409, {c['503']} "
               f"answers 503 (retried); finished {outcomes} {drain:.1f} s after the storm; "
               f"a fresh job then {fresh}")
    return summary, storm.errors


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--jobs", type=int, default=48, help="jobs in all")
    p.add_argument("--reads", type=int, default=2000, help="GET requests in all")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--slow-clients", type=int, default=32, help="slow-header connections (0 skips)")
    p.add_argument("--cancel-storm", type=int, default=64, help="jobs submitted and cancelled (0 skips)")
    p.add_argument("--header-timeout-s", type=int,
                   help="the server's --header-timeout-s (default: 2, given to the server this "
                        "script starts; 10, the server's default, with --addr)")
    p.add_argument("--addr", help="a running server (loopback only)")
    p.add_argument("--bin", help="refusal-lens binary for the server this script starts")
    args = p.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.jobs <= 1000 and 0 <= args.reads <= 100000
            and 0 <= args.slow_clients <= 256 and 0 <= args.cancel_storm <= 1000):
        sys.exit("load-test: at most 64 clients, 1000 jobs, 100000 reads, 256 slow clients and "
                 "1000 storm jobs")
    header_timeout = args.header_timeout_s if args.header_timeout_s is not None else 10 if args.addr else 2

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
            [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data, "--queue", str(max(16, args.jobs)),
             "--header-timeout-s", str(header_timeout)],
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
        job_wall = run_threads(client, [(base, n, args, stats, results) for n in per if n])

        per = [args.reads // args.clients] * args.clients
        read_wall = run_threads(reader, [(base, n, results, stats) for n in per if n])

        extra = []  # (summary, errors) of the slow-header and cancel-storm cases
        if args.slow_clients:
            extra.append(slow_headers(base, args.slow_clients, header_timeout))
        if args.cancel_storm:
            extra.append(cancel_storm(base, args.cancel_storm, args))
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
    for summary, _ in extra:
        print(summary)
    errors = stats.errors + [e for _, case_errors in extra for e in case_errors]
    unique = len(set(results))
    ok = not lost and not errors and len(stats.jobs) == args.jobs and unique == len(results)
    for e in errors[:10]:
        print("error:", e)
    print(f"load-test: {'passed' if ok else 'FAILED'} ({unique} distinct results)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
