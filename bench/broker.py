#!/usr/bin/env python3
"""Broker figures that need more than wrk:

  broker.py stuck PORT N          start N sign-ins whose token exchange hangs (slow_idp.py), print
                                  how many were in flight, wait for all, print their statuses
  broker.py fill PORT N           create N sessions on one keep-alive connection

The broker token comes from BROKER_TOKEN.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

TOKEN = os.environ["BROKER_TOKEN"]
EMAIL = "ana.silva@contoso.example"


def create(conn):
    conn.request("POST", "/m365/sessions", json.dumps({"expected_email": EMAIL}),
                 {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"create answered {r.status}: {body[:200]!r}")
    return json.loads(body)


def oauth_state(conn, session):
    """Opens the link as the person's browser: the OAuth state, the nonce, and the binding
    cookie the callback must bring back."""
    path = urllib.parse.urlsplit(session["login_url"]).path
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    location = r.getheader("Location")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    cookie = r.getheader("Set-Cookie").split(";")[0]
    # The nonce rides in the code to bench/slow_idp.py, which puts it in the id_token.
    return query["state"][0], query["nonce"][0], cookie


def stuck(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    states = [oauth_state(conn, create(conn)) for _ in range(n)]
    statuses = []

    def sign_in(opened):
        state, nonce, cookie = opened
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", f"/m365/callback?code=bench.{urllib.parse.quote(nonce)}&state={urllib.parse.quote(state)}",
                  headers={"Cookie": cookie})
        r = c.getresponse()
        r.read()
        statuses.append(r.status)

    threads = [threading.Thread(target=sign_in, args=(s,)) for s in states]
    for t in threads:
        t.start()
    time.sleep(0.5)
    print(f"IN_FLIGHT {n - len(statuses)}", flush=True)
    for t in threads:
        t.join()
    print(f"DONE {len(statuses)} ok={statuses.count(200)} other={[s for s in statuses if s != 200]}",
          flush=True)


def fill(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    for _ in range(n):
        create(conn)
    print(f"FILLED {n} in {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    {"stuck": stuck, "fill": fill}[sys.argv[1]](int(sys.argv[2]), int(sys.argv[3]))
