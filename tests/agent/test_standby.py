"""How a node becomes and stays a standby, the same from the playbook, the module and the agent,
on a cluster whose inventory names have upper case and dots (`DB1` on lab host db1,
`db2.lab.example` on db2) and whose replication runs over TLS with `verify-full` and client
certificates from a lab CA (pg_tls_enabled: hostssl rules with clientcert, the agent's
[replication] TLS files).

After every change of roles, in both directions (a switchover, a crash failover, a rejoin by
pg_rewind, a rejoin by rebuild while writes go on): the standby streams over TLS (the leader's
pg_stat_ssl row of its WAL sender shows ssl and the client certificate's DN; the standby's
primary_conninfo and WAL receiver carry the CA, the certificate and the key) and every node
has exactly one slot, the other member's, named by the one rule (no orphan). During a rebuild
the member key says `rebuilding`, `pgshift status` shows it and the rebuilding node's API
answers throughout. Slots an older naming rule left are dropped by the leader once unused.
At the end the replication playbook changes nothing: the module and the agent agree.

The cluster is built by site.yml's playbooks but backup.yml (pgBackRest matches certificates
against the host's own name, which these inventory names are not), the demo and HAProxy.
In file order, against one cluster; the module fixture always runs `lab/lab down`.
"""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import yaml

from labkit import (
    INVENTORY, ROOT, STATE, VENV_BIN, Probe, ansible_env, cluster_status as status, fresh_lab, lab, log_mark, log_since, needs, on,
    out, prepare_probe, sql, teardown_cluster, wait_for,
)

RESULTS = ROOT / "target" / "agent-standby.json"
# Member name -> lab host.
HOST = {"DB1": "db1", "db2.lab.example": "db2"}
SLOT = {"DB1": "db1", "db2.lab.example": "db2_lab_example"}
TLS_DIR = "/var/lib/postgresql/tls"

pytestmark = needs(etcd=True)


def names_inventory(path):
    """lab/inventory.yml with db1 and db2 renamed DB1 and db2.lab.example (same addresses)."""
    inv = yaml.safe_load(INVENTORY.read_text())
    rename = {v: k for k, v in HOST.items()}
    top = inv["all"]
    top["hosts"] = {rename.get(h, h): v for h, v in top["hosts"].items()}
    for group in top["children"].values():
        group["hosts"] = {rename.get(h, h): v for h, v in (group.get("hosts") or {}).items()}
    path.write_text(yaml.safe_dump(inv))


# Extra vars: the playbooks' group_vars would override the inventory's `all: vars`.
EXTRA = {
    # Next to the lab's inventory these follow inventory_dir; here they are spelled out.
    "pgbackrest_tls_local_dir": str(STATE / "pki"),
    "pgshift_etcd_tls_local_dir": str(STATE / "etcd-pki"),
    "pg_tls_local_dir": str(STATE / "pg-pki"),
    "pg_tls_enabled": True,
    "pg_tls_generate": True,
    "replication_ssl_mode": "verify-full",
    "pgshift_rebuild_max_rate": "2M",
}


def playbook(inventory, *books, timeout=900):
    secrets = ROOT / "lab" / "group_vars" / "all" / "secrets.yml"
    return subprocess.run([VENV_BIN / "ansible-playbook", "-i", inventory, "-e", f"@{secrets}",
                           "-e", json.dumps(EXTRA), *[ROOT / "playbooks" / b for b in books]],
                          env=ansible_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="pgshift-standby-test-")
    ctx = {"results": {}}
    try:
        # The lab hosts' /etc/hosts learn the inventory names.
        fresh_lab({"DB1": "10.77.0.11", "db2.lab.example": "10.77.0.12"})
        inventory = os.path.join(tmp, "inventory.yml")
        names_inventory(pathlib.Path(inventory))
        started = time.monotonic()
        # site.yml without backup.yml (pgBackRest matches certificates against the host's own
        # name, db2, which this inventory does not use), the demo and HAProxy.
        res = playbook(inventory, "discover.yml", "postgresql.yml", "replication.yml", "agent.yml")
        (ROOT / "target" / "standby-site.log").write_text(res.stdout + res.stderr)
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
        ctx["results"]["site_seconds"] = round(time.monotonic() - started, 1)
        passfile = prepare_probe(tmp)
        ctx.update({"passfile": passfile, "inventory": inventory})
        yield ctx
    finally:
        print(json.dumps(ctx["results"], indent=2))
        teardown_cluster(ctx["results"], RESULTS)
        shutil.rmtree(tmp, ignore_errors=True)


