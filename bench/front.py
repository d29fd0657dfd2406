#!/usr/bin/env python3
"""Helpers for bench/front.sh (standard library only, 127.0.0.1 only):

  front.py hold PORT COUNT MODE [MAX_SECS]
      Opens COUNT connections to the relay and holds them until SIGUSR1/SIGTERM (or MAX_SECS,
      default 120, as a safety net). MODE says what each connection sends first:
        none      nothing (a connection that never speaks)
        request   one `GET /health` whose answer is read, then nothing (an idle keep-alive);
                  every request is sent before the answers are read, to connect quickly
        partial   part of a request line, `GET /health HTT` (a half-open client)
        header    a request head of HEADER_BYTES (env, default 15360) bytes without the blank
                  line that would end it (a connection holding a nearly full header buffer)
        longpoll  `GET /api/callback/<distinct state>?wait=60` (a parked long-poll)
      Prints `READY open=N connect_secs=S` once all are connected and have sent their bytes,
      then at the end checks each one without blocking and prints
        HOLD open=... closed=... answered=... count=... held_secs=... answer_statuses=503:12,...
      open: neither closed nor answered (for longpoll: still parked); closed: the server closed
      it; answered: the server sent something (an error status, a long-poll answer).
  front.py fill-long PORT COUNT [STATE_BYTES] [CODE_BYTES] [CONNECTIONS]
      Stores COUNT pending callbacks whose states are exactly STATE_BYTES (default 1024) long
      and codes CODE_BYTES (default 100); prints `FILL sent=... ok=... non200=... secs=...`.
  front.py wait-fds PID COUNT [SECS]
      Waits up to SECS (default 15) until process PID has at least COUNT open descriptors;
      prints the count reached (exit 1 if short), so RSS is read after the relay has accepted
      every held connection.
  front.py fds PID
      Prints how many descriptors PID has open.

The soft RLIMIT_NOFILE is raised to the hard limit, since the holders keep thousands of sockets.
"""

import os
import resource
import signal
import socket
import sys
import threading
import time

from httpc import Conn

HOST = "127.0.0.1"
stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            print(f"RLIMIT_NOFILE hard limit {hard} is below the {need} needed", file=sys.stderr)


def header_head(total):
    """A request head of exactly `total` bytes with no terminating blank line."""
    head = b"GET /health HTTP/1.1\r\nHost: bench\r\n"
    i = 0
    while len(head) < total:
        prefix = b"X-Fill-%d: " % i
        room = total - len(head) - len(prefix) - 2
        if room < 1:
            # Too little left for another header line: lengthen the last one instead.
            head = head[:-2] + b"a" * (total - len(head)) + b"\r\n"
            break
        head += prefix + b"a" * min(1000, room) + b"\r\n"
        i += 1
    return head


def opening_bytes(mode, tag, i, header_bytes):
    if mode == "none":
        return b""
    if mode == "request":
        return b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
    if mode == "partial":
        return b"GET /health HTT"
    if mode == "header":
        return header_head(header_bytes)
    if mode == "longpoll":
        return b"GET /api/callback/hold-%s-%d?wait=60 HTTP/1.1\r\nHost: bench\r\n\r\n" % (
            tag.encode(), i)
    raise SystemExit(f"unknown mode {mode!r}")


def check(sock, statuses):
    """'open', 'closed' or 'answered', without blocking; counts answers' statuses in `statuses`."""
    sock.setblocking(False)
    try:
        data = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    if not data:
        return "closed"
    parts = data.split()
    status = parts[1].decode(errors="replace") if len(parts) > 1 else "?"
    statuses[status] = statuses.get(status, 0) + 1
    return "answered"


