"""Day-2 operations on the session's shared cluster (tests/labkit.py: site.yml's defaults with
the pgBackRest repository on aux, agents on db1/db2, synchronous mode on): `pgshift reinit`
of the standby from the repository and from the leader while a probe writes through both
hosts; a standby whose data directory is gone built again by replication.yml with
pg_standby_method: pgbackrest (the module's restore from the repository); `pgshift config`
(checked, versioned, adopted by every agent); `pgshift restart --pending` after `pgshift config
set shared_buffers=...`, standbys first and the leader by a switchover, timed through HAProxy. A restore from the repository must leave the leader without any base backup to serve
(none of the checkpoint requests every base backup makes on its source, which the leader
path shows); both paths are timed for the closing note (target/agent-day2.json).
"""

import json
import time

import pytest

from labkit import (
    AGENT_LOG, AGENT_PID, RW, ROOT, Probe, Writer, cluster_status, collect_logs, log_mark, log_since, member, needs, on, out, playbook, roles,
    sql, wait_for, write_results,
)
from labkit import psql as through_haproxy

RESULTS = ROOT / "target" / "agent-day2.json"

pytestmark = needs(etcd=True)


@pytest.fixture(scope="module")
def cluster(shared_cluster):
    shared = shared_cluster.ensure()
    ctx = {"passfile": shared.passfile, "results": {}}
    try:
        yield ctx
    finally:
        print(json.dumps(ctx["results"], indent=2))
        collect_logs()
        write_results(ctx["results"], RESULTS)


def requested_checkpoints(host):
    """The host's requested checkpoints so far: every base backup asks its source for one
    (pg_basebackup -c fast), a restore from the repository does not; a counter, so a copy
    too short for any sampling to catch still shows."""
    return int(sql(host, "SELECT checkpoints_req FROM pg_stat_bgwriter"))


def reinit(cluster, leader, standby, source):
    """`pgshift reinit standby --from source` run on the leader's host while the probe writes;
    (seconds, checkpoints requested on the leader meanwhile, the standby's log)."""
    probe = Probe(cluster["passfile"])
    mark = log_mark(standby)
    try:
        probe.start()
        wait_for(f"writes acknowledged by {leader}", lambda: len(probe.acks[leader]) >= 5, 20)
        checkpoints = requested_checkpoints(leader)
        started = time.monotonic()
        res = on(leader, f"pgshift reinit {standby} --from {source} --timeout 300", timeout=330)
        seconds = time.monotonic() - started
        checkpoints = requested_checkpoints(leader) - checkpoints
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{standby} rebuilt and streaming from {leader}" in res.stdout, res.stdout
    finally:
        probe.stop()
    assert not probe.lost_on(leader)
    problems = probe.check(leader)
    assert not problems, problems
    assert roles() == (leader, standby)
    assert not probe.lost_on(standby)
    return seconds, checkpoints, log_since(standby, mark)