def member(doc, name):
    return next((m for m in doc["members"] if m["name"] == name), None)


def settled():
    """(leader, standby) member names once the standby streams from the leader, caught up
    and synchronous."""
    def look():
        for h in HOST.values():
            doc = status(h)
            if not doc or not doc.get("leader"):
                continue
            leader = doc["leader"]
            other = next(n for n in HOST if n != leader)
            m = member(doc, other)
            if (m and m["role"] == "replica" and m["state"] == "streaming" and m["upstream"] == leader
                    and m["lag_bytes"] == 0 and doc.get("sync_standby") == other):
                return leader, other
        return None
    return wait_for("a leader with its standby streaming, caught up and synchronous", look, 180, 0.5)


def slots(name):
    return sql(HOST[name], "SELECT slot_name || ':' || active FROM pg_replication_slots ORDER BY 1").split()


def check_tls_and_slots(leader, standby, results, step):
    """The standby streams over TLS with the client certificate; every node has exactly the
    other member's slot (the leader's in use)."""
    row = sql(HOST[leader], "SELECT r.application_name || '|' || s.ssl || '|' || coalesce(s.client_dn, '') "
                            "FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid")
    assert row == f"{standby}|true|/CN=replicator", (step, row)
    info = sql(HOST[standby], "SHOW primary_conninfo")
    for part in ["sslmode=verify-full", f"sslrootcert={TLS_DIR}/ca.crt",
                 f"sslcert={TLS_DIR}/replication.crt", f"sslkey={TLS_DIR}/replication.key",
                 f"application_name={standby}", f"host={leader} "]:
        assert part in info, (step, part, info)
    receiver = sql(HOST[standby], "SELECT status || '|' || conninfo FROM pg_stat_wal_receiver")
    assert receiver.startswith("streaming|") and "sslcert=" in receiver, (step, receiver)
    assert sql(HOST[standby], "SHOW primary_slot_name") == SLOT[standby]
    wait_for(f"{step}: the slots", lambda: slots(leader) == [f"{SLOT[standby]}:true"]
             and slots(standby) == [f"{SLOT[leader]}:false"], 10, 0.2)
    results.setdefault("checked", []).append(step)


@pytest.mark.smoke
def test_bootstrap_names_slots_and_tls(cluster):
    leader, standby = settled()
    assert leader == "DB1", leader
    check_tls_and_slots(leader, standby, cluster["results"], "bootstrap")
    # The module, asked directly (check mode, on the built standby), names the same slot.
    res = subprocess.run(
        [VENV_BIN / "ansible", "-i", cluster["inventory"], standby, "-m", "pgshift.cluster.pg_basebackup_standby",
         "--check", "-a", json.dumps({
             "primary_host": leader, "replication_user": "replicator",
             "passfile": "/var/lib/postgresql/.pgpass-pgshift",
             "data_directory": "/var/lib/postgresql/15/main", "application_name": standby,
             "ssl_mode": "verify-full", "ca_cert": f"{TLS_DIR}/ca.crt",
             "ssl_cert": f"{TLS_DIR}/replication.crt", "ssl_key": f"{TLS_DIR}/replication.key",
             "wait_streaming": 0})],
        env=ansible_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f'"slot_name": "{SLOT[standby]}"' in res.stdout and '"changed": false' in res.stdout, res.stdout
    # Without a client certificate the leader refuses replication, also with the password.
    refused = on(HOST[standby], f"cd / && runuser -u postgres -- psql 'host={leader} user=replicator "
                                "dbname=replication replication=true sslmode=verify-full "
                                f"sslrootcert={TLS_DIR}/ca.crt passfile=/var/lib/postgresql/.pgpass-pgshift' "
                                "-XAtc 'IDENTIFY_SYSTEM'")
    assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr


@pytest.mark.smoke
def test_switchovers_both_ways_keep_tls_and_one_slot_each(cluster):
    for _ in range(2):
        old, new = settled()
        res = on(HOST[new], f"pgshift switchover --to {shlex.quote(new)}", timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        leader, standby = settled()
        assert (leader, standby) == (new, old)
        check_tls_and_slots(leader, standby, cluster["results"], f"switchover to {new}")


def fault(cluster, name, inject, recover):
    old, new = settled()
    probe = Probe(cluster["passfile"])
    probe.start()
    try:
        wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[HOST[old]]) >= 5, 20)
        t = time.monotonic()
        inject(old)
        wait_for(f"{new} acknowledging writes", lambda: probe.first_ack(HOST[new], t), 60, 0.1)
    finally:
        probe.stop()
    lost = probe.lost_on(HOST[new])
    assert not lost, f"{name}: {len(lost)} acknowledged writes lost: {lost[:10]}"
    problems = probe.check(HOST[new])
    assert not problems, (name, problems)
    recover(old, new)
    leader, standby = settled()
    assert (leader, standby) == (new, old), (name, leader, standby)
    check_tls_and_slots(leader, standby, cluster["results"], f"{name} of {old}")
    return old, new


