#!/usr/bin/env bash
# The demo, for now: a throw-away PostgreSQL 15, pg_hba rules applied by ansible-playbook
# with the built collection, the server reloaded, and what PostgreSQL now enforces.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/pgshift-demo.XXXXXX)
chmod 755 "$work" # the server runs as postgres and must reach its directory
scratch=target/debug/pgshift-scratch-pg
cleanup() {
    "$scratch" stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

export ANSIBLE_COLLECTIONS_PATH="$work/collections" ANSIBLE_LOCALHOST_WARNING=false \
    ANSIBLE_INVENTORY_UNPARSED_WARNING=false ANSIBLE_NOCOLOR=1

echo "== installing the collection from dist/ into a scratch collections path"
.venv/bin/ansible-galaxy collection install --force -p "$work/collections" dist/pgshift-cluster-*.tar.gz >/dev/null

echo "== starting a throw-away PostgreSQL 15"
ssl=()
# With Debian's snakeoil certificate the server has TLS on, so the hostssl rule below can match.
if [[ -r /etc/ssl/private/ssl-cert-snakeoil.key && $(id -u) == 0 ]]; then
    install -d -m 0755 "$work/tls"
    install -m 0644 -o postgres /etc/ssl/certs/ssl-cert-snakeoil.pem "$work/tls/server.crt"
    install -m 0600 -o postgres /etc/ssl/private/ssl-cert-snakeoil.key "$work/tls/server.key"
    ssl=("ssl = on" "ssl_cert_file = '$work/tls/server.crt'" "ssl_key_file = '$work/tls/server.key'")
fi
eval "$("$scratch" start "$work/pg" "${ssl[@]}")"
echo "   data directory $PGDATA, socket $PGHOST, port $PGPORT"

echo "== applying pg_hba rules with ansible-playbook (then again: nothing to change)"
for run in first second; do
    .venv/bin/ansible-playbook -i localhost, -c local playbooks/demo/pg_hba.yml \
        -e "pgdata=$PGDATA" --diff | sed -n '/PLAY RECAP/,$p;/^TASK/p;/^[-+][a-z]/p' | sed "s/^/   [$run] /"
done

echo "== what PostgreSQL now reads from pg_hba.conf (pg_hba_file_rules)"
cmd=(/usr/lib/postgresql/15/bin/psql -X -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -c
    "SELECT line_number, type, database, user_name, address, netmask, auth_method, options, error FROM pg_hba_file_rules ORDER BY line_number")
if [[ $(id -u) == 0 ]]; then su postgres -s /bin/sh -c "$(printf '%q ' "${cmd[@]}")"; else "${cmd[@]}"; fi
