"""The stress battery: faults and pressures on the lab's cluster while it carries a write load,
judged by the history checker (tests/history.py).

    .venv/bin/python tests/stress/battery.py [--timing default|tight] [--soak-minutes M]
                                              [--cases a,b,...] [--out FILE]

(`make stress` runs every case at both timings.) It builds a cluster of its own with
site.yml (and the timing's settings), then runs each case in turn from a healthy cluster:

- the write load: tests/stress/load.py, 4 clients inserting 100 rows per second in all
  through HAProxy's read-write port on aux (each its own transaction, connections kept);
- the probe (labkit.Probe): a write straight to each database host every 50 ms,
  synchronous_commit on;
- a reader through HAProxy's read-only port (labkit.Reader) reading the newest load rows;
- the case's fault on the current leader (or etcd, or the standby), for the case's time.

Each case gives one JSON line (to --out and stdout) and a row of the table printed at the end:
failovers seen (timeline changes of the leader), spurious ones (a failover without a fault of
the primary), self-fences of a healthy primary (the agent's or its guard's fence lines),
the longest gap between the load's acknowledged writes, its throughput before, during and
after the fault, lost acknowledged writes, writes acknowledged by two primaries, and every
other violation the checker found. A case fails on a lost write or a second writer.

tests/stress/test_stress_smoke.py runs the short cases that must never move the leadership
(etcd leader churn, 5 % packet loss, a disk stall) on the shared cluster in `make test`.
"""

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import history  # noqa: E402
import labkit  # noqa: E402
from labkit import IPS, lab, on, out, roles  # noqa: E402

LOAD = HERE / "load.py"
BEFORE, AFTER = 8.0, 8.0  # seconds of load before the fault and after its end
STATE = labkit.STATE

# Settings of site.yml the --timing names stand for. "tight": the faster set the battery
# weighs against today's defaults (etcd's election kept well under retry_timeout).
TIMINGS = {
    "default": {},
    "tight": {"pgshift_ttl": 2.5, "pgshift_loop_wait": 0.4, "pgshift_retry_timeout": 1.2,
              "etcd_heartbeat_ms": 80, "etcd_election_ms": 400},
}


# -- the write load and the cluster's state ---------------------------------------------------

def prepare_load_table():
    """stress_load in the demo database (site.yml's HAProxy client), made once."""
    ok, res = labkit.psql(labkit.RW, "CREATE TABLE IF NOT EXISTS stress_load (id bigint PRIMARY KEY, "
                                     "at timestamptz DEFAULT now())", 10)
    assert ok, res


class Load:
    """tests/stress/load.py through HAProxy for `seconds`; `finish()` waits for it and adds its
    acknowledged writes to `history_` as client "load"."""

    ids = iter(range(10**9, 2**62, 10**8))

    def __init__(self, seconds, history_, rate=100, clients=4):
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": "demo"}
        dsn = f"host={labkit.AUX} port={labkit.RW} dbname=demo user=demo"
        self.history = history_
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(LOAD), "--dsn", dsn, "--rate", str(rate), "--clients", str(clients),
             "--seconds", str(seconds), "--first-id", str(next(Load.ids))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.acks = []  # acknowledgement times, in order
        self.failures = None

    def finish(self, timeout):
        stdout, stderr = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"the write load failed: {stderr[-2000:]}"
        for line in stdout.splitlines():
            f = line.split()
            if f[0] == "failures":
                self.failures = int(f[1])
                continue
            self.history.write("load", int(f[0]), labkit.HOST_OF.get(f[3], f[3]), float(f[1]), float(f[2]), f[4])
            self.acks.append(float(f[2]))
        return self

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def rate(self, start, end):
        return round(sum(start <= t < end for t in self.acks) / max(end - start, 1e-9), 1)

    def longest_gap(self, start, end):
        """(seconds, its start relative to `start`): the longest time without an acknowledged
        write between start and end."""
        times = [start] + [t for t in self.acks if start <= t <= end] + [end]
        gap, at = max((b - a, a) for a, b in zip(times, times[1:]))
        return round(gap, 2), round(at - start, 2)


