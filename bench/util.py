#!/usr/bin/env python3
"""Small helpers run.sh calls:

  util.py free-port             print a free TCP port on 127.0.0.1
  util.py wait-ready PORT [S]   wait up to S seconds (default 10) until /health answers 200
  util.py active PORT           print active_callbacks from /health
  util.py rss PID               print VmRSS of PID in KiB
"""

import socket
import sys
import time

from httpc import get_json


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status, _ = get_json(port, "/health", timeout=1.0)
            if status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "free-port":
        print(free_port())
    elif cmd == "wait-ready":
        secs = float(argv[3]) if len(argv) > 3 else 10.0
        if not wait_ready(int(argv[2]), secs):
            print("server did not answer /health", file=sys.stderr)
            return 1
    elif cmd == "active":
        status, body = get_json(int(argv[2]), "/health")
        if status != 200 or body is None:
            print(f"/health answered {status}", file=sys.stderr)
            return 1
        print(body["active_callbacks"])
    elif cmd == "rss":
        print(rss_kib(int(argv[2])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
