#!/usr/bin/env python3
"""A burst of connections: open N keep-alive connections at once, then send one GET /health on
each and time every answer.

  burst.py PORT [N] [WAIT_SECS]

The tiny_http server the relay once ran on queued part of such a burst behind keep-alive
connections (seconds late, or unanswered after 10 s); every answer should come at once.
Prints `BURST n=... answered=... within_100ms=... slowest=... unanswered=...`.
"""

import select
import socket
import sys
import time


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    wait_secs = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5.0) for _ in range(n)]
    t0 = time.monotonic()
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    pending = {s.fileno(): s for s in socks}
    times = []
    while pending and time.monotonic() - t0 < wait_secs:
        ready, _, _ = select.select(list(pending.values()), [], [], 0.1)
        for s in ready:
            s.recv(65536)
            times.append(time.monotonic() - t0)
            del pending[s.fileno()]
    for s in socks:
        s.close()
    print(
        "BURST n=%d answered=%d within_100ms=%d slowest=%.2f unanswered=%d wait=%.0f answers_s=%s"
        % (n, len(times), sum(1 for t in times if t < 0.1), max(times) if times else float("nan"),
           len(pending), wait_secs, [round(t, 2) for t in times])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
