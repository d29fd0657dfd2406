#!/usr/bin/env python3
"""Issue 17's figures for the relay on Redis, printed as a Markdown table (bench/topologies.sh
builds the release binary and runs this with its path):

  1. callback-then-retrieve pairs (bench/pairs.lua, wrk -tN -cN) on one replica on one Redis,
     as a share of the same replica keeping its state in memory;
  2. three replicas at once (three wrk -t2 -c2, one per replica) on one Redis, on Sentinel (a
     primary, a replica, three sentinels) and on a Redis Cluster (three primaries with a
     replica each): pairs/s and the worst p99 of the three;
  3. the primary killed (SIGKILL) under a probe per replica (a callback then its retrieval,
     again and again): when the sentinels (or the cluster) promoted a replica, and on every
     replica the first callback stored and the first code taken after the kill. The killed
     server is started again (empty, no persistence, as a pod comes back) once a replica was
     promoted; with OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED=1 (the default) takes resume once it is
     back as a replica, with 0 as soon as the new primary is found.

Everything on 127.0.0.1 free ports, in a temporary directory, every process ended on exit.
Environment: PAIRS_SECS (10), PAIRS_CONNS (8, the single-replica runs).
"""

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = sys.argv[1]
SECS = int(os.environ.get("PAIRS_SECS", "10"))
CONNS = int(os.environ.get("PAIRS_CONNS", "8"))
KEY = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
HERE = os.path.dirname(os.path.abspath(__file__))
DIR = tempfile.mkdtemp(prefix="oauth-relay-topologies-")
PROCS = []


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    subprocess.run(["rm", "-rf", DIR], check=False)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what, check, secs=120):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


def cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), "--raw", *args],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip()


