"""The stress battery's write load (run by the system python3, which has Debian's psycopg):

    load.py --dsn DSN --rate R --clients C --seconds S --first-id N

C clients, each with one connection kept open (reconnecting at once when it breaks), insert
rows into stress_load at R writes per second in all, each its own transaction at the
server's default synchronous_commit. Every acknowledged write is printed as one line when
the run ends (after S seconds, or soon after a SIGTERM): id, time sent, time acknowledged (CLOCK_MONOTONIC, the same clock as the
battery's), the host that took it, the timeline it committed on. Failed attempts are counted
on the last line. Lab addresses only: the battery passes the DSN of HAProxy on aux.
"""

import argparse
import asyncio
import signal
import sys
import time

import psycopg

TIMELINE_SQL = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
# A write unanswered this long is given up (a frozen or cut-off server answers nothing):
# the connection goes and a new one is made.
TIMEOUT = 2.0


async def client(dsn, ids, period, until, acks, counts):
    """until: {"t": monotonic end}, moved to now by SIGTERM."""
    conn = None
    next_at = time.monotonic()
    for n in ids:
        now = time.monotonic()
        if now >= until["t"]:
            break
        if next_at > now:
            await asyncio.sleep(next_at - now)
        next_at = max(next_at + period, time.monotonic() - period)  # no catch-up burst after a stall
        sent = time.monotonic()
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=1), TIMEOUT)
            cur = await asyncio.wait_for(conn.execute(
                f"INSERT INTO stress_load (id) VALUES ({n}) RETURNING host(inet_server_addr()), {TIMELINE_SQL}"),
                TIMEOUT)
            row = await cur.fetchone()
            acks.append((n, sent, time.monotonic(), row[0], row[1]))
        except (psycopg.Error, OSError, asyncio.TimeoutError):
            counts["failures"] += 1
            if conn is not None:
                conn.pgconn.finish()  # no goodbye to a server that may not answer
                conn = None
            await asyncio.sleep(0.02)
    if conn is not None:
        await conn.close()


async def run(a):
    until = {"t": time.monotonic() + a.seconds}
    # SIGTERM ends the run early: the clients stop and what they have is printed.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: until.update(t=0))
    period = a.clients / a.rate
    acks, counts = [], {"failures": 0}
    span = 10**7  # ids per client
    await asyncio.gather(*(client(a.dsn, range(a.first_id + i * span, a.first_id + (i + 1) * span),
                                  period, until, acks, counts) for i in range(a.clients)))
    return acks, counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--first-id", type=int, required=True)
    acks, counts = asyncio.run(run(ap.parse_args()))
    out = sys.stdout
    for n, sent, acked, host, timeline in sorted(acks, key=lambda a: a[2]):
        out.write(f"{n} {sent:.4f} {acked:.4f} {host} {timeline}\n")
    out.write(f"failures {counts['failures']}\n")


if __name__ == "__main__":
    main()