def test_reinit_rebuilds_a_standby_while_writes_go_on_and_is_refused_on_the_leader(cluster):
    """`pgshift reinit` (issue 21): refused on the leader with the reason and nothing done;
    on the standby, run from the leader's host, its agent stops PostgreSQL, moves the data
    directory aside, copies a fresh one and streams again over TLS with its slot, while a
    probe writes on the leader: no acknowledged write lost."""
    leader, standby = settled()
    aside_before = out(HOST[standby], "ls -d /var/lib/postgresql/15/main.pgshift-old-* 2>/dev/null || true").split()
    refused = on(HOST[standby], f"pgshift reinit {leader}")
    assert refused.returncode == 1, refused
    assert f"{leader} is the leader: switch over first" in refused.stderr, refused.stderr
    assert settled() == (leader, standby)
    probe = Probe(cluster["passfile"])
    mark = log_mark(HOST[standby])
    started = time.monotonic()
    try:
        probe.start()
        wait_for(f"writes acknowledged by {leader}", lambda: len(probe.acks[HOST[leader]]) >= 5, 20)
        res = on(HOST[leader], f"pgshift reinit {standby} --timeout 300", timeout=330)
        took = time.monotonic() - started
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{standby} rebuilt and streaming from {leader}" in res.stdout, res.stdout
        writes_during = len([1 for at, _ in probe.acks[HOST[leader]] if at > started])
    finally:
        probe.stop()
    log = log_since(HOST[standby], mark)
    assert f"reinit requested through {leader}" in log, log[-3000:]
    assert "rebuilt from a base backup" in log, log[-3000:]
    aside = out(HOST[standby], "ls -d /var/lib/postgresql/15/main.pgshift-old-* 2>/dev/null || true").split()
    assert len(aside) == len(aside_before) + 1, (aside_before, aside)
    assert writes_during > 0
    assert not probe.lost_on(HOST[leader])
    problems = probe.check(HOST[leader])
    assert not problems, problems
    assert settled() == (leader, standby)
    assert not probe.lost_on(HOST[standby])
    check_tls_and_slots(leader, standby, cluster["results"], f"reinit of {standby}")
    cluster["results"]["reinit"] = {"of": standby, "seconds": round(took, 1), "writes_meanwhile": writes_during}


def test_crash_failovers_both_ways(cluster):
    for _ in range(2):
        fault(cluster, "crash", inject=lambda old: lab("crash", HOST[old]),
              recover=lambda old, new: lab("boot", HOST[old]))


