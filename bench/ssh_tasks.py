#!/usr/bin/env python3
"""Per-task wall time over real SSH in the lab with Ansible's default settings: pgshift.cluster's
modules (the action plugin and the host's module cache), the same binary as a plain Ansible binary
module (the path before the cache: sent with an arguments file on every task), and
community.postgresql's Python modules doing the same work on db1 (numbers, not pass/fail).

Run as root: .venv/bin/python bench/ssh_tasks.py [--keep] [--tasks N] [--compare N]

  - brings the lab up if it is not, builds PostgreSQL with playbooks/site.yml if db1 has none running,
    installs python3-psycopg2 on this machine if missing (lab hosts share /usr; community.postgresql
    needs it), takes community.postgresql from the `ansible` PyPI wheel (bench/.cache, as pg_hba_rule.py),
    and makes the "binary module" collection (bench.binary: the module binary under each module's name,
    no action plugin) in bench/.cache;
  - a setup playbook creates what the measured tasks ask for, so every measured task is unchanged;
  - per side, one playbook of tasks alternating a pg_hba.conf rule and a replication role (ours: --tasks,
    default 100; the others: --compare, default 30), Ansible's default SSH settings (ssh_args
    "-C -o ControlMaster=auto -o ControlPersist=60s", pipelining off) on a fresh ControlMaster; the first
    task of a side is counted. bench/callback_plugins/task_timer.py records each task's wall time (task
    start -> result). Community's side runs again with pipelining on (its best case). A host-side
    inotify watcher (bench/_hostwatch.py) counts what reached db1: module binaries renamed into our cache,
    Ansible's per-task temporary directories;
  - the changing cases (a password that alternates, a rule whose method alternates) for ours and
    community's, and by hand: one command on an open SSH connection, the cached module run on the host;
  - always runs `lab/lab down` at the end unless --keep.

One JSON report on stdout, a summary table on stderr.
"""

import argparse
import json
import os
import pathlib
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import ANSIBLE_PACKAGE, CACHE, ROOT, VENV, community_postgresql, log, stats  # noqa: E402
from _hostwatch import SSH_OPTS, HostWatch, ansible_tmp_dirs, module_uploads  # noqa: E402

LAB = ROOT / "lab" / "lab"
INVENTORY = ROOT / "lab" / "inventory.yml"
STATE = ROOT / "lab" / "state"
CONTROL_DIR = STATE / "cp"  # lab/lab down ends every ssh master under it
OURS = ROOT / "target" / "collections"
BINARY = ROOT / "binaries" / platform.machine() / "pgshift-module"
BINARY_COLLECTION = CACHE / "binary-module"
CALLBACKS = ROOT / "bench" / "callback_plugins"
HOST, HOST_IP = "db1", "10.77.0.11"
PG_HBA = "/etc/postgresql/15/main/pg_hba.conf"
CACHE_DIR = "/root/.ansible/pgshift"  # ours, for root on db1
ANSIBLE_TMP = "/root/.ansible/tmp"
ATTRS = "LOGIN,REPLICATION,NOSUPERUSER,NOCREATEDB,NOCREATEROLE"
AS_POSTGRES = {"become": True, "become_user": "postgres"}  # become_method su comes from the inventory
# Ansible's defaults (the lab's inventory turns compression off; a play's vars win over it).
DEFAULT_SSH = "-C -o ControlMaster=auto -o ControlPersist=60s"


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], **kw)


def ansible_env(pipelining=False, timer_out=None):
    env = dict(os.environ)
    env.update(PATH=f"{VENV}:{env.get('PATH', '')}",
               ANSIBLE_COLLECTIONS_PATH=f"{OURS}:{BINARY_COLLECTION}:{community_postgresql() or ''}",
               ANSIBLE_PIPELINING=str(pipelining), ANSIBLE_DEPRECATION_WARNINGS="false",
               ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="task_timer")
    if timer_out:
        env["TASK_TIMER_OUT"] = str(timer_out)
    return env


# ---------------------------------------------------------------------------------------------------
# preparation


