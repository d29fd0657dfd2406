#!/usr/bin/env python3
"""Complete broker sign-ins against bench/fake_github.py, the way an agent and a person's browser
make them (the relay's provider `gh` must point at the fake):

  signins.py PORT CONCURRENCY SECONDS          CONCURRENCY threads sign in over and over
  signins.py --stuck PORT N SECONDS            N sign-ins at once: each thread creates its
                                               session and reaches the provider, then all N
                                               callbacks are sent together (SECONDS: the longest
                                               any request may take)
  signins.py --fill PORT N                     create N sessions (POST /sessions) on one
                                               keep-alive connection, and nothing else

One sign-in is five steps, each checked:
  session   POST /sessions {"provider":"gh","expected_email":..}  (broker token)  -> 200 JSON
  link      GET login_url                                    -> 302 to the provider
  authorize GET the provider's authorize URL                 -> 302 to our callback
  callback  GET /login/gh/callback?code&state                -> 200 page (the relay redeems the
            code with PKCE and reads /user and /user/emails before answering)
  token     GET /token/{state}                               -> 200 JSON with the access token
Each thread keeps one http.client keep-alive connection to the relay and one to the provider.
Prints `SIGNINS n=.. secs=.. per_sec=.. failures=.. p50_ms=.. p99_ms=.. cpu_secs=..` (latency of a
complete sign-in; the client's own CPU time) and
`FAILURES session=.. link=.. authorize=.. callback=.. token=..`; --stuck also prints `IN_FLIGHT n`
once the callbacks are sent; --fill prints `FILLED n=.. secs=.. non200=..`.
The broker token comes from BROKER_TOKEN; the provider name from SIGNIN_PROVIDER (gh) and the
address the fake confirms from SIGNIN_EMAIL (ana@example.com).
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

TOKEN = os.environ["BROKER_TOKEN"]
PROVIDER = os.environ.get("SIGNIN_PROVIDER", "gh")
EMAIL = os.environ.get("SIGNIN_EMAIL", "ana@example.com")
STEPS = ("session", "link", "authorize", "callback", "token")
SESSION_BODY = json.dumps({"provider": PROVIDER, "expected_email": EMAIL})
SESSION_HEADERS = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}
TOKEN_HEADERS = {"Authorization": "Bearer " + TOKEN}


class StepFailed(Exception):
    def __init__(self, step, detail):
        super().__init__(f"{step}: {detail}")
        self.step = step


class Client:
    """One simulated agent plus browser: keep-alive connections to the relay and the provider."""

    def __init__(self, port, timeout):
        self.port = port
        self.timeout = timeout
        self.relay = None
        self.idp = None
        self.idp_addr = None

    def request(self, step, which, method, path, body=None, headers=None):
        """Sends one request on the relay's or the provider's connection; returns the response
        (read) or raises StepFailed. A broken connection is reopened for the next request."""
        if which == "relay":
            if self.relay is None:
                self.relay = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            conn = self.relay
        else:
            if self.idp is None:
                self.idp = http.client.HTTPConnection(*self.idp_addr, timeout=self.timeout)
            conn = self.idp
        try:
            conn.request(method, path, body, headers or {})
            r = conn.getresponse()
            r.body = r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if which == "relay":
                self.relay = None
            else:
                self.idp = None
            raise StepFailed(step, repr(e)) from None
        if r.will_close:
            conn.close()
            if which == "relay":
                self.relay = None
            else:
                self.idp = None
        return r

    def expect(self, step, r, status):
        if r.status != status:
            raise StepFailed(step, f"HTTP {r.status}: {r.body[:200]!r}")

    def reach_provider(self):
        """Session, link and authorize: returns (handle, callback path)."""
        r = self.request("session", "relay", "POST", "/sessions", SESSION_BODY, SESSION_HEADERS)
        self.expect("session", r, 200)
        session = json.loads(r.body)
        link = urllib.parse.urlsplit(session["login_url"])
        r = self.request("link", "relay", "GET", link.path)
        self.expect("link", r, 302)
        # The browser binding: the callback must bring the link's cookie back.
        cookie = (r.getheader("Set-Cookie") or "").split(";")[0]
        authorize = urllib.parse.urlsplit(r.getheader("Location", ""))
        addr = (authorize.hostname, authorize.port)
        if addr != self.idp_addr:
            if self.idp is not None:
                self.idp.close()
            self.idp, self.idp_addr = None, addr
        r = self.request("authorize", "idp", "GET", f"{authorize.path}?{authorize.query}")
        self.expect("authorize", r, 302)
        callback = urllib.parse.urlsplit(r.getheader("Location", ""))
        if callback.port != self.port or not callback.path.startswith("/login/"):
            raise StepFailed("authorize", f"redirected to {r.getheader('Location')!r}")
        return session["state"], f"{callback.path}?{callback.query}", cookie

    def finish(self, handle, callback, cookie):
        """Callback and token."""
        r = self.request("callback", "relay", "GET", callback, None, {"Cookie": cookie})
        self.expect("callback", r, 200)
        r = self.request("token", "relay", "GET", f"/token/{handle}", None, TOKEN_HEADERS)
        self.expect("token", r, 200)
        tokens = json.loads(r.body)
        if not tokens.get("access_token") or tokens.get("email") != EMAIL:
            raise StepFailed("token", f"unexpected tokens: {sorted(tokens)}")

    def close(self):
        for conn in (self.relay, self.idp):
            if conn is not None:
                conn.close()


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def report(latencies, failures, secs, examples):
    latencies.sort()
    n = len(latencies)
    print(f"SIGNINS n={n} secs={secs:.2f} per_sec={n / secs:.1f} failures={sum(failures.values())} "
          f"p50_ms={percentile(latencies, 50) * 1000:.2f} p99_ms={percentile(latencies, 99) * 1000:.2f} "
          f"cpu_secs={time.process_time():.1f}",
          flush=True)
    print("FAILURES " + " ".join(f"{s}={failures[s]}" for s in STEPS), flush=True)
    for e in examples:
        print(f"EXAMPLE {e}", flush=True)


def run_loop(port, concurrency, seconds):
    latencies, failures, examples = [], {s: 0 for s in STEPS}, []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def worker():
        client = Client(port, timeout=30)
        mine, bad = [], []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                client.finish(*client.reach_provider())
                mine.append(time.perf_counter() - t0)
            except StepFailed as e:
                bad.append(e)
        client.close()
        with lock:
            latencies.extend(mine)
            for e in bad:
                failures[e.step] += 1
            examples.extend(str(e) for e in bad[:1])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report(latencies, failures, time.monotonic() - start, examples[:3])


def run_stuck(port, n, seconds):
    latencies, failures, examples = [], {s: 0 for s in STEPS}, []
    lock = threading.Lock()
    ready = threading.Barrier(n + 1)
    sent, finished = [], []

    def worker():
        client = Client(port, timeout=seconds)
        try:
            prepared = client.reach_provider()
        except StepFailed as e:
            prepared = e
        ready.wait()
        t0 = time.perf_counter()
        try:
            if isinstance(prepared, StepFailed):
                raise prepared
            with lock:
                sent.append(1)
            client.finish(*prepared)
            with lock:
                latencies.append(time.perf_counter() - t0)
                finished.append(1)
        except StepFailed as e:
            with lock:
                failures[e.step] += 1
                examples.append(str(e))
                if not isinstance(prepared, StepFailed):
                    finished.append(1)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.monotonic()
    time.sleep(0.5)
    with lock:
        print(f"IN_FLIGHT {len(sent) - len(finished)} of {n}", flush=True)
    for t in threads:
        t.join()
    # Here the latency is from the callback being sent to the tokens being in hand.
    report(latencies, failures, time.monotonic() - start, examples[:3])


def run_fill(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    bad = 0
    for _ in range(n):
        conn.request("POST", "/sessions", SESSION_BODY, SESSION_HEADERS)
        r = conn.getresponse()
        r.read()
        bad += r.status != 200
    conn.close()
    print(f"FILLED n={n} secs={time.monotonic() - start:.1f} non200={bad}", flush=True)


def main(argv):
    try:
        if argv[1:2] == ["--stuck"]:
            run_stuck(int(argv[2]), int(argv[3]), float(argv[4]))
        elif argv[1:2] == ["--fill"]:
            run_fill(int(argv[2]), int(argv[3]))
        else:
            run_loop(int(argv[1]), int(argv[2]), float(argv[3]))
    except (IndexError, ValueError):
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
