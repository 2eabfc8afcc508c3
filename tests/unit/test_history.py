"""The history checker (tests/history.py) on made-up histories: each violation it exists to
find, and the overlaps a correct failover does produce that it must accept."""

from history import History, check


def failover_history():
    """db1 leads on timeline 1, db2 takes over on timeline 2 at t=10."""
    h = History()
    h.write("probe", 1, "db1", 1.0, 1.1, 1)
    h.write("probe", 2, "db1", 2.0, 2.1, 1)
    # Sent before db2's first acknowledgement, answered after it: in flight across the
    # failover, a legal overlap.
    h.write("probe", 3, "db1", 9.9, 10.3, 1)
    h.write("probe", 4, "db2", 10.0, 10.2, 2)
    h.write("probe", 5, "db2", 11.0, 11.1, 2)
    h.read("reader", "db2", 3.0, 3.1, [2, 1])
    return h


KEPT = [(1, "db1"), (2, "db1"), (3, "db1"), (4, "db2"), (5, "db2"), (99, "db1")]


def test_a_clean_failover_passes():
    assert check(failover_history(), KEPT) == []


def test_a_lost_write_is_found():
    problems = check(failover_history(), [r for r in KEPT if r[0] != 2])
    assert any("1 acknowledged writes lost: [2]" in p for p in problems), problems
    # The read that returned it is a violation of its own.
    assert any("reads returned 1 values" in p and "[2]" in p for p in problems), problems


def test_a_write_kept_twice_or_under_another_host_is_found():
    problems = check(failover_history(), KEPT + [(5, "db2")])
    assert any("more than once: [5]" in p for p in problems), problems
    problems = check(failover_history(), [(i, "db2" if i == 1 else h) for i, h in KEPT])
    assert any("another host" in p and "(1, 'db1', 'db2')" in p for p in problems), problems


def test_an_old_primary_acknowledging_after_the_new_one_is_two_writers():
    h = failover_history()
    h.write("probe", 6, "db1", 10.5, 10.6, 1)  # sent after db2's write on timeline 2 came back
    problems = check(h, KEPT + [(6, "db1")])
    assert any("two writers" in p and "(6, 'db1', 1, 2)" in p for p in problems), problems


def test_two_hosts_on_one_timeline_are_two_writers():
    h = failover_history()
    h.write("probe", 6, "db1", 12.0, 12.1, 2)
    problems = check(h, KEPT + [(6, "db1")])
    assert any("same timeline" in p and "2: ['db1', 'db2']" in p for p in problems), problems


def test_only_the_named_client_is_judged():
    h = failover_history()
    h.write("other", 7, "db1", 1.0, 1.1, 1)  # lost, but not the probe's
    assert check(h, KEPT, "probe") == []
    assert check(h, KEPT) != []
