#!/usr/bin/env python3
"""Benchmark for pg_hba_rule (numbers, not pass/fail): edit one rule in a 10,000-rule
pg_hba.conf, time per module run, binary sizes. Run with `make bench`.

Measures, each as median and p90 over repeated runs:
  1. the module binary run directly (what Ansible runs on the host), reload: false;
  2. the same with a running PostgreSQL 15: write, pg_hba_file_rules check, SIGHUP, wait;
  3. a whole Ansible task on localhost (local connection): ours vs community.postgresql's
     postgresql_pg_hba, taken from the `ansible` PyPI package when it can be downloaded.
"""

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import ANSIBLE_PACKAGE, ROOT, VENV, community_postgresql, stats  # noqa: E402

# The multi-call module binary for this machine, run under the module's name (argv[0]).
MODULE = ROOT / "binaries" / platform.machine() / "pgshift-module"
SCRATCH = ROOT / "target" / "release" / "pgshift-scratch-pg"
RULES = 10_000


def big_hba(path):
    lines = [path.read_text()]
    for i in range(RULES):
        lines.append(f"host    db{i:<13} user{i:<11} 10.{i // 250 % 250}.{i % 250}.1/32{'':<8} scram-sha-256\n")
    path.write_text("".join(lines))


def run_module(args_file):
    t = time.perf_counter()
    out = subprocess.run(["pg_hba_rule", args_file], executable=MODULE, capture_output=True, text=True)
    dt = time.perf_counter() - t
    result = json.loads(out.stdout)
    assert not result.get("failed"), result
    return dt, result


def direct(hba, work, reload, n):
    samples = []
    for i in range(n):
        method = "scram-sha-256" if i % 2 else "md5"
        args = {"path": str(hba), "databases": "db5000", "users": "user5000", "address": "10.20.0.1/32",
                "method": method, "reload": reload, "_ansible_module_name": "pg_hba_rule"}
        f = work / "args.json"
        f.write_text(json.dumps(args))
        dt, result = run_module(f)
        assert result["changed"] and result["rules"][0]["action"] == "updated", result
        assert result["reloaded"] == reload, result
        samples.append(dt)
    return stats(samples)


def ansible_task(module, args, env, n):
    samples = []
    for i in range(n):
        a = dict(args)
        a["method"] = "scram-sha-256" if i % 2 else "md5"
        t = time.perf_counter()
        p = subprocess.run([VENV / "ansible", "localhost", "-c", "local", "-m", module, "-a", json.dumps(a)],
                           env=env, capture_output=True, text=True)
        samples.append(time.perf_counter() - t)
        assert "CHANGED" in p.stdout, p.stdout + p.stderr
    return stats(samples)


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-bench-"))
    os.chmod(work, 0o755)
    report = {"sizes_bytes": {p.name: p.stat().st_size for p in [MODULE, ROOT / "bin" / "pgshift"]}}
    facts = {}
    try:
        out = subprocess.run([SCRATCH, "start", work / "pg"], check=True, capture_output=True, text=True).stdout
        facts = dict(line.split("=", 1) for line in out.split())
        hba = pathlib.Path(facts["PGDATA"]) / "pg_hba.conf"
        big_hba(hba)
        subprocess.run(["pkill", "-HUP", "-f", f"postgres -D {facts['PGDATA']}"], check=False)
        report["file"] = {"rules": RULES, "bytes": hba.stat().st_size}
        report["direct_reload_false"] = direct(hba, work, False, 30)
        report["direct_with_reload_and_verify"] = direct(hba, work, True, 20)

        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                   ANSIBLE_DEPRECATION_WARNINGS="false", ANSIBLE_COLLECTIONS_PATH=str(work / "collections"))
        subprocess.run([VENV / "ansible-galaxy", "collection", "install", "-p", work / "collections",
                        *sorted(ROOT.glob("dist/pgshift-cluster-*.tar.gz"))[-1:]], check=True, capture_output=True, env=env)
        copy = work / "pg_hba_copy.conf"
        shutil.copy(hba, copy)
        ours = {"path": str(copy), "databases": "db5000", "users": "user5000", "address": "10.20.0.1/32", "reload": False}
        report["ansible_task_pgshift"] = ansible_task("pgshift.cluster.pg_hba_rule", ours, env, 10)
        community = community_postgresql()
        if community:
            env["ANSIBLE_COLLECTIONS_PATH"] = f"{work / 'collections'}:{community}"
            theirs = {"dest": str(copy), "contype": "host", "databases": "db5000", "users": "user5000",
                      "source": "10.20.0.1/32"}
            report["ansible_task_community_postgresql_pg_hba"] = ansible_task("community.postgresql.postgresql_pg_hba", theirs, env, 10)
        else:
            report["ansible_task_community_postgresql_pg_hba"] = f"skipped: {ANSIBLE_PACKAGE} could not be downloaded"
    finally:
        subprocess.run([SCRATCH, "stop", work / "pg"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
