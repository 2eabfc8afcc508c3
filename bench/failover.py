"""Failover benchmark on the lab (`make bench-failover`): N trials per fault type with the
default settings, using the fault tests' probe (tests/labkit.py, the faults of
tests/agent/test_failover.py and, for the crash of the etcd leader's host, test_rejoin.py):
time from the fault to the first write acknowledged by the new primary, acknowledged writes
lost, the old primary's last acknowledged write after the fault, rejoin time; then the agent's
idle RSS and CPU. Prints medians and ranges and writes target/bench-failover.json.

During every trial a client also writes through HAProxy's read-write port on aux (each write
its own connection, every ~50 ms). For each fault type, the trial with the median failover time
is drawn as a timeline, target/bench-failover-<fault>.png: writes acknowledged per 50 ms by each
database host (the probe's direct connections) and through HAProxy, the fault, the promotion
(the new leader's agent log) and HAProxy's switch (the first write through it that the new
primary took). Needs matplotlib (`scripts/deps.sh bench`)."""

import datetime
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "agent"))
sys.path.insert(0, str(ROOT / "tests" / "members"))
import labkit  # noqa: E402
import test_failover as faults  # noqa: E402
import test_rejoin as rejoin  # noqa: E402
import test_members as members  # noqa: E402

TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
ALL_KINDS = {
    "crash": faults.test_crash_of_the_primary_host,
    "kill9_agent": faults.test_kill_9_of_the_primary_agent,
    "sigstop_agent": faults.test_sigstop_of_the_primary_agent,
    "partition": faults.test_partition_of_the_primary,
    "freeze": faults.test_freeze_of_the_primary_longer_than_ttl,
    # The host leading both PostgreSQL and etcd's raft.
    "crash_etcd_leader": rejoin.test_crash_of_the_host_leading_postgresql_and_etcd,
    # Three database hosts (`lab/lab up --with db3`), apart from the others: FIRST 1, then
    # quorum commit with any 1 and any 2 of the two standbys (`failover.py 10 crash_3
    # crash_3_any_1 crash_3_any_2`).
    "crash_3": members.test_crash_of_the_primary_with_two_standbys,
    "crash_3_any_1": lambda ctx: members.test_fault_of_the_primary_in_each_synchronous_mode(ctx, "any_1", "crash"),
    "crash_3_any_2": lambda ctx: members.test_fault_of_the_primary_in_each_synchronous_mode(ctx, "any_2", "crash"),
}
# The key each kind's results are under in the suite's results, where it is not the kind.
RESULT_KEY = {"crash_3_any_1": "any_1_crash", "crash_3_any_2": "any_2_crash"}
# Optional: only some kinds, e.g. `failover.py 10 crash partition`.
KINDS = ({k: v for k, v in ALL_KINDS.items() if k in sys.argv[2:]}
         or {k: v for k, v in ALL_KINDS.items() if not k.startswith("crash_3")})
THREE = any(k.startswith("crash_3") for k in KINDS)
if THREE and not all(k.startswith("crash_3") for k in KINDS):
    sys.exit("the crash_3 kinds run apart: they need a cluster of three database hosts")
BIN = 0.05  # seconds per bar of the timelines
SUFFIX = "-3" if THREE else ""


def settle():
    """The cluster settled between trials (and after a failed one)."""
    if THREE:
        labkit.settled(list(labkit.IPS3))
    else:
        labkit.roles()


def agent_usage(host, seconds=30):
    """Idle agent (and its fence guard): resident memory and CPU share over `seconds`."""
    pids = labkit.out(host, "pgrep -f '^/usr/local/bin/pgshift (agent|fence-guard)'").split()

    def ticks():
        return sum(int(labkit.out(host, f"cat /proc/{p}/stat").split()[13]) +
                   int(labkit.out(host, f"cat /proc/{p}/stat").split()[14]) for p in pids)
    rss = {p: int(labkit.out(host, f"grep VmRSS /proc/{p}/status").split()[1]) for p in pids}
    t0, c0 = time.monotonic(), ticks()
    time.sleep(seconds)
    t1, c1 = time.monotonic(), ticks()
    hz = int(labkit.out(host, "getconf CLK_TCK"))
    return {"rss_kib": rss, "cpu_percent": round(100 * (c1 - c0) / hz / (t1 - t0), 2)}


def summary(values):
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def promoted_at(host, after_wall):
    """Wall-clock time of the agent's "promoted (...)" line on host after `after_wall`, or None.
    Lab hosts share this machine's clock."""
    log = labkit.on(host, f"grep -a 'promoted (' {labkit.AGENT_LOG} | tail -n 5", timeout=10).stdout
    found = None
    for line in log.splitlines():
        try:
            stamp = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        except (ValueError, IndexError):
            continue
        if stamp >= after_wall:
            found = stamp if found is None else min(found, stamp)
    return found


