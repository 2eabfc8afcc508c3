"""The harness every lab suite shares (pytest.ini puts tests/ on sys.path: `import labkit`).

- lab control and remote commands: `lab`, `on`, `out`, `sql`; waits: `wait_for`;
- playbooks: `ansible_env`, `playbook`, `CleanInstall` (ansible-core alone, the built tarball
  installed as a user installs it);
- the agent's cluster: `cluster_status`, `member`, `streaming_from`, `http_status`, `roles`,
  agent log marks, the write `Probe`, `build_cluster` / `teardown_cluster`;
- HAProxy on aux: `psql` through its ports, the `Writer` client, `haproxy_states`;
- the lab's one owner at a time: a suite that needs a lab of its own calls `fresh_lab()`; the
  suites that can share take the session's `SharedCluster` (tests/conftest.py's `shared_cluster`
  fixture), built once by `pgshift.cluster.site` from the installed tarball and brought back to
  healthy before each suite, rebuilt only when another suite took the lab meanwhile or it
  cannot be healed.

Outside `make test` a machine without the lab's needs skips (`needs`); under `make test`
(PGSHIFT_REQUIRE_LAB=1) a missing piece fails instead of hiding behind a skip.
"""

import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

import history

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAB = ROOT / "lab" / "lab"
STATE = ROOT / "lab" / "state"
INVENTORY = ROOT / "lab" / "inventory.yml"
VENV_BIN = ROOT / ".venv" / "bin"
# Where `make collection` put the tarball (the Makefile's PGSHIFT_DIST).
DIST = ROOT / os.environ.get("PGSHIFT_DIST", "dist")
CALLBACKS = ROOT / "tests" / "ansible" / "callback_plugins"
# The database hosts of the default lab and their addresses.
IPS = {"db1": "10.77.0.11", "db2": "10.77.0.12"}
# The database hosts of a lab brought up `--with db3` (lab/lab: the third one is optional).
IPS3 = {**IPS, "db3": "10.77.0.14"}
PSQL = "/usr/lib/postgresql/15/bin/psql"
AGENT_PID = "pgrep -f '^/usr/local/bin/pgshift agent'"
AGENT_LOG = "/etc/pgshift-lab/log/pgshift-agent.log"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

REQUIRED = bool(os.environ.get("PGSHIFT_REQUIRE_LAB"))


def needs(etcd=False, haproxy=False):
    """The skip marks of a lab suite (none apply under PGSHIFT_REQUIRE_LAB)."""
    marks = [
        pytest.mark.skipif(not REQUIRED and os.geteuid() != 0, reason="the lab needs root"),
        pytest.mark.skipif(
            not REQUIRED and not (os.path.exists("/usr/sbin/sshd") and shutil.which("nft") and shutil.which("ip")),
            reason="the lab needs openssh-server, nftables and iproute2"),
    ]
    if etcd:
        marks.append(pytest.mark.skipif(not REQUIRED and not shutil.which("etcd"), reason="needs etcd-server"))
    if haproxy:
        marks.append(pytest.mark.skipif(not REQUIRED and not os.path.exists("/usr/sbin/haproxy"),
                                        reason="needs haproxy"))
    return marks


# -- lab control and remote commands ---------------------------------------------------------

