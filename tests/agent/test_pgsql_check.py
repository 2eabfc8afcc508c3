"""HAProxy checking the database hosts by logging in (pgshift_haproxy_check: pgsql): site.yml
builds the cluster with the agent keeping, at the top of each host's pg_hba.conf, a rule for
the read-write check user from aux (HAProxy's host) that admits it on the leader and rejects
it elsewhere, and one for the read-only check user that admits it on streaming standbys;
HAProxy on aux checks with `option pgsql-check`. Then a crash of the primary's host and a
switchover with a client writing through port 5000 every ~50 ms: writes follow the leader
and never reach a demoted host. Numbers go to target/pgsql-check-results.json (compare with
target/haproxy-results.json, the same faults with HTTP checks).

The tests run in file order against one cluster; the module fixture always runs
`lab/lab down` at the end, also after a failure.
"""

import shutil
import tempfile
import time

import pytest

from labkit import (
    AUX, IPS, PSQL, RO, ROOT, RW, Writer, build_cluster, haproxy_states, psql, lab, needs, on, roles, sql, streaming_from, teardown_cluster, wait_for,
)

RESULTS = ROOT / "target" / "pgsql-check-results.json"
RW_USER, RO_USER = "pgshift_check_rw", "pgshift_check_ro"

pytestmark = needs(etcd=True, haproxy=True)


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="pgshift-pgsql-check-")
    ctx = {"results": {}}
    try:
        ctx = build_cluster(tmp, {"pgshift_haproxy_check": "pgsql"})
        ok, res = psql(RW, "CREATE TABLE through_haproxy (id int PRIMARY KEY, at timestamptz DEFAULT now())")
        assert ok, res
        yield ctx
    finally:
        teardown_cluster(ctx["results"], RESULTS)
        shutil.rmtree(tmp, ignore_errors=True)


def check_rules(host):
    """{user: auth_method} of the rules for the check users from aux, as the server loads
    pg_hba.conf (pg_hba_file_rules), and their line numbers."""
    rows = sql(host, "SELECT user_name[1], auth_method, line_number FROM pg_hba_file_rules "
                     f"WHERE address = '{AUX}' AND user_name[1] IN ('{RW_USER}', '{RO_USER}') ORDER BY line_number")
    rules = {}
    for line in rows.splitlines():
        user, method, number = line.split("|")
        rules[user] = (method, int(number))
    return rules


def login(host, user):
    """A login attempt as `user` from aux, as HAProxy's check makes one: the server's answer."""
    res = on("aux", f"cd / && PGCONNECT_TIMEOUT=3 {PSQL} -XAtqw 'host={IPS[host]} port=5432 user={user} "
                    f"dbname=postgres sslmode=disable' -c 'SELECT 1'")
    return res.stderr.strip()


def admitted(host, user):
    """The server asked for a password (the check passes) rather than refusing at once."""
    answer = login(host, user)
    if "rejects connection" in answer:
        return False
    assert "password" in answer, answer
    return True


def states(leader, standby):
    return {("postgres_rw", leader): "UP", ("postgres_rw", standby): "DOWN",
            ("postgres_ro", leader): "DOWN", ("postgres_ro", standby): "UP"}


def test_check_users_follow_the_roles(cluster):
    leader, standby = roles()
    r = check_rules(leader)
    assert r[RW_USER][0] == "scram-sha-256" and r[RO_USER][0] == "reject", r
    r = check_rules(standby)
    assert r[RW_USER][0] == "reject" and r[RO_USER][0] == "scram-sha-256", r
    # The agent's lines come first, marked; the playbooks' rules below are untouched.
    for h in IPS:
        hba = sql(h, "SHOW hba_file")
        text = on(h, f"cat {hba}").stdout
        rules = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        assert all("# pgshift agent:" in l for l in rules[:2]), rules[:4]
        assert sum("# pgshift agent:" in l for l in text.splitlines()) == 2, text
    assert admitted(leader, RW_USER) and not admitted(standby, RW_USER)
    assert admitted(standby, RO_USER) and not admitted(leader, RO_USER)
    wait_for("HAProxy's view of the roles", lambda: haproxy_states() == states(leader, standby), 10)
    ok, res = psql(RW, "SELECT pg_is_in_recovery(), host(inet_server_addr())")
    assert ok and res == f"f|{IPS[leader]}", res
    ok, res = psql(RO, "SELECT pg_is_in_recovery(), host(inet_server_addr())")
    assert ok and res == f"t|{IPS[standby]}", res


