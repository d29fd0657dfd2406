#!/usr/bin/env python3
"""One client flooding the relay, for bench/front.sh's `floods` section (standard library only,
127.0.0.1 only):

  flood.py PORT MODE COUNT [--from ADDR[,ADDR...]] [--rate N] [--secs S]

Keeps COUNT connections to 127.0.0.1:PORT open, each sending what MODE says, and opens a new
one for every one the relay closes or refuses (a sustained flood, not a burst), at most N new
connections a second (default 1000). MODE:
  head      half-sent heads: `GET /health HTTP/1.1`, a Host line and `X-Partial: `, no more
  body      half-sent bodies: `POST /callback` with `Content-Length: 1` and no body
  idle      one `GET /health` answered, then nothing (an idle keep-alive connection)
  longpoll  `GET /api/callback/<distinct state>?wait=60`
The connections come from ADDR (default 127.0.0.2; the whole of 127.0.0.0/8 is loopback on
Linux, so the relay sees another client than a tool on 127.0.0.1); several addresses, comma-
separated, are used in turn (several clients).

Prints `READY open=N secs=S` once COUNT connections have been opened (or 30 s have passed),
then floods until SIGUSR1/SIGTERM (or S seconds, default 120, as a safety net) and prints
  FLOOD mode=... count=... opened=... open=... closed=... answers=429:12,503:3,... secs=...
open: connections still open and silent at the end (for idle, answered once and still open);
closed: closed by the relay without an answer (shed); answers: statuses the relay answered with
before closing (a refusal), and for idle the 200s.
"""

import errno
import resource
import selectors
import signal
import socket
import struct
import sys
import time

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


OPENINGS = {
    "head": b"GET /health HTTP/1.1\r\nHost: flood\r\nX-Partial: ",
    "body": b"POST /callback HTTP/1.1\r\nHost: flood\r\nContent-Length: 1\r\n\r\n",
    "idle": b"GET /health HTTP/1.1\r\nHost: flood\r\n\r\n",
}


def opening(mode, n):
    if mode == "longpoll":
        return b"GET /api/callback/flood-%d?wait=60 HTTP/1.1\r\nHost: flood\r\n\r\n" % n
    return OPENINGS[mode]


def main(argv):
    if len(argv) < 4 or argv[2] not in ("head", "body", "idle", "longpoll"):
        print(__doc__, file=sys.stderr)
        return 2
    port, mode, count = int(argv[1]), argv[2], int(argv[3])
    sources, rate, max_secs = ["127.0.0.2"], 1000.0, 120.0
    rest = argv[4:]
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--from":
            sources = value.split(",")
        elif flag == "--rate":
            rate = float(value)
        elif flag == "--secs":
            max_secs = float(value)
        else:
            raise SystemExit(f"unknown flag {flag}")
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 64), hard))

    sel = selectors.DefaultSelector()
    # Per socket: [state, bytes read, n]; state "connecting", "sent", "answered" (idle's 200,
    # held from then on) or "counted" (an answer counted; being replaced).
    conns = {}
    opened, closed, answers, n = 0, 0, {}, 0
    started = time.monotonic()
    ready = False
    budget, last = 0.0, started

    def open_one():
        nonlocal opened, n
        n += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        # Closed with a reset: thousands of closes a second would otherwise leave as many
        # ports in TIME_WAIT, and a flood runs out of them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            s.bind((sources[n % len(sources)], 0))
            err = s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            return False
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return False
        opened += 1
        conns[s] = ["connecting", b"", n]
        sel.register(s, selectors.EVENT_WRITE)
        return True

    def forget(s):
        sel.unregister(s)
        s.close()
        del conns[s]

    while not stop and time.monotonic() - started < max_secs:
        now = time.monotonic()
        budget = min(rate, budget + (now - last) * rate)
        last = now
        while len(conns) < count and budget >= 1:
            budget -= 1
            if not open_one():
                break
        if not ready and (opened >= count or now - started > 30):
            ready = True
            print(f"READY open={len(conns)} secs={now - started:.1f}", flush=True)
        for key, _ in sel.select(timeout=0.01):
            s = key.fileobj
            state = conns[s]
            if state[0] == "connecting":
                try:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        raise OSError("connect failed")
                    s.send(opening(mode, state[2]))
                except OSError:
                    closed += 1
                    forget(s)
                    continue
                state[0] = "sent"
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                # Closed by the relay: shed, or after an answer already counted.
                if state[0] != "counted":
                    closed += 1
                forget(s)
                continue
            state[1] += data
            if state[0] == "sent" and b"\r\n\r\n" in state[1]:
                status = status_of(state[1])
                answers[status] = answers.get(status, 0) + 1
                if mode == "idle" and status == "200":
                    # An idle keep-alive connection from here on.
                    state[0] = "answered"
                else:
                    # A refusal: replaced by a new connection, as a flood would.
                    state[0] = "counted"
                    forget(s)

    still = sum(1 for st in conns.values() if st[0] == "answered" or
                (st[0] == "sent" and not st[1]))
    listing = ",".join(f"{k}:{v}" for k, v in sorted(answers.items())) or "-"
    print(f"FLOOD mode={mode} count={count} sources={len(sources)} opened={opened} open={still} "
          f"closed={closed} answers={listing} secs={time.monotonic() - started:.1f}", flush=True)
    for s in list(conns):
        s.close()
    return 0


def status_of(raw):
    parts = raw.split(b"\r\n", 1)[0].split()
    return parts[1].decode(errors="replace") if len(parts) > 1 else "?"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