def hold(port, count, mode, max_secs):
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    raise_nofile(count + 256)
    header_bytes = int(os.environ.get("HEADER_BYTES", 15 * 1024))
    tag = f"{time.time_ns():x}"
    socks, failed_connect, bad_answer = [], 0, 0
    started = time.monotonic()
    conns = []  # request mode: answers are read once every request is out, not one by one
    for i in range(count):
        if stop:
            break
        try:
            if mode == "request":
                c = Conn(port, timeout=10.0)
                c.send("/health")
                conns.append(c)
                continue
            s = socket.create_connection((HOST, port), timeout=10.0)
            data = opening_bytes(mode, tag, i, header_bytes)
            if data:
                s.sendall(data)
        except OSError as e:
            failed_connect += 1
            if failed_connect <= 3:
                print(f"connection {i}: {e!r}", file=sys.stderr)
            continue
        socks.append(s)
    for c in conns:
        try:
            status, _, _, _ = c.read_response()
            if status != 200 or c.buf:
                bad_answer += 1
        except OSError as e:
            bad_answer += 1
            if bad_answer <= 3:
                print(f"reading an answer: {e!r}", file=sys.stderr)
        socks.append(c.sock)
    connect_secs = time.monotonic() - started
    print(f"READY open={len(socks)} connect_secs={connect_secs:.1f} failed={failed_connect} "
          f"bad_answer={bad_answer}", flush=True)

    held_from = time.monotonic()
    while not stop and time.monotonic() - held_from < max_secs:
        time.sleep(0.1)

    statuses = {}
    states = [check(s, statuses) for s in socks]
    answered = ",".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-"
    print("HOLD open=%d closed=%d answered=%d failed_connect=%d count=%d held_secs=%.1f "
          "answer_statuses=%s" % (
              states.count("open"), states.count("closed"), states.count("answered"),
              failed_connect, count, time.monotonic() - held_from, answered), flush=True)
    for s in socks:
        s.close()
    return 0


def fill_worker(port, start, stop_at, tag, state_bytes, code_bytes, results, index):
    ok, bad = 0, {}
    conn = Conn(port, timeout=10.0)
    try:
        for i in range(start, stop_at):
            prefix = f"long-{tag}-{i}-"
            state = prefix + "s" * (state_bytes - len(prefix))
            cprefix = f"code-{i}-"
            code = cprefix + "c" * (code_bytes - len(cprefix))
            status, _ = conn.get(f"/callback?code={code}&state={state}")
            if status == 200:
                ok += 1
            else:
                bad[status] = bad.get(status, 0) + 1
    finally:
        conn.close()
    results[index] = (ok, bad)


def fill_long(port, count, state_bytes, code_bytes, nconn):
    tag = f"{time.time_ns():x}"
    results = [None] * nconn
    bounds = [count * k // nconn for k in range(nconn + 1)]
    started = time.perf_counter()
    threads = [threading.Thread(target=fill_worker, args=(
        port, bounds[k], bounds[k + 1], tag, state_bytes, code_bytes, results, k))
        for k in range(nconn)]
    for t in threads:
        t.start()
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
    print(f"FILL sent={count} ok={ok} non200={sum(bad.values())} statuses={bad} "
          f"state_bytes={state_bytes} code_bytes={code_bytes} secs={secs:.1f}")
    return 0 if ok == count else 1


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid, count, secs):
    deadline = time.monotonic() + secs
    n = fds(pid)
    while n < count and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fds(pid)
    print(n)
    return 0 if n >= count else 1


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "hold":
        max_secs = float(argv[5]) if len(argv) > 5 else 120.0
        return hold(int(argv[2]), int(argv[3]), argv[4], max_secs)
    if cmd == "fill-long":
        state_bytes = int(argv[4]) if len(argv) > 4 else 1024
        code_bytes = int(argv[5]) if len(argv) > 5 else 100
        nconn = int(argv[6]) if len(argv) > 6 else 4
        return fill_long(int(argv[2]), int(argv[3]), state_bytes, code_bytes, nconn)
    if cmd == "wait-fds":
        return wait_fds(int(argv[2]), int(argv[3]), float(argv[4]) if len(argv) > 4 else 15.0)
    if cmd == "fds":
        print(fds(int(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