class Server:
    """A redis-server (or redis-sentinel) process that can be killed and started again."""

    def __init__(self, program, port, args):
        self.program, self.port, self.args, self.proc = program, port, args, None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([self.program, *self.args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        PROCS.append(self.proc)
        until(f"{self.program} on {self.port}", lambda: cli(self.port, "PING") == "PONG")

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def data_args(port, extra=()):
    own = os.path.join(DIR, f"node-{port}")
    os.makedirs(own, exist_ok=True)
    return ["--port", str(port), "--bind", "127.0.0.1", "--dir", own, "--save", "",
            "--appendonly", "no", "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0", *extra]


def standalone():
    port = free_port()
    server = Server("redis-server", port, data_args(port))
    return {"OAUTH_RELAY_REDIS_URL": f"redis://127.0.0.1:{port}/0"}, server


class SentinelSet:
    def __init__(self):
        self.name = "bench"
        primary, replica = free_port(), free_port()
        self.data = {
            primary: Server("redis-server", primary, data_args(primary)),
            replica: Server("redis-server", replica,
                            data_args(replica, ["--replicaof", "127.0.0.1", str(primary)])),
        }
        self.sentinels = []
        for _ in range(3):
            port = free_port()
            conf = os.path.join(DIR, f"sentinel-{port}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {DIR}\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {primary} 2\n"
                        f"sentinel down-after-milliseconds {self.name} 1000\n"
                        f"sentinel failover-timeout {self.name} 10000\n"
                        f"sentinel parallel-syncs {self.name} 1\n")
            self.sentinels.append(Server("redis-sentinel", port, [conf]))
        until("the sentinels to know each other and the replica", self.watched)

    def primary(self):
        answers = {cli(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name).split("\n")[-1]
                   for s in self.sentinels}
        return int(answers.pop()) if len(answers) == 1 and "" not in answers else None

    def watched(self):
        p = self.primary()
        if p is None:
            return False
        replica = next(n for port, n in self.data.items() if port != p)
        if "master_link_status:up" not in cli(replica.port, "INFO", "replication"):
            return False
        for s in self.sentinels:
            f = cli(s.port, "SENTINEL", "MASTER", self.name).split("\n")
            fields = dict(zip(f[0::2], f[1::2]))
            if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "1":
                return False
        return True

    def env(self):
        return {"OAUTH_RELAY_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
                "OAUTH_RELAY_REDIS_MASTER_NAME": self.name}

    def kill_primary(self):
        old = self.primary()
        self.data[old].kill()
        return old

    def promoted(self, old):
        p = self.primary()
        return p is not None and p != old and cli(p, "ROLE").split("\n")[0] == "master"

    def restart(self, old):
        self.data[old].start()


class Cluster:
    def __init__(self):
        self.nodes = {}
        for _ in range(6):
            port, bus = free_port(), free_port()
            self.nodes[port] = Server("redis-server", port, data_args(port, [
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(DIR, f"nodes-{port}.conf"),
                "--cluster-port", str(bus), "--cluster-node-timeout", "1000"]))
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.nodes],
                        "--cluster-replicas", "1", "--cluster-yes"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        until("the cluster to be ok", self.ok)

    def ok(self):
        for port, n in self.nodes.items():
            if n.proc.poll() is None and "cluster_state:ok" not in cli(port, "CLUSTER", "INFO"):
                return False
        return True

    def env(self):
        return {"OAUTH_RELAY_REDIS_CLUSTER_NODES": ",".join(f"127.0.0.1:{p}" for p in self.nodes)}

    def owner(self, slot):
        for port, n in self.nodes.items():
            if n.proc.poll() is not None:
                continue
            for line in cli(port, "CLUSTER", "NODES").split("\n"):
                f = line.split()
                if len(f) < 9 or "master" not in f[2] or "fail" in f[2]:
                    continue
                for r in f[8:]:
                    if r.startswith("["):
                        continue
                    a, _, b = r.partition("-")
                    if int(a) <= slot <= int(b or a):
                        return int(f[1].split(":")[1].split("@")[0])
        return None

    def kill_primary(self):
        old = self.owner(RELAY_SLOT)
        self.nodes[old].kill()
        return old

    def promoted(self, old):
        owner = self.owner(RELAY_SLOT)
        return owner is not None and owner != old and self.ok()

    def restart(self, old):
        self.nodes[old].start()


def crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


# The slot of the relay's keys, `{oauth-relay:relay}:...` (src/store/redis.rs).
RELAY_SLOT = crc16(b"oauth-relay:relay") % 16384


def relay(env):
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_")}
    full.update({"OAUTH_RELAY_ENCRYPTION_KEY": KEY,
                 "OAUTH_RELAY_MAX_PENDING_PER_CLIENT": "1000000000",
                 "OAUTH_RELAY_MAX_PENDING": "1000000"})
    full.update(env)
    log = open(os.path.join(DIR, f"relay-{port}.log"), "w")
    p = subprocess.Popen([BIN, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warn"],
                         env=full, stdout=subprocess.DEVNULL, stderr=log)
    PROCS.append(p)
    until(f"the relay on {port} to be ready", lambda: status(port, "/ready") == 200, 30)
    return port, p


def stop(relays):
    for _, p in relays:
        p.kill()
        p.wait()


def status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def wrk(ports, threads):
    """Pairs on every port at once; total pairs/s, the worst p99 (ms), non-200 answers."""
    procs = []
    for port in ports:
        env = dict(os.environ, PAIRS_PREFIX=f"t{port}-")
        procs.append(subprocess.Popen(
            ["wrk", f"-t{threads}", f"-c{threads}", f"-d{SECS}s", "--latency",
             "-s", os.path.join(HERE, "pairs.lua"), f"http://127.0.0.1:{port}/"],
            env=env, stdout=subprocess.PIPE, text=True))
    pairs, p99, bad = 0.0, 0.0, 0
    for p in procs:
        out = p.communicate()[0]
        pairs += float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1)) / 2
        m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.M)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        p99 = max(p99, float(m.group(1)) * scale)
        bad += int(re.search(r"non200=(\d+)", out).group(1))
    return pairs, p99, bad


