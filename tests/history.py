"""The history checker: what the lab's probes saw, judged against what the cluster kept.

Clients (labkit's `Probe` straight to each database host, its `Writer` and `Reader` through
HAProxy, the stress battery's load) record every operation here: a write with the id it
inserted, the host that took it, the time the request left and the answer came back (this
machine's monotonic clock: one clock for every client) and the timeline the commit happened
on (the primary's WAL insert timeline, returned by the INSERT itself); a read with the ids it
saw. After a run, `check` compares that with the rows the leader has and returns every
violation of:

1. durability: every acknowledged write is on the leader, exactly once, with the host that
   acknowledged it (synchronous mode: a commit is acknowledged once a standby has it);
2. one writer at a time: leadership moves with a promotion, and a promotion starts a new
   timeline. A write acknowledged on timeline T whose request left after another write's
   acknowledgement on a later timeline came back was taken by a primary that no longer led
   (two writers); and two hosts never acknowledge writes on the same timeline;
3. no read of a value that is later lost: every id a read returned (through the read-only
   port, from a standby) is on the leader at the end.
"""

import bisect
import threading
from dataclasses import dataclass, field

# The timeline the INSERT committed on, as an int: pg_walfile_name of the current insert
# position names it in its first 8 hex digits (PostgreSQL 15: the WAL insert timeline).
TIMELINE_SQL = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"


@dataclass(frozen=True)
class Write:
    client: str
    id: int
    host: str
    sent: float
    acked: float
    timeline: int


@dataclass(frozen=True)
class Read:
    client: str
    host: str
    sent: float
    returned: float
    ids: tuple


@dataclass
class History:
    writes: list = field(default_factory=list)
    reads: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write(self, client, id, host, sent, acked, timeline):
        with self.lock:
            self.writes.append(Write(client, id, host, sent, acked, int(timeline)))

    def read(self, client, host, sent, returned, ids):
        with self.lock:
            self.reads.append(Read(client, host, sent, returned, tuple(ids)))

    def writes_of(self, client):
        return [w for w in self.writes if w.client == client]


def durability(writes, rows):
    """rows: [(id, host)] of the client's table on the leader after the run."""
    kept = {}
    for id, host in rows:
        kept.setdefault(id, []).append(host)
    problems = []
    lost = sorted(w.id for w in writes if w.id not in kept)
    if lost:
        problems.append(f"{len(lost)} acknowledged writes lost: {lost[:10]}")
    twice = sorted(w.id for w in writes if len(kept.get(w.id, ())) > 1)
    if twice:
        problems.append(f"{len(twice)} acknowledged writes present more than once: {twice[:10]}")
    moved = [(w.id, w.host, kept[w.id][0]) for w in writes
             if len(kept.get(w.id, ())) == 1 and kept[w.id][0] is not None and kept[w.id][0] != w.host]
    if moved:
        problems.append(f"{len(moved)} writes kept with another host than the one that acknowledged them "
                        f"(id, acknowledged by, kept as): {moved[:5]}")
    return problems


def one_writer(writes):
    problems = []
    by_timeline = {}
    for w in writes:
        by_timeline.setdefault(w.timeline, set()).add(w.host)
    shared = {t: sorted(h) for t, h in by_timeline.items() if len(h) > 1}
    if shared:
        problems.append(f"two hosts acknowledged writes on the same timeline: {shared}")
    # For each write, the highest timeline among writes acknowledged before it was sent.
    done = sorted(writes, key=lambda w: w.acked)
    times = [w.acked for w in done]
    highest, top = [], 0
    for w in done:
        top = max(top, w.timeline)
        highest.append(top)
    stale = []
    for w in writes:
        i = bisect.bisect_left(times, w.sent)
        if i and highest[i - 1] > w.timeline:
            stale.append((w.id, w.host, w.timeline, highest[i - 1]))
    if stale:
        problems.append(f"{len(stale)} writes acknowledged by a primary after a newer timeline had taken "
                        f"writes (two writers; id, host, its timeline, the newer one): {stale[:5]}")
    return problems


def reads_kept(reads, rows):
    kept = {id for id, _ in rows}
    gone = sorted({i for r in reads for i in r.ids if i not in kept})
    if gone:
        # Who served them, and when (this machine's monotonic clock).
        served = sorted({(r.host, round(r.returned, 2)) for r in reads if set(r.ids) & set(gone)})
        return [f"reads returned {len(gone)} values the leader does not have at the end: {gone[:10]} "
                f"(served by, at: {served[:5]})"]
    return []


def check(history, rows, client=None):
    """Every violation (a list of sentences, empty when none) of the history's writes (of
    `client`, or all) and reads against rows, [(id, host or None)] on the leader."""
    writes = history.writes if client is None else history.writes_of(client)
    reads = history.reads if client is None else [r for r in history.reads if r.client == client]
    return durability(writes, rows) + one_writer(writes) + reads_kept(reads, rows)