def lab(*args, timeout=120, check=True, input=None, env=None):
    """lab/lab with args; the CompletedProcess (text). check: a non-zero exit fails the test."""
    res = subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout, input=input,
                         stdin=None if input is not None else subprocess.DEVNULL,
                         env=None if env is None else {**os.environ, **env})
    if check and res.returncode != 0:
        raise AssertionError(f"lab/lab {' '.join(args)} exited {res.returncode}\n"
                             f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


def on(host, cmd, timeout=120, input=None, env=None):
    """The shell command cmd on a lab host over SSH; the CompletedProcess, unchecked."""
    return lab("ssh", host, cmd, timeout=timeout, check=False, input=input, env=env)


def out(host, cmd, timeout=120, input=None):
    """cmd on host, which must succeed; its stdout."""
    res = on(host, cmd, timeout=timeout, input=input)
    assert res.returncode == 0, f"{host}: {cmd!r} exited {res.returncode}: {res.stdout}{res.stderr}"
    return res.stdout


def sql(host, query):
    """query as postgres over the host's own socket; the rows, unaligned."""
    return out(host, f"cd / && runuser -u postgres -- psql -XAtqc {json.dumps(query)}").strip()


def wait_for(what, predicate, timeout=30, interval=0.2, show=None):
    """predicate's first true value, polled every interval; fails after timeout with what
    (and show(), or the last value)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    detail = show() if show else repr(last)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {detail})")


def fresh_lab(extra_names=None, with_hosts=()):
    """A lab of the caller's own, from nothing: whatever ran before (the shared cluster
    included) is gone. extra_names ({name: address}): more names in the hosts' /etc/hosts
    (lab/lab keeps them across boots); with_hosts: optional hosts to add (e.g. ["db3"])."""
    SharedCluster.forget()
    lab("down", check=False)
    if extra_names:
        STATE.mkdir(parents=True, exist_ok=True)
        (STATE / "hosts.extra").write_text("".join(f"{ip} {name}\n" for name, ip in extra_names.items()))
    lab("up", *(f"--with={h}" for h in with_hosts))


# -- playbooks -------------------------------------------------------------------------------

def ansible_env():
    """The checkout's virtualenv and the collection `make install-collection` installed."""
    return dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}",
                ANSIBLE_COLLECTIONS_PATH=str(ROOT / "target" / "collections"), ANSIBLE_NOCOLOR="1")


def recap(stdout):
    """PLAY RECAP as {host: {ok, changed, unreachable, failed}}."""
    return {h: {"ok": int(ok), "changed": int(ch), "unreachable": int(u), "failed": int(f)}
            for h, ok, ch, u, f in RECAP.findall(stdout.split("PLAY RECAP")[-1])}


def playbook(*books, inventory=INVENTORY, extra_vars=None, args=(), timeout=900):
    """ansible-playbook with the checkout's playbooks; (seconds, recap, CompletedProcess),
    failing the test when it fails."""
    extra = ["-e", json.dumps(extra_vars)] if extra_vars else []
    started = time.monotonic()
    res = subprocess.run([VENV_BIN / "ansible-playbook", "-i", inventory, *extra, *args,
                          *[ROOT / "playbooks" / b for b in books]],
                         env=ansible_env(), capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return round(time.monotonic() - started, 1), recap(res.stdout), res


def pinned_ansible_core():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith("ansible-core=="):
            return line.strip()
    raise AssertionError("requirements.txt pins no ansible-core")


class CleanInstall:
    """A virtualenv with nothing but the pinned ansible-core, the built tarball (dist/, `make
    collection`) installed into an empty collections path, and a working directory with nothing
    of the checkout around (no ansible.cfg, no playbooks): what a user who installed the
    collection has. Results come back as JSON (tests/ansible/callback_plugins/results_json)."""

    def __init__(self, base):
        self.base = pathlib.Path(base)
        self.venv = self.base / "venv"
        subprocess.run([sys.executable, "-m", "venv", self.venv], check=True)
        subprocess.run([self.venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check",
                        pinned_ansible_core()], check=True)
        self.collections = self.base / "collections"
        tarball = sorted(DIST.glob("pgshift-cluster-*.tar.gz"))[-1]
        # --force: a pgshift.cluster in ~/.ansible/collections would otherwise make this a no-op.
        subprocess.run([self.venv / "bin" / "ansible-galaxy", "collection", "install", "--force", "-p",
                        self.collections, tarball], check=True, capture_output=True,
                       env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(self.collections)))
        assert (self.collections / "ansible_collections" / "pgshift" / "cluster" / "MANIFEST.json").is_file()
        self.cwd = self.base / "work"
        self.cwd.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.update(PATH=f"{self.venv / 'bin'}:{os.environ['PATH']}",
                        ANSIBLE_COLLECTIONS_PATH=str(self.collections), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_STDOUT_CALLBACK="results_json", ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
                        ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_DEPRECATION_WARNINGS="false",
                        ANSIBLE_RETRY_FILES_ENABLED="false")

    def run(self, *cmd, env=None, **kw):
        return subprocess.run([str(c) for c in cmd], cwd=self.cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)

    def doc(self, *cmd, env=None):
        """(CompletedProcess, the results_json document) of an ansible or ansible-playbook run."""
        p = self.run(*cmd, env=env)
        start = 0 if p.stdout.startswith("{") else p.stdout.find("\n{") + 1
        assert start > 0 or p.stdout.startswith("{"), f"no JSON from {cmd}: {p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p, json.loads(p.stdout[start:])


