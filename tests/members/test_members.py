"""Three database hosts (`lab/lab up --with db3`): db1 the primary, db2 and db3 its
standbys, etcd on db1, db2 and aux as in every lab, synchronous mode with one synchronous
standby. A suite of its own cluster (site.yml builds every host of the `standbys` group).

What N members must keep: every member streams from the leader and has a slot on it; every
standby keeps the same slots at the leader's positions, so a promoted one already retains
the WAL of the others; after a crash of the primary the synchronous standby takes over with
no acknowledged write lost and the third member follows it without a new base backup; with
synchronous_node_count = 2 both standbys are synchronous and either takes over; a crashed
standby moves the synchronous role to the other one without a failover; the `nosync` and
`noloadbalance` tags keep a member out of synchronous_standby_names and out of HAProxy's
read-only pool; `replicatefrom` cascades, falls back to the leader and comes back; the slots of
a member gone longer than member_slots_ttl go. The probe writes to all three hosts every 50 ms.
The tests run in file order on one cluster; the fixture runs `lab/lab down` at the end.
"""

import threading
import time

import pytest

from labkit import (
    AGENT_PID, IPS3, ROOT, Probe, build_cluster, cluster_status, fault_and_failover, haproxy_states,
    http_status, lab, lead, log_mark, log_since, member, needs, on, out, settled, sql, streaming_from, teardown_cluster,
    wait_for,
)

RESULTS = ROOT / "target" / "agent-members.json"
HOSTS = list(IPS3)
CONFIG = "/etc/pgshift/agent.toml"