def timeline(leader):
    return labkit.member(labkit.cluster_status(leader), leader)["timeline"]


# A fence is PostgreSQL stopped either by the guard (its deadline passed) or by the agent
# itself ("fenced: PostgreSQL stopped"; when the guard was first, the agent says "already
# stopped", not counted again).
FENCE_LINES = ("fence-guard: leadership deadline passed", "fenced: PostgreSQL stopped")


# What the agents did, for a case's record: their log lines with these words.
EVENT_WORDS = ("promoted (", "fencing:", "fence-guard", "failsafe", "synchronous standby", "handed over",
               "RenewLeader failed")


def agent_lines(marks):
    """{host: its agent's log lines since `marks`} (hosts that cannot answer are skipped: a
    crashed host wrote nothing we could read)."""
    found = {}
    for h, mark in marks.items():
        res = on(h, f"tail -n +{mark + 1} {labkit.AGENT_LOG}", timeout=15)
        if res.returncode == 0:
            found[h] = res.stdout.splitlines()
    return found


def fences(lines):
    return {h: sum(any(p in line for p in FENCE_LINES) for line in ls) for h, ls in lines.items()}


def events(lines, wall0, limit=40):
    """The agents' notable lines as "+seconds host: text" from wall0 (lab hosts share this
    machine's clock); the guard's lines carry no time and keep the previous line's."""
    found = []
    for h, ls in lines.items():
        at = None
        for line in ls:
            stamp = line.split(" ", 1)[0]
            with contextlib.suppress(ValueError):
                at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            if at is not None and any(w in line for w in EVENT_WORDS):
                text = line.split(": ", 1)[-1] if "}: " in line else line
                found.append((at - wall0, f"{at - wall0:+.2f}s {h}: {text[:160]}"))
    return [e for _, e in sorted(found)][:limit]


def etcd_client():
    """etcdctl from this machine with the agent's client certificate (copied from db1's disk)."""
    tls = STATE / "db1" / "disk" / "etc" / "pgshift" / "etcd-tls"
    return ["etcdctl", "--dial-timeout=2s", "--command-timeout=3s", f"--cacert={tls / 'ca.crt'}",
            f"--cert={tls / 'client.crt'}", f"--key={tls / 'client.key'}"]


ETCD = {h: f"https://{ip}:2379" for h, ip in {**IPS, "aux": labkit.AUX}.items()}


def move_etcd_leader():
    """Hands etcd's raft leadership to another member; the new leader's host name."""
    res = subprocess.run([*etcd_client(), f"--endpoints={','.join(ETCD.values())}", "endpoint", "status",
                          "-w", "json"], capture_output=True, text=True, timeout=15)
    status = json.loads(res.stdout)
    members = {s["Endpoint"]: s["Status"]["header"]["member_id"] for s in status}
    leader_id = status[0]["Status"]["leader"]
    leader_ep = next(ep for ep, mid in members.items() if mid == leader_id)
    target_ep, target = random.choice([(ep, mid) for ep, mid in members.items() if mid != leader_id])
    res = subprocess.run([*etcd_client(), f"--endpoints={leader_ep}", "move-leader", format(target, "x")],
                         capture_output=True, text=True, timeout=15)
    assert res.returncode == 0, res.stderr
    return next(h for h, ep in ETCD.items() if ep == target_ep)


# -- the cases --------------------------------------------------------------------------------
# A case: kind ("primary" fault, "planned" switchover, or "pressure": the leadership must not
# move), and a function (leader, other, seconds) that applies the fault for about `seconds`
# and undoes it (the battery then waits until the cluster is healthy).

def wait_takeover(new, probe, t_fault, timeout=30):
    labkit.wait_for(f"{new} acknowledging writes", lambda: probe.first_ack(new, t_fault), timeout, 0.05)


def crash(leader, other, seconds, probe):
    t = time.monotonic()
    lab("crash", leader)
    wait_takeover(other, probe, t)
    lab("boot", leader)


def partition(leader, other, seconds, probe):
    t = time.monotonic()
    lab("partition", leader)
    try:
        wait_takeover(other, probe, t)
    finally:
        lab("heal", leader)


