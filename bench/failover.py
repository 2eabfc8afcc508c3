"""Failover benchmark on the lab (`make bench-failover`): N trials per fault type with the
default settings, using the fault tests' probe (tests/agent/test_failover.py, and
test_rejoin.py for the crash of the etcd leader's host): time from the
fault to the first write acknowledged by the new primary, acknowledged writes lost, the old
primary's last acknowledged write after the fault, rejoin time; then the agent's idle RSS and
CPU. Prints medians and ranges and writes target/bench-failover.json."""

import importlib.util
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("faults", ROOT / "tests" / "agent" / "test_failover.py")
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)
# test_rejoin imports its helpers from test_failover by that name.
sys.modules["test_failover"] = faults
spec = importlib.util.spec_from_file_location("rejoin", ROOT / "tests" / "agent" / "test_rejoin.py")
rejoin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rejoin)

TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
ALL_KINDS = {
    "crash": faults.test_crash_of_the_primary_host,
    "kill9_agent": faults.test_kill_9_of_the_primary_agent,
    "sigstop_agent": faults.test_sigstop_of_the_primary_agent,
    "partition": faults.test_partition_of_the_primary,
    "freeze": faults.test_freeze_of_the_primary_longer_than_ttl,
    # The host leading both PostgreSQL and etcd's raft.
    "crash_etcd_leader": rejoin.test_crash_of_the_host_leading_postgresql_and_etcd,
}
# Optional: only some kinds, e.g. `failover.py 10 crash partition`.
KINDS = {k: v for k, v in ALL_KINDS.items() if k in sys.argv[2:]} or ALL_KINDS


def agent_usage(host, seconds=30):
    """Idle agent (and its fence guard): resident memory and CPU share over `seconds`."""
    pids = faults.out(host, "pgrep -f '^/usr/local/bin/pgshift (agent|fence-guard)'").split()
    def ticks():
        return sum(int(faults.out(host, f"cat /proc/{p}/stat").split()[13]) +
                   int(faults.out(host, f"cat /proc/{p}/stat").split()[14]) for p in pids)
    rss = {p: int(faults.out(host, f"grep VmRSS /proc/{p}/status").split()[1]) for p in pids}
    t0, c0 = time.monotonic(), ticks()
    time.sleep(seconds)
    t1, c1 = time.monotonic(), ticks()
    hz = int(faults.out(host, "getconf CLK_TCK"))
    return {"rss_kib": rss, "cpu_percent": round(100 * (c1 - c0) / hz / (t1 - t0), 2)}


def summary(values):
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def main():
    tmp = tempfile.mkdtemp(prefix="pgshift-bench-")
    ctx = {"results": {}}
    failures = []
    try:
        ctx = faults.build_cluster(tmp)
        faults.roles()
        ctx["results"]["idle"] = {h: agent_usage(h) for h in faults.IPS}
        for name, run in KINDS.items():
            for i in range(TRIALS):
                try:
                    run(ctx)
                except AssertionError as e:
                    failures.append(f"{name} #{i + 1}: {str(e)[:300]}")
                    print(f"{name} #{i + 1} FAILED: {str(e)[:300]}", flush=True)
                    faults.roles()
                print(f"{name} #{i + 1}: {ctx['results'].get(name, [{}])[-1]}", flush=True)
    finally:
        faults.teardown_cluster(ctx["results"], ROOT / "target" / "bench-failover.json")
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"idle": ctx["results"].get("idle")}
    for name in KINDS:
        rows = ctx["results"].get(name, [])
        if rows:
            report[name] = {k: summary([r[k] for r in rows if k in r])
                            for k in rows[0] if isinstance(rows[0][k], (int, float))}
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    (ROOT / "target" / "bench-failover-summary.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