# -- the agent's cluster ---------------------------------------------------------------------

def cluster_status(host):
    """`pgshift status --json` on host, or None when it fails."""
    res = on(host, "pgshift status --json", timeout=15)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout)


def member(doc, name):
    return next((m for m in doc["members"] if m["name"] == name), None)


def streaming_from(host, leader):
    """A predicate: host is a replica streaming from leader, as the cluster reports it."""
    def check():
        doc = None
        for h in IPS:
            doc = cluster_status(h)
            if doc:
                break
        if not doc or doc["leader"] != leader:
            return False
        m = member(doc, host)
        return bool(m and m["role"] == "replica" and m["state"] == "streaming" and m["upstream"] == leader)
    return check


def http_status(host, path):
    res = on(host, f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:8008{path}", timeout=10)
    return res.stdout.strip()


def roles(timeout=60):
    """(current leader, the other database host), once the cluster is settled: the standby
    streams, has replayed everything and is the synchronous standby (only that one may be
    promoted, so a fault before then would rightly not fail over)."""
    leader, others, _ = settled(list(IPS), timeout)
    return leader, others[0]


def settled(hosts, timeout=90):
    """(leader, the others, the synchronous standby) once every other host streams from the
    leader with nothing left to replay and one of them is synchronous (roles() for two)."""
    def led():
        # A status read in the moment between two leaders names none: ask again.
        doc = next(filter(None, (cluster_status(h) for h in hosts)), None)
        return doc if doc and doc["leader"] else None
    leader = wait_for("a leader", led, 30)["leader"]
    others = [h for h in hosts if h != leader]
    for h in others:
        wait_for(f"{h} streaming from {leader}", streaming_from(h, leader), timeout, 0.5)

    def caught_up():
        doc = cluster_status(leader) or {"members": []}
        return all((member(doc, h) or {}).get("lag_bytes") == 0 for h in others)
    wait_for("every standby caught up", caught_up, timeout, 0.5)
    def synchronous():
        sync = (cluster_status(leader) or {}).get("sync_standby")
        return sync if sync in others else None
    sync = wait_for("a synchronous standby", synchronous, timeout, 0.2)
    return leader, others, sync


def lead(host, hosts=IPS, timeout=60):
    """host leads the settled cluster of `hosts`: a switchover to it when another host leads."""
    leader, _, _ = settled(list(hosts), timeout)
    if leader != host:
        res = on(host, f"pgshift switchover --to {host}", timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        leader, _, _ = settled(list(hosts), timeout)
    assert leader == host, leader


def log_mark(host):
    """The agent log's length now: `log_since` reads what came after."""
    return int(out(host, f"wc -l < {AGENT_LOG}").strip())


def log_since(host, mark):
    return out(host, f"tail -n +{mark + 1} {AGENT_LOG}")


class Probe:
    """Writes (id, host) rows to every database host every 50 ms over TCP, each in its own
    connection (synchronous_commit on: an acknowledged write is on the synchronous standby),
    and records the acknowledged ones, also in its `history` (tests/history.py) with the
    timeline each committed on. Ids are unique across probes (a table outlives one test)."""

    ids = itertools.count(1)
    lock = threading.Lock()

    def __init__(self, passfile, history_=None, hosts=IPS):
        self.passfile = passfile
        self.hosts = hosts
        self.acks = {h: [] for h in hosts}  # host -> [(monotonic, id)]
        self.history = history_ or history.History()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(h,), daemon=True) for h in hosts]

    def _loop(self, host):
        env = {"PATH": "/usr/bin:/bin", "PGPASSFILE": self.passfile, "PGCONNECT_TIMEOUT": "1"}
        while not self.stop_flag.is_set():
            with Probe.lock:
                n = next(Probe.ids)
            cmd = [PSQL, "-XAtq", "-h", self.hosts[host], "-U", "probe", "-d", "postgres", "-c",
                   f"INSERT INTO probe (id, host) VALUES ({n}, '{host}') RETURNING {history.TIMELINE_SQL}"]
            try:
                sent = time.monotonic()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2)
                if p.returncode == 0:
                    acked = time.monotonic()
                    self.acks[host].append((acked, n))
                    self.history.write("probe", n, host, sent, acked, p.stdout.strip())
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.05)

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=5)

    def first_ack(self, host, after):
        return next((t for t, _ in self.acks[host] if t > after), None)

    def lost_on(self, host):
        """Writes any host acknowledged that `host` does not have."""
        ids = set(map(int, sql(host, "SELECT id FROM probe").split()))
        return sorted({n for acks in self.acks.values() for _, n in acks} - ids)

    def check(self, leader):
        """The history checker's violations (tests/history.py) against `leader`'s probe table."""
        rows = [(int(i), h) for i, h in (r.split("|") for r in sql(leader, "SELECT id, host FROM probe").split())]
        return history.check(self.history, rows, "probe")


