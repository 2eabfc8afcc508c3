"""Multi-home over bidirectional logical replication in the lab: PostgreSQL 16 (the npm
binaries `scripts/deps.sh pg16` installs) on db1 and db2 (port 5433, started by the lab's
boot registry), the pair set up with the `pg_logical_replication` module through Ansible,
then the seed's procedures as single `pgshift logical` commands: transfer (down one side,
take its host down, bring it back, up), DDL on both sides, broken replication detected with
one side going read-only, and bad inputs changing nothing.

The module fixture always runs `lab/lab down` at the end, also after a failure.
"""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB = ROOT / "lab" / "lab"
INVENTORY = ROOT / "lab" / "inventory.yml"
VENV_BIN = ROOT / ".venv" / "bin"
PG16 = pathlib.Path(os.environ.get("PGSHIFT_PG16_BIN", "/opt/pgshift/postgresql-16/bin"))
PSQL = "/usr/lib/postgresql/15/bin/psql"
IPS = {"db1": "10.77.0.11", "db2": "10.77.0.12"}
PORT = 5433
DATA = "/var/lib/postgresql/16/multihome"
SOCKET = "/var/lib/postgresql/16/run"
PASSFILE = "/var/lib/postgresql/.pgpass-multihome"
PASSWORD = "multihome-lab-only"
PGSHIFT = ROOT / "bin" / "pgshift"
RESULTS = ROOT / "target" / "multihome-results.json"

_REQUIRED = bool(os.environ.get("PGSHIFT_REQUIRE_LAB"))
pytestmark = [
    pytest.mark.skipif(not _REQUIRED and os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not _REQUIRED and not (PG16 / "postgres").exists(), reason="needs scripts/deps.sh pg16"),
]


def lab(*args, timeout=120, check=True):
    res = subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"lab/lab {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def on(host, cmd, timeout=60):
    return lab("ssh", host, cmd, timeout=timeout, check=False)


def out(host, cmd, timeout=60):
    res = on(host, cmd, timeout)
    assert res.returncode == 0, f"{host}: {cmd!r} exited {res.returncode}: {res.stdout}{res.stderr}"
    return res.stdout


def sql(host, query, user="postgres"):
    """psql over the lab network as `user` (no password in argv: the passfile); the session
    writes even on a side that is down (an operator repairing it)."""
    return out(host, f"cd / && PGPASSFILE={PASSFILE} runuser -u postgres -- {PSQL} -XAtq -v ON_ERROR_STOP=1 "
                     f"-h {IPS[host]} -p {PORT} -U {user} -d app -c 'SET default_transaction_read_only = off' "
                     f"-c {shlex.quote(query)}").strip()


