"""pgBackRest over TLS in the three-host lab: `pgshift.cluster.pgbackrest_repository` and
playbooks/backup.yml (as site.yml imports it), end to end.

The module fixture builds the lab from nothing (`lab/lab down`, `lab/lab up`, then the playbooks
site.yml imports, except the agent's, with pgshift_agent_enabled=false), the tests run in file
order against that one cluster, and `lab/lab down` always runs at the end, also after a failure.
The last test promotes db2, so it stays last.

Needs root, the lab's packages (iproute2, openssh-server, nftables), PostgreSQL 15, pgBackRest and
the built collection in dist/ (`make collection`). Measured numbers (archive attempts with the
repository down, catch-up, backup and restore times) are printed: run with `-s` to see them.
"""

import importlib.util
import json
import shlex
import subprocess
import time

import pytest
import yaml

from labkit import INVENTORY, ROOT, fresh_lab, lab, needs, on, out

PKI = ROOT / "lab" / "state" / "pki"
SITE = ROOT / "playbooks" / "site.yml"
MODULE = "pgshift.cluster.pgbackrest_repository"

CONF = "/etc/pgbackrest/pgbackrest.conf"
UNITS_DIR = "/etc/systemd/system"
REPO = "/var/lib/pgbackrest"
PGDATA = "/var/lib/postgresql/15/main"
PG_BIN = "/usr/lib/postgresql/15/bin"

pytestmark = needs()