pytestmark = needs(etcd=True, haproxy=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ctx = build_cluster(str(tmp_path_factory.mktemp("members")), with_hosts=["db3"])
    try:
        yield ctx
    finally:
        teardown_cluster(ctx["results"], RESULTS, hosts=HOSTS)


def slots(host):
    """{slot: restart_lsn or ''} of host's physical slots."""
    rows = sql(host, "SELECT slot_name || '|' || COALESCE(restart_lsn::text, '') FROM pg_replication_slots "
                     "WHERE slot_type = 'physical'")
    return dict(r.split("|") for r in rows.split())


def slots_at_least(host, names, lsn):
    """Whether every slot of `names` on host exists and keeps no WAL older than needed
    past `lsn` (its restart_lsn reached it)."""
    listed = ", ".join(f"'{n}'" for n in names)
    res = sql(host, f"SELECT count(*) FILTER (WHERE restart_lsn >= '{lsn}') = {len(names)} "
                    f"FROM pg_replication_slots WHERE slot_name IN ({listed})")
    return res == "t"


def test_every_member_streams_and_keeps_every_slot(cluster):
    leader, others, sync = settled(HOSTS)
    assert sync in others
    doc = cluster_status(leader)
    assert {m["name"]: m["role"] for m in doc["members"]} == {
        leader: "primary", **{h: "replica" for h in others}}
    table = out(leader, "pgshift status")
    assert all(h in table for h in HOSTS), table
    # One synchronous standby, named alone.
    assert sql(leader, "SHOW synchronous_standby_names") == f'"{sync}"'
    for h in HOSTS:
        assert http_status(h, "/replica") == ("503" if h == leader else "200"), h
    # Every host has a slot for each other one, and each reserves WAL.
    for h in HOSTS:
        have = slots(h)
        assert set(have) == {o for o in HOSTS if o != h}, (h, have)
        assert all(have.values()), (h, have)
    # The standbys' slots follow the leader's: past a position the leader has now once the
    # members confirmed it.
    lsn = sql(leader, "SELECT pg_current_wal_lsn() FROM (SELECT pg_switch_wal(), txid_current()) x")
    for h in others:
        names = [o for o in HOSTS if o != h]
        wait_for(f"{h}'s slots past {lsn}", lambda: slots_at_least(h, names, lsn), 30, 0.5,
                 show=lambda: slots(h))


def test_crash_of_the_primary_with_two_standbys(cluster):
    """The synchronous standby takes over with every acknowledged write; the third host
    follows it within 10 s, through the slot the new leader already had for it."""
    old, others, sync = settled(HOSTS)
    third = next(h for h in others if h != sync)
    rebuilds_before = member(cluster_status(third), third)["rebuilds"]
    seen = {}
    # When the third host streams from the new leader, as the new leader reports it: watched
    # from the fault on, the probe's checks would otherwise delay the first look.
    watcher = threading.Thread(target=lambda: seen.setdefault("follows_at", wait_for(
        f"{third} streaming from {sync}", lambda: third_streams(sync, third) and time.monotonic(), 40, 0.2)))

    def inject():
        lab("crash", old)
        watcher.start()

    def after(first_new):
        watcher.join()
        assert "follows_at" in seen, f"{third} did not follow {sync} within 40 s"
        seen["third_follows_seconds"] = round(seen.pop("follows_at") - first_new, 2)
        have = slots(sync)
        assert {old, third} <= set(have) and have[old] and have[third], have

    failover = fault_and_failover(cluster, "crash_3", old, sync, inject=inject,
                                  recover=lambda: lab("boot", old), after=after)
    cluster["results"]["crash_3"][-1].update(seen)
    assert failover < 10, failover
    assert seen["third_follows_seconds"] < 10, seen
    leader, _, _ = settled(HOSTS)
    assert leader == sync
    doc = cluster_status(leader)
    assert member(doc, third)["rebuilds"] == rebuilds_before, member(doc, third)
    timelines = {m["name"]: m["timeline"] for m in doc["members"]}
    assert len(set(timelines.values())) == 1, timelines


def configure(hosts, check=True, **settings):
    """Sets keys (that the file has) in each host's agent.toml and reloads the agent
    (SIGHUP). check=False leaves a host that does not answer as it is (crashed by a failed
    test, in a `finally`)."""
    edits = " && ".join(f"sed -i 's/^{k} = .*/{k} = {str(v).lower()}/' {CONFIG}" for k, v in settings.items())
    for h in hosts:
        cmd = f"{edits} && kill -HUP $({AGENT_PID})"
        if check:
            out(h, cmd)
        else:
            on(h, cmd, timeout=15)


def test_two_synchronous_standbys_and_a_crash_of_the_primary(cluster):
    """synchronous_node_count = 2 (FIRST 2): both standbys confirm every commit and either
    may be promoted; after a crash of the primary one takes over with every acknowledged
    write and the other follows it without a rebuild."""
    old, others, _ = settled(HOSTS)
    configure(HOSTS, check=False, synchronous_node_count=2)
    try:
        wait_for("both standbys synchronous",
                 lambda: sorted((cluster_status(old) or {}).get("sync_standbys") or []) == sorted(others), 30, 0.2)
        assert sql(old, "SHOW synchronous_standby_names").startswith("FIRST 2 (")
        # The leader's own record catches up with its sync record a loop later (its warning
        # "1 of 2 standbys synchronous" is from the view it read before adding the second).
        table = wait_for("the status table with two synchronous standbys and no warning",
                         lambda: (lambda t: t if t.count("synchronous") == 2 else None)(out(old, "pgshift status")),
                         10, 0.2)
        rebuilds = {h: member(cluster_status(old), h)["rebuilds"] for h in others}
        probe = Probe(cluster["passfile"], hosts=cluster["hosts"])
        probe.start()
        try:
            wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[old]) >= 10, 20)
            t_fault = time.monotonic()
            lab("crash", old)
            first = wait_for("a new primary acknowledging writes", lambda: min(
                ((t, h) for h in others for t, _ in probe.acks[h] if t > t_fault), default=None), 30, 0.05)
            time.sleep(1)
        finally:
            probe.stop()
        first_new, new = first
        other = next(h for h in others if h != new)
        late = [n for t, n in probe.acks[old] if t >= first_new]
        assert not late, late
        assert not probe.lost_on(new)
        assert not probe.check(new)
        wait_for(f"{other} streaming from {new}", lambda: third_streams(new, other), 10, 0.2)
        cluster["results"].setdefault("first_2_crash", []).append(
            {"failover_seconds": round(first_new - t_fault, 2), "new": new})
        assert first_new - t_fault < 10
        lab("boot", old)
        settled(HOSTS)
        doc = cluster_status(new)
        assert {h: member(doc, h)["rebuilds"] for h in others} == rebuilds
    finally:
        configure(HOSTS, check=False, synchronous_node_count=1)
    settled(HOSTS)


