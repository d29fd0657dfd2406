#!/usr/bin/env python3
"""The first figure of bench/topologies.py (callback-then-retrieve pairs on one replica on one
Redis as a share of the same replica in memory) for several builds side by side in one run,
alternated round by round so that whatever else the machine does falls on all of them alike:

  bench/redis_share.py NAME=BINARY [NAME=BINARY ...]
  e.g. bench/redis_share.py before=/tmp/oauth-relay-main after=target/release/oauth-relay

Each round runs, for each build, wrk -tN -cN with bench/pairs.lua for PAIRS_SECS against the
replica in memory, then against the same build on a fresh redis-server. Prints a Markdown table:
per build and round, pairs/s in memory and on Redis, the share, wrk's p99 latency (of either
request of a pair), and the CPU time (user + system, from /proc) the relay and redis-server spent
per pair, which a machine busy with other work disturbs less than the rates. Environment:
PAIRS_SECS (10), PAIRS_CONNS (8), ROUNDS (2).
"""

import os
import sys

sys.argv = [sys.argv[0], "unused", *sys.argv[1:]]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import topologies as t  # noqa: E402  (reads its binary from argv[1]; set per build below)

ROUNDS = int(os.environ.get("ROUNDS", "2"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """Seconds of CPU (user + system) the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(binary, env, server):
    """Pairs on a fresh replica: (pairs/s, p99 ms, non-200, relay and Redis µs CPU per pair)."""
    t.BIN = binary
    port, proc = t.relay(env)
    before = (cpu(proc.pid), cpu(server.proc.pid) if server else 0.0)
    pairs, p99, bad = t.wrk([port], t.CONNS)
    after = (cpu(proc.pid), cpu(server.proc.pid) if server else 0.0)
    t.stop([(port, proc)])
    n = max(pairs * t.SECS, 1)
    return pairs, p99, bad, 1e6 * (after[0] - before[0]) / n, 1e6 * (after[1] - before[1]) / n


def main():
    builds = [a.split("=", 1) for a in sys.argv[2:]]
    if not builds or any(len(b) != 2 for b in builds):
        raise SystemExit(__doc__)
    load = os.getloadavg()
    seen = {name: [] for name, _ in builds}
    for _ in range(ROUNDS):
        for name, binary in builds:
            m = run(binary, {}, None)
            env, server = t.standalone()
            r = run(binary, env, server)
            server.kill()
            seen[name].append((m, r))
    end = os.getloadavg()
    print(f"# Pairs on one replica: Redis as a share of memory ({os.cpu_count()} cores shared "
          f"with redis-server and wrk; load average {load[0]:.1f} / {load[1]:.1f} at the start, "
          f"{end[0]:.1f} / {end[1]:.1f} at the end; wrk -t{t.CONNS} -c{t.CONNS}, {t.SECS} s "
          f"per run, {ROUNDS} rounds alternated)\n")
    print("| Build | round | memory pairs/s (p99) | Redis pairs/s (p99) | Redis / memory | "
          "µs CPU per pair: relay in memory / relay on Redis + redis-server | non-200 |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in builds:
        for i, ((mp, m99, mbad, mcpu, _), (rp, r99, rbad, rcpu, scpu)) in enumerate(seen[name], 1):
            print(f"| {name} | {i} | {mp:,.0f} ({m99:.2f} ms) | {rp:,.0f} ({r99:.2f} ms) | "
                  f"**{100 * rp / mp:.0f} %** | {mcpu:.0f} / {rcpu:.0f} + {scpu:.0f} | "
                  f"{mbad} / {rbad} |")


if __name__ == "__main__":
    main()
