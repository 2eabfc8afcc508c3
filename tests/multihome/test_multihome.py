"""Multi-home as an operator runs it, on the lab: playbooks/multihome.yml builds the pair on
bare db1 and db2 (PostgreSQL 16 from the npm binaries `scripts/deps.sh pg16` installs),
twice (the second run changes nothing): TLS with client certificates from the lab's
throw-away CA (plus pebble's root in the trust bundle, for the renewals), subscriptions with
sslmode verify-full, `pgshift logical watch` on both nodes. Then, on that one pair: rows both
ways over TLS, libpq multi-host clients (psql and psycopg), broken replication and an apply
worker failing on every change (the watch puts the non-active side down), DDL on both sides,
certificate renewals through certbot + pebble (real deploy hook; a wrong key and a client
certificate the peer refuses are rolled back), the transfer procedure with a crash and boot,
and bad module inputs changing nothing.

The module fixture always runs `lab/lab down` at the end, also after a failure. Numbers go
to target/multihome-results.json.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from labkit import (
    INVENTORY, IPS, PSQL, REQUIRED, ROOT, VENV_BIN, ansible_env, fresh_lab, lab, needs, on, out, recap, wait_for,
)

PG16 = pathlib.Path(os.environ.get("PGSHIFT_PG16_BIN", "/opt/pgshift/postgresql-16/bin"))
CONTROLLER = "10.77.0.1"
PORT = 5432
DATA = "/var/lib/postgresql/multihome"
SOCKET = "/var/run/postgresql"
TLS = "/etc/pgshift/multihome-tls"
CA = f"{TLS}/ca.crt"
ADMIN_PASSFILE = "/var/lib/postgresql/.pgpass-multihome"
WRITER_PASSFILE = "/var/lib/postgresql/.pgpass-writer"
CERTBOT = "/etc/pgshift/letsencrypt"
WATCH_LOG = "/etc/pgshift-lab/log/pgshift-logical-watch.log"
RESULTS = ROOT / "target" / "multihome-results.json"

pytestmark = [
    *needs(),
    pytest.mark.skipif(not REQUIRED and not (PG16 / "postgres").exists(), reason="needs scripts/deps.sh pg16"),
    pytest.mark.skipif(not REQUIRED and not shutil.which("pebble"), reason="needs pebble and certbot"),
]


def sql(host, query, db="app"):
    """psql as postgres over the host's own socket; the session writes even on a side that is
    down (an operator repairing it)."""
    return out(host, f"cd / && runuser -u postgres -- {PSQL} -XAtq -v ON_ERROR_STOP=1 -h {SOCKET} -p {PORT} -d {db} "
                     f"-c 'SET default_transaction_read_only = off' -c {shlex.quote(query)}").strip()


def try_sql(host, query, user="writer"):
    """As `writer` over TLS from the host itself (password from a passfile, never argv)."""
    res = on(host, f"cd / && PGPASSFILE={WRITER_PASSFILE} runuser -u postgres -- {PSQL} -XAtq -v ON_ERROR_STOP=1 "
                   f"'host={host} port={PORT} dbname=app user={user} sslmode=verify-full sslrootcert={CA}' "
                   f"-c {shlex.quote(query)}")
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def logical(host, args, timeout=90):
    res = on(host, f"runuser -u postgres -- pgshift logical {args}", timeout)
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def status_json(host="db1"):
    ok, text = logical(host, "status --json")
    assert ok, text
    return json.loads(text)


def flowing(host="db1"):
    return lambda: status_json(host)["replication_ok"]


def rows(host, table="t"):
    return sql(host, f"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}")


def both_ways(ids, table="t", timeout=30):
    """Writes ids[0] on db1 and ids[1] on db2 as writer; waits until each is on the other."""
    assert try_sql("db1", f"INSERT INTO {table} VALUES ({ids[0]}, 'db1')")[0]
    assert try_sql("db2", f"INSERT INTO {table} VALUES ({ids[1]}, 'db2')")[0]
    for h, other_id in (("db1", ids[1]), ("db2", ids[0])):
        wait_for(f"row {other_id} on {h}", lambda: sql(h, f"SELECT count(*) FROM {table} WHERE id = {other_id}") == "1",
                 timeout)


def playbook(pair, *extra, limit=None):
    cmd = [VENV_BIN / "ansible-playbook", "-i", INVENTORY, ROOT / "playbooks" / "multihome.yml",
           "-e", f"@{pair['secrets']}", "-e", json.dumps(pair["vars"]), *extra]
    if limit:
        cmd += ["--limit", limit]
    started = time.monotonic()
    res = subprocess.run(cmd, env=ansible_env(), capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-3000:]
    return round(time.monotonic() - started, 1), recap(res.stdout), res.stdout


def module(host, name, **args):
    """One collection module on `host` through Ansible; its result."""
    e = dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK="results_json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
             ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "ansible" / "callback_plugins"))
    res = subprocess.run([VENV_BIN / "ansible", "-i", INVENTORY, host, "-m", f"pgshift.cluster.{name}",
                          "-a", json.dumps(args)], env=e, capture_output=True, text=True, timeout=180,
                         stdin=subprocess.DEVNULL)
    assert "{" in res.stdout, res.stdout + res.stderr
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    return doc["plays"][0]["tasks"][0]["hosts"][host]


def logical_module(host, **args):
    peer = "db2" if host == "db1" else "db1"
    base = {"login_unix_socket": SOCKET, "login_port": PORT, "login_db": "app", "peer_host": peer,
            "peer_port": PORT, "peer_user": "pgshift_admin", "peer_passfile": ADMIN_PASSFILE,
            "subscription_user": "pgshift_replicator", "peer_ssl_mode": "verify-full", "peer_ca_cert": CA,
            "peer_ssl_cert": f"{TLS}/server.crt", "peer_ssl_key": f"{TLS}/server.key"}
    base.update(args)
    return module(host, "pg_logical_replication", **base)


def catalogs(host):
    return sql(host, "SELECT (SELECT string_agg(pubname || ':' || puballtables, ',') FROM pg_publication), "
                     "(SELECT string_agg(subname || ':' || subenabled || ':' || subconninfo, ',') FROM pg_subscription)")


def served_sha256(host):
    """Fingerprint of the certificate host's PostgreSQL serves to a new connection."""
    res = on(host, f"openssl s_client -connect {IPS[host]}:{PORT} -starttls postgres -servername {host} </dev/null "
                   "2>/dev/null | openssl x509 -noout -fingerprint -sha256")
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().split("=", 1)[1]


