"""HAProxy on the lab's aux host, following the pgshift agent, on the session's shared
cluster (tests/labkit.py: site.yml, whose second run changing nothing tests/delivery checks,
with the `demo` database and HAProxy on aux, port 5000 read-write (the agent's GET /primary),
5001 read-only (GET /replica)). The primary's host crashes while a client writes through 5000
every ~50 ms; last, connection floods (tests/agent/flood.py: 2,000 half-open requests and 1,000
byte-a-second clients for 60 s) against the leader's and a standby's API must cost nothing: no
fence, no failover, HAProxy keeps both, health checks answer (p99 ≤ 50 ms), the agent's threads
and descriptors stay bounded. The numbers go to target/haproxy-results.json.

The tests run in file order, each from whichever host leads.
"""

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from labkit import (
    AUX, IPS, PSQL, RO, ROOT, RW, Reader, Writer, cluster_status, haproxy_states, psql, lab, member, needs, on, roles, streaming_from, wait_for, write_results,
)

RESULTS = ROOT / "target" / "haproxy-results.json"

pytestmark = needs(etcd=True, haproxy=True)

class ApiWatch:
    """Polls GET /primary on one host's agent every 20 ms, as HAProxy's check does, and
    records when it first answered 200."""

    def __init__(self, host):
        self.url = f"http://{IPS[host]}:8008/primary"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # lab only, no proxy
        self.first_200 = None
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop_flag.is_set() and self.first_200 is None:
            try:
                with self.opener.open(self.url, timeout=0.5) as resp:
                    if resp.status == 200:
                        self.first_200 = time.monotonic()
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def cluster(shared_cluster):
    shared_cluster.ensure()
    results = {}
    try:
        yield {"results": results}
    finally:
        print(json.dumps(results, indent=2))
        logs = ROOT / "target" / "agent-logs"
        logs.mkdir(parents=True, exist_ok=True)
        res = on("aux", "tail -n 400 /etc/pgshift-lab/log/haproxy.log", timeout=10)
        (logs / "haproxy-aux.log").write_text(res.stdout + res.stderr)
        write_results(results, RESULTS)


def test_read_write_and_read_only_ports(cluster):
    leader, standby = roles()
    ok, res = psql(RW, "CREATE TABLE through_haproxy (id int PRIMARY KEY, at timestamptz DEFAULT now());"
                       "INSERT INTO through_haproxy (id) VALUES (0);"
                       "SELECT pg_is_in_recovery(), host(inet_server_addr())")
    assert ok, res
    assert res.splitlines()[-1] == f"f|{IPS[leader]}", res
    # The standby has the table once it has replayed it.
    ro = wait_for("the table on the read-only port",
                  lambda: (lambda r: r[1] if r[0] else None)(
                      psql(RO, "SELECT pg_is_in_recovery(), host(inet_server_addr()), count(*) FROM through_haproxy")),
                  10, 0.1)
    assert ro == f"t|{IPS[standby]}|1", ro
    ok, res = psql(RO, "INSERT INTO through_haproxy (id) VALUES (-1)")
    assert not ok and "read-only transaction" in res, res
    # The same from the lab hosts themselves (aux is HAProxy's own host).
    for h in ("db1", "db2", "aux"):
        got = on(h, f"PGPASSWORD=demo psql -XAtc 'SELECT pg_is_in_recovery()' 'host={AUX} port={RW} dbname=demo user=demo'"
                    f" && PGPASSWORD=demo psql -XAtc 'SELECT pg_is_in_recovery()' 'host={AUX} port={RO} dbname=demo user=demo'")
        assert got.returncode == 0 and got.stdout.split() == ["f", "t"], (h, got.stdout, got.stderr)
    assert haproxy_states() == {("postgres_rw", leader): "UP", ("postgres_rw", standby): "DOWN",
                                ("postgres_ro", leader): "DOWN", ("postgres_ro", standby): "UP"}