def fault_and_failover(cluster, name, old, new, inject, recover, timeout=30, after=None):
    """Runs the probe, injects a fault on `old`, waits for `new` to take writes, recovers,
    waits for `old` to stream from `new`; records and checks the numbers. The probe writes
    to cluster["hosts"] (default: db1 and db2); `after(first_new)` runs once the new primary
    took its first write, before the recovery (checks of the moment after a failover)."""
    probe = Probe(cluster["passfile"], hosts=cluster.get("hosts", IPS))
    probe.start()
    try:
        wait_for(f"writes acknowledged by {old}", lambda: len(probe.acks[old]) >= 10, 20)
        t_fault = time.monotonic()
        inject()
        first_new = wait_for(f"{new} acknowledging writes", lambda: probe.first_ack(new, t_fault), timeout, 0.05)
        time.sleep(1)
    finally:
        probe.stop()
    failover = first_new - t_fault
    if "timelines" in cluster:  # bench/failover.py plots what the probe saw
        cluster["timelines"].append({"kind": name, "old": old, "new": new, "t_fault": t_fault,
                                     "acks": {h: [t for t, _ in acks] for h, acks in probe.acks.items()}})
    last_old = max((t for t, _ in probe.acks[old]), default=t_fault)
    # No instant with two writers: once the new primary acknowledged a write, the old one
    # never acknowledged another.
    late = [(round(t - first_new, 3), n) for t, n in probe.acks[old] if t >= first_new]
    assert not late, f"{old} acknowledged writes after {new} took over: {late[:5]}"
    # Every acknowledged write is on the new primary (synchronous mode), also those the old
    # primary acknowledged after the fault.
    before = [n for t, n in probe.acks[old] if t < t_fault]
    lost = probe.lost_on(new)
    problems = probe.check(new)
    cluster["results"].setdefault(name, []).append({
        "failover_seconds": round(failover, 2),
        "old_last_ack_after_fault": round(last_old - t_fault, 3),
        "acked_before_fault": len(before),
        "lost": len(lost),
    })
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    assert not problems, problems
    if after:
        after(first_new)
    recover()
    started = time.monotonic()
    wait_for(f"{old} streaming from {new}", streaming_from(old, new), 120, 0.5)
    cluster["results"][name][-1]["rejoin_seconds"] = round(time.monotonic() - started, 1)
    return failover


def prepare_probe(tmp, primary="db1", hosts=IPS):
    """The probe's role and table (made on the primary), its TCP access from the controller
    (10.77.0.1) on every database host, and its passfile in `tmp`."""
    sql(primary, "CREATE ROLE probe LOGIN PASSWORD 'probe'")
    sql(primary, "CREATE TABLE probe (id int PRIMARY KEY, host text, at timestamptz DEFAULT now())")
    sql(primary, "GRANT INSERT, SELECT ON probe TO probe")
    for h in hosts:
        hba = sql(h, "SHOW hba_file")
        out(h, "cd / && printf 'host postgres probe 10.77.0.1/32 scram-sha-256\\n' "
               f">> {hba} && runuser -u postgres -- psql -XAtqc 'SELECT pg_reload_conf()'")
    passfile = os.path.join(tmp, "pgpass")
    with open(passfile, "w") as f:
        f.write("*:*:postgres:probe:probe\n")
    os.chmod(passfile, 0o600)
    return passfile