def test_crash_of_the_synchronous_standby(cluster):
    """No failover: the leader makes the other standby synchronous and goes on writing."""
    leader, others, sync = settled(HOSTS)
    third = next(h for h in others if h != sync)
    probe = Probe(cluster["passfile"], hosts={leader: IPS3[leader]})
    probe.start()
    try:
        wait_for(f"writes acknowledged by {leader}", lambda: len(probe.acks[leader]) >= 10, 20)
        t_fault = time.monotonic()
        lab("crash", sync)
        wait_for(f"{third} synchronous",
                 lambda: (cluster_status(leader) or {}).get("sync_standby") == third, 30, 0.2)
        first = wait_for("a write acknowledged after the crash",
                         lambda: next((t for t, _ in probe.acks[leader] if t > t_fault + 0.5), None), 30, 0.1)
    finally:
        probe.stop()
    assert cluster_status(leader)["leader"] == leader
    assert not probe.lost_on(third)
    cluster["results"].setdefault("standby_crash", []).append(
        {"writes_resume_seconds": round(first - t_fault, 2)})
    lab("boot", sync)
    settled(HOSTS)


def third_streams(leader, host):
    """Whether `leader` leads and reports `host` streaming from it (asks the leader only: a
    crashed host's ssh would take its whole connect timeout to fail)."""
    doc = cluster_status(leader) or {}
    m = member(doc, host) if doc.get("leader") == leader else None
    return bool(m and m["role"] == "replica" and m["state"] == "streaming" and m["upstream"] == leader)


def test_nosync_and_noloadbalance_tags(cluster):
    leader, others, sync = settled(HOSTS)
    third = next(h for h in others if h != sync)
    configure([sync], nosync=True, noloadbalance=True)
    try:
        wait_for(f"{third} synchronous instead of {sync}",
                 lambda: (cluster_status(leader) or {}).get("sync_standby") == third, 30, 0.2)
        assert sql(leader, "SHOW synchronous_standby_names") == f'"{third}"'
        wait_for(f"{sync} out of the read-only pool", lambda: http_status(sync, "/replica") == "503", 10)
        assert http_status(third, "/replica") == "200"
        wait_for("HAProxy's read-only pool without it",
                 lambda: haproxy_states().get(("postgres_ro", sync)) == "DOWN"
                 and haproxy_states().get(("postgres_ro", third)) == "UP", 30, 0.5,
                 show=haproxy_states)
        # It still streams and still has its slot: only its roles changed.
        assert streaming_from(sync, leader)()
        # Never synchronous while tagged, also when the synchronous standby goes away.
        lab("crash", third)
        time.sleep(5)
        assert (cluster_status(leader) or {}).get("sync_standby") in (None, ""), cluster_status(leader)
        assert sync not in sql(leader, "SHOW synchronous_standby_names")
        lab("boot", third)
    finally:
        configure([sync], nosync=False, noloadbalance=False)
    wait_for(f"{sync} back in the read-only pool", lambda: http_status(sync, "/replica") == "200", 10)
    settled(HOSTS)


def upstream_of(leader, host):
    """(state, upstream) of host as the leader reports it."""
    m = member(cluster_status(leader) or {"members": []}, host) or {}
    return m.get("state"), m.get("upstream")