@pytest.mark.smoke
def test_reinit_from_the_repository_spares_the_leader_then_from_the_leader(cluster):
    leader, standby = roles()
    refused = on(standby, f"pgshift reinit {leader}")
    assert refused.returncode == 1 and f"{leader} is the leader: switch over first" in refused.stderr, refused
    started = time.monotonic()
    # A full backup in the repository, as the timers would have taken one.
    out("aux", "cd / && runuser -u postgres -- pgbackrest --stanza=main --type=full backup", timeout=600)
    backup_seconds = time.monotonic() - started
    size = int(sql(leader, "SELECT sum(pg_database_size(oid)) FROM pg_database"))

    seconds, checkpoints, log = reinit(cluster, leader, standby, "pgbackrest")
    assert "rebuilt from a pgBackRest restore of stanza main" in log, log[-3000:]
    assert checkpoints == 0, f"the leader ran {checkpoints} requested checkpoint(s): a base backup?"
    aside = out(standby, "ls -d /var/lib/postgresql/15/main.pgshift-old-* 2>/dev/null || true").split()
    assert aside, "the old data directory was not kept aside"
    # The restored standby replays from the archive, then streams through its slot.
    restore_command = sql(standby, "SHOW restore_command")
    assert "pgbackrest" in restore_command and "archive-get" in restore_command, restore_command
    assert sql(leader, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{standby}'") == "t"

    from_leader, checkpoints_leader, log = reinit(cluster, leader, standby, "leader")
    assert f"rebuilt from a base backup of {leader}:5432" in log, log[-3000:]
    # The same counter sees the leader's base backup.
    assert checkpoints_leader >= 1, checkpoints_leader
    cluster["results"]["reinit"] = {
        "of": standby, "database_bytes": size, "full_backup_seconds": round(backup_seconds, 1),
        "from_pgbackrest_seconds": round(seconds, 1), "from_leader_seconds": round(from_leader, 1),
        "checkpoints_requested_on_leader": {"pgbackrest": checkpoints, "leader": checkpoints_leader},
    }


PGDATA = "/var/lib/postgresql/15/main"


# Not in make test's smoke set (its budget): the module's restore from a repository, its
# idempotence and the primary serving no base backup are in make test through
# modules/tests/pg_basebackup_standby.rs; this adds the playbook and the TLS repository.


def test_the_replication_playbook_restores_a_lost_standby_from_the_repository(cluster):
    """The standby host loses its data directory (its agent stopped first, as an operator
    would): discover.yml + replication.yml with pg_standby_method: pgbackrest restore it from
    the repository (no checkpoint requested on the leader: no base backup), it streams, a
    second run changes nothing on it, and its agent, started again, keeps it as it is."""
    leader, standby = roles()
    info = out("aux", "cd / && runuser -u postgres -- pgbackrest --stanza=main --output=json info")
    if not json.loads(info)[0]["backup"]:
        out("aux", "cd / && runuser -u postgres -- pgbackrest --stanza=main --type=full backup", timeout=600)
    aside = f"{PGDATA}.day2-test"
    out(standby, "systemctl stop pgshift-agent")
    try:
        out(standby, f"cd / && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {PGDATA} -m fast -w stop"
                     f" && mv {PGDATA} {aside}")
        checkpoints = requested_checkpoints(leader)
        # -v: the module's result (its actions) in the output.
        seconds, first, res = playbook("discover.yml", "replication.yml", args=("-v",),
                                       extra_vars={"pg_standby_method": "pgbackrest"})
        assert first[standby]["changed"] >= 1, first
        assert "restore of stanza main from the pgBackRest repository" in res.stdout, res.stdout[-4000:]
        assert requested_checkpoints(leader) == checkpoints, "the leader served a base backup"
        assert "archive-get" in sql(standby, "SHOW restore_command")
        assert sql(standby, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
        _, second, _ = playbook("discover.yml", "replication.yml", extra_vars={"pg_standby_method": "pgbackrest"})
        assert second[standby]["changed"] == 0, second
    finally:
        out(standby, "systemctl start pgshift-agent")
        on(standby, f"test -d {PGDATA} && rm -rf {aside}")
    assert roles() == (leader, standby)
    cluster["results"]["playbook_restore_seconds"] = seconds


def longest_gap(acks, since):
    """The longest time between two acknowledged writes after `since` (seconds)."""
    times = [t for t, _ in acks if t >= since]
    return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


def restart_pending(leader, standby, writer_id):
    """`pgshift restart --pending` on the leader's host while a writer goes through HAProxy:
    (the command's result, its seconds, the longest write gap)."""
    ok, res = through_haproxy(RW, "CREATE TABLE IF NOT EXISTS through_haproxy"
                                  " (id int PRIMARY KEY, at timestamptz DEFAULT now())", 10)
    assert ok, res
    with Writer(first_id=writer_id) as w:
        wait_for("writes through HAProxy", lambda: len(w.acks) >= 5, 30)
        started = time.monotonic()
        res = on(leader, "pgshift restart --pending --timeout 300", timeout=330)
        seconds = time.monotonic() - started
        time.sleep(1)
    assert res.returncode == 0, res.stdout + res.stderr
    problems = w.check(roles()[0])
    assert not problems, problems
    return res.stdout, seconds, longest_gap(w.acks, started)


CALLBACK = "/var/lib/pgshift/day2-callback"
CALLBACK_LOG = "/var/lib/pgshift/day2-callbacks.log"
AGENT_TOML = "/etc/pgshift/agent.toml"


def sleeping_callbacks(hosts):
    """An on_role_change callback on each host's agent (by SIGHUP) that logs its arguments,
    then sleeps 30 s; agent.toml is kept at agent.toml.day2 (see `no_callbacks`)."""
    for h in hosts:
        mark = log_mark(h)
        out(h, f"printf '#!/bin/sh\\necho \"$*\" >> {CALLBACK_LOG}\\nsleep 30\\n' > {CALLBACK}"
               f" && chmod 755 {CALLBACK} && : > {CALLBACK_LOG} && chown postgres: {CALLBACK_LOG}"
               f" && cp -p {AGENT_TOML} {AGENT_TOML}.day2"
               f" && printf '\\n[callbacks]\\non_role_change = \"{CALLBACK}\"\\ntimeout = 60\\n' >> {AGENT_TOML}"
               f" && kill -HUP $({AGENT_PID})")
        wait_for(f"{h} reloading", lambda h=h, mark=mark: "configuration reloaded" in log_since(h, mark), 10)


def no_callbacks(hosts):
    for h in hosts:
        on(h, f"test -f {AGENT_TOML}.day2 && mv {AGENT_TOML}.day2 {AGENT_TOML} && kill -HUP $({AGENT_PID})")


def pending_everywhere(leader, hosts):
    wait_for("pending restarts", lambda: all(
        (member(cluster_status(leader) or {"members": []}, h) or {}).get("pending_restart") for h in hosts), 30, 0.5)


def revision(host):
    return json.loads(out(host, "pgshift config show --json"))["revision"]


@pytest.mark.smoke
def test_cluster_configuration_checked_versioned_and_applied_by_every_agent(cluster):
    """`pgshift config`: a combination agent.toml would refuse is refused with nothing
    written; a stale revision and an edit raced by another writer are refused; a timing change (by `edit`, with
    an editor that is a sed command) is adopted by every agent; then back."""
    leader, standby = roles()
    before = revision(leader)
    bad = on(leader, "pgshift config set retry_timeout=3")
    assert bad.returncode == 1 and "must be less than ttl" in bad.stderr and "nothing was written" in bad.stderr, bad
    assert revision(leader) == before
    marks = {h: log_mark(h) for h in (leader, standby)}
    # The "editor" puts ttl first (top-level keys come before [postgresql]).
    out(standby, "printf '#!/bin/sh\\n{ echo \"ttl = 4.0\"; cat \"$1\"; } > \"$1.new\" && mv \"$1.new\" \"$1\"\\n'"
                 " > /tmp/pgshift-test-editor && chmod 755 /tmp/pgshift-test-editor")
    res = on(standby, "EDITOR=/tmp/pgshift-test-editor pgshift config edit")
    assert res.returncode == 0 and "written as revision" in res.stdout, res
    now = revision(leader)
    assert now != before
    for h in (leader, standby):
        wait_for(f"{h} adopting revision {now}",
                 lambda h=h: f"cluster configuration revision {now} adopted (ttl 4000 ms" in log_since(h, marks[h]), 10)
    stale = on(leader, f"pgshift config set --revision {before if before is not None else 0} ttl=5")
    assert stale.returncode == 1 and "nothing was written" in stale.stderr, stale
    # An edit during which someone else changed the document is refused.
    out(standby, "printf '#!/bin/sh\\npgshift config set work_mem=8MB >/dev/null && sed -i s/4.0/5.0/ \"$1\"\\n'"
                 " > /tmp/pgshift-test-editor")
    raced = on(standby, "EDITOR=/tmp/pgshift-test-editor pgshift config edit")
    assert raced.returncode == 1 and "changed since revision" in raced.stderr, raced
    shown = out(leader, "pgshift config show")
    assert "work_mem" in shown and "ttl = 5.0" not in shown, shown
    out(leader, "pgshift config set work_mem=")
    assert "ttl = 4.0" in out(leader, "pgshift config show")
    out(leader, "pgshift config set ttl=")
    assert "ttl" not in out(leader, "pgshift config show").split("\n", 1)[1]
    assert roles() == (leader, standby)


@pytest.mark.smoke
def test_restart_pending_restarts_the_standby_then_the_leader_by_a_switchover(cluster):
    """`pgshift config set shared_buffers=40MB` reaches every server (ALTER SYSTEM, reload)
    and shows as `pending restart` on every member; `pgshift restart --pending` restarts the
    standby first, then the leader by a switchover, while writes go through HAProxy: the
    setting is in force everywhere, nothing pending, the longest write gap at most 2 s — with
    an on_role_change callback on both agents that sleeps 30 s (the switchover does not wait
    for it; the crash-failover version of that is tests/agent/test_rejoin.py's). Then the key
    goes: RESET everywhere, pending again."""
    leader, standby = roles()
    none = on(leader, "pgshift restart --pending")
    assert none.returncode == 0 and "nothing to do" in none.stdout, none
    gaps = []
    try:
        sleeping_callbacks((leader, standby))
        out(leader, "pgshift config set shared_buffers=40MB")
        pending_everywhere(leader, (leader, standby))
        assert "pending restart" in out(leader, "pgshift status")
        text, seconds, gap = restart_pending(leader, standby, 7 * 10**7)
        assert f"restarted {standby}, {leader}" in text and f"{leader} handed over to {standby} first" in text, text
        gaps.append(gap)
        assert roles() == (standby, leader)
        # The new leader's role change ran its callback, which still sleeps: nobody waited.
        assert "on_role_change primary main" in out(standby, f"cat {CALLBACK_LOG}")
        assert on(standby, f"pgrep -f {CALLBACK}").returncode == 0
        for h in (leader, standby):
            assert sql(h, "SHOW shared_buffers") == "40MB"
        doc = cluster_status(leader)
        assert not any(m["pending_restart"] for m in doc["members"]), doc
        cluster["results"]["restart_pending"] = {"seconds": round(seconds, 1), "longest_write_gap": round(gap, 2)}
    finally:
        on(leader, "pgshift config set shared_buffers=")
        no_callbacks((leader, standby))
    # The key gone, every member RESET it: the old value waits for the next restart (left to
    # the suites after this one, which restart servers anyway: make test's time is short).
    pending_everywhere(leader, (leader, standby))
    assert max(gaps) <= 2.0, gaps
