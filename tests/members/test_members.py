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
    AGENT_LOG, AGENT_PID, IPS3, ROOT, Probe, build_cluster, cluster_status, fault_and_failover, haproxy_states,
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


def any_standby_takes_over(cluster, name, old, others, inject, recover):
    """Probe on all three hosts; `inject` a fault on `old`; the first standby to acknowledge a
    write is the new leader: it holds every write `old` acknowledged, `old` acknowledged
    none after it, the other standby follows it within 10 s without a rebuild, and after
    `recover` so does `old`. Records the numbers under `name`; returns the new leader."""
    rebuilds = {h: member(cluster_status(old), h)["rebuilds"] for h in others}
    probe = Probe(cluster["passfile"], hosts=cluster["hosts"])
    probe.start()
    try:
        wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[old]) >= 10, 20)
        t_fault = time.monotonic()
        inject()
        first = wait_for("a new primary acknowledging writes", lambda: min(
            ((t, h) for h in others for t, _ in probe.acks[h] if t > t_fault), default=None), 30, 0.05)
        time.sleep(1)
    finally:
        probe.stop()
    first_new, new = first
    other = next(h for h in others if h != new)
    late = [n for t, n in probe.acks[old] if t >= first_new]
    assert not late, late
    lost = probe.lost_on(new)
    result = {"failover_seconds": round(first_new - t_fault, 2), "new": new, "lost": len(lost),
              "acked_before_fault": len([t for t, _ in probe.acks[old] if t < t_fault])}
    cluster["results"].setdefault(name, []).append(result)
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    assert not probe.check(new)
    started = time.monotonic()
    wait_for(f"{other} streaming from {new}", lambda: third_streams(new, other), 10, 0.2)
    result["third_follows_seconds"] = round(time.monotonic() - started, 2)
    assert first_new - t_fault < 10, result
    recover()
    wait_for(f"{old} streaming from {new}", streaming_from(old, new), 120, 0.5)
    doc = cluster_status(new)
    assert {h: member(doc, h)["rebuilds"] for h in others} == rebuilds
    timelines = {m["name"]: m["timeline"] for m in doc["members"]}
    assert len(set(timelines.values())) == 1, timelines
    return new


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
        wait_for("the status table with two synchronous standbys and no warning",
                 lambda: (lambda t: t if t.count("synchronous") == 2 else None)(out(old, "pgshift status")),
                 10, 0.2)
        any_standby_takes_over(cluster, "first_2_crash", old, others,
                               inject=lambda: lab("crash", old), recover=lambda: lab("boot", old))
    finally:
        configure(HOSTS, check=False, synchronous_node_count=1)
    settled(HOSTS)


def quorum(hosts, k, strict=False):
    """Quorum commit, any k of the standbys, on every host."""
    configure(hosts, check=False, synchronous_mode='"quorum"', synchronous_node_count=k,
              synchronous_mode_strict=strict)


def proven(leader, k, voters):
    """Waits until `leader` records `voters` with any k of them holding every commit."""
    def done():
        doc = cluster_status(leader) or {}
        return doc.get("quorum") == k and sorted(doc.get("quorum_voters") or []) == sorted(voters)
    wait_for(f"quorum {k} of {voters} proven on {leader}", done, 30, 0.2)


# Each fault of the primary: (inject, recover). A frozen host (every process stopped) thaws
# after the new primary took over and must rejoin it.
FAULTS = {
    "crash": (lambda h: lab("crash", h), lambda h: lab("boot", h)),
    "partition": (lambda h: lab("partition", h), lambda h: lab("heal", h)),
    "kill9_agent": (lambda h: out(h, f"kill -9 $({AGENT_PID})"), lambda h: out(h, "systemctl start pgshift-agent")),
    "freeze": (lambda h: lab("freeze", h), lambda h: lab("thaw", h)),
}
# synchronous_standby_names as each mode writes it with both standbys healthy.
MODES = {"first_1": ("true", 1, None), "any_1": ('"quorum"', 1, "ANY 1 ("), "any_2": ('"quorum"', 2, "ANY 2 (")}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("mode", MODES)
def test_fault_of_the_primary_in_each_synchronous_mode(cluster, mode, fault):
    """FIRST 1, and quorum commit with any 1 and any 2 of both standbys: after each fault of
    the primary one standby takes over with every acknowledged write (with quorum commit,
    once it heard enough voters to know it is the most advanced), never alongside the old
    primary, and the other follows it within 10 s without a rebuild."""
    setting, k, names = MODES[mode]
    old, others, _ = settled(HOSTS)
    configure(HOSTS, check=False, synchronous_mode=setting, synchronous_node_count=k)
    try:
        if names:
            proven(old, k, others)
            assert sql(old, "SHOW synchronous_standby_names").startswith(names)
        inject, recover = FAULTS[fault]
        new = any_standby_takes_over(cluster, f"{mode}_{fault}", old, others,
                                     inject=lambda: inject(old), recover=lambda: recover(old))
        if names:
            # The new leader's record: every other host a voter once it streams.
            proven(new, k, [h for h in HOSTS if h != new])
    finally:
        configure(HOSTS, check=False, synchronous_mode="true", synchronous_node_count=1,
                  synchronous_mode_strict="false")
    settled(HOSTS)


