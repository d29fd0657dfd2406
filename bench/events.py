#!/usr/bin/env python3
"""Completion-event figures: events per second delivered to a local receiver, the delay from a
relay callback (or a broker sign-in) being answered to its event reaching the receiver, the
memory an undelivered event costs in the relay and in Redis.

  events.py BIN [N]      N callbacks for the throughput runs (default 20000)

Prints rows for bench/run.sh's table (lines starting with "| events |"). Starts everything
itself on free loopback ports: the relay (BIN), a receiver (below, verifying every signature
with hmac the Standard Webhooks way), for the Redis runs redis-server and two replicas, for the
broker run bench/slow_idp.py with no delay. The receiver, the load and the relay share the
machine's cores; the receiver is Python (ThreadingHTTPServer), so it, not the relay, may be what
limits events per second (the note says how busy the relay's delivery was).
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
from httpc import Conn, get_json  # noqa: E402

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
REDIS_KEY = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
BROKER_TOKEN = "bench-broker-token-0123456789"
EMAIL = "ana.silva@contoso.example"
TENANT = "11111111-2222-3333-4444-555555555555"
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


class Receiver:
    """Arrival time (perf_counter) of each event by data.handle; counts bad signatures."""

    def __init__(self):
        self.arrivals = {}
        self.bad = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.perf_counter()
                msg_id, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
                expected = base64.b64encode(hmac.new(
                    KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
                ok = any(hmac.compare_digest(s[3:], expected)
                         for s in self.headers["webhook-signature"].split() if s.startswith("v1,"))
                with receiver.lock:
                    if ok:
                        receiver.arrivals.setdefault(json.loads(body)["data"]["handle"], now)
                    else:
                        receiver.bad += 1
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, handles, secs=120):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            with self.lock:
                if all(h in self.arrivals for h in handles):
                    return True
            time.sleep(0.01)
        return False


def start(cmd, env, port):
    full = dict(os.environ, **env)
    p = subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if get_json(port, "/health", timeout=1.0)[0] == 200:
                return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{cmd[0]} did not start")


def relay(bin_path, webhook_url, extra_env=None):
    port = free_port()
    env = {"OAUTH_RELAY_WEBHOOK_URL": webhook_url, "OAUTH_RELAY_WEBHOOK_SECRET": SECRET,
           "OAUTH_RELAY_LOG_LEVEL": "error", "OAUTH_RELAY_WEBHOOK_MAX_QUEUE": "100000"}
    env.update(extra_env or {})
    p = start([bin_path, "--host", "127.0.0.1", "--port", str(port)], env, port)
    return p, port


def stop(p):
    p.terminate()
    p.wait()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def load(ports, n, threads, tag):
    """n callbacks with unique states over `threads` keep-alive connections spread over
    `ports`; returns {state: time its answer arrived} and the non-200 count."""
    answered, bad = {}, [0]
    lock = threading.Lock()

    def worker(t):
        c = Conn(ports[t % len(ports)])
        mine = {}
        for i in range(t, n, threads):
            state = f"{tag}-{i}"
            c.send(f"/callback?code=c&state={state}")
            status, _, _, done = c.read_response()
            if status != 200:
                bad[0] += 1
            mine[state] = done
        c.close()
        with lock:
            answered.update(mine)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return answered, bad[0]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def delays_ms(receiver, answered):
    return [(receiver.arrivals[sha256_hex(s)] - t) * 1000 for s, t in answered.items()]


def cpu_secs(pids):
    """User + system CPU seconds of the processes so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def throughput(receiver, ports, n, tag, pids=()):
    cpu0 = cpu_secs(pids)
    start_t = time.perf_counter()
    answered, bad = load(ports, n, 4, tag)
    load_secs = time.perf_counter() - start_t
    if not receiver.wait_for([sha256_hex(s) for s in answered]):
        raise RuntimeError("not every event arrived")
    last = max(receiver.arrivals[sha256_hex(s)] for s in answered)
    d = delays_ms(receiver, answered)
    cpu = (cpu_secs(pids) - cpu0) / (last - start_t)
    return {"rate": n / (last - start_t), "cb_rate": n / load_secs, "bad": bad,
            "p50": pct(d, 50), "p99": pct(d, 99), "cpu": cpu}


