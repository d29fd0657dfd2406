#!/usr/bin/env python3
"""Holds COUNT half-open "slow loris" connections to the relay.

  slow_clients.py PORT [COUNT] [INTERVAL_SECS] [MAX_SECS]

Each connection sends a partial request (`GET /health HTTP/1.1\\r\\nHost: x\\r\\n`, no blank
line), then one more header byte every INTERVAL seconds (default 3: under the relay's 10 s read
timeout, so the relay must keep them). Prints `READY open=N` once all are connected, keeps
trickling until SIGUSR1/SIGTERM (or MAX_SECS, default 120, as a safety net), then checks every
connection and prints
  SLOW open=... closed=... answered=... send_failed=... count=...
open: the server neither closed it nor answered; closed: the server closed it (EOF or reset);
answered: the server sent something (an error status, say) before the request was complete.
"""

import errno
import signal
import socket
import sys
import time

PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"
# The trickled bytes: one header line sent a byte at a time, never ending it.
TRICKLE = b"X-Slow: " + b"a" * 1000

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def check(sock):
    """'open', 'closed' or 'answered', without blocking."""
    # Non-blocking mode proper: with a timeout set, Python would wait for data (and report a
    # timeout) instead of passing EAGAIN through.
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    return "answered" if data else "closed"


def main():
    port = int(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    max_secs = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        s.sendall(PARTIAL)
        socks.append(s)
    print(f"READY open={len(socks)}", flush=True)

    started = time.monotonic()
    failed = set()  # indexes whose send failed (the server closed them)
    sent = 0
    next_tick = started + interval
    while not stop and time.monotonic() - started < max_secs:
        now = time.monotonic()
        if now < next_tick:
            time.sleep(min(0.1, next_tick - now))
            continue
        next_tick += interval
        byte = TRICKLE[sent % len(TRICKLE):sent % len(TRICKLE) + 1]
        sent += 1
        for i, s in enumerate(socks):
            if i in failed:
                continue
            try:
                s.send(byte)
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                failed.add(i)

    states = [check(s) for s in socks]
    print(
        "SLOW open=%d closed=%d answered=%d send_failed=%d count=%d trickled_bytes=%d held_secs=%.1f"
        % (states.count("open"), states.count("closed"), states.count("answered"),
           len(failed), count, sent, time.monotonic() - started),
        flush=True,
    )
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