# In make test's smoke set (its own cluster with db3): quorum commit's promotion rule, a crash
# of the primary with ANY 1, no acknowledged write lost.
@pytest.mark.smoke
def test_quorum_a_voter_that_cannot_hear_enough_does_not_promote(cluster):
    """Any 1 of two voters, and the one placed first (priority) lags: its walreceiver stopped,
    so the commits are on the other voter alone. The primary crashes while the other voter's
    agent is frozen: the lagging voter hears only itself, one of the two it needs, and must
    not promote (a leader without those commits). Once the frozen agent resumes, the voter
    with every commit takes over and nothing acknowledged is lost."""
    old, others, _ = settled(HOSTS)
    lagging, holder = sorted(others, key=lambda h: h != "db3")  # db3: no etcd member
    configure([lagging], check=False, priority=9)
    quorum(HOSTS, 1)
    probe = Probe(cluster["passfile"], hosts=cluster["hosts"])
    walreceiver = "pgrep -f '^postgres: .*walreceiver'"
    try:
        proven(old, 1, others)
        probe.start()
        wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[old]) >= 10, 20)
        out(lagging, f"kill -STOP $({walreceiver})")
        t_lag = time.monotonic()
        wait_for("writes acknowledged while one voter lags",
                 lambda: len([t for t, _ in probe.acks[old] if t > t_lag + 0.5]) >= 10, 20)
        out(holder, f"kill -STOP $({AGENT_PID})")
        t_fault = time.monotonic()
        lab("crash", old)
        time.sleep(8)
        early = [(h, t) for h in others for t, _ in probe.acks[h] if t > t_fault]
        assert not early, f"a voter that heard too few took writes: {early[:3]}"
        log = out(lagging, f"grep 'quorum commit' {AGENT_LOG} | tail -n 3")
        assert "heard 1 of the 2 voters needed" in log, log
        out(holder, f"kill -CONT $({AGENT_PID})")
        first = wait_for("a new primary acknowledging writes", lambda: min(
            ((t, h) for h in others for t, _ in probe.acks[h] if t > t_fault), default=None), 30, 0.05)
        time.sleep(1)
    finally:
        probe.stop()
        on(holder, f"kill -CONT $({AGENT_PID})")
        on(lagging, f"kill -CONT $({walreceiver})")
        configure([lagging], check=False, priority=1)
        configure(HOSTS, check=False, synchronous_mode="true", synchronous_node_count=1)
    assert first[1] == holder, first
    # What the takeover decided on: both voters' positions, in its log and history entry.
    took = out(holder, f"grep 'took over by quorum commit' {AGENT_LOG} | tail -n 1")
    assert f"{holder} at " in took and f"{lagging} at " in took, took
    lost = probe.lost_on(holder)
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    assert not probe.check(holder)
    cluster["results"].setdefault("quorum_lagging_voter", []).append(
        {"takeover_after_resume_seconds": round(first[0] - t_fault - 8, 2)})
    lab("boot", old)
    settled(HOSTS)


@pytest.mark.parametrize("fault", ["crash", "partition"])
def test_quorum_commit_and_a_fault_of_a_standby(cluster, fault):
    """No failover. Any 1 of 2: writes go on, the voter that crashed or was cut off leaves
    the record. Any 2 of 2, strict: commits block until it is back."""
    leader, others, _ = settled(HOSTS)
    # db3 runs no etcd member: its fault tests quorum commit alone.
    victim = "db3" if "db3" in others else others[0]
    inject, recover = FAULTS[fault]
    probe = Probe(cluster["passfile"], hosts={leader: IPS3[leader]})
    try:
        quorum(HOSTS, 1)
        proven(leader, 1, others)
        probe.start()
        wait_for(f"writes acknowledged by {leader}", lambda: len(probe.acks[leader]) >= 10, 20)
        t_fault = time.monotonic()
        inject(victim)
        proven(leader, 1, [h for h in others if h != victim])
        wait_for(f"a write acknowledged after the {fault}",
                 lambda: next((t for t, _ in probe.acks[leader] if t > t_fault + 0.5), None), 30, 0.1)
        gaps = [b - a for (a, _), (b, _) in zip(probe.acks[leader], probe.acks[leader][1:]) if b > t_fault]
        cluster["results"].setdefault(f"quorum_standby_{fault}", []).append(
            {"longest_write_gap_seconds": round(max(gaps, default=0), 2)})
        recover(victim)
        wait_for(f"{victim} streaming from {leader}", streaming_from(victim, leader), 60, 0.5)

        quorum(HOSTS, 2, strict=True)
        proven(leader, 2, others)
        inject(victim)
        t_fault = time.monotonic()
        time.sleep(4)
        during = [n for t, n in probe.acks[leader] if t > t_fault + 1]
        assert not during, f"strict any 2 of 2 with one voter down acknowledged {len(during)} writes"
        recover(victim)
        wait_for("writes acknowledged again once the voter is back",
                 lambda: next((t for t, _ in probe.acks[leader] if t > t_fault + 4), None), 90, 0.2)
        assert cluster_status(leader)["leader"] == leader
    finally:
        probe.stop()
        configure(HOSTS, check=False, synchronous_mode="true", synchronous_node_count=1,
                  synchronous_mode_strict="false")
    assert not probe.lost_on(leader)
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
