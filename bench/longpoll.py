#!/usr/bin/env python3
"""Latency from a callback landing to the long-polling client receiving it.

  longpoll.py PORT [ITERATIONS]

Per iteration, with a unique state S:
  1. a waiter thread sends GET /api/callback/S?wait=30 on its own keep-alive connection;
  2. the main thread sleeps 50 ms so the request is surely parked, then sends
     GET /callback?code=C&state=S on a second connection and reads the answer;
  3. the waiter reads its answer, which must be 200 with auth_code C.
Times are perf_counter() values taken the moment each whole answer has been read:
  from_callback_response = waiter answer - callback answer   (the figure asked for)
  from_callback_sent     = waiter answer - callback request written
The relay wakes the waiter *before* it writes the callback's own answer, so the first figure is
often slightly negative; both are reported. Prints one line `LONGPOLL ...` (milliseconds).
"""

import sys
import threading
import time

from httpc import Conn


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def main():
    port = int(sys.argv[1])
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    tag = f"{time.time_ns():x}"
    # The waiter's socket timeout bounds an iteration whose answer never comes.
    waiter_conn, cb_conn = Conn(port, timeout=5.0), Conn(port, timeout=5.0)
    from_response, from_sent, failures = [], [], []

    for i in range(iterations):
        state, code = f"lp-{tag}-{i}", f"code-{tag}-{i}"
        sent = threading.Event()
        got = {}

        def wait():
            try:
                waiter_conn.send(f"/api/callback/{state}?wait=30")
                sent.set()
                status, body, _, done = waiter_conn.read_response()
                got.update(status=status, body=body, done=done)
            except OSError as e:
                got.update(error=repr(e))
                sent.set()

        t = threading.Thread(target=wait)
        t.start()
        sent.wait()
        time.sleep(0.05)  # the long-poll is parked well before this ends
        t_sent = time.perf_counter()
        cb_conn.send(f"/callback?code={code}&state={state}")
        cb_status, _, _, t_cb = cb_conn.read_response()
        t.join()
        if "error" in got or cb_status != 200 or got["status"] != 200 \
                or f'"auth_code":"{code}"'.encode() not in got["body"]:
            failures.append((i, cb_status, got.get("status"), got.get("error")))
            if "error" in got:  # the waiter connection is unusable now
                waiter_conn.close()
                waiter_conn = Conn(port, timeout=5.0)
            continue
        from_response.append((got["done"] - t_cb) * 1000)
        from_sent.append((got["done"] - t_sent) * 1000)

    waiter_conn.close()
    cb_conn.close()
    a, b = sorted(from_response), sorted(from_sent)
    print(
        "LONGPOLL n=%d failures=%d "
        "resp_p50=%.3f resp_p99=%.3f resp_max=%.3f resp_min=%.3f "
        "sent_p50=%.3f sent_p99=%.3f sent_max=%.3f first_failures=%s"
        % (len(a), len(failures),
           percentile(a, 50), percentile(a, 99), a[-1] if a else float("nan"),
           a[0] if a else float("nan"),
           percentile(b, 50), percentile(b, 99), b[-1] if b else float("nan"),
           failures[:3])
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