def file_sha256(host, path):
    return out(host, f"openssl x509 -in {path} -noout -fingerprint -sha256").strip().split("=", 1)[1]


def peer_client_cert(on_host):
    """(client_dn, client_serial) of the walsender on `on_host` that serves the other node's
    subscription, as pg_stat_ssl shows them."""
    return tuple(sql(on_host, "SELECT s.client_dn || '|' || s.client_serial FROM pg_stat_replication r "
                              "JOIN pg_stat_ssl s USING (pid) WHERE r.usename = 'pgshift_replicator'").split("|"))


def cert_serial(host, path):
    """A certificate's serial, as the decimal pg_stat_ssl shows."""
    hexa = out(host, f"openssl x509 -in {path} -noout -serial").strip().split("=", 1)[1]
    return str(int(hexa, 16))


# ---------------------------------------------------------------------------------------------
# pebble on the controller, reachable by the lab hosts at 10.77.0.1


class LabPebble:
    """pebble 2.4 on 10.77.0.1:14000 (ACME) and :15000 (management), validation always
    passing; its files in a /tmp directory the lab hosts share. It makes a new root at every
    start (written to root.pem): the pair's trust bundle includes it from the start."""

    def __init__(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-lab-pebble-"))
        os.chmod(self.dir, 0o755)
        self.proc = None
        key, self.listener = self.dir / "listener.key", self.dir / "listener.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=pebble", "-addext", f"subjectAltName=IP:{CONTROLLER}",
                        "-keyout", key, "-out", self.listener], check=True, capture_output=True)
        os.chmod(self.listener, 0o644)
        cfg = self.dir / "pebble.json"
        cfg.write_text(json.dumps({"pebble": {
            "listenAddress": f"{CONTROLLER}:14000", "managementListenAddress": f"{CONTROLLER}:15000",
            "certificate": str(self.listener), "privateKey": str(key), "httpPort": 5002, "tlsPort": 5003,
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        self.log = open(self.dir / "pebble.log", "w")
        self.proc = subprocess.Popen(["pebble", "-config", cfg, "-dnsserver", "127.0.0.1:1"], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                                     start_new_session=True,
                                     env=dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1",
                                              PEBBLE_WFE_NONCEREJECT="0"))
        self.root = self.dir / "root.pem"
        get = ["curl", "-sf", "--noproxy", "*", "--cacert", str(self.listener)]
        deadline = time.monotonic() + 15
        while True:
            res = subprocess.run([*get, f"https://{CONTROLLER}:15000/roots/0"], capture_output=True)
            if res.returncode == 0 and b"BEGIN CERTIFICATE" in res.stdout:
                self.root.write_bytes(res.stdout)
                os.chmod(self.root, 0o644)
                break
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.dir / "pebble.log").read_text()
            time.sleep(0.2)

    def certbot(self, host, *args, timeout=180):
        """certbot on `host` against this pebble, with the host's own directories."""
        cmd = (f"REQUESTS_CA_BUNDLE={self.listener} NO_PROXY='*' certbot {' '.join(args)} --server "
               f"https://{CONTROLLER}:14000/dir --config-dir {CERTBOT} --work-dir /var/lib/pgshift/letsencrypt "
               f"--logs-dir /var/lib/pgshift/letsencrypt-logs --non-interactive")
        return on(host, cmd, timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the pair


@pytest.fixture(scope="module")
def pair():
    results = {}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-multihome-"))
    pebble = None
    try:
        fresh_lab()
        pebble = LabPebble()
        secrets = tmp / "secrets.json"
        secrets.touch(mode=0o600)
        secrets.write_text(json.dumps({"multihome_admin_password": "adm:in'\\pw-" + os.urandom(6).hex()}))
        doc = {"secrets": secrets, "pebble": pebble, "results": results, "tmp": tmp,
               "vars": {"multihome_tls_extra_ca_src": [str(pebble.root)],
                        "multihome_client_networks": ["10.77.0.0/24"]}}
        runs = [playbook(doc), playbook(doc), playbook(doc, "--check")]
        results["playbook_seconds"] = [r[0] for r in runs]
        doc["recaps"] = [r[1] for r in runs]
        doc["second_output"] = runs[1][2]
        doc["check_output"] = runs[2][2]
        # A client role on both sides (roles are not replicated), its password in a passfile.
        for h in IPS:
            out(h, f"printf '*:{PORT}:*:writer:writer-pw\\n' >{WRITER_PASSFILE} && "
                   f"chown postgres:postgres {WRITER_PASSFILE} && chmod 600 {WRITER_PASSFILE}")
            sql(h, "CREATE ROLE writer LOGIN PASSWORD 'writer-pw'", db="postgres")
            sql(h, "GRANT CREATE ON SCHEMA public TO writer")
        # The first table, the way schema changes go: on both sides by `pgshift logical ddl`.
        out("db1", "printf 'CREATE TABLE t (id int PRIMARY KEY, origin text);\\nALTER TABLE t OWNER TO writer;\\n'"
                   " >/var/lib/postgresql/t.sql")
        ok, msg = logical("db1", "ddl /var/lib/postgresql/t.sql")
        assert ok, msg
        yield doc
    finally:
        print(json.dumps(results, indent=2))
        logs = ROOT / "target" / "multihome-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for h in IPS:
            for name, path in (("postgresql", "/var/log/postgresql/postgresql-multihome.log"), ("watch", WATCH_LOG)):
                res = on(h, f"tail -n 300 {path}", timeout=10)
                (logs / f"{h}-{name}.log").write_text(res.stdout + res.stderr)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        if pebble:
            pebble.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        lab("down", check=False)


def test_playbook_twice_second_run_changes_nothing(pair):
    first, second, check = pair["recaps"]
    assert set(first) == set(second) == set(check) == set(IPS), pair["recaps"]
    assert all(r["changed"] > 0 for r in first.values()), first
    changed = {h: r for h, r in second.items() if r["changed"] or r["failed"] or r["unreachable"]}
    assert not changed, f"second run of multihome.yml: {second}\n" + "\n".join(
        line for line in pair["second_output"].splitlines() if line.startswith("changed:"))
    # Check mode on the built pair: nothing would change, nothing fails.
    changed = {h: r for h, r in check.items() if r["changed"] or r["failed"] or r["unreachable"]}
    assert not changed, f"--check run of multihome.yml: {check}\n" + pair["check_output"][-3000:]
    # Both watch services run, as PostgreSQL's user.
    for h in IPS:
        assert out(h, "systemctl is-active -q pgshift-logical-watch postgresql-multihome && "
                      "ps -o user= -C pgshift").split()[-1] == "postgres"


def test_rows_both_ways_over_verify_full_tls_with_client_certificates(pair):
    wait_for("replication both ways", flowing(), 30, show=lambda: logical("db1", "status"))
    both_ways((1, 2))
    time.sleep(1)
    for h in IPS:
        assert rows(h) == "1,2", "a change looped back"
    for h, peer in (("db1", "db2"), ("db2", "db1")):
        # The walsender serving the peer's subscription: TLS, the replication role, and the
        # peer's client certificate (its DN and serial, as the peer's file says).
        row = sql(h, "SELECT r.usename, s.ssl, s.client_dn, s.client_serial FROM pg_stat_replication r "
                     "JOIN pg_stat_ssl s USING (pid)")
        assert row == f"pgshift_replicator|t|/CN={peer}|{cert_serial(peer, f'{TLS}/server.crt')}", row
        info = sql(h, "SELECT subconninfo FROM pg_subscription")
        assert f"host={peer}" in info and "sslmode=verify-full" in info and f"sslcert={TLS}/server.crt" in info, info
        assert "user=pgshift_replicator" in info and "password" not in info, info
    # The replication role gets in only with the peer's certificate: a password login as it,
    # even from a pair address, is refused.
    res = on("db1", f"cd / && PGPASSWORD=x PGCONNECT_TIMEOUT=5 {PSQL} -XAtq 'host=db2 port={PORT} dbname=app "
                    f"user=pgshift_replicator sslmode=verify-full sslrootcert={CA}' -c 'SELECT 1'")
    assert res.returncode != 0 and "certificate" in res.stderr, res.stderr


def test_bad_inputs_change_nothing(pair):
    before = {h: catalogs(h) for h in IPS}
    sql("db1", "CREATE TABLE only_db1 (id int)")
    try:
        r = logical_module("db1")
        assert r.get("failed") and "public.only_db1" in r["msg"], r
        r = logical_module("db1", copy_data=True, tables=["nosuch"])
        assert r.get("failed") and "no such table" in r["msg"], r
        assert {h: catalogs(h) for h in IPS} == before
    finally:
        sql("db1", "DROP TABLE only_db1")
    # The pair as the playbook left it: the module run again changes nothing.
    for h in IPS:
        r = logical_module(h)
        assert not r.get("failed") and not r["changed"], r


MULTI_HOST = (f"host=db1,db2 port={PORT} dbname=app user=writer sslmode=verify-full sslrootcert={CA} "
              "connect_timeout=5")


def client_psql(attrs, query="SELECT host(inet_server_addr())", hosts=None):
    """psql on aux (no pair member) with a multi-host connection string; (ok, output)."""
    conninfo = MULTI_HOST if hosts is None else MULTI_HOST.replace("host=db1,db2", f"host={hosts}")
    res = on("aux", f"cd / && PGPASSFILE={WRITER_PASSFILE} {PSQL} -XAtq -v ON_ERROR_STOP=1 "
                    f"{shlex.quote(conninfo + ' target_session_attrs=' + attrs)} -c {shlex.quote(query)}")
    return res.returncode == 0, (res.stdout + res.stderr).strip()


PSYCOPG = r"""
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    cur = c.execute(sys.argv[2])
    print(cur.fetchone()[0] if cur.description else "ok")
"""


def client_psycopg(attrs, query="SELECT host(inet_server_addr())"):
    res = on("aux", f"cd / && PGPASSFILE={WRITER_PASSFILE} /usr/bin/python3 -c {shlex.quote(PSYCOPG)} "
                    f"{shlex.quote(MULTI_HOST + ' target_session_attrs=' + attrs)} {shlex.quote(query)}")
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def test_libpq_multi_host_clients_find_the_writable_side(pair):
    out("aux", f"mkdir -p {TLS} && cp /dev/stdin {CA} <<'EOF'\n" + out("db1", f"cat {CA}") + "EOF")
    out("aux", f"printf '*:{PORT}:*:writer:writer-pw\\n' >{WRITER_PASSFILE} && chmod 600 {WRITER_PASSFILE}")
    results = pair["results"]["clients"] = {}
    for name, client in (("psql", client_psql), ("psycopg", client_psycopg)):
        # Both up: the first listed.
        assert client("read-write") == (True, IPS["db1"]), name
        ok, msg = logical("db2", "down db1")
        assert ok, msg
        try:
            # db1 starts sessions read-only now: a read-write client goes on to db2 and writes there.
            t0 = time.monotonic()
            assert client("read-write") == (True, IPS["db2"]), name
            results[f"{name}_connect_after_down_seconds"] = round(time.monotonic() - t0, 2)
            ok, res = client("read-write", "INSERT INTO t VALUES (nextval('client_ids'), 'client') RETURNING id")
            assert ok, res
            # Readers: prefer-standby finds no standby in a multi-home pair and takes the first
            # listed, writable or not (a down side still serves reads).
            assert client("prefer-standby") == (True, IPS["db1"]), name
        finally:
            ok, msg = logical("db1", "up db1")
            assert ok, msg
        assert client("read-write") == (True, IPS["db1"]), name
    # psql with db2 listed first lands on db2 when both are up.
    assert client_psql("read-write", hosts="db2,db1") == (True, IPS["db2"])


@pytest.fixture(scope="module", autouse=True)
def _client_ids(pair):
    # A sequence on both sides, each side its own numbers (sequences are not replicated).
    for h, start in (("db1", 1000), ("db2", 2000)):
        sql(h, f"CREATE SEQUENCE IF NOT EXISTS client_ids START {start}; GRANT USAGE ON SEQUENCE client_ids TO writer")


def test_broken_replication_puts_the_non_active_side_down(pair):
    sql("db2", "ALTER SUBSCRIPTION pgshift_from_db1 DISABLE")
    t0 = time.monotonic()
    try:
        # The watch services do it within their interval (5 s): db2 is not the active side.
        wait_for("db2 down", lambda: status_json()["nodes"][1]["down"], 20)
        pair["results"]["disabled_subscription_to_down_seconds"] = round(time.monotonic() - t0, 1)
        assert not try_sql("db2", "INSERT INTO t VALUES (7, 'db2')")[0]
        ok, msg = logical("db2", "up db2")
        assert not ok and "refusing to make db2 writable" in msg, msg
    finally:
        sql("db2", "ALTER SUBSCRIPTION pgshift_from_db1 ENABLE")
    wait_for("replication both ways again", flowing(), 60)
    ok, msg = logical("db2", "up db2")
    assert ok, msg
    assert try_sql("db2", "INSERT INTO t VALUES (8, 'db2')")[0]


ORIGIN_ONLY_HERE = ("SELECT pg_replication_origin_create('pgshift_test') WHERE NOT EXISTS "
                    "(SELECT 1 FROM pg_replication_origin WHERE roname = 'pgshift_test'); "
                    "SELECT pg_replication_origin_session_setup('pgshift_test'); ")


def test_apply_worker_failing_on_every_change_puts_the_non_active_side_down(pair):
    """A row on db1 that never reached db2 (written under a replication origin, which
    `origin = none` does not send), then the same key written on db2: db1's apply worker
    fails on that change, is restarted every few seconds and fails again. At most instants
    it looks like a running worker; its error count and db2's unconfirmed WAL give it away."""
    before = json.loads(out("db1", "cat /var/lib/pgshift/logical-health.json"))
    interval = 5
    sql("db1", ORIGIN_ONLY_HERE + "INSERT INTO t VALUES (100, 'db1 only')")
    assert sql("db2", "SELECT count(*) FROM t WHERE id = 100") == "0"
    mark = int(out("db1", f"wc -l < {WATCH_LOG}"))
    t0 = time.monotonic()
    assert try_sql("db2", "INSERT INTO t VALUES (100, 'db2')")[0]
    try:
        wait_for("db2 down", lambda: status_json()["nodes"][1]["down"], 3 * interval + 10)
        took = pair["results"]["failing_worker_to_down_seconds"] = round(time.monotonic() - t0, 1)
        # Within two of the watch's checks (plus one for the check under way when it began).
        assert took <= 3 * interval + 2, took
        log = out("db1", f"tail -n +{mark + 1} {WATCH_LOG}") + out("db2", f"cat {WATCH_LOG}")
        assert "db2 is down" in log and ("failed" in log or "confirmed none" in log), log[-3000:]
        errors = sql("db1", "SELECT apply_error_count FROM pg_stat_subscription_stats")
        assert int(errors) >= 1, errors
        assert before, "the watch keeps its memory in the state file"
    finally:
        # Repair: the conflicting row goes on db1 only, the change applies, both sides up.
        sql("db1", ORIGIN_ONLY_HERE + "DELETE FROM t WHERE id = 100")
    wait_for("replication both ways again", flowing(), 60, show=lambda: logical("db1", "status"))
    wait_for("db2's row 100 on db1", lambda: sql("db1", "SELECT origin FROM t WHERE id = 100") == "db2", 30)
    ok, msg = logical("db1", "up db2")
    assert ok, msg


def test_ddl_on_both_sides(pair):
    out("db1", "printf 'CREATE TABLE u (id int PRIMARY KEY);\\nALTER TABLE u OWNER TO writer;\\n' >/var/lib/postgresql/add-u.sql")
    started = time.monotonic()
    ok, msg = logical("db1", "ddl /var/lib/postgresql/add-u.sql")
    pair["results"]["ddl_seconds"] = round(time.monotonic() - started, 2)
    assert ok, msg
    assert try_sql("db1", "INSERT INTO u VALUES (1)")[0]
    assert try_sql("db2", "INSERT INTO u VALUES (2)")[0]
    for h in IPS:
        wait_for(f"rows of u on {h}", lambda: rows(h, "u") == "1,2")
    # A bad file changes nothing and leaves both sides writable.
    out("db1", "printf 'CREATE TABLE w (id int);\\nCREATE TABLE (;\\n' >/var/lib/postgresql/bad.sql")
    ok, msg = logical("db1", "ddl /var/lib/postgresql/bad.sql")
    assert not ok and "rolled back" in msg, msg
    for h in IPS:
        assert sql(h, "SELECT count(*) FROM pg_class WHERE relname = 'w'") == "0"
        assert try_sql(h, f"INSERT INTO u VALUES ({10 + int(h[-1])})")[0]


def test_renewal_through_certbot_keeps_both_directions(pair):
    """db1's certificate moves to certbot (pebble's CA, in the trust bundle from the start):
    the playbook with multihome_tls_lineage installs it through cert_install and registers
    its deploy hook; then `certbot renew` replaces it, and the hook installs the new one,
    reloads, and restarts db1's apply worker, which reconnects to db2 with the new client
    certificate. The other direction: db2's worker, restarted, verifies db1's new server
    certificate (verify-full)."""
    pebble, r = pair["pebble"], pair["results"].setdefault("renewal", {})
    errors = {h: sql(h, "SELECT apply_error_count FROM pg_stat_subscription_stats") for h in IPS}
    res = pebble.certbot("db1", "certonly", "--standalone", "--http-01-port", "5002", "--agree-tos",
                         "--register-unsafely-without-email", "-d", "db1")
    assert res.returncode == 0, res.stdout + res.stderr
    lineage = f"{CERTBOT}/live/db1"
    certbot_vars = json.dumps({"multihome_tls_lineage": lineage, "multihome_certbot_dir": CERTBOT})
    t, recap, output = playbook(pair, "-e", certbot_vars, limit="db1")
    assert recap["db1"]["failed"] == 0 and recap["db1"]["changed"] > 0, output
    t, recap, output = playbook(pair, "-e", certbot_vars, limit="db1")
    assert recap["db1"]["changed"] == 0 and recap["db1"]["failed"] == 0, output
    assert served_sha256("db1") == file_sha256("db1", f"{lineage}/cert.pem")
    assert out("db1", f"ls {CERTBOT}/renewal-hooks/deploy/").split() == ["pgshift-cert-install"]
    wait_for("db1's new client certificate on db2's walsender",
             lambda: peer_client_cert("db2") == ("/CN=db1", cert_serial("db1", f"{lineage}/cert.pem")), 30)
    both_ways((20, 21))

    old = file_sha256("db1", f"{lineage}/cert.pem")
    t0 = time.monotonic()
    res = pebble.certbot("db1", "renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pgshift-cert-install" in res.stdout and "installed" in res.stdout, res.stdout
    new = file_sha256("db1", f"{lineage}/cert.pem")
    assert new != old and served_sha256("db1") == new
    both_ways((22, 23))
    r["renew_to_both_ways_seconds"] = round(time.monotonic() - t0, 2)
    assert peer_client_cert("db2") == ("/CN=db1", cert_serial("db1", f"{lineage}/cert.pem"))
    # db2's apply worker, reconnecting, verifies db1's new server certificate.
    sql("db2", "SELECT pg_terminate_backend(pid) FROM pg_stat_subscription WHERE relid IS NULL")
    t1 = time.monotonic()
    both_ways((24, 25))
    r["db2_reconnect_to_both_ways_seconds"] = round(time.monotonic() - t1, 2)
    # The restarts were not apply errors: the health rule still sees both ways flowing.
    wait_for("replication both ways", flowing(), 20)
    assert {h: sql(h, "SELECT apply_error_count FROM pg_stat_subscription_stats") for h in IPS} == errors


def test_renewal_with_a_wrong_key_is_rolled_back(pair):
    """A deploy hook that runs before ours replaces the renewed key with another one: the
    renewal reaches cert_install with a key that does not match, which refuses it; the
    server keeps serving the previous certificate and replication goes on."""
    pebble = pair["pebble"]
    lineage = f"{CERTBOT}/live/db1"
    before = served_sha256("db1")
    out("db1", f"cat >{CERTBOT}/renewal-hooks/deploy/00-wrong-key <<'EOF'\n#!/bin/sh\n"
               "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \"$RENEWED_LINEAGE/wrong.pem\"\n"
               "cat \"$RENEWED_LINEAGE/wrong.pem\" >\"$(readlink -f \"$RENEWED_LINEAGE/privkey.pem\")\"\n"
               f"EOF\nchmod 755 {CERTBOT}/renewal-hooks/deploy/00-wrong-key")
    try:
        res = pebble.certbot("db1", "renew", "--force-renewal", "--no-random-sleep-on-renew")
        # certbot itself does not fail on a failing hook; ours says so loudly.
        text = res.stdout + res.stderr
        assert "FAILED, still on the previous certificate" in text and "key" in text, text
    finally:
        out("db1", f"rm -f {CERTBOT}/renewal-hooks/deploy/00-wrong-key {lineage}/wrong.pem")
    assert served_sha256("db1") == before
    assert file_sha256("db1", f"{TLS}/server.crt") == before
    both_ways((30, 31))
    wait_for("replication both ways", flowing(), 20)


def test_a_client_certificate_the_peer_refuses_is_rolled_back(pair):
    """A certificate db1's own checks accept (its CA is in the bundle given as ca_file) but
    db2 does not trust: installed and served, then db1's apply worker cannot reconnect to
    db2 with it, so cert_install puts the previous files back and the worker reconnects
    with them."""
    rogue = pair["tmp"] / "rogue-ca"
    subprocess.run([ROOT / "playbooks" / "files" / "lab-ca.sh", rogue, "db1", IPS["db1"]], check=True)
    out("db1", "mkdir -p /root/rogue && cat >/root/rogue/bundle.crt <<'EOF'\n" + (rogue / "ca.crt").read_text()
        + out("db1", f"cat {CA}") + "EOF")
    for f in ("db1.crt", "db1.key"):
        out("db1", f"cat >/root/rogue/{f} <<'EOF'\n" + (rogue / f).read_text() + "EOF")
    before = served_sha256("db1")
    t0 = time.monotonic()
    r = module("db1", "cert_install", cert="/root/rogue/db1.crt", key="/root/rogue/db1.key",
               ca_file="/root/rogue/bundle.crt", hostname="db1", dest_dir=TLS, service="postgres",
               data_directory=DATA, login_unix_socket=SOCKET, login_port=PORT)
    pair["results"]["refused_client_certificate_rollback_seconds"] = round(time.monotonic() - t0, 1)
    assert r.get("failed"), (r, on("db2", "tail -n 20 /var/log/postgresql/postgresql-multihome.log").stdout,
                             sql("db1", "SELECT * FROM pg_stat_subscription"))
    assert "did not reconnect" in r["msg"] and "put back" in r["msg"], r["msg"]
    assert served_sha256("db1") == before and file_sha256("db1", f"{TLS}/server.crt") == before
    wait_for("replication both ways", flowing(), 30, show=lambda: logical("db1", "status"))
    # For those 20 s db2's changes did not reach db1: the watches may well have put db2 (the
    # non-active side) down meanwhile, as they should. Replication is back: up again.
    if status_json()["nodes"][1]["down"]:
        pair["results"]["watch_put_db2_down_while_the_certificate_was_refused"] = True
        ok, msg = logical("db2", "up db2")
        assert ok, msg
    both_ways((40, 41))


def test_transfer_procedure_down_reboot_up(pair):
    """Move the active side away from db1, take db1's host down, bring it back. db2's watch
    keeps db2 writable while db1 is unreachable: db1 was down when last seen."""
    ok, msg = logical("db2", "down db1")
    assert ok, msg
    ok, err = try_sql("db1", "SET default_transaction_read_only = off; INSERT INTO t VALUES (50, 'db1')")
    assert not ok and ("down" in err or "read-only" in err), err
    assert try_sql("db2", "INSERT INTO t VALUES (51, 'db2')")[0]
    wait_for("db2's row on db1", lambda: sql("db1", "SELECT count(*) FROM t WHERE id = 51") == "1")
    lab("crash", "db1")
    time.sleep(12)  # two of db2's watch checks with db1 unreachable
    assert try_sql("db2", "INSERT INTO t VALUES (52, 'db2')")[0], "db2's watch put the only writable side down"
    lab("boot", "db1")
    wait_for("PostgreSQL back on db1", lambda: on("db1", f"cd / && runuser -u postgres -- {PSQL} -XAtq -h {SOCKET} "
                                                          f"-p {PORT} -c 'SELECT 1'").returncode == 0, 60)
    ok, err = try_sql("db1", "INSERT INTO t VALUES (53, 'db1')")
    assert not ok, "db1 took a write after its reboot while down"
    assert status_json("db2")["nodes"][0]["down"]
    wait_for("replication both ways again", flowing("db2"), 60)
    assert try_sql("db2", "SELECT 1")[0] and not status_json("db2")["nodes"][1]["down"]
    ok, msg = logical("db1", "up db1")
    assert ok, msg
    both_ways((54, 55))