def diverge(old):
    """Cuts `old` off and commits a row there alone (synchronous_commit = local, before its
    guard fences it): its history now leaves the one the new leader will have."""
    lab("partition", HOST[old])
    res = on(HOST[old], "cd / && runuser -u postgres -- psql -XAtq -c "
                        "\"SET synchronous_commit = local; CREATE TABLE IF NOT EXISTS diverged (at timestamptz); "
                        "INSERT INTO diverged VALUES (now())\"")
    assert res.returncode == 0, res.stderr


def test_rejoins_by_rewind_both_ways(cluster):
    for _ in range(2):
        old, _ = settled()
        mark = log_mark(HOST[old])
        fault(cluster, "partition", inject=diverge, recover=lambda old, new: lab("heal", HOST[old]))
        log = log_since(HOST[old], mark)
        assert "rewound" in log, log[-3000:]


def test_rebuilds_both_ways_say_rebuilding_while_writes_go_on(cluster):
    """pg_rewind cannot work (the leader's rewind role may not read files): the old primary is
    rebuilt at 2 MB/s. Meanwhile its member key says `rebuilding`, `pgshift status` on the
    leader shows it, its own API answers every request, and the leader takes writes."""
    revoke = ("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) "
              "FROM pgshift_rewind")
    grant = revoke.replace("REVOKE", "GRANT").replace(" FROM ", " TO ")
    for _ in range(2):
        old, new = settled()
        seen, answers = set(), {"ok": 0, "failed": 0}
        texts = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                doc = status(HOST[new])
                m = doc and member(doc, old)
                if m:
                    seen.add(m["state"])
                    if m["state"] == "rebuilding" and not texts:
                        texts.append(out(HOST[new], "pgshift status"))
                code = on(HOST[old], "curl -s -o /dev/null -w '%{http_code}' --max-time 2 "
                                     "http://127.0.0.1:8008/health", timeout=10).stdout.strip()
                answers["ok" if code in ("200", "503") else "failed"] += 1
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        probe = Probe(cluster["passfile"])
        mark = log_mark(HOST[old])
        try:
            probe.start()
            wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[HOST[old]]) >= 5, 20)
            t = time.monotonic()
            diverge(old)
            wait_for(f"{new} acknowledging writes", lambda: probe.first_ack(HOST[new], t), 60, 0.1)
            sql(HOST[new], revoke)
            try:
                watcher.start()
                lab("heal", HOST[old])
                wait_for(f"{old} rebuilt", lambda: "rebuilt from a base backup" in log_since(HOST[old], mark),
                         240, 1)
                writes_during = len([1 for at, _ in probe.acks[HOST[new]] if at > t])
            finally:
                sql(HOST[new], grant)
        finally:
            stop.set()
            probe.stop()
            if watcher.is_alive():
                watcher.join(timeout=15)
        assert not probe.lost_on(HOST[new])
        problems = probe.check(HOST[new])
        assert not problems, problems
        assert "rebuilding" in seen, seen
        assert texts and "rebuilding" in texts[0], texts
        assert answers["failed"] == 0 and answers["ok"] > 0, answers
        assert writes_during > 0
        aside = out(HOST[old], "ls -d /var/lib/postgresql/15/main.pgshift-old-* 2>/dev/null || true").split()
        assert aside, "the old data directory was not kept aside"
        leader, standby = settled()
        assert (leader, standby) == (new, old)
        check_tls_and_slots(leader, standby, cluster["results"], f"rebuild of {old}")
        cluster["results"].setdefault("rebuild", []).append(
            {"of": old, "states_seen": sorted(seen), "api_answers": answers["ok"], "writes_meanwhile": writes_during})


