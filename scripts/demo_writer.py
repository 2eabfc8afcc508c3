#!/usr/bin/env python3
"""The demo's client: writes a row through HAProxy's read-write port every 50 ms (each write
its own connection, as a pooled application reconnecting would), until SIGTERM; then checks
that every acknowledged row is there and prints the longest write gap and what was lost.

usage: demo_writer.py POSTGRES_URL SUMMARY_JSON"""

import json
import signal
import subprocess
import sys
import time

PSQL = "/usr/lib/postgresql/15/bin/psql"
url, summary_file = sys.argv[1], sys.argv[2]
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def psql(sql, timeout=2):
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "1"}
    return subprocess.run([PSQL, "-XAtq", url, "-c", sql], env=env, capture_output=True,
                          text=True, timeout=timeout)


while psql("CREATE TABLE IF NOT EXISTS demo_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())").returncode:
    time.sleep(0.2)
start_id = int(psql("SELECT coalesce(max(id), 0) FROM demo_writes").stdout.strip() or 0)
acks, n = [], start_id
while not stop:
    n += 1
    try:
        if psql(f"INSERT INTO demo_writes (id) VALUES ({n})").returncode == 0:
            acks.append((time.monotonic(), n))
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.05)

present = set()
for _ in range(50):
    r = psql(f"SELECT id FROM demo_writes WHERE id > {start_id}", timeout=10)
    if r.returncode == 0:
        present = set(map(int, r.stdout.split()))
        break
    time.sleep(0.2)
gap = max((b[0] - a[0] for a, b in zip(acks, acks[1:])), default=0.0)
lost = sorted({i for _, i in acks} - present)
summary = {"attempted": n - start_id, "acknowledged": len(acks),
           "longest_write_gap_seconds": round(gap, 3), "lost": len(lost)}
with open(summary_file, "w") as f:
    json.dump(summary, f)
print(f"   client through HAProxy: {len(acks)} writes acknowledged, longest gap {gap:.2f} s, "
      f"{len(lost)} acknowledged writes lost")