def test_cut_between_haproxy_and_the_primary_closes_its_sessions(cluster):
    """aux loses the database hosts (no failover: db1 and db2 keep etcd's quorum). An idle
    session through 5000 sits on a TCP connection whose packets are now dropped: without
    on-marked-down shutdown-sessions its next query would hang for up to timeout server
    (30 min); with it HAProxy closes the session when the checks mark the primary down.
    (A crash does not show this: the kernel closes the killed backends' sockets with a FIN
    before the lab deletes the host's network.)"""
    leader, _ = roles()
    r = cluster["results"]["haproxy_cut_from_primary"] = {}
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": "demo"}
    idle = subprocess.Popen([PSQL, "-XAtq", "-h", AUX, "-p", str(RW), "-U", "demo", "-d", "demo"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        idle.stdin.write("SELECT host(inet_server_addr());\n")
        idle.stdin.flush()
        assert idle.stdout.readline().strip() == IPS[leader]
        lab("partition", "aux")
        t_cut = time.monotonic()
        # The query goes out at once; it fails when HAProxy marks the primary down.
        idle.stdin.write("SELECT 1;\n")
        idle.stdin.flush()
        try:
            rc = idle.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        r["idle_session_closed_seconds"] = round(time.monotonic() - t_cut, 2)
        assert rc not in (None, 0), f"the idle session still hangs {r['idle_session_closed_seconds']} s after the cut"
    finally:
        idle.kill()
        idle.wait()
        lab("heal", "aux")
    t_heal = time.monotonic()
    res = wait_for(f"writes through {RW} after the heal",
                   lambda: (lambda x: x[1] if x[0] else None)(psql(RW, "SELECT host(inet_server_addr())", 2)), 10, 0.05)
    r["read_write_back_after_heal_seconds"] = round(time.monotonic() - t_heal, 2)
    assert res == IPS[leader]
    assert r["idle_session_closed_seconds"] < 3, r


def test_crash_of_the_primary_host_through_haproxy(cluster):
    old, new = roles()
    r = cluster["results"]["crash"] = {"old_primary": old, "new_primary": new}
    # Beside the writes through HAProxy, the same writes straight to the standby that will
    # take over, and a watch on its agent's /primary: what HAProxy adds to the failover.
    with Writer() as w, Reader(w.history), Writer(IPS[new], 5432, first_id=10**6) as direct, ApiWatch(new) as api:
        wait_for(f"writes through {RW} on {old}", lambda: sum(h == old for _, h in w.acks) >= 10, 20)
        t_crash = time.monotonic()
        lab("crash", old)
        first_new = wait_for(f"writes through {RW} on {new}", lambda: w.first_ack(new, t_crash), 30, 0.02)
        time.sleep(0.5)
    r["writes_back_seconds"] = round(first_new - t_crash, 2)
    first_direct = direct.first_ack(new, t_crash)
    r["direct_writes_seconds"] = round(first_direct - t_crash, 2)
    r["agent_primary_200_seconds"] = round(api.first_200 - t_crash, 2)
    r["haproxy_added_seconds"] = round(first_new - first_direct, 2)
    r["haproxy_after_agent_200_seconds"] = round(first_new - api.first_200, 2)
    r["last_write_on_old_after_crash"] = round(max((t for t, h in w.acks if h == old), default=t_crash) - t_crash, 3)
    r["failed_writes"] = w.failures
    late = [round(t - first_new, 3) for t, h in w.acks if h == old and t > first_new]
    assert not late, f"writes through {RW} reached {old} after {new} took over: {late}"
    problems = w.check(new) + direct.check(new)
    assert not problems, problems
    assert r["writes_back_seconds"] < 15, r
    # HAProxy sees the new roles: the crashed host is down everywhere, the new primary is
    # read-write only, so the read-only port has no server until the old primary rejoins.
    states = wait_for("HAProxy's view of the new roles", lambda: (lambda s: s if s == {
        ("postgres_rw", new): "UP", ("postgres_rw", old): "DOWN",
        ("postgres_ro", new): "DOWN", ("postgres_ro", old): "DOWN"} else None)(haproxy_states()), 5, 0.2)
    assert states
    ok, res = psql(RO, "SELECT pg_is_in_recovery()")
    assert not ok, f"the read-only port reached a server with no standby left: {res}"

    # The old primary boots, rewinds and streams from the new one: the read-only port
    # reaches it again within a few seconds of the agent reporting it streaming.
    back = {}

    def poll_ro():
        while "t" not in back and time.monotonic() < t_boot + 120:
            ok, res = psql(RO, "SELECT pg_is_in_recovery(), host(inet_server_addr())", 2)
            if ok and res == f"t|{IPS[old]}":
                back["t"] = time.monotonic()
            time.sleep(0.05)

    t_boot = time.monotonic()
    lab("boot", old)
    poller = threading.Thread(target=poll_ro, daemon=True)
    poller.start()
    wait_for(f"{old} streaming from {new}", streaming_from(old, new), 120, 0.2)
    t_streaming = time.monotonic()
    r["rejoin_seconds"] = round(t_streaming - t_boot, 1)
    poller.join(timeout=10)
    assert "t" in back, f"the read-only port did not reach {old} within 10 s of it streaming"
    # Negative: HAProxy followed the agent before this test's (coarser) polling saw it.
    r["read_only_back_after_streaming_seconds"] = round(back["t"] - t_streaming, 2)
    assert back["t"] - t_streaming < 5, r
    ok, res = psql(RW, "SELECT pg_is_in_recovery(), host(inet_server_addr())")
    assert ok and res == f"f|{IPS[new]}", res


def test_switchover_through_haproxy(cluster):
    """Planned switchovers with a client writing through HAProxy's read-write port: the
    write gap the client sees, and not one acknowledged write lost."""
    gaps = []
    for i in range(2):
        old, new = roles()
        with Writer(first_id=(i + 2) * 10**7) as w, Reader(w.history):
            wait_for(f"writes through {RW} on {old}", lambda: sum(h == old for _, h in w.acks) >= 10, 20)
            t0 = time.monotonic()
            res = on(old, f"pgshift switchover --to {new}", timeout=90)
            assert res.returncode == 0, res.stdout + res.stderr
            first_new = wait_for(f"writes through {RW} on {new}", lambda: w.first_ack(new, t0), 15, 0.02)
            time.sleep(1)
        last_old = max(t for t, h in w.acks if h == old and t < first_new)
        late = [round(t - first_new, 3) for t, h in w.acks if h == old and t > first_new]
        assert not late, f"writes through {RW} reached {old} after {new} took over: {late}"
        ok, ids = psql(RW, f"SELECT id FROM through_haproxy WHERE id >= {(i + 2) * 10**7}", 10)
        assert ok, ids
        acked = len(w.ids)
        lost = sorted(set(w.ids) - set(map(int, ids.split())))
        assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"
        problems = w.check(new)
        assert not problems, problems
        gaps.append(round(first_new - last_old, 3))
        cluster["results"].setdefault("switchover", []).append({
            "from": old, "to": new,
            "write_gap_seconds": gaps[-1],
            "writes_back_after_command_start_seconds": round(first_new - t0, 2),
            "acknowledged": acked, "failed_writes": w.failures,
        })
    assert max(gaps) < 3, gaps


class Latency:
    """GET `path` on one agent every 50 ms, each on a new connection (as HAProxy's checks
    come), from this process: (seconds, status) of each, None for a failure."""

    def __init__(self, host, path):
        self.url = f"http://{IPS[host]}:8008{path}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # lab only, no proxy
        self.samples = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            try:
                with self.opener.open(self.url, timeout=1) as resp:
                    resp.read()
                    self.samples.append((time.monotonic() - t0, resp.status))
            except urllib.error.HTTPError as e:
                self.samples.append((time.monotonic() - t0, e.code))
            except (urllib.error.URLError, OSError):
                self.samples.append((time.monotonic() - t0, None))
            time.sleep(0.05)

    def p99(self):
        s = sorted(t for t, _ in self.samples)
        return s[max(0, int(len(s) * 0.99) - 1)] if s else None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=5)


def agent_resources(host):
    """The agent's open descriptors, threads and descriptor limit."""
    res = on(host, "p=$(pgrep -f '^/usr/local/bin/pgshift agent' | head -1); ls /proc/$p/fd | wc -l; "
                   "awk '/^Threads/ {print $2}' /proc/$p/status; awk '/open files/ {print $4}' /proc/$p/limits",
             timeout=10)
    fds, threads, limit = res.stdout.split()
    return int(fds), int(threads), int(limit)


def flood(cluster, name, host, path, pool, seconds=60):
    """2,000 half-open requests and 1,000 byte-a-second clients against `host`'s API for
    `seconds`, from a separate process; meanwhile `path` is timed from here, the agent's
    descriptors and threads sampled, HAProxy's view of `host` in `pool` watched."""
    leader, _ = roles()
    timeline = member(cluster_status(leader), leader)["timeline"]
    mark = int(on(host, "wc -l < /etc/pgshift-lab/log/pgshift-agent.log").stdout)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "agent" / "flood.py"), f"{IPS[host]}:8008",
                             "--idle", "2000", "--slow", "1000", "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    peaks = {"fds": 0, "threads": 0}
    states = set()
    try:
        with Latency(host, path) as lat, Writer(first_id=(9 if host == leader else 8) * 10**7) as w:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                fds, threads, limit = agent_resources(host)
                peaks = {"fds": max(peaks["fds"], fds), "threads": max(peaks["threads"], threads), "limit": limit}
                states.add(haproxy_states().get((pool, host)))
                time.sleep(1)
        stats = json.loads(proc.communicate(timeout=seconds + 30)[0])
    finally:
        proc.kill()
    statuses = [s for _, s in lat.samples]
    failed = [i for i, s in enumerate(statuses) if s != 200]
    result = {
        "flood": stats, "checks": len(statuses), "failed_checks": len(failed),
        "p99_ms": round(lat.p99() * 1000, 1), "max_ms": round(max(t for t, _ in lat.samples) * 1000, 1),
        "failures": [(round(t * 1000, 1), s) for t, s in lat.samples if s != 200][:10],
        "agent_peak_fds": peaks["fds"], "agent_peak_threads": peaks["threads"], "agent_fd_limit": peaks["limit"],
        "haproxy_states": sorted(s for s in states if s), "writes_through_haproxy": len(w.acks),
        "failed_writes": w.failures,
    }
    cluster["results"][name] = result
    assert stats["connects"] >= 3000, result
    doc = cluster_status(leader)
    assert doc["leader"] == leader and member(doc, leader)["timeline"] == timeline, doc
    log = on(host, f"tail -n +{mark + 1} /etc/pgshift-lab/log/pgshift-agent.log").stdout
    assert "Fence" not in log and "Rejoin" not in log, log[-2000:]
    # A check's connection can still lose its slot when the flood fills the cap in the few ms
    # before its head is read (on 2 cores the flood's own process competes for them): seen
    # 1-2 in ~1,150. What would cost the node its place is HAProxy's `fall` (2) failures in a
    # row; these checks come 4 times as often as HAProxy's, and never fail twice running.
    assert not any(b == a + 1 for a, b in zip(failed, failed[1:])), result
    assert len(failed) <= len(statuses) // 100 and result["p99_ms"] <= 50, result
    assert result["haproxy_states"] == ["UP"], result
    assert w.failures == 0 and w.acks, result
    # The cap (64) and the runtime's own few: nowhere near one thread or descriptor per client.
    assert peaks["threads"] <= 8 and peaks["fds"] <= 200, result


def test_connection_flood_against_the_leader(cluster):
    leader, _ = roles()
    flood(cluster, "flood_leader", leader, "/primary", "postgres_rw")


def test_connection_flood_against_a_standby(cluster):
    _, standby = roles()
    flood(cluster, "flood_standby", standby, "/replica", "postgres_ro")