def build_cluster(tmp, extra_vars=None, with_hosts=()):
    """A lab of its own (with the optional `with_hosts`), site.yml (with `extra_vars`), and
    the probe; the suite's context ("hosts": its database hosts)."""
    fresh_lab(with_hosts=with_hosts)
    hosts = {h: ip for h, ip in IPS3.items() if h in IPS or h in with_hosts}
    seconds, _, _ = playbook("site.yml", extra_vars=extra_vars, timeout=600)
    return {"passfile": prepare_probe(tmp, hosts=hosts), "results": {"site_seconds": seconds}, "hosts": hosts}


def collect_logs(hosts=tuple(IPS), into=None):
    """The agents', PostgreSQL's and etcd's logs into target/agent-logs (or its subdirectory
    `into`, which a later suite's collection does not overwrite), for a failure's post-mortem."""
    logs = ROOT / "target" / "agent-logs"
    if into:
        logs /= into
    logs.mkdir(parents=True, exist_ok=True)
    for h in hosts:
        # A host a failed test left crashed or frozen has nothing to give.
        try:
            res = on(h, f"tail -n 400 {AGENT_LOG}", timeout=10)
            (logs / f"{h}.log").write_text(res.stdout + res.stderr)
            res = on(h, "grep -v -e 'probe@' -e '^\\s' /var/log/postgresql/postgresql-15-main.log | tail -n 300",
                     timeout=10)
            (logs / f"{h}-postgresql.log").write_text(res.stdout + res.stderr)
            # etcd's member on the hosts that run one: an election explains many a fence.
            res = on(h, "tail -n 300 /etc/pgshift-lab/log/etcd.log 2>/dev/null || true", timeout=10)
            if res.stdout:
                (logs / f"{h}-etcd.log").write_text(res.stdout)
        except subprocess.TimeoutExpired as e:
            (logs / f"{h}.log").write_text(f"not collected: {e}\n")


def write_results(results, results_file):
    results_file.parent.mkdir(exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2))


def teardown_cluster(results, results_file, hosts=IPS):
    """The end of a suite's own cluster: logs, results, `lab/lab down`."""
    collect_logs(tuple(hosts))
    write_results(results, results_file)
    lab("down", check=False)


# -- HAProxy on aux ----------------------------------------------------------------------

AUX = "10.77.0.13"
RW, RO = 5000, 5001  # site.yml's HAProxy: read-write (the agent's /primary), read-only (/replica)
HOST_OF = {ip: h for h, ip in IPS3.items()}


def psql(port, query, timeout=3, host=AUX):
    """One connection as demo (through HAProxy on aux unless told): (ok, stdout or error text)."""
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": "demo", "PGCONNECT_TIMEOUT": "1"}
    cmd = [PSQL, "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port), "-U", "demo", "-d", "demo",
           "-c", query]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    return p.returncode == 0, (p.stdout if p.returncode == 0 else p.stderr).strip()


def haproxy_states():
    """{(proxy, server): status} from the stats page on aux's loopback."""
    res = on("aux", "curl -s 'http://127.0.0.1:7000/;csv'", timeout=10)
    states = {}
    for line in res.stdout.splitlines():
        f = line.split(",")
        if len(f) > 17 and f[0].startswith("postgres_") and f[1] in IPS3:
            states[(f[0], f[1])] = f[17]
    return states


class Writer:
    """Writes through HAProxy's read-write port (or straight to one database host) every
    ~50 ms, each write its own connection (default synchronous_commit), and records
    (monotonic, host that took it), also in its `history` (tests/history.py)."""

    def __init__(self, host=AUX, port=RW, first_id=1, history_=None, client="writer"):
        self.host, self.port = host, port
        self.acks = []
        self.ids = []  # the acknowledged writes' ids
        self.failures = 0
        self.history = history_ or history.History()
        self.client = client
        self.stop_flag = threading.Event()
        self.n = first_id - 1
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop_flag.is_set():
            self.n += 1
            sent = time.monotonic()
            ok, res = psql(self.port, f"INSERT INTO through_haproxy (id) VALUES ({self.n}) "
                           f"RETURNING host(inet_server_addr()), {history.TIMELINE_SQL}", 2, self.host)
            if ok:
                acked = time.monotonic()
                ip, timeline = res.split("|")
                self.acks.append((acked, HOST_OF.get(ip, ip)))
                self.ids.append(self.n)
                self.history.write(self.client, self.n, HOST_OF.get(ip, ip), sent, acked, timeline)
            else:
                self.failures += 1
            time.sleep(0.05)

    def first_ack(self, host, after):
        return next((t for t, h in self.acks if h == host and t > after), None)

    def check(self, leader):
        """The history checker's violations (this writer's writes and the reads recorded with
        them) against `leader`'s through_haproxy table."""
        return history.check(self.history, haproxy_rows(leader))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=5)


