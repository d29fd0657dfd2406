#!/usr/bin/env python3
"""A well-behaved client timing every request itself (standard library only, 127.0.0.1 only):

  probe.py PORT SECS [PATH]

Sends GET PATH (default /health) on one keep-alive connection, one request at a time, for SECS
seconds, timing each from just before it is sent to when its whole answer is in hand; prints
  PROBE n=... rps=... p50_ms=... p99_ms=... p999_ms=... max_ms=... busy=... non200=...
busy: the sum of the latencies over the wall time; with one request at a time it cannot exceed
1 (Little's law), which is what makes these figures trustworthy where wrk 4.1's are not (its
latency statistics, with one connection, add up to several times the wall time). The client's
own time (Python, tens of microseconds a request) is included in every figure.
"""

import sys
import time

from httpc import Conn


def main(argv):
    port, secs = int(argv[1]), float(argv[2])
    path = argv[3] if len(argv) > 3 else "/health"
    conn = Conn(port, timeout=30.0)
    times, non200 = [], 0
    started = time.perf_counter()
    end = started + secs
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        conn.send(path)
        status, _, _, done = conn.read_response()
        times.append(done - t0)
        if status != 200:
            non200 += 1
    wall = time.perf_counter() - started
    conn.close()
    times.sort()
    n = len(times)

    def pct(p):
        return times[min(n - 1, int(p / 100.0 * n))] * 1000

    print(f"PROBE n={n} rps={n / wall:.0f} p50_ms={pct(50):.3f} p99_ms={pct(99):.3f} "
          f"p999_ms={pct(99.9):.3f} max_ms={times[-1] * 1000:.3f} busy={sum(times) / wall:.2f} "
          f"non200={non200}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