def test_down_calls_a_rebuild_off_cleanly_and_up_lets_the_rejoin_run(cluster):
    """`pgshift down` during a rebuild: the base backup is killed and the old data directory
    put back (no half copy left, nothing more kept aside), marked as needing a rebuild (the
    pg_rewind before it failed half-way); the node starts neither it nor another rejoin while
    down. After `pgshift up` it is rebuilt at once (not rewound: the directory is not to be
    trusted) and streams over TLS."""
    revoke = ("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) "
              "FROM pgshift_rewind")
    grant = revoke.replace("REVOKE", "GRANT").replace(" FROM ", " TO ")
    aside = "ls -d /var/lib/postgresql/15/main.pgshift-old-* 2>/dev/null | wc -l"
    old, new = settled()
    kept = out(HOST[old], aside).strip()
    mark = log_mark(HOST[old])
    probe = Probe(cluster["passfile"])
    probe.start()
    try:
        wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[HOST[old]]) >= 5, 20)
        t = time.monotonic()
        diverge(old)
        wait_for(f"{new} acknowledging writes", lambda: probe.first_ack(HOST[new], t), 60, 0.1)
    finally:
        probe.stop()
    sql(HOST[new], revoke)
    try:
        lab("heal", HOST[old])
        state = lambda: (member(status(HOST[new]) or {"members": []}, old) or {}).get("state")
        wait_for(f"{old} rebuilding", lambda: state() == "rebuilding", 120, 0.2)
        res = on(HOST[new], f"pgshift down {shlex.quote(old)}", timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        wait_for("the rebuild called off", lambda: "called off" in log_since(HOST[old], mark), 30, 0.5)
        log = log_since(HOST[old], mark)
        assert "rebuilt from a base backup" not in log, log[-3000:]
        # The old directory is back whole, and nothing more was kept aside.
        assert out(HOST[old], aside).strip() == kept
        main = "/var/lib/postgresql/15/main"
        assert on(HOST[old], f"test -s {main}/global/pg_control && test -f {main}/pgshift-rebuild-pending"
                  ).returncode == 0
        # In maintenance: not started, no new rejoin (longer than the two ttl a stall takes).
        rejoins = log.count("Rejoin {")
        time.sleep(8)
        log = log_since(HOST[old], mark)
        assert log.count("Rejoin {") == rejoins and "StartStandby" not in log.split("called off")[-1], log[-3000:]
        assert member(status(HOST[new]), old)["role"] == "stopped"
    finally:
        sql(HOST[new], grant)
    up = log_mark(HOST[old])
    res = on(HOST[new], f"pgshift up {shlex.quote(old)}", timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(f"{old} rebuilt after up", lambda: "rebuilt from a base backup" in log_since(HOST[old], up), 120, 1)
    # The reason is the marker's: the pg_rewind that failed before `down` (the grant is back
    # now, so a new pg_rewind would have worked and said "rewound").
    after_up = log_since(HOST[old], up)
    assert "permission denied for function pg_read_binary_file; rebuilt from a base backup" in after_up, after_up
    assert ": rewound" not in after_up, after_up
    leader, standby = settled()
    assert (leader, standby) == (new, old)
    check_tls_and_slots(leader, standby, cluster["results"], f"down during the rebuild of {old}, then up")


def test_slots_of_an_older_naming_rule_are_dropped_once_unused(cluster):
    leader, standby = settled()
    # What the playbook's regex_replace and the module's short-name default gave these names.
    legacy = {"DB1": "__1", "db2.lab.example": "db2"}[standby]
    mark = log_mark(HOST[leader])
    sql(HOST[leader], f"SELECT pg_create_physical_replication_slot('{legacy}')")
    wait_for(f"{legacy} dropped", lambda: f"{legacy}:" not in " ".join(slots(leader)), 10, 0.2)
    assert f"dropped replication slot {legacy}" in log_since(HOST[leader], mark)
    # A slot of no rule is none of the agent's business.
    sql(HOST[leader], "SELECT pg_create_physical_replication_slot('kept_by_hand')")
    time.sleep(2)
    assert "kept_by_hand:false" in slots(leader)
    sql(HOST[leader], "SELECT pg_drop_replication_slot('kept_by_hand')")


def test_the_replication_playbook_changes_nothing_after_all_that(cluster):
    """The module converges on what the agent wrote (primary_conninfo, slot, passfile)."""
    settled()
    res = playbook(cluster["inventory"], "discover.yml", "replication.yml")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    recap = res.stdout[res.stdout.rindex("PLAY RECAP"):]
    for name in HOST:
        line = next(l for l in recap.splitlines() if l.startswith(name))
        assert "changed=0" in line, recap
