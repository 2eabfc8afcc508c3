#!/usr/bin/env bash
# The demo: the three-host lab, a cluster deployed by playbooks/site.yml with the built
# collection (twice: the second run changes nothing): PostgreSQL streaming in synchronous
# mode, backups, etcd, the agents, HAProxy on aux. Then a client writes through HAProxy while
# the primary's host crashes (the agents fail over; the old primary rejoins when its host
# boots), and a planned switchover moves the leadership back; pgshift status between steps
# and the measured write gaps at the end.
# The lab stays up afterwards for exploring; `make lab-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$PWD/target/collections" \
    ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_DEPRECATION_WARNINGS=false ANSIBLE_NOCOLOR=1

echo "== lab up: db1, db2, aux (network namespaces with their own sshd)"
lab/lab up
lab/lab status

for run in first second; do
    echo "== ansible-playbook playbooks/site.yml ($run run)"
    start=$(date +%s%N)
    ansible-playbook -i lab/inventory.yml playbooks/site.yml | sed -n '/PLAY RECAP/,$p' | sed '/^$/d'
    echo "   took $((($(date +%s%N) - start) / 1000000)) ms"
done

echo "== a row written on db1 ..."
lab/lab ssh db1 "cd / && su postgres -c \"psql -XAtc \\\"CREATE TABLE IF NOT EXISTS demo (at timestamptz DEFAULT now(), note text); INSERT INTO demo (note) VALUES ('hello from db1') RETURNING note, at\\\"\""
echo "== ... read on db2 (a hot standby)"
for _ in $(seq 50); do
    out=$(lab/lab ssh db2 "cd / && su postgres -c \"psql -XAtc 'SELECT note, at FROM demo ORDER BY at DESC LIMIT 1'\"" 2>/dev/null || true)
    [[ -n $out ]] && break
    sleep 0.1
done
echo "$out"
echo "== db1's pg_stat_replication"
lab/lab ssh db1 "cd / && su postgres -c \"psql -Xc 'SELECT application_name, client_addr, state, sync_state, replay_lag FROM pg_stat_replication'\""
echo "== a full backup from aux (pgBackRest over TLS)"
lab/lab ssh aux "cd / && runuser -u postgres -- pgbackrest --stanza=main --type=full --log-level-console=warn backup && runuser -u postgres -- pgbackrest --stanza=main info" | sed -n '1,12p'

status() { lab/lab ssh "$1" pgshift status; }
json_status() { lab/lab ssh "$1" 'pgshift status --json' 2>/dev/null || true; }
# settled HOST LEADER: LEADER leads, every other member streams from it and is synchronous.
settled() {
    for _ in $(seq 600); do
        if python3 - "$(json_status "$1")" "$2" <<'PY' 2>/dev/null; then return 0; fi
import json, sys
d, leader = json.loads(sys.argv[1]), sys.argv[2]
others = [m for m in d["members"] if m["name"] != leader]
ok = d["leader"] == leader and others and all(
    m["state"] == "streaming" and m["lag_bytes"] == 0 for m in others) and d["sync_standby"]
sys.exit(0 if ok else 1)
PY
        sleep 0.2
    done
    echo "demo: the cluster did not settle with $2 leading" >&2
    return 1
}
writer_start() { scripts/demo_writer.py "postgresql://demo:demo@10.77.0.13:5000/demo" "$1" & WRITER=$!; sleep 2; }
writer_stop() { kill -TERM "$WRITER"; wait "$WRITER" || true; }
SUMMARY=target/demo
mkdir -p "$SUMMARY"

echo "== pgshift status (synchronous mode: db2 confirms every commit of db1)"
settled db1 db1
status db1
echo "== HAProxy on aux: 5000 reaches the primary, 5001 a standby"
PSQL=/usr/lib/postgresql/15/bin/psql
echo "   5000: $($PSQL -XAtq "postgresql://demo:demo@10.77.0.13:5000/demo" -c "SELECT host(inet_server_addr()) || ' in recovery: ' || pg_is_in_recovery()")"
echo "   5001: $($PSQL -XAtq "postgresql://demo:demo@10.77.0.13:5001/demo" -c "SELECT host(inet_server_addr()) || ' in recovery: ' || pg_is_in_recovery()")"

echo "== a client writes through HAProxy (aux:5000) while db1's host crashes"
writer_start "$SUMMARY/crash.json"
start=$(date +%s%N)
lab/lab crash db1
for _ in $(seq 300); do [[ $(json_status db2) == *'"leader": "db2"'* ]] && break; sleep 0.1; done
echo "   db2 leads after $((($(date +%s%N) - start) / 1000000)) ms"
sleep 2
writer_stop
status db2
echo "== boot db1: its agent rewinds it, it follows db2 and becomes the synchronous standby"
lab/lab boot db1
settled db2 db2
status db2
echo "== planned switchover back to db1, the client still writing through HAProxy"
writer_start "$SUMMARY/switchover.json"
lab/lab ssh db2 "pgshift switchover --to db1"
sleep 2
writer_stop
settled db1 db1
status db1
echo "== summary"
python3 - "$SUMMARY" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
for phase in ["crash", "switchover"]:
    s = json.loads((d / f"{phase}.json").read_text())
    print(f"   {phase:10s} longest write gap through HAProxy {s['longest_write_gap_seconds']:.2f} s, "
          f"{s['acknowledged']} writes acknowledged, {s['lost']} lost")
PY
echo "== the lab is still up: lab/lab ssh db1 '...' to explore, make lab-down to remove it"
