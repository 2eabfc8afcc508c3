#!/usr/bin/env python3
"""Per-task wall time over real SSH in the lab: our binary modules vs community.postgresql's Python
modules doing the same work on db1 (numbers, not pass/fail).

Run as root: .venv/bin/python bench/ssh_tasks.py [--keep] [--tasks N]

  - brings the lab up if it is not, builds PostgreSQL with playbooks/site.yml if db1 has none running,
    installs python3-psycopg2 on this machine if missing (lab hosts share /usr; community.postgresql
    needs it), takes community.postgresql from the `ansible` PyPI wheel (bench/.cache, as pg_hba_rule.py);
  - generates one playbook (hosts: db1) of N tasks per case and runs it twice, with ANSIBLE_PIPELINING
    off and on; bench/callback_plugins/task_timer.py records each task's wall time (task start -> result).
    The first task of each case is a warm-up and is not counted;
  - times the pieces of one binary-module task by hand over a separate ssh ControlMaster (a command on the
    multiplexed connection, an sftp upload of the binary with and without ssh compression, the module
    binary run on the host);
  - always runs `lab/lab down` at the end unless --keep.

Ansible's SSH settings are its defaults (ssh_args "-C -o ControlMaster=auto -o ControlPersist=60s": one
compressed, persistent connection per host, reused by every task) plus the lab inventory's. The "ssh
variant" cases change ssh_args for a few tasks: no compression (a separate ControlMaster), or no
ControlMaster at all (a new SSH connection per command).

One JSON report on stdout, progress on stderr.
"""

import argparse
import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import ANSIBLE_PACKAGE, ROOT, VENV, community_postgresql, log, stats  # noqa: E402

LAB = ROOT / "lab" / "lab"
INVENTORY = ROOT / "lab" / "inventory.yml"
STATE = ROOT / "lab" / "state"
CONTROL_DIR = STATE / "cp"  # lab/lab down ends every ssh master under it
OURS = ROOT / "target" / "collections"
MODULES = OURS / "ansible_collections" / "pgshift" / "cluster" / "plugins" / "modules"
CALLBACKS = ROOT / "bench" / "callback_plugins"
HOST, HOST_IP = "db1", "10.77.0.11"
PG_HBA = "/etc/postgresql/15/main/pg_hba.conf"
ATTRS = "LOGIN,REPLICATION,NOSUPERUSER,NOCREATEDB,NOCREATEROLE"
AS_POSTGRES = {"become": True, "become_user": "postgres"}  # become_method su comes from the inventory
NO_COMPRESSION = {"ansible_ssh_args": "-o ControlMaster=auto -o ControlPersist=60s",
                  "ansible_control_path_dir": str(CONTROL_DIR / "nocomp")}  # its own master: -C is the master's
NO_CONTROLMASTER = {"ansible_ssh_args": "-C"}  # no ControlPersist: Ansible adds no ControlPath


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], **kw)