def test_crash_of_the_primary_host_through_pgsql_checks(cluster):
    old, new = roles()
    r = cluster["results"]["crash"] = {"old_primary": old, "new_primary": new}
    with Writer() as w, Writer(IPS[new], 5432, first_id=10**6) as direct:
        wait_for(f"writes through {RW} on {old}", lambda: sum(h == old for _, h in w.acks) >= 10, 20)
        t_crash = time.monotonic()
        lab("crash", old)
        first_new = wait_for(f"writes through {RW} on {new}", lambda: w.first_ack(new, t_crash), 30, 0.02)
        time.sleep(0.5)
    r["writes_back_seconds"] = round(first_new - t_crash, 2)
    r["direct_writes_seconds"] = round(direct.first_ack(new, t_crash) - t_crash, 2)
    r["haproxy_added_seconds"] = round(first_new - direct.first_ack(new, t_crash), 2)
    late = [round(t - first_new, 3) for t, h in w.acks if h == old and t > first_new]
    assert not late, f"writes through {RW} reached {old} after {new} took over: {late}"
    assert check_rules(new)[RW_USER][0] == "scram-sha-256"
    assert r["writes_back_seconds"] < 15, r

    # The old primary boots: its agent makes it reject the read-write check user before
    # PostgreSQL opens, so HAProxy never routes writes to it, and it joins the read-only pool
    # once it streams.
    with Writer(first_id=2 * 10**6) as w:
        t_boot = time.monotonic()
        lab("boot", old)
        wait_for(f"{old} streaming from {new}", streaming_from(old, new), 120, 0.2)
        wait_for("HAProxy's view of the new roles", lambda: haproxy_states() == states(new, old), 10, 0.2)
        r["rejoin_seconds"] = round(time.monotonic() - t_boot, 1)
        time.sleep(1)
    assert w.acks and all(h == new for _, h in w.acks), sorted({h for _, h in w.acks})
    rules = check_rules(old)
    assert rules[RW_USER][0] == "reject" and rules[RO_USER][0] == "scram-sha-256", rules
    assert not admitted(old, RW_USER) and admitted(old, RO_USER)


def test_switchover_through_pgsql_checks(cluster):
    old, new = roles()
    with Writer(first_id=3 * 10**6) as w:
        wait_for(f"writes through {RW} on {old}", lambda: sum(h == old for _, h in w.acks) >= 10, 20)
        t0 = time.monotonic()
        res = on(old, f"pgshift switchover --to {new}", timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        first_new = wait_for(f"writes through {RW} on {new}", lambda: w.first_ack(new, t0), 15, 0.02)
        time.sleep(1)
    last_old = max(t for t, h in w.acks if h == old and t < first_new)
    late = [round(t - first_new, 3) for t, h in w.acks if h == old and t > first_new]
    assert not late, f"writes through {RW} reached {old} after {new} took over: {late}"
    gap = round(first_new - last_old, 3)
    cluster["results"]["switchover"] = {"from": old, "to": new, "write_gap_seconds": gap,
                                        "failed_writes": w.failures}
    wait_for(f"{old} streaming from {new}", streaming_from(old, new), 60, 0.2)
    wait_for("HAProxy's view of the new roles", lambda: haproxy_states() == states(new, old), 10, 0.2)
    assert check_rules(old)[RW_USER][0] == "reject" and check_rules(new)[RW_USER][0] == "scram-sha-256"
    assert gap < 3, gap