class Reader(Writer):
    """Reads the newest ids of through_haproxy through HAProxy's read-only port (a standby)
    every ~100 ms into the history it shares with a Writer: the checker then finds any value a
    standby served that the cluster later lost."""

    def __init__(self, history_, port=RO, table="through_haproxy"):
        super().__init__(port=port, history_=history_, client="reader")
        self.table = table

    def _loop(self):
        while not self.stop_flag.is_set():
            sent = time.monotonic()
            ok, res = psql(self.port, "SELECT host(inet_server_addr()), string_agg(id::text, ',') FROM "
                           f"(SELECT id FROM {self.table} ORDER BY id DESC LIMIT 3) t", 2, self.host)
            if ok and "|" in res:
                ip, ids = res.split("|")
                self.history.read(self.client, HOST_OF.get(ip, ip), sent, time.monotonic(),
                                  [int(i) for i in ids.split(",") if i])
            time.sleep(0.1)


def haproxy_rows(host, table="through_haproxy"):
    """[(id, None)] of a table of the demo database (HAProxy's clients') on host."""
    rows = out(host, f"cd / && runuser -u postgres -- psql -XAtq -d demo -c 'SELECT id FROM {table}'")
    return [(int(i), None) for i in rows.split()]


# -- the shared cluster ----------------------------------------------------------------------

class SharedCluster:
    """site.yml's cluster with its defaults, for every suite that needs nothing else: built by
    `pgshift.cluster.site` from the installed tarball (CleanInstall; the run is kept in `runs`),
    with the probe's role and table. `ensure()` hands it to a suite healthy; `forget()` (any
    `fresh_lab()`) marks it gone."""

    live = None  # the SharedCluster that owns the lab now, if any

    def __init__(self, base):
        self.base = pathlib.Path(base)
        self._install = None
        self.runs = []
        self.passfile = None
        self.builds = 0

    @property
    def install(self):
        if self._install is None:
            self._install = CleanInstall(self.base / "clean")
        return self._install

    @classmethod
    def forget(cls):
        cls.live = None

    def site(self):
        """One `ansible-playbook pgshift.cluster.site` from the clean install; its run record."""
        started = time.monotonic()
        p, doc = self.install.doc("ansible-playbook", "-i", INVENTORY, "pgshift.cluster.site")
        assert p.returncode == 0, f"pgshift.cluster.site: {p.stdout[-4000:]}\n{p.stderr[-3000:]}"
        return {"seconds": round(time.monotonic() - started, 1), "stats": doc["stats"], "doc": doc}

    def build(self):
        fresh_lab()
        self.builds += 1
        self.runs = [self.site()]
        self.passfile = prepare_probe(str(self.base))
        SharedCluster.live = self

    def healthy(self, timeout=60):
        """Every lab host up and reachable, a leader and its standby settled; False when not
        within timeout."""
        try:
            for host in ("db1", "db2", "aux"):
                if on(host, "true", timeout=10).returncode != 0:
                    return False
            roles(timeout)
            return True
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    def ensure(self):
        """The cluster, healthy: built when no one built it or another suite took the lab,
        rebuilt when what the last suite left does not heal (hosts booted, partitions healed,
        thawed by then: each fault's test recovers it)."""
        if SharedCluster.live is not self or not self.healthy():
            if SharedCluster.live is self:
                collect_logs()
            self.build()
        return self

    def close(self):
        if SharedCluster.live is self:
            collect_logs()
            lab("down", check=False)
            SharedCluster.forget()