def kill9_agent(leader, other, seconds, probe):
    t = time.monotonic()
    out(leader, f"kill -9 $({labkit.AGENT_PID})")
    try:
        wait_takeover(other, probe, t)
    finally:
        out(leader, "systemctl start pgshift-agent")


def freeze(leader, other, seconds, probe):
    """The whole primary host stopped for 6 s (longer than ttl)."""
    t = time.monotonic()
    lab("freeze", leader)
    try:
        wait_takeover(other, probe, t)
        time.sleep(max(0.0, t + 6 - time.monotonic()))
    finally:
        lab("thaw", leader)


def switchover(leader, other, seconds, probe):
    res = on(leader, f"pgshift switchover --to {other}", timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr


def etcd_member_loss(leader, other, seconds, probe):
    out(other, "systemctl stop etcd")
    try:
        time.sleep(seconds)
    finally:
        out(other, "systemctl start etcd")


def held(apply, undo, target="leader"):
    """A case that applies `lab apply HOST ...` to the leader (or the other host), holds it
    for the case's time and undoes it with `lab undo HOST`."""
    def case(leader, other, seconds, probe):
        host = leader if target == "leader" else other
        lab(apply[0], host, *apply[1:])
        try:
            time.sleep(seconds)
        finally:
            lab(undo, host)
    return case


def starved_cpu(pct):
    return held(("starve", str(pct)), "unstarve")


def sigstop_bursts(leader, other, seconds, probe):
    """Every process of the primary's host stopped ~0.6 s every 2 s: shorter than
    retry_timeout - loop_wait, so never a reason to fence."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        lab("freeze", leader)
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
        lab("thaw", leader)
        time.sleep(1.4)


def disk_stall(leader, other, seconds, probe):
    """stress-ng's fsync-heavy workers on the primary's host, in PostgreSQL's and etcd's
    directories (one disk under every lab host)."""
    cmd = ("mkdir -p /var/lib/postgresql/stress /var/lib/etcd/stress && "
           f"timeout {seconds + 5} stress-ng --quiet --iomix 1 --iomix-bytes 64m --hdd 1 --hdd-bytes 64m "
           f"--hdd-opts fsync --temp-path /var/lib/postgresql/stress --timeout {int(seconds)}s & "
           f"timeout {seconds + 5} stress-ng --quiet --iomix 1 --iomix-bytes 32m "
           f"--temp-path /var/lib/etcd/stress --timeout {int(seconds)}s & wait; "
           "rm -rf /var/lib/postgresql/stress /var/lib/etcd/stress")
    res = on(leader, cmd, timeout=seconds + 60)
    assert res.returncode in (0, 124), res.stdout + res.stderr


def etcd_leader_churn(leader, other, seconds, probe, every=3.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        move_etcd_leader()
        time.sleep(every)


def packet_loss(pct, host="leader"):
    return held(("loss", str(pct)), "heal", host)


# name: (kind, function, seconds in the full battery)
CASES = {
    "crash": ("primary", crash, 0),
    "partition": ("primary", partition, 0),
    "kill9_agent": ("primary", kill9_agent, 0),
    "freeze": ("primary", freeze, 0),
    "switchover": ("planned", switchover, 0),
    "etcd_member_loss": ("pressure", etcd_member_loss, 20),
    "starved_cpu_20": ("pressure", starved_cpu(20), 60),
    "starved_cpu_5": ("pressure", starved_cpu(5), 30),
    "sigstop_bursts": ("pressure", sigstop_bursts, 40),
    "disk_stall": ("pressure", disk_stall, 60),
    "etcd_leader_churn": ("pressure", etcd_leader_churn, 120),
    "packet_loss_5": ("pressure", packet_loss(5), 60),
    "packet_loss_20": ("pressure", packet_loss(20), 60),
    "packet_loss_20_standby": ("pressure", packet_loss(20, "other"), 30),
}


def verdict(hist, probe, leader):
    """The history checker on a case's load, reader and probe against `leader`'s tables (the
    load's table read once): lost writes, second writers and every violation."""
    rows = labkit.haproxy_rows(leader, "stress_load")
    problems = history.check(hist, rows, "load") + history.check(hist, rows, "reader") + probe.check(leader)
    return {
        "lost": sum(int(p.split()[0]) for p in problems if "acknowledged writes lost" in p),
        "two_writers": sum(1 for p in problems if "two writers" in p or "same timeline" in p),
        "violations": problems,
    }


def healthy(timeout=180):
    """Every host up, the cluster settled; (leader, other)."""
    return roles(timeout)


def run_case(name, passfile, seconds=None, fault=None, kind=None, before=BEFORE, after=AFTER):
    """One case under the load, the probe and the reader; its result (a dict). Raises
    AssertionError on a lost write or a second writer, after the result is complete."""
    kind = kind or CASES[name][0]
    fault = fault or CASES[name][1]
    seconds = CASES[name][2] if seconds is None else seconds
    leader, other = healthy()
    tl_before = timeline(leader)
    started_pg = labkit.sql(leader, "SELECT pg_postmaster_start_time()")
    marks = {h: labkit.log_mark(h) for h in IPS}
    hist = history.History()
    probe = labkit.Probe(passfile, hist)
    budget = before + seconds + after + 120
    load = Load(budget, hist)
    reader = labkit.Reader(hist, table="stress_load")
    try:
        with reader:
            probe.start()
            try:
                time.sleep(before)
                t_fault, wall_fault = time.monotonic(), time.time()
                fault(leader, other, seconds, probe)
                t_end = time.monotonic()
                new, _ = healthy()
                t_healthy = time.monotonic()
                time.sleep(after)
                t_after = time.monotonic()
            finally:
                probe.stop()
        load.proc.terminate()  # SIGTERM: load.py ends its clients and prints what it has
        load.finish(30)
    finally:
        load.kill()
    tl_after = timeline(new)
    gap, gap_at = load.longest_gap(t_fault - 1, t_after)
    failovers = tl_after - tl_before
    expected = 0 if kind == "pressure" else 1
    lines = agent_lines(marks)
    fenced = fences(lines)
    restarted = kind == "pressure" and labkit.sql(leader, "SELECT pg_postmaster_start_time()") != started_pg
    checked = verdict(hist, probe, new)
    result = {
        "case": name, "kind": kind, "fault_seconds": round(t_end - t_fault, 1),
        "leader_before": leader, "leader_after": new,
        "failovers": failovers, "spurious_failovers": max(0, failovers - expected),
        "self_fences": (fenced.get(leader, 0) + (1 if restarted and not fenced.get(leader) else 0))
        if kind == "pressure" else 0,
        "longest_write_gap_seconds": gap,
        # From the fault's start (negative: just before it).
        "longest_write_gap_from_fault_seconds": round(gap_at - 1, 2),
        "writes_per_second": {"before": load.rate(t_fault - before, t_fault), "during": load.rate(t_fault, t_end),
                              "after": load.rate(t_healthy, t_after)},
        "acknowledged": len(load.acks), "failed_attempts": load.failures,
        "probe_acknowledged": sum(len(a) for a in probe.acks.values()),
        **checked,
        "recovered_seconds": round(t_healthy - t_end, 1),
        "events": events(lines, wall_fault),
    }
    return result


def assert_sound(result):
    assert not result["violations"], f"{result['case']}: the history checker: {result['violations']}"


# -- the soak ---------------------------------------------------------------------------------

SOAK_FAULTS = ["crash", "partition", "kill9_agent", "freeze", "switchover", "etcd_member_loss",
               "sigstop_bursts", "disk_stall", "etcd_leader_churn", "packet_loss_20", "starved_cpu_20"]


def soak(passfile, minutes, seed=None):
    """Random faults of the battery, one after another for `minutes`, each from a healthy
    cluster, under one load, probe and reader for the whole time; one result per fault and a
    summary with the checker's verdict over the whole history."""
    rng = random.Random(seed)
    end = time.monotonic() + minutes * 60
    hist = history.History()
    probe = labkit.Probe(passfile, hist)
    load = Load(minutes * 60 + 300, hist)
    rounds = []
    try:
        with labkit.Reader(hist, table="stress_load"):
            probe.start()
            try:
                while time.monotonic() < end:
                    name = rng.choice(SOAK_FAULTS)
                    kind, fault, seconds = CASES[name]
                    leader, other = healthy()
                    tl = timeline(leader)
                    marks = {h: labkit.log_mark(h) for h in IPS}
                    t0 = time.monotonic()
                    fault(leader, other, min(seconds, 15), probe)
                    new, _ = healthy()
                    failovers = timeline(new) - tl
                    fenced = fences(agent_lines(marks))
                    rounds.append({"fault": name, "kind": kind, "failovers": failovers,
                                   "spurious": max(0, failovers - (0 if kind == "pressure" else 1)),
                                   "self_fences": fenced.get(leader, 0) if kind == "pressure" else 0,
                                   "seconds": round(time.monotonic() - t0, 1)})
                    time.sleep(2)
            finally:
                probe.stop()
        load.proc.terminate()
        load.finish(60)
    finally:
        load.kill()
    new, _ = healthy()
    checked = verdict(hist, probe, new)
    gaps = [b - a for a, b in zip(load.acks, load.acks[1:])]
    return {
        "case": "soak", "kind": "mixed", "minutes": minutes, "faults": len(rounds),
        "failovers": sum(r["failovers"] for r in rounds),
        "spurious_failovers": sum(r["spurious"] for r in rounds),
        "self_fences": sum(r["self_fences"] for r in rounds),
        "longest_write_gap_seconds": round(max(gaps, default=0), 2),
        "acknowledged": len(load.acks), "failed_attempts": load.failures,
        **checked, "rounds": rounds,
    }


# -- the report -------------------------------------------------------------------------------

COLUMNS = [("case", "case", 22), ("failovers", "failovers", 9), ("spurious_failovers", "spurious", 8),
           ("self_fences", "fences", 6), ("longest_write_gap_seconds", "gap s", 6),
           ("writes_per_second", "writes/s before/during/after", 28), ("lost", "lost", 4),
           ("two_writers", "2 writers", 9)]


def table(results):
    lines = [" ".join(title.ljust(w) for _, title, w in COLUMNS)]
    for r in results:
        cells = []
        for key, _, w in COLUMNS:
            v = r.get(key, "")
            if isinstance(v, dict):
                v = "/".join(str(v[k]) for k in ("before", "during", "after"))
            cells.append(str(v).ljust(w))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timing", choices=sorted(TIMINGS), default="default")
    ap.add_argument("--soak-minutes", type=float, default=30)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--out", default=str(labkit.ROOT / "target" / "stress.jsonl"))
    a = ap.parse_args()
    names = [c for c in a.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown cases: {', '.join(unknown)}")
    outfile = pathlib.Path(a.out)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, open(outfile, "a") as jsonl:
        try:
            cluster = labkit.build_cluster(tmp, extra_vars=TIMINGS[a.timing] or None)
            prepare_load_table()

            def record(r):
                r = {"timing": a.timing, **r}
                results.append(r)
                jsonl.write(json.dumps(r) + "\n")
                jsonl.flush()
                print(json.dumps(r), flush=True)
                if r["violations"]:
                    failed.append(r["case"])

            for name in names:
                try:
                    record(run_case(name, cluster["passfile"]))
                except Exception as e:  # a case that could not finish is a finding, and the rest still run
                    failed.append(name)
                    print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    labkit.collect_logs()
                    with contextlib.suppress(Exception):
                        for h in ("db1", "db2", "aux"):
                            lab("unstarve", h, check=False)
                            lab("heal", h, check=False)
                            lab("thaw", h, check=False)
            if a.soak_minutes > 0:
                record(soak(cluster["passfile"], a.soak_minutes))
        finally:
            labkit.collect_logs()
            lab("down", check=False)
    print(f"\ntiming {a.timing} {TIMINGS[a.timing]}, {round((time.monotonic() - started) / 60, 1)} min")
    print(table(results))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PGSHIFT_REQUIRE_LAB", "1")
    main()