def ansible_env(pipelining=False, timer_out=None):
    env = dict(os.environ)
    env.update(PATH=f"{VENV}:{env.get('PATH', '')}",
               ANSIBLE_COLLECTIONS_PATH=f"{OURS}:{community_postgresql() or ''}",
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
# the playbook: cases of N tasks each


def cases(pw_a, pw_b):
    """(case id, what, side, task(i) -> dict[, max tasks]); every measured task of a changing case changes."""

    def user_ours(name, same):
        return lambda i: {"pgshift.cluster.pg_replication_user": {
            "name": name, "password": pw_a if same or i % 2 == 0 else pw_b, "conn_limit": 5}, "no_log": True}

    def user_community(name, same):
        return lambda i: {"community.postgresql.postgresql_user": {
            "name": name, "password": pw_a if same or i % 2 == 0 else pw_b, "role_attr_flags": ATTRS,
            "conn_limit": 5}, "no_log": True, **AS_POSTGRES}

    def method(i):
        return "md5" if i % 2 == 0 else "scram-sha-256"

    def hba_ours(user, reload, extra=None):
        args = {"path": PG_HBA, "databases": "bench", "users": user, "address": "10.77.0.250/32"}
        if not reload:
            args["reload"] = False
        return lambda i: {"pgshift.cluster.pg_hba_rule": {**args, "method": method(i)}, **(extra or {})}

    def hba_community(user, extra=None):
        args = {"dest": PG_HBA, "contype": "host", "databases": "bench", "users": user, "source": "10.77.0.250/32"}
        return lambda i: {"community.postgresql.postgresql_pg_hba": {**args, "method": method(i)}, **(extra or {})}

    return [
        # what every task pays: the controller alone (no connection), and one command over the open connection
        ("baseline.debug_no_connection", "baseline", None, lambda i: {"ansible.builtin.debug": {"msg": "x"}}),
        ("baseline.raw_true_one_ssh_command", "baseline", None, lambda i: {"ansible.builtin.raw": "true"}),
        ("user_changed.ours", "user_changed", "ours", user_ours("bench_ours", False)),
        ("user_changed.community_su_postgres", "user_changed", "community", user_community("bench_comm", False)),
        ("user_unchanged.ours", "user_unchanged", "ours", user_ours("bench_ours_same", True)),
        ("user_unchanged.community_su_postgres", "user_unchanged", "community", user_community("bench_comm_same", True)),
        ("hba_changed.ours_reload_verify", "hba_changed", "ours", hba_ours("bench_ours_reload", True)),
        ("hba_changed.ours_reload_false", "hba_changed", "ours", hba_ours("bench_ours_noreload", False)),
        ("hba_changed.community_root", "hba_changed", "community", hba_community("bench_comm_root")),
        ("hba_changed.community_su_postgres", "hba_changed", "community", hba_community("bench_comm_su", AS_POSTGRES)),
        # the same work with other SSH settings, to see where the time goes
        ("ssh_variant.ours_reload_false.no_ssh_compression", "ssh_variant", "ours",
         hba_ours("bench_ours_nocomp", False, {"vars": NO_COMPRESSION})),
        ("ssh_variant.community_root.no_ssh_compression", "ssh_variant", "community",
         hba_community("bench_comm_nocomp", {"vars": NO_COMPRESSION})),
        # a new SSH connection (~0.2 s here) for every command: fewer tasks
        ("ssh_variant.ours_reload_false.no_controlmaster", "ssh_variant", "ours",
         hba_ours("bench_ours_nocm", False, {"vars": NO_CONTROLMASTER}), 6),
        ("ssh_variant.community_root.no_controlmaster", "ssh_variant", "community",
         hba_community("bench_comm_nocm", {"vars": NO_CONTROLMASTER}), 6),
    ]


def tasks_in(case, n):
    return min(n, case[4]) if len(case) > 4 else n


def playbook(case_list, n):
    tasks = []
    for case in case_list:
        cid, task = case[0], case[3]
        for i in range(tasks_in(case, n)):
            tasks.append({"name": f"{cid} #{i}", **task(i)})
    return [{"name": "bench ssh_tasks", "hosts": HOST, "gather_facts": False, "tasks": tasks}]


def run_playbook(work, case_list, n, pipelining):
    book = work / "bench.yml"
    book.write_text(json.dumps(playbook(case_list, n), indent=1))  # JSON is YAML
    out = work / f"times-{'on' if pipelining else 'off'}.json"
    t = time.perf_counter()
    p = run([VENV / "ansible-playbook", "-i", INVENTORY, book], cwd=ROOT, env=ansible_env(pipelining, out),
            capture_output=True, text=True)
    wall = time.perf_counter() - t
    (work / f"ansible-{'on' if pipelining else 'off'}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        log(p.stdout[-6000:], p.stderr[-3000:])
        raise SystemExit(f"benchmark playbook failed (pipelining={pipelining})")
    records = json.loads(out.read_text())
    result = {}
    for case in case_list:
        cid, what = case[0], case[1]
        recs = [r for r in records if r["task"].startswith(cid + " #")]
        assert len(recs) == tasks_in(case, n) and all(r["status"] == "ok" for r in recs), (cid, recs)
        measured = recs[1:]  # the first is a warm-up
        changed = sum(r["changed"] for r in measured)
        want = 0 if what == "user_unchanged" else len(measured)
        result[cid] = {**stats([r["task_s"] for r in measured]), "changed": changed}
        if changed != want and what != "baseline":
            result[cid]["note"] = f"expected changed={want} of {len(measured)}"
        log(f"  {cid:52} median {result[cid]['median_ms']:7.1f} ms  p90 {result[cid]['p90_ms']:7.1f} ms"
            f"  changed {changed}/{len(measured)}")
    log(f"  ({len(records)} tasks, ansible-playbook {wall:.1f} s)")
    return result


# ---------------------------------------------------------------------------------------------------
# by hand: the pieces of one binary-module task


SSH_OPTS = ["-o", f"IdentityFile={STATE / 'id_ed25519'}", "-o", "IdentitiesOnly=yes", "-o", "User=root",
            "-o", f"UserKnownHostsFile={STATE / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]


def timed(cmd, n, input=None):
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        run(cmd, input=input, check=True, capture_output=True, text=True)
        samples.append(time.perf_counter() - t)
    return stats(samples)


def breakdown(work, pw_a, pw_b, n=10):
    rdir = "/root/pgshift-bench-ssh"
    masters = {True: CONTROL_DIR / "bench-c", False: CONTROL_DIR / "bench-n"}
    CONTROL_DIR.mkdir(parents=True, exist_ok=True)
    res = {}
    try:
        for compress, path in masters.items():
            run(["ssh", *(["-C"] if compress else []), "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                 "-o", f"ControlPath={path}", *SSH_OPTS, HOST_IP, "mkdir", "-p", rdir], check=True)
        mux = {c: ["-o", "ControlMaster=auto", "-o", f"ControlPath={p}", *SSH_OPTS] for c, p in masters.items()}
        res["ssh_command_on_open_connection"] = timed(["ssh", *mux[True], HOST_IP, "/bin/sh -c 'echo ~ && sleep 0'"], n)
        res["ssh_new_connection_command"] = timed(["ssh", *SSH_OPTS, HOST_IP, "true"], 5)
        small = work / "args"
        small.write_text(json.dumps({"name": "x", "password": "y"}))
        res["sftp_put_args_file"] = timed(["sftp", "-b", "-", *mux[True], HOST_IP], n, input=f"put {small} {rdir}/args\n")
        res["sftp_put_module_binary_compressed"] = timed(["sftp", "-b", "-", *mux[True], HOST_IP], n,
                                                         input=f"put {MODULES / 'pg_replication_user'} {rdir}/mod\n")
        res["sftp_put_module_binary_uncompressed"] = timed(["sftp", "-b", "-", *mux[False], HOST_IP], n,
                                                           input=f"put {MODULES / 'pg_replication_user'} {rdir}/mod\n")
        # the module itself on the host, timed there (no SSH in it)
        hba = {"path": PG_HBA, "databases": "bench", "users": "bench_direct", "address": "10.77.0.250/32"}
        args = {
            "user_a": {"name": "bench_direct", "password": pw_a, "conn_limit": 5},
            "user_b": {"name": "bench_direct", "password": pw_b, "conn_limit": 5},
            "hba_a": {**hba, "method": "md5"},
            "hba_b": {**hba, "method": "scram-sha-256"},
            "hba_a_nr": {**hba, "method": "md5", "reload": False},
            "hba_b_nr": {**hba, "method": "scram-sha-256", "reload": False},
        }
        puts = "".join(f"put {MODULES / m} {rdir}/{m}\n" for m in ("pg_replication_user", "pg_hba_rule"))
        for name, a in args.items():
            module = "pg_hba_rule" if name.startswith("hba") else "pg_replication_user"  # one multi-call binary
            (work / name).write_text(json.dumps({**a, "_ansible_module_name": module}))
            puts += f"put {work / name} {rdir}/{name}\n"
        run(["sftp", "-b", "-", *mux[True], HOST_IP], input=puts, check=True, capture_output=True, text=True)
        # per loop: user changed, changed, unchanged; hba changed with reload+verify x2, with reload: false x2
        labels = ["user_changed", "user_changed", "user_unchanged", "hba_reload_verify", "hba_reload_verify",
                  "hba_reload_false", "hba_reload_false"]
        script = f"""set -e; cd {rdir}; chmod 700 pg_replication_user pg_hba_rule
t() {{ s=$(date +%s%N); "$@" >out; e=$(date +%s%N); grep -q '"failed": *true' out && {{ cat out >&2; exit 1; }}; echo $(( (e - s) / 1000 )); }}
./pg_replication_user user_a >/dev/null; ./pg_hba_rule hba_a >/dev/null
for i in $(seq {n}); do
  t ./pg_replication_user user_b; t ./pg_replication_user user_a; t ./pg_replication_user user_a
  t ./pg_hba_rule hba_b; t ./pg_hba_rule hba_a; t ./pg_hba_rule hba_b_nr; t ./pg_hba_rule hba_a_nr
done
"""
        out = run(["ssh", *mux[True], HOST_IP, script], check=True, capture_output=True, text=True).stdout
        raw = {}
        for k, line in enumerate(out.split()):
            raw.setdefault(labels[k % len(labels)], []).append(int(line) / 1e6)
        res["module_binary_run_on_host"] = {k: stats(v) for k, v in raw.items()}
        data = (MODULES / "pg_replication_user").read_bytes()
        t = time.perf_counter()
        packed = zlib.compress(data, 6)  # ssh -C: zlib at level 6, on the controller, per upload
        res["module_binary_zlib6_on_controller"] = {"bytes": len(data), "compressed_bytes": len(packed),
                                                    "ms": round((time.perf_counter() - t) * 1000, 1)}
        run(["ssh", *mux[True], HOST_IP, f"rm -rf {rdir}"], capture_output=True)
    finally:
        for path in masters.values():
            run(["ssh", "-O", "exit", "-o", f"ControlPath={path}", HOST_IP], capture_output=True)
    return res


# ---------------------------------------------------------------------------------------------------


def where_time_goes(pieces, off):
    """One of our tasks, from -vvv: 5 ssh commands (echo ~, mkdir, chmod, run, rm) + 2 sftp puts."""
    out = {}
    cmd = pieces["ssh_command_on_open_connection"]["median_ms"]
    for label, cid, run_key in (("pg_hba_rule reload: false", "hba_changed.ours_reload_false", "hba_reload_false"),
                                ("pg_replication_user, password changes", "user_changed.ours", "user_changed")):
        parts = {"5 ssh commands on the open connection": round(5 * cmd, 1),
                 "sftp put of the binary (ssh -C)": pieces["sftp_put_module_binary_compressed"]["median_ms"],
                 "sftp put of the args file": pieces["sftp_put_args_file"]["median_ms"],
                 "module run on the host": pieces["module_binary_run_on_host"][run_key]["median_ms"]}
        total = round(sum(parts.values()), 1)
        measured = off[cid]["median_ms"]
        out[label] = {**parts, "sum": total, "measured_task_median": measured,
                      "rest (controller: worker fork, templating, results)": round(measured - total, 1),
                      "for comparison: debug task, no connection": off["baseline.debug_no_connection"]["median_ms"]}
    return out


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    ap.add_argument("--tasks", type=int, default=15, help="tasks per case, the first one a warm-up (default 15)")
    opts = ap.parse_args()
    t0 = time.perf_counter()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-bench-ssh-"))
    report = {"host": f"{HOST} (lab network namespace, real SSH over a veth)", "tasks_per_case": opts.tasks,
              "warmup_tasks_excluded": 1}
    try:
        installed = ensure_psycopg2()
        if community_postgresql() is None:
            raise SystemExit(f"community.postgresql: {ANSIBLE_PACKAGE} could not be downloaded")
        report["installed"] = installed
        report["community_postgresql"] = json.loads(
            (community_postgresql() / "ansible_collections/community/postgresql/MANIFEST.json").read_text()
        )["collection_info"]["version"]
        report["ansible_core"] = run([VENV / "python", "-c", "import ansible.release as r; print(r.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
        report["lab_started"] = lab_up()
        report["site_yml_ran"] = postgres_up()
        report["module_binary_bytes"] = {m: (MODULES / m).stat().st_size for m in ("pg_replication_user", "pg_hba_rule")}
        pw_a, pw_b = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        case_list = cases(pw_a, pw_b)
        runs = {}
        for pipelining in (False, True):
            key = "pipelining_on" if pipelining else "pipelining_off"
            log(f"playbook, ANSIBLE_PIPELINING={pipelining}: {len(case_list)} cases x {opts.tasks} tasks")
            runs[key] = run_playbook(work, case_list, opts.tasks, pipelining)
        report["per_task_ms"] = runs

        off, on = runs["pipelining_off"], runs["pipelining_on"]

        def cmp(what, ours, community):
            o, c = off[ours], off[community]
            return {"what": what, "ours": ours, "community": community,
                    "ours_median_ms": o["median_ms"], "ours_p90_ms": o["p90_ms"],
                    "community_median_ms": c["median_ms"], "community_p90_ms": c["p90_ms"],
                    "ratio_community_over_ours_median": ratio(c["median_ms"], o["median_ms"]),
                    "ratio_community_over_ours_p90": ratio(c["p90_ms"], o["p90_ms"]),
                    "community_median_ms_pipelining_on": on[community]["median_ms"],
                    "ratio_with_community_pipelining_on": ratio(on[community]["median_ms"], o["median_ms"])}

        report["comparison_default_ssh_pipelining_off"] = [
            cmp("replication role, password changes", "user_changed.ours", "user_changed.community_su_postgres"),
            cmp("replication role, unchanged", "user_unchanged.ours", "user_unchanged.community_su_postgres"),
            cmp("pg_hba rule changes (ours reloads+verifies)", "hba_changed.ours_reload_verify",
                "hba_changed.community_root"),
            cmp("pg_hba rule changes (ours reload: false)", "hba_changed.ours_reload_false", "hba_changed.community_root"),
            cmp("pg_hba rule changes, community as postgres (su)", "hba_changed.ours_reload_false",
                "hba_changed.community_su_postgres"),
        ]
        report["pipelining_on_over_off_median"] = {cid: ratio(on[cid]["median_ms"], off[cid]["median_ms"]) for cid in off}

        log("by hand: the pieces of a binary-module task")
        report["binary_task_pieces"] = breakdown(work, pw_a, pw_b)
        for k, v in report["binary_task_pieces"].items():
            log(f"  {k}: {v}")
        report["where_a_binary_task_goes_ms"] = where_time_goes(report["binary_task_pieces"], off)
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
