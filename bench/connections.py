#!/usr/bin/env python3
"""Kept connections for benchmarks, against a relay whose provider `gh` points at
bench/fake_github.py (started with --app SECS, so tokens expire and refresh):

  connections.py fill PORT N OUT        N kept sign-ins (session with "keep": true, link, the
                                        provider's authorize, callback, hand-off), 8 at a time;
                                        writes one `id credential` line per connection to OUT
  connections.py serve PORT IN          one token request per connection of IN (fresh tokens)
  connections.py refresh PORT FAKE IN   one token request per connection of IN, one at a time,
                                        each asking for more life (min_ttl) than the token has,
                                        so each waits for its refresh; subtracts what the fake
                                        itself spent on each refresh (its GET /_stats) from what
                                        the caller waited

Prints `FILLED n=.. secs=.. failures=..`, `SERVED ok=.. failures=..`, or `REFRESH n=.. wait_p50_ms=.. wait_p99_ms=..
provider_p50_ms=.. extra_p50_ms=.. extra_p99_ms=.. failures=..`.
The broker token comes from BROKER_TOKEN; the address the fake confirms from SIGNIN_EMAIL.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import signins  # noqa: E402  (the same sign-in client, with "keep")

signins.SESSION_BODY = json.dumps(
    {"provider": signins.PROVIDER, "expected_email": signins.EMAIL, "keep": True})


class Keeper(signins.Client):
    def keep(self):
        handle, callback, cookie = self.reach_provider()
        r = self.request("callback", "relay", "GET", callback, None, {"Cookie": cookie})
        self.expect("callback", r, 200)
        r = self.request("token", "relay", "GET", f"/token/{handle}", None, signins.TOKEN_HEADERS)
        self.expect("token", r, 200)
        kept = json.loads(r.body)["connection"]
        return kept["id"], kept["credential"]


def fill(port, n, out):
    kept, failures, lock = [], [0], threading.Lock()
    todo = iter(range(n))

    def worker():
        client = Keeper(port, timeout=30)
        while True:
            with lock:
                if next(todo, None) is None:
                    break
            try:
                pair = client.keep()
                with lock:
                    kept.append(pair)
            except signins.StepFailed:
                with lock:
                    failures[0] += 1
        client.close()

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out, "w") as f:
        for cid, credential in kept:
            f.write(f"{cid} {credential}\n")
    print(f"FILLED n={len(kept)} secs={time.monotonic() - start:.1f} failures={failures[0]}",
          flush=True)


def ask_each(port, path, body="{}"):
    """One token request per connection of `path`, in order: (milliseconds waited, status)."""
    pairs = [line.split() for line in open(path) if line.strip()]
    relay = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for cid, credential in pairs:
        headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
        t0 = time.perf_counter()
        relay.request("POST", f"/connections/{urllib.parse.quote(cid)}/token", body, headers)
        r = relay.getresponse()
        r.read()
        yield (time.perf_counter() - t0) * 1000, r.status


def serve(port, path):
    statuses = [status for _, status in ask_each(port, path)]
    ok = statuses.count(200)
    print(f"SERVED ok={ok} failures={len(statuses) - ok}", flush=True)


def refresh(port, fake_port, path):
    waited, failures = [], 0
    for ms, status in ask_each(port, path, json.dumps({"min_ttl": 86400})):
        if status == 200:
            waited.append(ms)
        else:
            failures += 1
    fake = http.client.HTTPConnection("127.0.0.1", fake_port, timeout=10)
    fake.request("GET", "/_stats")
    provider = json.loads(fake.getresponse().read())["refresh_ms"][-len(waited):]
    # One caller, one refresh at a time: the fake's n-th refresh is the n-th request's.
    extra = sorted(w - p for w, p in zip(waited, provider))
    pct = signins.percentile
    print(f"REFRESH n={len(waited)} wait_p50_ms={pct(sorted(waited), 50):.2f} "
          f"wait_p99_ms={pct(sorted(waited), 99):.2f} "
          f"provider_p50_ms={pct(sorted(provider), 50):.2f} "
          f"extra_p50_ms={pct(extra, 50):.2f} extra_p99_ms={pct(extra, 99):.2f} "
          f"failures={failures}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "fill":
        fill(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "refresh":
        refresh(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(__doc__)