def test_cascading_replicatefrom(cluster):
    """db3 tagged replicatefrom db2 streams from db2 (and the leader keeps its slot moving
    with it); when db2 crashes db3 follows the leader; when db2 is back db3 returns to it."""
    lead("db1", IPS3, timeout=90)
    out("db3", f"sed -i '/^\\[tags\\]/a replicatefrom = \"db2\"' {CONFIG} && kill -HUP $({AGENT_PID})")
    try:
        wait_for("db3 streaming from db2", lambda: upstream_of("db1", "db3") == ("streaming", "db2"), 30, 0.5,
                 show=lambda: upstream_of("db1", "db3"))
        sql("db1", "CREATE TABLE IF NOT EXISTS cascade (i int)")
        sql("db1", "INSERT INTO cascade VALUES (1)")
        wait_for("the row on db3", lambda: sql("db3", "SELECT count(*) FROM cascade") == "1", 20, 0.5)
        lsn = sql("db1", "SELECT pg_current_wal_lsn() FROM (SELECT pg_switch_wal(), txid_current()) x")
        wait_for("db1's slot for db3 moving with it", lambda: slots_at_least("db1", ["db3"], lsn), 30, 0.5,
                 show=lambda: slots("db1"))
        t0 = time.monotonic()
        lab("crash", "db2")
        wait_for("db3 streaming from db1", lambda: upstream_of("db1", "db3") == ("streaming", "db1"), 30, 0.5,
                 show=lambda: upstream_of("db1", "db3"))
        cluster["results"]["cascade_source_crash_follow_leader_seconds"] = round(time.monotonic() - t0, 2)
        lab("boot", "db2")
        wait_for("db3 back on db2", lambda: upstream_of("db1", "db3") == ("streaming", "db2"), 60, 0.5,
                 show=lambda: upstream_of("db1", "db3"))
        sql("db1", "INSERT INTO cascade VALUES (2)")
        wait_for("the second row on db3", lambda: sql("db3", "SELECT count(*) FROM cascade") == "2", 20, 0.5)
    finally:
        on("db3", f"sed -i '/^replicatefrom = /d' {CONFIG} && kill -HUP $({AGENT_PID})", timeout=15)
    settled(HOSTS)


def test_slots_of_a_member_gone_longer_than_member_slots_ttl_are_dropped(cluster):
    """db3 crashes and stays away longer than member_slots_ttl (5 s here): the leader and the
    other standby drop its slot; back, it streams again (its slot made anew)."""
    leader, _, _ = settled(HOSTS)
    keeper = next(h for h in HOSTS if h not in (leader, "db3"))
    configure(HOSTS, check=False, member_slots_ttl=5)
    try:
        if leader == "db3":
            res = on(keeper, f"pgshift switchover --to {keeper}", timeout=90)
            assert res.returncode == 0, res.stdout + res.stderr
            leader, _, _ = settled(HOSTS)
            keeper = next(h for h in HOSTS if h not in (leader, "db3"))
        assert "db3" in slots(leader) and "db3" in slots(keeper)
        t0 = time.monotonic()
        lab("crash", "db3")
        wait_for("db3's slot dropped on the leader and the other standby",
                 lambda: "db3" not in slots(leader) and "db3" not in slots(keeper), 60, 0.5,
                 show=lambda: (slots(leader), slots(keeper)))
        cluster["results"]["member_slot_dropped_seconds"] = round(time.monotonic() - t0, 1)
        # The others' slots stay.
        assert keeper in slots(leader) and leader in slots(keeper)
        lab("boot", "db3")
        wait_for("db3 streaming again", lambda: third_streams(leader, "db3"), 180, 1)
    finally:
        configure(HOSTS, check=False, member_slots_ttl=1800)
    settled(HOSTS)


def test_a_rebuild_copies_from_the_member_tagged_clonefrom(cluster):
    """db2 tagged clonefrom: db3's rebuild (a data directory marked as needing one) copies
    from db2, not from the leader, and db3 streams from the leader after."""
    lead("db1", IPS3, timeout=90)
    configure(["db2"], check=False, clonefrom=True)
    try:
        wait_for("db2 published as clonefrom", lambda: '"clonefrom":true' in out(
            "db1", "curl -s http://127.0.0.1:8008/cluster").replace(" ", ""), 15, 0.5)
        rebuilds = member(cluster_status("db1"), "db3")["rebuilds"]
        data = sql("db3", "SHOW data_directory")
        mark = log_mark("db3")
        out("db3", f"runuser -u postgres -- touch {data}/pgshift-rebuild-pending")
        wait_for("db3 rebuilt and streaming from db1", lambda: third_streams("db1", "db3") and member(
            cluster_status("db1"), "db3")["rebuilds"] == rebuilds + 1, 120, 1)
        log = log_since("db3", mark)
        assert "rebuilt from a base backup of db2:" in log, log[-3000:]
    finally:
        configure(["db2"], check=False, clonefrom=False)
    settled(HOSTS)
