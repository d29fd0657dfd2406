#!/usr/bin/env python3
"""How long the relay takes to answer again after its file descriptors ran out and were freed.

  fd_recovery.py PORT CONNECTIONS ROUNDS

Run the relay with few descriptors (bench/run.sh uses `prlimit --nofile=64`). Each round opens
CONNECTIONS connections (far past the limit, so accept() fails with EMFILE), holds
them 3 s, closes them, and times until /health answers 200. Prints
`FDRECOVERY rounds=.. secs=[..] max=..` (max = -1 if a round never recovered within 60 s).
"""

import socket
import sys
import time
import urllib.request


def healthy(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except OSError:
        return False


def main():
    port, n, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    secs = []
    for _ in range(rounds):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        time.sleep(3)
        for s in socks:
            s.close()
        start = time.monotonic()
        while not healthy(port):
            if time.monotonic() - start > 60:
                secs.append(-1.0)
                break
            time.sleep(0.2)
        else:
            secs.append(round(time.monotonic() - start, 2))
    worst = -1.0 if -1.0 in secs else max(secs)
    print(f"FDRECOVERY rounds={rounds} secs={secs} max={worst}")


if __name__ == "__main__":
    main()