def ensure_psycopg2():
    if run(["/usr/bin/python3", "-c", "import psycopg2"], capture_output=True).returncode == 0:
        return None
    log("installing python3-psycopg2 on this machine (lab hosts share /usr): apt-get install -y python3-psycopg2")
    p = run(["apt-get", "install", "-y", "python3-psycopg2"], stdout=sys.stderr, stderr=sys.stderr,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if p.returncode != 0:
        raise SystemExit("apt-get install -y python3-psycopg2 failed")
    return "python3-psycopg2"


def binary_module_collection():
    """bench.binary: the module binary under each module's name, as Ansible runs a binary module."""
    modules = BINARY_COLLECTION / "ansible_collections" / "bench" / "binary" / "plugins" / "modules"
    shutil.rmtree(BINARY_COLLECTION, ignore_errors=True)
    modules.mkdir(parents=True)
    for name in ("pg_hba_rule", "pg_replication_user"):
        shutil.copy2(BINARY, modules / name)


def lab_up():
    status = run([LAB, "status"], capture_output=True, text=True).stdout.split("\n")
    if all(len(f := line.split()) >= 4 and f[2] == "up" and f[3] == "ssh=yes" for line in status if line.strip()) \
            and INVENTORY.exists():
        log("lab: already up")
        return False
    log("lab: up")
    run([LAB, "up"], check=True, stdout=sys.stderr)
    return True


def postgres_up():
    """Runs site.yml unless db1's PostgreSQL is running. True if it ran."""
    st = run([LAB, "ssh", HOST, "pg_ctlcluster 15 main status"], capture_output=True)
    if st.returncode == 0:
        log("db1: PostgreSQL is running")
        return False
    log("db1: no PostgreSQL running: ansible-playbook playbooks/site.yml")
    t = time.perf_counter()
    env = ansible_env()
    del env["ANSIBLE_CALLBACKS_ENABLED"]
    p = run([VENV / "ansible-playbook", "-i", INVENTORY, ROOT / "playbooks" / "site.yml"], cwd=ROOT, env=env,
            capture_output=True, text=True)
    if p.returncode != 0:
        log(p.stdout[-4000:], p.stderr[-2000:])
        raise SystemExit("playbooks/site.yml failed")
    log(f"db1: site.yml took {time.perf_counter() - t:.1f} s")
    return True


# ---------------------------------------------------------------------------------------------------
# the tasks


def hba(side, user, method, extra=None):
    if side == "community":
        args = {"dest": PG_HBA, "contype": "host", "databases": "bench", "users": user,
                "source": "10.77.0.250/32", "method": method}
        return {"community.postgresql.postgresql_pg_hba": args, **(extra or {})}
    args = {"path": PG_HBA, "databases": "bench", "users": user, "address": "10.77.0.250/32", "method": method}
    return {f"{'pgshift.cluster' if side == 'ours' else 'bench.binary'}.pg_hba_rule": args, **(extra or {})}


def role(side, name, password):
    if side == "community":
        return {"community.postgresql.postgresql_user": {"name": name, "password": password,
                                                         "role_attr_flags": ATTRS, "conn_limit": 5},
                "no_log": True, **AS_POSTGRES}
    module = f"{'pgshift.cluster' if side == 'ours' else 'bench.binary'}.pg_replication_user"
    return {module: {"name": name, "password": password, "conn_limit": 5}, "no_log": True}


def alternating(side, n, password):
    """n tasks: an unchanged rule, an unchanged role, ..."""
    return [{"name": f"{side} #{i}", **(hba(side, f"alt_{side}", "scram-sha-256") if i % 2 == 0
                                          else role(side, f"alt_{side}", password))} for i in range(n)]


def changing(side, n, pw_a, pw_b):
    """n tasks of each: a role whose password alternates, a rule whose method alternates."""
    tasks = [{"name": f"{side} user #{i}", **role(side, f"chg_{side}", pw_a if i % 2 == 0 else pw_b)} for i in range(n)]
    tasks += [{"name": f"{side} hba #{i}", **hba(side, f"chg_{side}", "md5" if i % 2 == 0 else "scram-sha-256")}
              for i in range(n)]
    return tasks


def play(tasks, control_dir):
    return [{"name": "bench ssh_tasks", "hosts": HOST, "gather_facts": False,
             "vars": {"ansible_ssh_args": DEFAULT_SSH, "ansible_control_path_dir": str(control_dir)},
             "tasks": tasks}]


def run_playbook(work, label, tasks, pipelining=False):
    """Runs the tasks on a fresh ControlMaster; returns the task_timer records."""
    book = work / f"{label}.yml"
    book.write_text(json.dumps(play(tasks, CONTROL_DIR / f"bench-{label}"), indent=1))  # JSON is YAML
    out = work / f"times-{label}.json"
    t = time.perf_counter()
    p = run([VENV / "ansible-playbook", "-i", INVENTORY, book], cwd=ROOT, env=ansible_env(pipelining, out),
            capture_output=True, text=True)
    wall = time.perf_counter() - t
    (work / f"ansible-{label}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        log(p.stdout[-6000:], p.stderr[-3000:])
        raise SystemExit(f"benchmark playbook {label} failed")
    records = json.loads(out.read_text())
    assert len(records) == len(tasks) and all(r["status"] == "ok" for r in records), (label, records[:3])
    log(f"  {label}: {len(tasks)} tasks, ansible-playbook {wall:.1f} s")
    return records


def summary(records):
    return {**stats([r["task_s"] for r in records]), "changed": sum(r["changed"] for r in records),
            "first_task_ms": round(records[0]["task_s"] * 1000, 1)}


def measure_side(work, label, tasks, pipelining=False):
    """One side of the comparison, with the host's view of what was sent."""
    run([LAB, "ssh", HOST, f"rm -rf {CACHE_DIR}"], check=True)  # ours starts with an empty cache
    watch = HostWatch(HOST_IP, CACHE_DIR, ANSIBLE_TMP)
    try:
        records = run_playbook(work, label, tasks, pipelining)
    finally:
        events = watch.stop()
    return {**summary(records), "binary_uploads_seen_on_host": len(module_uploads(events)),
            "ansible_tmp_dirs_seen_on_host": len(ansible_tmp_dirs(events))}


# ---------------------------------------------------------------------------------------------------
# by hand


def timed(cmd, n, input=None):
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        run(cmd, input=input, check=True, capture_output=True, text=True)
        samples.append(time.perf_counter() - t)
    return stats(samples)


def by_hand(password, n=20):
    """One command on an open (compressed) connection, and the cached binary run on the host."""
    master = CONTROL_DIR / "bench-hand"
    base = [o for pair in zip(SSH_OPTS[::2], SSH_OPTS[1::2]) if not pair[1].startswith("Control") for o in pair]
    ssh = ["ssh", "-C", "-o", "ControlMaster=auto", "-o", "ControlPersist=60s", "-o", f"ControlPath={master}", *base]
    res = {}
    try:
        run([*ssh, HOST_IP, "true"], check=True)
        res["ssh_command_on_open_connection"] = timed([*ssh, HOST_IP, "true"], n)
        binary = run([*ssh, HOST_IP, f"ls {CACHE_DIR}/pgshift-module-* | grep -v '[.]ok$' | head -1"],
                     capture_output=True, text=True, check=True).stdout.strip()
        hba_args = {"_ansible_module_name": "pg_hba_rule", "path": PG_HBA, "databases": "bench",
                    "users": "alt_ours", "address": "10.77.0.250/32", "method": "scram-sha-256"}
        user_args = {"_ansible_module_name": "pg_replication_user", "name": "alt_ours", "password": password,
                     "conn_limit": 5}
        script = f"""t() {{ s=$(date +%s%N); printf '%s' "$2" | {binary} - >/tmp/.bench-out-$$; e=$(date +%s%N);
grep -q '"failed":true' /tmp/.bench-out-$$ && {{ cat /tmp/.bench-out-$$ >&2; rm -f /tmp/.bench-out-$$; exit 1; }}
echo "$1 $(( (e - s) / 1000 ))"; }}
u=$(cat)
for i in $(seq {n}); do t hba '{json.dumps(hba_args)}'; t user "$u"; done; rm -f /tmp/.bench-out-$$"""
        # The password goes on stdin, never into the command line.
        out = run([*ssh, HOST_IP, script], input=json.dumps(user_args), check=True, capture_output=True,
                  text=True).stdout
        runs = {}
        for line in out.split("\n"):
            if line.strip():
                kind, us = line.split()
                runs.setdefault(kind, []).append(int(us) / 1e6)
        res["cached_module_run_on_host"] = {k: stats(v) for k, v in runs.items()}
    finally:
        run(["ssh", "-O", "exit", "-o", f"ControlPath={master}", HOST_IP], capture_output=True)
    return res


# ---------------------------------------------------------------------------------------------------


def sizes():
    manifest = json.loads((ROOT / "binaries" / "manifest.json").read_text())
    out = {f"{arch}/{name}": v["size"] for arch, files in manifest.items() for name, v in files.items()}
    tarballs = sorted((ROOT / "dist").glob("pgshift-cluster-*.tar.gz"))
    if tarballs:
        out["tarball " + tarballs[-1].name] = tarballs[-1].stat().st_size
    data = BINARY.read_bytes()
    out["module binary compressed as ssh -C sends it (zlib 6)"] = len(zlib.compress(data, 6))
    return out


def table(report):
    rows = [("ours (action plugin, cache)", report["alternating_unchanged"]["ours"]),
            ("binary module (sent every task)", report["alternating_unchanged"]["binary_module"]),
            ("community.postgresql", report["alternating_unchanged"]["community"]),
            ("community.postgresql, pipelining", report["alternating_unchanged"]["community_pipelining"])]
    lines = ["| path | tasks | median ms | p90 ms | first task ms | binaries renamed into the cache (host) |"
             " Ansible temp dirs in /root/.ansible/tmp (host) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['runs']} | {r['median_ms']} | {r['p90_ms']} | {r['first_task_ms']} | "
                     f"{r['binary_uploads_seen_on_host']} | {r['ansible_tmp_dirs_seen_on_host']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    ap.add_argument("--tasks", type=int, default=100, help="our tasks (default 100)")
    ap.add_argument("--compare", type=int, default=30, help="tasks of the other paths (default 30)")
    opts = ap.parse_args()
    t0 = time.perf_counter()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-bench-ssh-"))
    report = {"host": f"{HOST} (lab network namespace, real SSH over a veth)",
              "ssh": f"ansible_ssh_args={DEFAULT_SSH!r} (Ansible's default), pipelining off unless said"}
    try:
        report["installed"] = ensure_psycopg2()
        if community_postgresql() is None:
            raise SystemExit(f"community.postgresql: {ANSIBLE_PACKAGE} could not be downloaded")
        report["community_postgresql"] = json.loads(
            (community_postgresql() / "ansible_collections/community/postgresql/MANIFEST.json").read_text()
        )["collection_info"]["version"]
        report["ansible_core"] = run([VENV / "python", "-c", "import ansible.release as r; print(r.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
        binary_module_collection()
        report["bytes"] = sizes()
        report["lab_started"] = lab_up()
        report["site_yml_ran"] = postgres_up()
        pw, pw_a, pw_b = (secrets.token_urlsafe(18) for _ in range(3))

        log("setup: what the measured tasks ask for")
        setup = []
        for side in ("ours", "binary", "community"):
            setup += alternating(side, 2, pw)
        setup += changing("ours", 1, pw_a, pw_b) + changing("community", 1, pw_a, pw_b)
        run_playbook(work, "setup", setup)

        log("alternating unchanged tasks, Ansible's default SSH settings")
        alt = {}
        alt["ours"] = measure_side(work, "ours", alternating("ours", opts.tasks, pw))
        alt["binary_module"] = measure_side(work, "binary", alternating("binary", opts.compare, pw))
        alt["community"] = measure_side(work, "community", alternating("community", opts.compare, pw))
        alt["community_pipelining"] = measure_side(work, "community-pipelining",
                                                   alternating("community", opts.compare, pw), pipelining=True)
        report["alternating_unchanged"] = alt
        for k, v in alt.items():
            log(f"  {k:22} median {v['median_ms']:6.1f} ms  p90 {v['p90_ms']:6.1f} ms  first {v['first_task_ms']} ms"
                f"  binaries sent {v['binary_uploads_seen_on_host']}  tmp dirs {v['ansible_tmp_dirs_seen_on_host']}")
        ours = alt["ours"]["median_ms"]
        report["ratios_median"] = {k: round(v["median_ms"] / ours, 2) for k, v in alt.items() if k != "ours"}

        log("changing tasks (a password that alternates, a rule whose method alternates)")
        n = max(opts.compare // 2, 4)
        chg = {}
        for side in ("ours", "community"):
            records = run_playbook(work, f"changing-{side}", changing(side, n, pw_a, pw_b))
            chg[f"{side}_user"] = summary(records[1:n])  # the first of each kind may be a no-op
            chg[f"{side}_hba"] = summary(records[n + 1:])
        report["changing"] = chg

        log("by hand: one command on the open connection, the cached module on the host")
        report["by_hand"] = by_hand(pw)
        report["table"] = table(report)
        log(report["table"])
    finally:
        if opts.keep:
            log("lab: kept up (--keep)")
        else:
            log("lab: down")
            run([LAB, "down"], stdout=sys.stderr, stderr=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    report["total_run_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