def try_sql(host, query, user="writer"):
    res = on(host, f"cd / && PGPASSFILE={PASSFILE} runuser -u postgres -- {PSQL} -XAtq -v ON_ERROR_STOP=1 "
                   f"-h {IPS[host]} -p {PORT} -U {user} -d app -c {shlex.quote(query)}")
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def logical(host, args, timeout=90):
    res = on(host, f"{PGSHIFT} logical {args}", timeout)
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def module(host, **args):
    """The collection's module on `host` through Ansible; its result."""
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}",
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "target" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="results_json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "ansible" / "callback_plugins"))
    base = {"login_unix_socket": SOCKET, "login_port": PORT, "login_db": "app",
            "peer_port": PORT, "peer_passfile": PASSFILE, "peer_ssl_mode": "disable"}
    base.update(args)
    res = subprocess.run([VENV_BIN / "ansible", "-i", INVENTORY, host, "-m", "pgshift.cluster.pg_logical_replication",
                          "-a", json.dumps(base)], env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert "{" in res.stdout, res.stdout + res.stderr
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    return doc["plays"][0]["tasks"][0]["hosts"][host]


def wait_for(what, predicate, timeout=30, interval=0.2, show=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {show()}" if show else ""))


def flowing(host="db1"):
    return lambda: "flowing both ways" in logical(host, "status")[1]


def rows(host, table="t"):
    return sql(host, f"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}")


def start_pg16(host):
    """A PostgreSQL 16 cluster on host (port 5433), registered with the lab's boot registry
    so it comes back when the host boots."""
    script = f"""
set -e
mkdir -p {DATA} {SOCKET} && chown postgres:postgres /var/lib/postgresql/16 {DATA} {SOCKET} && chmod 700 {DATA}
if [ ! -s {DATA}/PG_VERSION ]; then
  cd / && runuser -u postgres -- {PG16}/initdb -D {DATA} -U postgres -E UTF8 --locale=C.UTF-8 \\
      --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  cat >>{DATA}/postgresql.conf <<CONF
port = {PORT}
listen_addresses = '*'
unix_socket_directories = '{SOCKET}'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
CONF
  echo 'host all all 10.77.0.0/24 scram-sha-256' >>{DATA}/pg_hba.conf
fi
cat >/etc/pgshift-lab/boot.d/15-postgresql-16.conf <<REG
NAME=postgresql-16
EXEC={PG16}/postgres
ARGS="-D {DATA}"
USER=postgres
REG
/etc/pgshift-lab/bin/lab-service start postgresql-16
printf '*:{PORT}:*:postgres:{PASSWORD}\\n*:{PORT}:*:writer:writer-pw\\n' >{PASSFILE}
chown postgres:postgres {PASSFILE} && chmod 600 {PASSFILE}
"""
    out(host, script)
    wait_for(f"PostgreSQL 16 on {host}", lambda: on(host, f"cd / && runuser -u postgres -- {PSQL} -XAtq -h {SOCKET} -p {PORT} -c 'SELECT 1'").returncode == 0)


@pytest.fixture(scope="module")
def pair():
    results = {}
    try:
        lab("down", check=False)
        lab("up")
        for h in IPS:
            start_pg16(h)
            psql_local = f"cd / && runuser -u postgres -- {PSQL} -XAtq -v ON_ERROR_STOP=1 -h {SOCKET} -p {PORT}"
            # The password from stdin, never in argv.
            out(h, f"{psql_local} -d postgres -f - <<'SQL'\n"
                   f"ALTER ROLE postgres PASSWORD '{PASSWORD}';\n"
                   "CREATE ROLE writer LOGIN PASSWORD 'writer-pw';\n"
                   "CREATE DATABASE app;\nSQL")
            out(h, f"{psql_local} -d app -c 'CREATE TABLE t (id int PRIMARY KEY, origin text); ALTER TABLE t OWNER TO writer'")
            other = [o for o in IPS if o != h][0]
            out(h, f"mkdir -p /etc/pgshift && cat >/etc/pgshift/logical.toml <<'TOML'\n"
                   f"database = \"app\"\nactive = \"db1\"\n"
                   f"[[node]]\nname = \"db1\"\nhost = \"{IPS['db1']}\"\nport = {PORT}\npassfile = \"{PASSFILE}\"\n"
                   f"[[node]]\nname = \"db2\"\nhost = \"{IPS['db2']}\"\nport = {PORT}\npassfile = \"{PASSFILE}\"\nTOML")
            del other
        yield results
    finally:
        print(json.dumps(results, indent=2))
        logs = ROOT / "target" / "multihome-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for h in IPS:
            res = on(h, "tail -n 200 /etc/pgshift-lab/log/postgresql-16.log", timeout=10)
            (logs / f"{h}-postgresql-16.log").write_text(res.stdout + res.stderr)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        lab("down", check=False)


def test_bad_inputs_change_nothing(pair):
    out("db1", f"cd / && runuser -u postgres -- {PSQL} -XAtq -h {SOCKET} -p {PORT} -d app -c 'CREATE TABLE only_db1 (id int)'")
    r = module("db1", peer_host=IPS["db2"])
    assert r.get("failed") and "public.only_db1" in r["msg"], r
    r = module("db1", peer_host=IPS["db2"], copy_data=True, tables=["nosuch"])
    assert r.get("failed") and "no such table" in r["msg"], r
    for h in IPS:
        assert sql(h, "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_subscription)") == "0"
    out("db1", f"cd / && runuser -u postgres -- {PSQL} -XAtq -h {SOCKET} -p {PORT} -d app -c 'DROP TABLE only_db1'")


def test_module_sets_up_both_ways_without_loops(pair):
    r = module("db1", peer_host=IPS["db2"])
    assert r["changed"] and not r.get("failed"), r
    assert not module("db1", peer_host=IPS["db2"])["changed"]
    r = module("db2", peer_host=IPS["db1"])
    assert r["changed"] and not r.get("failed"), r
    assert not module("db2", peer_host=IPS["db1"])["changed"]
    wait_for("replication both ways", flowing(), show=lambda: logical("db1", "status"))
    assert try_sql("db1", "INSERT INTO t VALUES (1, 'db1')")[0]
    assert try_sql("db2", "INSERT INTO t VALUES (2, 'db2')")[0]
    for h in IPS:
        wait_for(f"both rows on {h}", lambda: rows(h) == "1,2")
    time.sleep(1)
    for h in IPS:
        assert rows(h) == "1,2", "a change looped back"


def test_transfer_procedure_down_reboot_up(pair):
    """Move the active side away from db1, take db1's host down, bring it back."""
    ok, msg = logical("db2", "down db1")
    assert ok, msg
    ok, err = try_sql("db1", "SET default_transaction_read_only = off; INSERT INTO t VALUES (3, 'db1')")
    assert not ok and ("down" in err or "read-only" in err), err
    assert try_sql("db2", "INSERT INTO t VALUES (4, 'db2')")[0]
    wait_for("db2's row on db1", lambda: rows("db1") == "1,2,4")
    lab("crash", "db1")
    lab("boot", "db1")
    wait_for("PostgreSQL 16 back on db1", lambda: on("db1", f"cd / && runuser -u postgres -- {PSQL} -XAtq -h {SOCKET} -p {PORT} -c 'SELECT 1'").returncode == 0, 60)
    ok, err = try_sql("db1", "INSERT INTO t VALUES (5, 'db1')")
    assert not ok, "db1 took a write after its reboot while down"
    ok, status = logical("db2", "status")
    assert "db1: DOWN (read-only)" in status, status
    wait_for("replication both ways again", lambda: "flowing both ways" in logical("db2", "status")[1], 60)
    ok, msg = logical("db1", "up db1")
    assert ok, msg
    assert try_sql("db1", "INSERT INTO t VALUES (6, 'db1')")[0]
    for h in IPS:
        wait_for(f"every row on {h}", lambda: rows(h) == "1,2,4,6")


def test_broken_replication_puts_one_side_down(pair):
    sql("db2", "ALTER SUBSCRIPTION pgshift_from_10_77_0_11 DISABLE")
    ok, msg = logical("db1", "check")
    assert ok and "db2 is down" in msg, msg
    assert not try_sql("db2", "INSERT INTO t VALUES (7, 'db2')")[0]
    ok, msg = logical("db2", "up db2")
    assert not ok and "refusing to make db2 writable" in msg, msg
    sql("db2", "ALTER SUBSCRIPTION pgshift_from_10_77_0_11 ENABLE")
    wait_for("replication both ways again", lambda: "flowing both ways" in logical("db1", "status")[1], 60)
    ok, msg = logical("db2", "up db2")
    assert ok, msg


def test_ddl_on_both_sides(pair):
    out("db1", "printf 'CREATE TABLE u (id int PRIMARY KEY);\\nALTER TABLE u OWNER TO writer;\\n' >/root/add-u.sql")
    started = time.monotonic()
    ok, msg = logical("db1", "ddl /root/add-u.sql")
    pair["ddl_seconds"] = round(time.monotonic() - started, 2)
    assert ok, msg
    assert try_sql("db1", "INSERT INTO u VALUES (1)")[0]
    assert try_sql("db2", "INSERT INTO u VALUES (2)")[0]
    for h in IPS:
        wait_for(f"rows of u on {h}", lambda: rows(h, "u") == "1,2")
    # A bad file changes nothing and leaves both sides writable.
    out("db1", "printf 'CREATE TABLE w (id int);\\nCREATE TABLE (;\\n' >/root/bad.sql")
    ok, msg = logical("db1", "ddl /root/bad.sql")
    assert not ok and "rolled back" in msg, msg
    for h in IPS:
        assert sql(h, "SELECT count(*) FROM pg_class WHERE relname = 'w'") == "0"
        assert try_sql(h, f"INSERT INTO u VALUES ({10 + len(h)}{h[-1]})")[0]
