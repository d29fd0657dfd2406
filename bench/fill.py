#!/usr/bin/env python3
"""Stores COUNT pending callbacks with unique states, over a few keep-alive connections.

  fill.py PORT COUNT [CONNECTIONS]

Every callback must be answered 200; prints one line `FILL sent=... ok=... non200=... secs=...`
(with the first unexpected statuses) and exits non-zero if any callback failed.
wrk cannot stop after an exact number of requests (it always runs for its whole duration),
hence this script.
"""

import sys
import threading
import time

from httpc import Conn


def worker(port, start, stop, tag, results, index):
    ok, bad = 0, {}
    conn = Conn(port, timeout=10.0)
    try:
        for i in range(start, stop):
            status, _ = conn.get(f"/callback?code=code-{tag}-{i}&state=fill-{tag}-{i}")
            if status == 200:
                ok += 1
            else:
                bad[status] = bad.get(status, 0) + 1
    finally:
        conn.close()
    results[index] = (ok, bad)


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    nconn = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    tag = f"{time.time_ns():x}"
    results = [None] * nconn
    bounds = [count * k // nconn for k in range(nconn + 1)]
    started = time.perf_counter()
    threads = []
    for k in range(nconn):
        t = threading.Thread(target=worker, args=(port, bounds[k], bounds[k + 1], tag, results, k))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    secs = time.perf_counter() - started
    if any(r is None for r in results):
        print("FILL a connection failed", file=sys.stderr)
        return 1
    ok = sum(r[0] for r in results)
    bad = {}
    for _, b in results:
        for status, n in b.items():
            bad[status] = bad.get(status, 0) + n
    non200 = sum(bad.values())
    print(f"FILL sent={count} ok={ok} non200={non200} statuses={bad} secs={secs:.1f}")
    return 0 if non200 == 0 and ok == count else 1


if __name__ == "__main__":
    sys.exit(main())