def plot(kind, trial, path):
    """One trial's timeline: what each host acknowledged per 50 ms, directly and through
    HAProxy, with the fault, the promotion and HAProxy's switch marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = trial["t_fault"]
    start, end = -2.0, max(6.0, trial["failover_seconds"] + 3)
    edges = [start + i * BIN for i in range(int((end - start) / BIN) + 1)]

    def per_bin(times):
        counts = [0] * (len(edges) - 1)
        for t in times:
            i = int((t - t0 - start) / BIN)
            if 0 <= i < len(counts):
                counts[i] += 1
        return counts

    colors = {trial["old"]: "tab:blue", trial["new"]: "tab:orange"}
    fig, (direct, proxied) = plt.subplots(2, 1, sharex=True, figsize=(9, 4.8))
    for host in (trial["old"], trial["new"]):
        role = "old primary" if host == trial["old"] else "new primary"
        direct.stairs(per_bin(trial["acks"][host]), edges, color=colors[host], label=f"{host} ({role})")
        proxied.stairs(per_bin([t for t, h in trial["haproxy"] if h == host]), edges, color=colors[host],
                       label=f"through HAProxy, taken by {host}")
    marks = [(0.0, "fault", "tab:red"), (trial.get("promoted_s"), "promoted (agent log)", "tab:green"),
             (trial.get("haproxy_switch_s"), "HAProxy's switch", "tab:purple")]
    for ax in (direct, proxied):
        for x, label, color in marks:
            if x is not None:
                ax.axvline(x, color=color, linestyle="--", linewidth=1, label=label if ax is direct else None)
        ax.set_ylabel("writes / 50 ms")
        ax.set_ylim(0, 2.5)
        ax.legend(loc="upper right", fontsize=7)
    direct.set_title(f"{kind}: first write on the new primary {trial['failover_seconds']:.2f} s after the fault, "
                     f"{trial['lost']} acknowledged writes lost", fontsize=9)
    proxied.set_xlabel("seconds from the fault")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    tmp = tempfile.mkdtemp(prefix="pgshift-bench-")
    ctx = {"results": {}}
    failures = []
    trials = {}
    try:
        ctx = labkit.build_cluster(tmp, with_hosts=["db3"] if THREE else ())
        ctx["timelines"] = []
        settle()
        ok, res = labkit.psql(labkit.RW, "CREATE TABLE IF NOT EXISTS through_haproxy "
                                    "(id int PRIMARY KEY, at timestamptz DEFAULT now())")
        assert ok, res
        ctx["results"]["idle"] = {h: agent_usage(h) for h in ctx["hosts"]}
        next_id = 1
        for name, run in KINDS.items():
            for i in range(TRIALS):
                wall, mono = time.time(), time.monotonic()
                writer = labkit.Writer(first_id=next_id)
                try:
                    with writer:
                        run(ctx)
                except AssertionError as e:
                    failures.append(f"{name} #{i + 1}: {str(e)[:300]}")
                    print(f"{name} #{i + 1} FAILED: {str(e)[:300]}", flush=True)
                    settle()
                next_id = writer.n + 1
                row = ctx["results"].get(RESULT_KEY.get(name, name), [{}])[-1]
                timeline = ctx["timelines"][-1] if ctx["timelines"] and ctx["timelines"][-1]["kind"] == name else None
                if timeline is not None and "failover_seconds" in row and timeline.get("t_fault", 0) > mono:
                    t_fault = timeline["t_fault"]
                    promoted = promoted_at(timeline["new"], wall)
                    switch = writer.first_ack(timeline["new"], t_fault)
                    timeline.update(failover_seconds=row["failover_seconds"], lost=row["lost"], haproxy=writer.acks,
                                    promoted_s=None if promoted is None else promoted - wall - (t_fault - mono),
                                    haproxy_switch_s=None if switch is None else switch - t_fault)
                    row["haproxy_switch_seconds"] = None if switch is None else round(switch - t_fault, 2)
                    trials.setdefault(name, []).append(timeline)
                print(f"{name} #{i + 1}: {row}", flush=True)
    finally:
        labkit.teardown_cluster(ctx["results"], ROOT / "target" / f"bench-failover{SUFFIX}.json",
                                hosts=ctx.get("hosts", labkit.IPS))
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"idle": ctx["results"].get("idle")}
    for name in KINDS:
        rows = ctx["results"].get(RESULT_KEY.get(name, name), [])
        if rows:
            report[name] = {k: summary([r[k] for r in rows if isinstance(r.get(k), (int, float))])
                            for k in rows[0] if isinstance(rows[0][k], (int, float))}
    for name, runs in trials.items():
        median = sorted(runs, key=lambda t: t["failover_seconds"])[(len(runs) - 1) // 2]
        path = ROOT / "target" / f"bench-failover-{name}.png"
        plot(name, median, path)
        report.setdefault("plots", {})[name] = str(path.relative_to(ROOT))
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    (ROOT / "target" / f"bench-failover{SUFFIX}-summary.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