def one_at_a_time(receiver, port, n, tag):
    """n callbacks, each waiting for its event before the next: the delay without queueing."""
    c = Conn(port)
    d = []
    for i in range(n):
        state = f"{tag}-{i}"
        c.send(f"/callback?code=c&state={state}")
        _, _, _, done = c.read_response()
        if not receiver.wait_for([sha256_hex(state)], 10):
            raise RuntimeError("an event did not arrive")
        d.append((receiver.arrivals[sha256_hex(state)] - done) * 1000)
    c.close()
    return pct(d, 50), pct(d, 99)


def broker_delays(bin_path, receiver, n):
    idp = free_port()
    p_idp = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "slow_idp.py"),
                              str(idp), "0", EMAIL])
    PROCS.append(p_idp)
    time.sleep(0.5)
    port = free_port()
    base = f"http://127.0.0.1:{idp}"
    p = start([bin_path, "--host", "127.0.0.1", "--port", str(port)], {
        "OAUTH_RELAY_WEBHOOK_URL": receiver.url(), "OAUTH_RELAY_WEBHOOK_SECRET": SECRET,
        "OAUTH_RELAY_LOG_LEVEL": "error", "WK_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "WK_M365_CLIENT_ID": "bench", "WK_M365_TENANT_ID": TENANT,
        "WK_M365_BROKER_TOKEN": BROKER_TOKEN, "WK_M365_LOGIN_BASE_URL": base,
        "WK_M365_GRAPH_BASE_URL": base}, port)
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    d = []
    for _ in range(n):
        conn.request("POST", "/m365/sessions", json.dumps({"expected_email": EMAIL}),
                     {"Authorization": "Bearer " + BROKER_TOKEN})
        r = conn.getresponse()
        session = json.loads(r.read())
        conn.request("GET", urllib.parse.urlsplit(session["login_url"]).path)
        r = conn.getresponse()
        r.read()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(r.getheader("Location")).query)
        state, nonce = query["state"][0], query["nonce"][0]
        # The browser binding: the callback brings the link's cookie back.
        cookie = r.getheader("Set-Cookie").split(";")[0]
        # The nonce rides in the code to bench/slow_idp.py, which puts it in the id_token.
        conn.request("GET", f"/m365/callback?code=bench.{urllib.parse.quote(nonce)}&state={urllib.parse.quote(state)}",
                     headers={"Cookie": cookie})
        r = conn.getresponse()
        r.read()
        done = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"sign-in answered {r.status}")
        h = sha256_hex(session["state"])
        if not receiver.wait_for([h], 10):
            raise RuntimeError("a sign-in event did not arrive")
        d.append((receiver.arrivals[h] - done) * 1000)
    stop(p)
    stop(p_idp)
    return pct(d, 50), pct(d, 99)


def queued_memory(bin_path, n):
    """RSS per undelivered event: the receiver's port has nothing listening."""
    dead = f"http://127.0.0.1:{free_port()}/hook"
    p, port = relay(bin_path, dead, {"OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS": "600000",
                                     "OAUTH_RELAY_WEBHOOK_MAX_QUEUE": str(n)})
    time.sleep(0.5)
    before = rss_kib(p.pid)
    load([port], n, 4, "mem")
    time.sleep(0.5)
    after = rss_kib(p.pid)
    stop(p)
    return before, after


