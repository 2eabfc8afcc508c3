#!/usr/bin/env bash
# The demo: the three-host lab, a cluster deployed by playbooks/site.yml with the built
# collection (twice: the second run changes nothing), replication and backups shown
# working, then the primary's host crashed: the agents fail over, and the old primary
# rejoins as a standby when its host boots again.
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
wait_leader() { # wait_leader HOST LEADER: until HOST's view has LEADER with every member streaming/running
    for _ in $(seq 300); do
        s=$(lab/lab ssh "$1" 'pgshift status --json' 2>/dev/null || true)
        if [[ $s == *"\"leader\": \"$2\""* ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}
echo "== pgshift status"
status db1
echo "== crash db1 (every process killed, network gone)"
start=$(date +%s%N)
lab/lab crash db1
wait_leader db2 db2
echo "   db2 leads after $((($(date +%s%N) - start) / 1000000)) ms"
status db2
echo "== boot db1: its agent rewinds it and it follows db2"
lab/lab boot db1
for _ in $(seq 600); do
    s=$(lab/lab ssh db2 'pgshift status --json' 2>/dev/null || true)
    if python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if any(m["name"]=="db1" and m["state"]=="streaming" for m in d["members"]) else 1)' "$s" 2>/dev/null; then break; fi
    sleep 0.2
done
status db2
echo "== the lab is still up: lab/lab ssh db1 '...' to explore, make lab-down to remove it"