def failover(topology, env):
    """Kills the primary under a probe per replica; when things came back."""
    relays = [relay(env) for _ in range(3)]
    stop_flag = threading.Event()
    seen = [[] for _ in relays]  # (began, answered, callback status, take status)

    def probe(i, port):
        n = 0
        while not stop_flag.is_set():
            n += 1
            state = f"fo{port}-{n}-{time.time_ns()}"
            # When the pair began: only pairs begun after the kill count.
            began = time.monotonic()
            cb = status(port, f"/callback?code=c{n}&state={state}")
            take = status(port, f"/api/callback/{state}") if cb == 200 else 0
            seen[i].append((began, time.monotonic(), cb, take))
            time.sleep(0.01)

    threads = [threading.Thread(target=probe, args=(i, port), daemon=True)
               for i, (port, _) in enumerate(relays)]
    for t in threads:
        t.start()
    time.sleep(2)
    # (Finding the primary asks the sentinels first: the clock starts at the kill itself.)
    old = topology.kill_primary()
    killed_at = time.monotonic()
    until("a replica to be promoted", lambda: topology.promoted(old))
    promoted = time.monotonic() - killed_at
    topology.restart(old)
    restarted = time.monotonic() - killed_at

    def first(i, ok):
        """When the first pair begun after the kill that passed `ok` was answered."""
        return next((done - killed_at for began, done, cb, take in list(seen[i])
                     if began > killed_at and ok(cb, take)), None)

    until("a take on every replica", lambda: all(first(i, lambda cb, take: take == 200) is not None
                                                  for i in range(3)))
    stop_flag.set()
    for t in threads:
        t.join()
    stop(relays)
    stored = [first(i, lambda cb, take: cb == 200) for i in range(3)]
    taken = [first(i, lambda cb, take: take == 200) for i in range(3)]
    return promoted, restarted, stored, taken


def s(x):
    return f"{x:.2f} s"


def main():
    rows = []
    load = os.getloadavg()[0]
    # 1. One replica: Redis vs memory.
    mem = relay({})
    m_pairs, m_p99, m_bad = wrk([mem[0]], CONNS)
    stop([mem])
    env, server = standalone()
    one = relay(env)
    r_pairs, r_p99, r_bad = wrk([one[0]], CONNS)
    stop([one])
    rows.append((f"one replica, pairs/s (wrk -t{CONNS} -c{CONNS}): Redis / memory",
                 f"{r_pairs:,.0f} / {m_pairs:,.0f}: **{100 * r_pairs / m_pairs:.0f} %**",
                 f"p99 {r_p99:.2f} / {m_p99:.2f} ms; non-200 {r_bad} / {m_bad}"))
    # 2. Three replicas on each topology.
    three = [relay(env) for _ in range(3)]
    pairs, p99, bad = wrk([p for p, _ in three], 2)
    stop(three)
    server.kill()
    rows.append(("3 replicas on one Redis: pairs/s, worst p99", f"**{pairs:,.0f}/s**, {p99:.2f} ms", f"non-200 {bad}"))
    sentinel = SentinelSet()
    three = [relay(sentinel.env()) for _ in range(3)]
    pairs, p99, bad = wrk([p for p, _ in three], 2)
    stop(three)
    rows.append(("3 replicas on Sentinel (1 primary + 1 replica): pairs/s, worst p99",
                 f"**{pairs:,.0f}/s**, {p99:.2f} ms", f"non-200 {bad}; every take waits for the replica (WAIT)"))
    cluster = Cluster()
    three = [relay(cluster.env()) for _ in range(3)]
    pairs, p99, bad = wrk([p for p, _ in three], 2)
    stop(three)
    rows.append(("3 replicas on a Cluster (3 primaries + 3 replicas): pairs/s, worst p99",
                 f"**{pairs:,.0f}/s**, {p99:.2f} ms", f"non-200 {bad}; every take waits for the replica (WAIT)"))
    # 3. Failovers.
    for name, topology, acked in [("Sentinel", sentinel, "1"), ("Sentinel", sentinel, "0"),
                                  ("Cluster", cluster, "1")]:
        if name == "Sentinel":
            until("the sentinel set to be whole", topology.watched)
        else:
            until("the cluster to be whole", topology.ok)
        env = dict(topology.env(), OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED=acked)
        promoted, restarted, stored, taken = failover(topology, env)
        rows.append((f"{name}, primary SIGKILLed, OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED={acked}: "
                     "first callback stored / first code taken after the kill, per replica",
                     " / ".join(s(x) for x in stored) + "; " + " / ".join(s(x) for x in taken),
                     f"replica promoted after {s(promoted)}; the killed server started again (empty) "
                     f"at {s(restarted)}"))
    print(f"# oauth-relay on Redis topologies ({os.cpu_count()} cores shared with every server and "
          f"load generator; load average {load:.1f} at the start; pairs runs {SECS} s)\n")
    print("| Figure | Result | Notes |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