def redis_runs(bin_path, receiver, n):
    rport = free_port()
    r = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], stdout=subprocess.DEVNULL)
    PROCS.append(r)
    time.sleep(0.5)
    env = {"OAUTH_RELAY_REDIS_URL": f"redis://127.0.0.1:{rport}/0", "OAUTH_RELAY_ENCRYPTION_KEY": REDIS_KEY}
    a, pa = relay(bin_path, receiver.url(), env)
    b, pb = relay(bin_path, receiver.url(), env)
    t = throughput(receiver, [pa, pb], n, "redis", [a.pid, b.pid, r.pid])
    lat = one_at_a_time(receiver, pa, 200, "redis-one")
    stop(a)
    stop(b)

    def used():
        out = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "memory"], capture_output=True,
                             text=True).stdout
        return int(next(line.split(":")[1] for line in out.splitlines() if line.startswith("used_memory:")))

    subprocess.run(["redis-cli", "-p", str(rport), "FLUSHALL"], capture_output=True)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    q, pq = relay(bin_path, dead, dict(env, OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS="600000"))
    before = used()
    m = 10000
    load([pq], m, 4, "redis-mem")
    # Only the events: the callbacks themselves are in Redis too, so count the event keys' cost.
    out = subprocess.run(["redis-cli", "-p", str(rport), "--scan", "--pattern", "oauth-relay:event:*"],
                         capture_output=True, text=True).stdout
    sample = out.split()[0]
    per_hash = int(subprocess.run(["redis-cli", "-p", str(rport), "MEMORY", "USAGE", sample],
                                  capture_output=True, text=True).stdout.strip())
    zsets = sum(int(subprocess.run(["redis-cli", "-p", str(rport), "MEMORY", "USAGE", f"oauth-relay:events:{z}"],
                                   capture_output=True, text=True).stdout.strip()) for z in ("due", "age"))
    total = used() - before
    stop(q)
    r.terminate()
    r.wait()
    return t, lat, per_hash + zsets / m, total / m


def row(figure, result, notes):
    print(f"| events | {figure} | {result} | - | {notes} |", flush=True)


def main():
    bin_path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    receiver = Receiver()
    try:
        p, port = relay(bin_path, receiver.url())
        idle = rss_kib(p.pid)
        t = throughput(receiver, [port], n, "mem", [p.pid])
        lat = one_at_a_time(receiver, port, 200, "mem-one")
        stop(p)
        row("events delivered per second (memory outbox)", f"**{t['rate']:,.0f}/s**",
            f"{n:,} callbacks over 4 keep-alive connections ({t['cb_rate']:,.0f} callbacks/s answered, "
            f"non-200: {t['bad']}); first callback sent -> last event received; 2 delivery threads; "
            f"relay CPU {t['cpu'] * 100:.0f} % of one core over the run, so not the limit: the receiver and "
            f"the load share one Python process (one core at most), verifying each signature; "
            f"relay RSS idle {idle / 1024:.1f} MiB")
        row("callback answered -> event received, p50 / p99, under that load",
            f"{t['p50']:.1f} / {t['p99']:.1f} ms", "includes queueing behind the other events")
        row("callback answered -> event received, p50 / p99, one at a time",
            f"**{lat[0]:.2f} / {lat[1]:.2f} ms**", "200 callbacks, each waiting for its event")
        b = broker_delays(bin_path, receiver, 100)
        row("broker sign-in answered -> event received, p50 / p99",
            f"**{b[0]:.2f} / {b[1]:.2f} ms**", "100 sign-ins against bench/slow_idp.py with no delay, one at a time")
        before, after = queued_memory(bin_path, 10000)
        row("relay RSS with 10,000 undelivered events (receiver down)",
            f"{after / 1024:.1f} MiB (+{(after - before) * 1024 / 10000:,.0f} B per event and its callback)",
            f"before: {before / 1024:.1f} MiB; the callbacks themselves cost about 360 B each (docs/front-door.md, memory budget)")
        if subprocess.run(["which", "redis-server"], capture_output=True).returncode == 0:
            rt, rlat, per_event, per_all = redis_runs(bin_path, receiver, n)
            row("events delivered per second (Redis outbox, 2 replicas)", f"**{rt['rate']:,.0f}/s**",
                f"{n:,} callbacks over 4 connections, 2 per replica ({rt['cb_rate']:,.0f} callbacks/s answered, "
                f"non-200: {rt['bad']}); 2 delivery threads per replica; replicas + Redis CPU {rt['cpu'] * 100:.0f} % of one core")
            row("callback answered -> event received, p50 / p99 (Redis), under load / one at a time",
                f"{rt['p50']:.1f} / {rt['p99']:.1f} ms; **{rlat[0]:.2f} / {rlat[1]:.2f} ms**", "")
            row("Redis memory per undelivered event",
                f"{per_event:,.0f} B (event hash + its share of the two sorted sets)",
                f"MEMORY USAGE; used_memory grew {per_all:,.0f} B per callback with its event")
        if receiver.bad:
            row("bad signatures seen by the receiver", str(receiver.bad), "should be 0")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