def _ansible_conftest():
    # Loaded under its own name: tests/ansible/conftest.py would otherwise clash as "conftest".
    path = ROOT / "tests" / "ansible" / "conftest.py"
    spec = importlib.util.spec_from_file_location("pgshift_tests_ansible_conftest_backup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ansible = _ansible_conftest()
# The built collection installed from dist/ into a temp dir, and the env that uses it with the
# results_json callback (one JSON document per run).
collections_path = _ansible.collections_path
ansible_env = _ansible.ansible_env


# --- helpers -------------------------------------------------------------------------------------


def as_pg(cmd, cwd="/"):
    """cmd as the postgres user (no sudo on lab hosts; runuser keeps the cwd, so leave /root)."""
    return f"cd {shlex.quote(cwd)} && runuser -u postgres -- {cmd}"


def psql(host, sql, port=5432, socket="/var/run/postgresql"):
    cmd = f"psql -XAtq -v ON_ERROR_STOP=1 -h {socket} -p {port} -d postgres -c {shlex.quote(sql)}"
    return out(host, as_pg(cmd)).strip()


def pgbackrest(host, args, timeout=120):
    return out(host, as_pg(f"pgbackrest --config={CONF} {args}"), timeout=timeout)


def info():
    """`pgbackrest info` of stanza main, from the repository host."""
    return json.loads(pgbackrest("aux", "--stanza=main --output=json info"))[0]


def sha256(host, path):
    return out(host, f"sha256sum {shlex.quote(path)}").split()[0]


def listing(host, path):
    return sorted(out(host, f"ls -A {shlex.quote(path)}").split())


def units(host):
    """pgBackRest's units among the host's (the directory also holds the others' and the
    enablement links)."""
    return [name for name in listing(host, UNITS_DIR) if name.startswith("pgbackrest-")]


def switch_wal(host="db1"):
    """Writes a row, closes the current WAL segment and returns its name (the one to archive)."""
    psql(host, "CREATE TABLE IF NOT EXISTS wal_traffic (at timestamptz DEFAULT now())")
    psql(host, "INSERT INTO wal_traffic DEFAULT VALUES")
    return psql(host, "SELECT pg_walfile_name(pg_switch_wal())")


def archiver(host="db1"):
    line = psql(
        host,
        "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count,"
        " coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time)::text, '')"
        " FROM pg_stat_archiver",
    )
    archived, last_archived, failed, last_failed, failed_at = line.split("|")
    return {
        "archived_count": int(archived),
        "last_archived_wal": last_archived,
        "failed_count": int(failed),
        "last_failed_wal": last_failed,
        "last_failed_time": float(failed_at) if failed_at else None,
    }


def wait_archived(segment, host="db1", timeout=90):
    """Seconds until host's archiver reports segment (or a later one of the same timeline)
    archived; pg_stat_archiver only says so after archive_command returned 0."""
    started = time.monotonic()
    while True:
        last = archiver(host)["last_archived_wal"]
        if last[:8] == segment[:8] and last >= segment:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, (
            f"{segment} not archived by {host} within {timeout} s (last archived: {last!r}, "
            f"archiver: {archiver(host)}); see /var/log/pgbackrest/main-archive-push-async.log on {host}"
        )
        time.sleep(0.5)


def repo_has(segment):
    archive = info()["archive"]
    return any(a["max"][:8] == segment[:8] and a["max"] >= segment for a in archive)


def timed(host, cmd):
    """Runs cmd on host and returns (exit status, seconds) measured on the host itself, so the
    SSH round trip is not counted."""
    script = f"s=$(date +%s%N); ( {cmd} ) >/dev/null 2>&1; rc=$?; e=$(date +%s%N); echo $rc $(( (e - s) / 1000000 ))"
    rc, ms = out(host, script).split()
    return int(rc), int(ms) / 1000


def timed_inserts(host="db1", n=5):
    """Seconds per INSERT, each its own transaction (commit included), measured on the host."""
    psql(host, "CREATE TABLE IF NOT EXISTS write_probe (at timestamptz DEFAULT now())")
    times = []
    for _ in range(n):
        rc, secs = timed(host, as_pg("psql -XAtq -v ON_ERROR_STOP=1 -d postgres -c 'INSERT INTO write_probe DEFAULT VALUES'"))
        assert rc == 0, f"INSERT on {host} failed (exit {rc})"
        times.append(secs)
    return times


def pg_status(host):
    return on(host, "pg_ctlcluster 15 main status >/dev/null").returncode


def pg_start(host):
    out(host, "pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start")


def wait_streaming(host="db2", timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        status = psql(host, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')")
        if status == "streaming":
            return
        assert time.monotonic() < deadline, f"{host} is not streaming after {timeout} s (wal receiver: {status})"
        time.sleep(0.5)


class Ansible:
    """ansible / ansible-playbook against the lab inventory, with parsed JSON results."""

    def __init__(self, env):
        self.env = env

    def _run(self, cmd, timeout):
        p = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, cwd=ROOT,
            stdin=subprocess.DEVNULL, timeout=timeout,
        )
        # One document per playbook run (the callback prints at every playbook's stats), each
        # holding everything so far: the last one is the whole run.
        docs, pos, decoder = [], p.stdout.find("{"), json.JSONDecoder()
        while pos >= 0:
            doc, end = decoder.raw_decode(p.stdout, pos)
            docs.append(doc)
            pos = p.stdout.find("{", end)
        assert docs, f"no JSON from {cmd} (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"
        return p.returncode, docs[-1], p.stderr

    def module(self, host, args, timeout=120):
        """The module ad-hoc on host with JSON args (types kept); returns its result dict."""
        _, doc, stderr = self._run(
            ["ansible", host, "-i", str(INVENTORY), "-m", MODULE, "-a", json.dumps(args)], timeout
        )
        try:
            return doc["plays"][0]["tasks"][0]["hosts"][host]
        except (KeyError, IndexError):
            raise AssertionError(f"no result for {host}: {json.dumps(doc)[:2000]}\n{stderr}")

    def playbook(self, *paths, extra_vars=None, timeout=600):
        cmd = ["ansible-playbook", "-i", str(INVENTORY), *map(str, paths)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        return self._run(cmd, timeout)


def failed_tasks(doc):
    return [
        f"{task['task']['name']} on {host}: {result.get('msg') or result.get('stderr') or result}"
        for play in doc["plays"]
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed") or result.get("unreachable")
    ]


def tls(host):
    return {
        "cert": f"/etc/pgbackrest/tls/{host}.crt",
        "key": f"/etc/pgbackrest/tls/{host}.key",
        "ca": "/etc/pgbackrest/tls/ca.crt",
        "port": 8432,
    }


def instances(config_file=None):
    result = []
    for host in ("db1", "db2"):
        inst = {"host": host, "name": "15/main", "port": 5432}
        if config_file:
            inst["config_file"] = config_file
        result.append(inst)
    return result


def repository_args(**overrides):
    """The repository task exactly as playbooks/backup.yml runs it on aux, with overrides."""
    args = {
        "role": "repository",
        "stanzas": [{"name": "main", "instances": instances()}],
        "retention_full": 2,
        "retention_diff": 6,
        "schedules": [
            {"type": "full", "on_calendar": "Sun *-*-* 01:00:00"},
            {"type": "diff", "on_calendar": "Mon..Sat *-*-* 01:00:00"},
        ],
        "tls": tls("aux"),
        "units_dir": UNITS_DIR,
    }
    args.update(overrides)
    return args


# --- the cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ansible(ansible_env):
    return Ansible(ansible_env)


def site_playbooks():
    """The playbooks site.yml imports, in order, except the agent's: with the agent running,
    PostgreSQL is the agent's to stop, start and promote, and these tests do that by hand."""
    imports = [
        entry["ansible.builtin.import_playbook"]
        for entry in yaml.safe_load(SITE.read_text())
        if "ansible.builtin.import_playbook" in entry
    ]
    assert "backup.yml" in imports, f"site.yml does not import backup.yml: {imports}"
    return [SITE.parent / name for name in imports if name != "agent.yml"]


@pytest.fixture(scope="module")
def cluster(ansible):
    """A fresh lab built like site.yml does (without the agent): db1 primary, db2 streaming,
    aux the repository."""
    playbooks = site_playbooks()
    try:
        fresh_lab()
        started = time.monotonic()
        rc, doc, stderr = ansible.playbook(*playbooks, extra_vars={"pgshift_agent_enabled": False})
        seconds = time.monotonic() - started
        names = " ".join(p.name for p in playbooks)
        print(f"\n[backup] {names} on a fresh lab: {seconds:.1f} s, stats {doc['stats']}")
        assert rc == 0, f"{names} exited {rc}: {failed_tasks(doc)}\n{stderr[-3000:]}"
        assert all(s["failures"] == 0 and s["unreachable"] == 0 for s in doc["stats"].values()), doc["stats"]
        yield {"site_seconds": seconds}
    finally:
        lab("down", check=False)


# --- tests ---------------------------------------------------------------------------------------


def test_units_files_and_modes(cluster, ansible):
    """The units are what systemd would accept (verified with systemd-analyze, which is also
    shown to reject a bad unit here), the configuration may hold passphrases (0640 postgres)
    and pgBackRest refuses keys others can read (0600)."""
    assert units("aux") == [
        "pgbackrest-main-diff-backup.service",
        "pgbackrest-main-diff-backup.timer",
        "pgbackrest-main-full-backup.service",
        "pgbackrest-main-full-backup.timer",
        "pgbackrest-server.service",
    ]
    for host in ("db1", "db2"):
        assert units(host) == ["pgbackrest-server.service"], f"units on {host}"
    for host in ("aux", "db1", "db2"):
        res = on(host, f"cd {UNITS_DIR} && LC_ALL=C systemd-analyze verify --man=no ./pgbackrest-*")
        assert res.returncode == 0, f"systemd-analyze verify on {host}: {res.stdout}{res.stderr}"
    timer = out("aux", f"cat {UNITS_DIR}/pgbackrest-main-full-backup.timer")
    assert "OnCalendar=Sun *-*-* 01:00:00" in timer
    service = out("aux", f"cat {UNITS_DIR}/pgbackrest-main-full-backup.service")
    assert f"ExecStart=/usr/bin/pgbackrest --config={CONF} --stanza=main --type=full backup" in service
    assert "User=postgres" in service
    # Negative control: the same verification catches a bad OnCalendar on these hosts.
    bad = on("aux", "d=$(mktemp -d) && printf '[Unit]\\nDescription=x\\n[Timer]\\nOnCalendar=bogus\\n"
                    "[Install]\\nWantedBy=timers.target\\n' >$d/x.timer && printf '[Service]\\nType=oneshot\\n"
                    "ExecStart=/bin/true\\n' >$d/x.service; LC_ALL=C systemd-analyze verify --man=no $d/x.timer;"
                    " rc=$?; rm -rf $d; exit $rc")
    assert bad.returncode != 0 and "bogus" in bad.stderr, (bad.returncode, bad.stderr)

    for host in ("aux", "db1", "db2"):
        stat = out(host, f"stat -c '%n %a %U %G' {CONF} /etc/pgbackrest/tls /etc/pgbackrest/tls/*").splitlines()
        modes = {line.split()[0]: line.split()[1:] for line in stat}
        assert modes[CONF] == ["640", "postgres", "postgres"], f"{host}: {modes}"
        assert modes[f"/etc/pgbackrest/tls/{host}.key"] == ["600", "postgres", "postgres"], f"{host}: {modes}"
        assert modes[f"/etc/pgbackrest/tls/{host}.crt"][1] == "postgres", f"{host}: {modes}"
        assert modes["/etc/pgbackrest/tls"] == ["750", "postgres", "postgres"], f"{host}: {modes}"
        assert out(host, "systemctl is-enabled pgbackrest-server; systemctl is-active pgbackrest-server") \
            == "enabled\nactive\n", f"no pgBackRest server on {host}"
    # The backups' timers are enabled where the repository is (the lab's systemctl keeps
    # timers but does not fire them; the tests run backups themselves).
    assert out("aux", "systemctl is-enabled pgbackrest-main-full-backup.timer pgbackrest-main-diff-backup.timer") \
        == "enabled\nenabled\n"

    conf = out("aux", f"cat {CONF}")
    assert "tls-server-auth=db1=main" in conf and "tls-server-auth=db2=main" in conf, conf
    db1_conf = out("db1", f"cat {CONF}")
    assert "tls-server-auth=aux=main" in db1_conf and "archive-async=y" in db1_conf, db1_conf
    assert psql("db1", "SHOW archive_command") == f"pgbackrest --config={CONF} --stanza=main archive-push %p"
    # The playbook's task again, ad hoc: nothing to do.
    res = ansible.module("aux", repository_args())
    assert not res.get("failed") and res["changed"] is False, res


def test_check_from_primary_and_repository(cluster):
    """`check` proves the whole path: archive_command → spool → TLS → repository, and from the
    repository host, TLS to the database hosts."""
    for host in ("db1", "aux"):
        started = time.monotonic()
        pgbackrest(host, "--stanza=main check")
        print(f"\n[backup] check from {host}: {time.monotonic() - started:.2f} s")


def test_full_backup_then_restore_with_wal_replay_on_db2(cluster):
    """A backup is only as good as its restore: a row written AFTER the backup must come back
    from the archived WAL when the backup is restored on another host."""
    started = time.monotonic()
    pgbackrest("aux", "--stanza=main --type=full backup")
    backup_seconds = time.monotonic() - started
    backups = info()["backup"]
    label = backups[-1]["label"]
    assert backups[-1]["type"] == "full", backups[-1]

    marker = f"written after backup {label}"
    psql("db1", "CREATE TABLE after_backup (note text)")
    psql("db1", f"INSERT INTO after_backup VALUES ('{marker}')")
    segment = psql("db1", "SELECT pg_walfile_name(pg_switch_wal())")
    archive_seconds = wait_archived(segment, timeout=60)
    assert repo_has(segment), f"{segment} not in the repository: {info()['archive']}"

    target = "/var/lib/postgresql/restore-test"
    log = "/var/lib/postgresql/restore-test.log"
    pg_ctl = f"{PG_BIN}/pg_ctl -D {target}"
    try:
        out("db2", f"rm -rf {target} {log} && install -d -o postgres -g postgres -m 0700 {target}")
        started = time.monotonic()
        pgbackrest("db2", f"--stanza=main --pg1-path={target} --set={label} --archive-mode=off --type=default restore")
        restore_seconds = time.monotonic() - started
        # Debian keeps postgresql.conf and pg_hba.conf in /etc/postgresql: give the copy its own,
        # on a port and socket of its own, unreachable over the network.
        conf = (
            "port = 5499\nlisten_addresses = ''\nunix_socket_directories = '/tmp'\n"
            f"hba_file = '{target}/pg_hba.conf'\nident_file = '{target}/pg_ident.conf'\n"
        )
        out("db2", f"cat > {target}/postgresql.conf && echo 'local all postgres peer' > {target}/pg_hba.conf"
                   f" && : > {target}/pg_ident.conf && chown postgres:postgres {target}/*.conf", input=conf)
        started = time.monotonic()
        out("db2", as_pg(f"{pg_ctl} -l {log} -w -t 60 start"))
        # pg_ctl returns at consistency (hot standby); the row is in WAL replayed after that.
        while psql("db2", "SELECT pg_is_in_recovery()", port=5499, socket="/tmp") != "f":
            assert time.monotonic() - started < 60, out("db2", f"tail -20 {log}")
            time.sleep(0.2)
        recovery_seconds = time.monotonic() - started
        rows = psql("db2", "SELECT note FROM after_backup", port=5499, socket="/tmp")
        assert rows == marker, f"restored copy has {rows!r}; log:\n{out('db2', f'tail -20 {log}')}"
        print(
            f"\n[backup] full backup {backup_seconds:.2f} s; WAL {segment} archived {archive_seconds:.2f} s after"
            f" pg_switch_wal; restore on db2 {restore_seconds:.2f} s; start + replay to end of archive"
            f" {recovery_seconds:.2f} s"
        )
    finally:
        on("db2", f"test -f {target}/postmaster.pid && {as_pg(pg_ctl + ' -m immediate -w stop')}; "
                  f"rm -rf {target} {log}")
    assert on("db2", "pgrep -f 'postgres -D /var/lib/postgresql/restore-test'").returncode == 1
    wait_streaming("db2")


def test_offline_stanza_create_and_delete(cluster, ansible):
    """stanza-create works with PostgreSQL stopped on every database host (it reads pg_control
    through their pgBackRest servers), and stanza state: absent + delete_backups removes the
    stanza's backups and its section.

    A second stanza in the real configuration cannot be used for this: the database hosts'
    servers accept aux only for stanza main (tls-server-auth=aux=main), so stanza-create of a new
    stanza is refused with "access denied". The test creates stanza main again instead, in a
    repository and configuration file of its own on aux; the real ones must not change."""
    off_conf = "/etc/pgbackrest/offline-test.conf"
    off_repo = f"{REPO}/offline-test"  # aux's private disk; its parent exists, it does not
    off_units = "/etc/pgbackrest/offline-test-units"
    args = repository_args(
        config_file=off_conf,
        repo_path=off_repo,
        units_dir=off_units,
        # The database hosts' servers run their own configuration, not this file.
        stanzas=[{"name": "main", "instances": instances(config_file=CONF)}],
        schedules=[{"type": "incr", "on_calendar": "hourly"}],
    )
    real_conf = sha256("aux", CONF)
    real_units = units("aux")
    assert on("aux", f"test -e {off_repo}").returncode == 1
    try:
        for host in ("db1", "db2"):
            out(host, "pg_ctlcluster 15 main stop")
            assert pg_status(host) == 3, f"PostgreSQL still runs on {host}"
        try:
            started = time.monotonic()
            res = ansible.module("aux", args)
            seconds = time.monotonic() - started
            assert not res.get("failed"), res
            assert res["changed"] is True and res["stanzas_created"] == ["main"], res
            assert res["stanzas_deleted"] == [], res
            print(f"\n[backup] offline stanza-create (whole module task): {seconds:.2f} s")
            assert out("aux", f"stat -c '%a %U' {off_repo}").split() == ["750", "postgres"]
            for f in ("backup/main/backup.info", "archive/main/archive.info"):
                assert on("aux", f"test -s {off_repo}/{f}").returncode == 0, f"no {f} in {off_repo}"
            # The stanza describes the real cluster: the system identifier came from db1's
            # pg_control through db1's TLS server, PostgreSQL being down.
            control = out("db1", f"{PG_BIN}/pg_controldata -D {PGDATA}")
            system_id = next(l.split(":")[1].strip() for l in control.splitlines() if "system identifier" in l)
            assert f"db-system-id={system_id}" in out("aux", f"cat {off_repo}/backup/main/backup.info")
            assert listing("aux", off_units) == [
                "pgbackrest-main-incr-backup.service", "pgbackrest-main-incr-backup.timer",
                "pgbackrest-server.service",
            ]
            again = ansible.module("aux", args)
            assert not again.get("failed") and again["changed"] is False, again
            assert again["stanzas_created"] == [], again
        finally:
            for host in ("db1", "db2"):  # primary first
                pg_start(host)
        wait_streaming("db2")

        gone = dict(args, stanzas=[{"name": "main", "state": "absent", "delete_backups": True}], schedules=[])
        res = ansible.module("aux", gone)
        assert not res.get("failed"), res
        assert res["changed"] is True and res["stanzas_deleted"] == ["main"], res
        assert out("aux", f"ls -A {off_repo}/backup {off_repo}/archive").split() == [
            f"{off_repo}/archive:", f"{off_repo}/backup:"], "the stanza's directories are still there"
        conf = out("aux", f"cat {off_conf}")
        assert "[main]" not in conf and "pg1-host" not in conf, conf
        assert sorted(res["units_removed"]) == [
            f"{off_units}/pgbackrest-main-incr-backup.service", f"{off_units}/pgbackrest-main-incr-backup.timer"
        ], res
        # stanza-delete needs `pgbackrest stop`; the module must `start` again, or every
        # command of the real stanza main on aux would refuse to run.
        assert on("aux", "test -e /tmp/pgbackrest/main.stop").returncode == 1, "main.stop left behind"
    finally:
        on("aux", f"rm -rf {off_repo} {off_conf} {off_units}")
        for host in ("db1", "db2"):
            pg_start(host)

    assert sha256("aux", CONF) == real_conf, "the real configuration changed"
    assert units("aux") == real_units
    assert info()["status"]["code"] == 0, info()
    pgbackrest("aux", "--stanza=main check")


def test_repository_down_does_not_stall_the_primary(cluster):
    """With the repository's server stopped, writes on the primary stay fast and each archive
    attempt gives up within seconds (archive-async, archive-timeout and io-timeout = 10 s)
    instead of ~2 x 60 s; once the server is back the WAL catches up by itself."""
    out("aux", "systemctl stop pgbackrest-server")
    try:
        assert on("aux", "systemctl is-active pgbackrest-server").returncode == 3
        writes = timed_inserts()
        segment = switch_wal()
        before = archiver()
        rc, push_seconds = timed("db1", as_pg(f"pgbackrest --config={CONF} --stanza=main archive-push pg_wal/{segment}", cwd=PGDATA))
        assert rc != 0, "archive-push succeeded with the repository's server stopped"
        print(f"\n[backup] repository server stopped: one archive-push of {segment} failed after {push_seconds:.2f} s")
        assert push_seconds < 30, f"archive-push took {push_seconds:.1f} s with the repository down"

        # PostgreSQL's archiver: three attempts one second apart, then it sleeps up to 60 s.
        seen = [before["last_failed_time"]] if before["last_failed_wal"] == segment else []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            a = archiver()
            if a["last_failed_wal"] == segment and a["last_failed_time"] not in seen:
                seen.append(a["last_failed_time"])
            time.sleep(0.5)
        gaps = [round(b - a, 2) for a, b in zip(seen, seen[1:])]
        print(f"[backup] archiver: failed attempts on {segment} every {gaps} s (attempt + 1 s pause)")
        assert len(seen) >= 2, f"the archiver did not fail twice on {segment} in 60 s: {archiver()}"
        assert all(g < 30 for g in gaps), gaps
        writes += timed_inserts()
        print(f"[backup] INSERTs while the repository is down: max {max(writes):.3f} s")
        assert max(writes) < 1, writes
        assert archiver()["last_archived_wal"] < segment
    finally:
        out("aux", "systemctl start pgbackrest-server")
    # The archiver is in its back-off sleep now (up to 60 s): nothing wakes it but new WAL.
    catch_up = wait_archived(segment, timeout=90)
    print(f"[backup] server started again: {segment} archived {catch_up:.1f} s later (no new WAL)")
    assert repo_has(segment)


def test_repository_partitioned_does_not_stall_the_primary(cluster):
    """Same with aux cut off the network (packets dropped: timeouts, not refusals)."""
    lab("partition", "aux")
    try:
        writes = timed_inserts()
        segment = switch_wal()
        rc, push_seconds = timed("db1", as_pg(f"pgbackrest --config={CONF} --stanza=main archive-push pg_wal/{segment}", cwd=PGDATA))
        print(f"\n[backup] repository partitioned: one archive-push of {segment} failed after {push_seconds:.2f} s")
        assert rc != 0, "archive-push succeeded with the repository partitioned"
        assert push_seconds < 30, f"archive-push took {push_seconds:.1f} s with the repository partitioned"
        writes += timed_inserts()
        print(f"[backup] INSERTs while the repository is partitioned: max {max(writes):.3f} s")
        assert max(writes) < 1, writes
    finally:
        lab("heal", "aux")
    started = time.monotonic()
    latest = switch_wal()  # new WAL wakes the archiver from its back-off
    wait_archived(latest, timeout=90)
    print(f"[backup] healed: {segment} and {latest} archived {time.monotonic() - started:.1f} s later (with new WAL)")
    assert repo_has(latest)
    wait_streaming("db2")


def test_bad_inputs_fail_without_touching_anything(cluster, ansible, tmp_path):
    """Each mistake is refused before anything is written, with a message naming it."""
    conf_before = sha256("aux", CONF)
    units_before = units("aux")
    repo_before = listing("aux", REPO)

    # A certificate for aux from the lab CA but without clientAuth.
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", tmp_path / "k", "-out", tmp_path / "csr", "-subj", "/CN=aux"],
        check=True, capture_output=True,
    )
    (tmp_path / "ext").write_text(
        "subjectAltName=DNS:aux\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
        "basicConstraints=CA:FALSE\n"
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", tmp_path / "csr", "-CA", PKI / "ca.crt", "-CAkey", PKI / "ca.key",
         "-CAcreateserial", "-CAserial", tmp_path / "srl", "-days", "30", "-extfile", tmp_path / "ext",
         "-out", tmp_path / "crt"],
        check=True, capture_output=True,
    )
    server_only = {"cert": "/etc/pgbackrest/tls/aux-server-only.crt", "key": "/etc/pgbackrest/tls/aux-server-only.key"}
    root_owned = f"{REPO}/root-owned"
    try:
        for what, local, mode in (("cert", "crt", "0644"), ("key", "k", "0600")):
            out("aux", f"umask 077 && cat > {server_only[what]} && chown postgres:postgres {server_only[what]}"
                       f" && chmod {mode} {server_only[what]}", input=(tmp_path / local).read_text())
        out("aux", f"install -d -o root -g root -m 0755 {root_owned}")

        cases = [
            ("certificate without clientAuth",
             repository_args(tls=dict(tls("aux"), **server_only)), ["clientAuth", "aux-server-only.crt"]),
            ("instance host given as an IP address",
             repository_args(stanzas=[{"name": "main", "instances": [
                 {"host": "10.77.0.11", "name": "15/main"}, {"host": "db2", "name": "15/main"}]}]),
             ["10.77.0.11", "IP address"]),
            ("schedule for an unknown stanza",
             repository_args(schedules=[{"type": "full", "on_calendar": "daily", "stanza": "nosuch"}]),
             ["nosuch", "stanza"]),
            ("repo_path owned by root",
             repository_args(repo_path=root_owned), [root_owned, "owned by uid 0"]),
            ("invalid on_calendar",
             repository_args(schedules=[{"type": "full", "on_calendar": "bogus"}]), ["bogus"]),
        ]
        for name, args, words in cases:
            res = ansible.module("aux", args)
            assert res.get("failed") is True, f"{name}: not refused: {res}"
            missing = [w for w in words if w not in res.get("msg", "")]
            assert not missing, f"{name}: message lacks {missing}: {res.get('msg')!r}"
            assert "rc" not in res or res["rc"] != 134, f"{name}: the module panicked: {res}"
            print(f"\n[backup] {name}: {res['msg']}")
            assert sha256("aux", CONF) == conf_before, f"{name}: {CONF} changed"
            assert units("aux") == units_before, f"{name}: units changed"
            assert listing("aux", REPO) == sorted(repo_before + ["root-owned"]), f"{name}: {REPO} changed"
        assert out("aux", f"stat -c '%U %a' {root_owned}").split() == ["root", "755"], "repo_path was taken over"
        assert on("aux", f"test -z \"$(ls -A {root_owned})\"").returncode == 0, "files written into repo_path"
    finally:
        on("aux", f"rm -rf {root_owned} {server_only['cert']} {server_only['key']}")
    assert listing("aux", REPO) == repo_before
    res = ansible.module("aux", repository_args())
    assert not res.get("failed") and res["changed"] is False, res


def test_backup_and_check_after_failover_to_db2(cluster):
    """One stanza holds both hosts so backups keep working whichever is primary: after db2 is
    promoted (db1 stopped), a backup from aux comes from db2 on the new timeline."""
    out("db1", "pg_ctlcluster 15 main stop")
    out("db2", "pg_ctlcluster 15 main promote")
    deadline = time.monotonic() + 30
    while psql("db2", "SELECT pg_is_in_recovery()") != "f":
        assert time.monotonic() < deadline, "db2 is still in recovery 30 s after promote"
        time.sleep(0.2)
    # Promotion only requests a spread checkpoint: until it completes pg_control still says
    # timeline 1 and pgBackRest refuses to back up ("WAL timeline 2 does not match pg_control
    # timeline 1", measured here), for up to checkpoint_timeout. A failover must CHECKPOINT.
    psql("db2", "CHECKPOINT")
    psql("db2", "CREATE TABLE after_failover (note text)")
    psql("db2", "INSERT INTO after_failover VALUES ('written on db2 as primary')")
    before = {b["label"] for b in info()["backup"]}

    started = time.monotonic()
    pgbackrest("aux", "--stanza=main --type=incr backup")
    seconds = time.monotonic() - started
    new = [b for b in info()["backup"] if b["label"] not in before]
    assert len(new) == 1, f"backups after the failover: {new}"
    backup = new[0]
    assert backup["type"] == "incr" and not backup["error"], backup
    assert backup["archive"]["start"].startswith("00000002"), f"not on db2's new timeline: {backup['archive']}"
    print(f"\n[backup] incr backup from aux after failover to db2: {seconds:.2f} s ({backup['label']})")

    pgbackrest("db2", "--stanza=main check")
    segment = switch_wal("db2")
    wait_archived(segment, host="db2", timeout=60)
    assert repo_has(segment)
