"""Real parts for the cert_install tests, all on loopback: pebble (a throw-away ACME CA), certbot
against it, a scratch PostgreSQL serving TLS, a pgBackRest TLS server, an openssl-made test CA, and
probes of what a server serves. Keys and certificates are made at test time, never committed.

Facts these rely on (certbot 2.1 with pebble 2.4, PostgreSQL 15, pgBackRest 2.45; checked by
tests/cert/test_harness.py): pebble makes a new root at every start and its
certificates last 5 years (renewal needs --force-renewal); live/*.pem are root-only symlinks;
PostgreSQL keeps serving the old certificate when a reload fails; pgBackRest reloads on SIGHUP.
"""

import os
import pathlib
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRATCH_PG = ROOT / "target" / "debug" / "pgshift-scratch-pg"
PG_BIN = pathlib.Path(os.environ.get("PGSHIFT_PG_BIN", "/usr/lib/postgresql/15/bin"))
HOSTNAME = "db1.example.test"
PEBBLE_DIR_PORT = 14000
PEBBLE_MGMT_PORT = 15000
FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


# ---------------------------------------------------------------------------------------------
# small tools


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, timeout=60, **kw):
    """Runs a command, raising with its output on failure."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       stdin=kw.pop("stdin", subprocess.DEVNULL), timeout=timeout, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def client_env(**extra):
    """Environment for libpq clients and openssl: nothing inherited that could redirect them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def postgres_ids():
    import pwd
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def give_to_postgres(*paths, mode=None):
    uid, gid = postgres_ids()
    for p in paths:
        os.chown(p, uid, gid)
        if mode is not None:
            os.chmod(p, mode)


def stop_process(proc, timeout=5):
    """Stops a Popen started with start_new_session=True: its whole process group, TERM then KILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


# ---------------------------------------------------------------------------------------------
# certificates


def _parse_fingerprint(openssl_out):
    # OpenSSL 3 prints "sha256 Fingerprint=AB:CD:...", 1.1 "SHA256 Fingerprint=...".
    line = next(l for l in openssl_out.splitlines() if "Fingerprint=" in l)
    fp = line.split("=", 1)[1].strip().upper()
    assert FINGERPRINT.match(fp), openssl_out
    return fp


def sha256_of_pem(path):
    """SHA-256 fingerprint of the first certificate in a PEM file, as openssl prints it."""
    return _parse_fingerprint(run(["openssl", "x509", "-in", path, "-noout", "-fingerprint", "-sha256"]).stdout)


def sha256_of_pem_text(text):
    return _parse_fingerprint(run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
                                  stdin=None, input=text).stdout)


def served_sha256(port, starttls=None, servername=HOSTNAME, host="127.0.0.1"):
    """Fingerprint of the certificate a TLS server on host:port serves to a new connection.
    starttls="postgres" for PostgreSQL; None for a plain TLS server such as pgBackRest's."""
    cmd = ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", servername]
    if starttls:
        cmd += ["-starttls", starttls]
    # No client certificate: pgBackRest's server still shows its certificate (TLS 1.3 sends it
    # before asking for the client's), then refuses; s_client's exit code is not the point.
    # errors="replace": after the handshake s_client relays whatever bytes the server sends.
    p = subprocess.run(cmd, input="", capture_output=True, text=True, errors="replace", timeout=15,
                       env=client_env())
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", p.stdout, re.S)
    if not m:
        raise AssertionError(f"no certificate served on {host}:{port}:\n{p.stdout}\n{p.stderr}")
    return sha256_of_pem_text(m.group(0) + "\n")


def self_signed(cert, key, cn, days=2):
    """A self-signed EC P-256 pair (the servers' initial certificates)."""
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", str(days), "-subj", f"/CN={cn}", "-keyout", key, "-out", cert])


class TestCA:
    """An openssl-made CA that signs leaf certificates for the bad-input cases (and a good one)."""

    __test__ = False  # not a pytest class

    def __init__(self, directory, name="pgshift test CA"):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:true",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", self.key, "-out", self.cert])
        (self.dir / "index.txt").write_text("")
        self.cnf = self.dir / "ca.cnf"
        self._n = 0

    def _write_cnf(self, sans):
        self.cnf.write_text(f"""[ca]
default_ca = testca
[testca]
dir = {self.dir}
database = {self.dir}/index.txt
new_certs_dir = {self.dir}
rand_serial = yes
certificate = {self.cert}
private_key = {self.key}
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
x509_extensions = leaf
[anything]
commonName = supplied
[leaf]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = {", ".join("DNS:" + s for s in sans)}
""")

    def leaf(self, cn=HOSTNAME, sans=None, not_before=None, not_after=None):
        """(cert, key) paths of a leaf for cn. not_before/not_after ("YYYYMMDDHHMMSSZ") make it
        expired or not yet valid (OpenSSL 3.0's x509 has no -not_before: `openssl ca` does it)."""
        self._n += 1
        base = self.dir / f"leaf{self._n}"
        cert, key, csr = base.with_suffix(".crt"), base.with_suffix(".key"), base.with_suffix(".csr")
        self._write_cnf(sans or [cn])
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={cn}", "-keyout", key, "-out", csr])
        cmd = ["openssl", "ca", "-batch", "-notext", "-config", self.cnf, "-in", csr, "-out", cert]
        if not_before or not_after:
            cmd += ["-startdate", not_before or "20200101000000Z", "-enddate", not_after or "20200201000000Z"]
        else:
            cmd += ["-days", "2"]
        run(cmd)
        return cert, key


# ---------------------------------------------------------------------------------------------
# pebble and certbot


class Pebble:
    """pebble 2.4 on 127.0.0.1:14000 (ACME) and :15000 (management), validation always passing
    (PEBBLE_VA_ALWAYS_VALID: its VA never connects anywhere) and its resolver pointed at an unused
    loopback port so nothing leaves this machine."""

    def __init__(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-pebble-"))
        os.chmod(self.dir, 0o755)  # pgBackRest (as postgres) reads the root from here
        self.proc = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        for port in (PEBBLE_DIR_PORT, PEBBLE_MGMT_PORT):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise AssertionError(f"127.0.0.1:{port} is taken: is another pebble running?")
        self.listener_cert = self.dir / "listener.crt"
        listener_key = self.dir / "listener.key"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", listener_key, "-out", self.listener_cert])
        config = self.dir / "pebble.json"
        config.write_text(
            '{"pebble": {'
            f'"listenAddress": "127.0.0.1:{PEBBLE_DIR_PORT}", '
            f'"managementListenAddress": "127.0.0.1:{PEBBLE_MGMT_PORT}", '
            f'"certificate": "{self.listener_cert}", "privateKey": "{listener_key}", '
            f'"httpPort": {free_port()}, "tlsPort": {free_port()}, '
            '"ocspResponderURL": "", "externalAccountBindingRequired": false}}\n'
        )
        env = dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self.log = self.dir / "pebble.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["pebble", "-config", config, "-dnsserver", f"127.0.0.1:{free_port()}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.dir, start_new_session=True,
            )
        self.directory_url = f"https://127.0.0.1:{PEBBLE_DIR_PORT}/dir"

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"pebble exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                return b"newOrder" in self._get(self.directory_url)
            except OSError:
                return False

        wait_until(answers, 15, what=f"pebble at {self.directory_url}")
        self.root_ca = self.dir / "pebble-root.pem"
        self.root_ca.write_bytes(self._get(f"https://127.0.0.1:{PEBBLE_MGMT_PORT}/roots/0"))
        self.intermediate = self.dir / "pebble-intermediate.pem"
        self.intermediate.write_bytes(self._get(f"https://127.0.0.1:{PEBBLE_MGMT_PORT}/intermediates/0"))
        for f in (self.root_ca, self.intermediate, self.listener_cert):
            os.chmod(f, 0o644)

    def _get(self, url):
        ctx = ssl.create_default_context(cafile=str(self.listener_cert))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(url, timeout=5) as r:
            return r.read()

    def stop(self):
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Certbot:
    """certbot 2.1 against pebble with its own config/work/logs dirs (`dir` is what the module
    calls certbot_dir). Standalone http-01 on a loopback port nobody dials (the VA always says
    valid); certbot stores that in the renewal conf, so `renew` binds the same address."""

    def __init__(self, pebble):
        self.pebble = pebble
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-certbot-"))
        self.dir = self.base / "etc"
        self.work = self.base / "work"
        self.logs = self.base / "logs"
        self.root_ca = pebble.root_ca
        self.http_port = free_port()
        self.env = dict(os.environ, REQUESTS_CA_BUNDLE=str(pebble.listener_cert),
                        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")

    def _dirs(self):
        return ["--config-dir", self.dir, "--work-dir", self.work, "--logs-dir", self.logs, "--non-interactive"]

    def _run(self, args, timeout=120):
        return subprocess.run([str(a) for a in ["certbot", *args, *self._dirs()]], env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)

    def obtain(self, domain=HOSTNAME):
        """Issues a certificate for domain; returns the lineage directory <dir>/live/<domain>."""
        p = self._run(["certonly", "--server", self.pebble.directory_url, "--agree-tos",
                       "--register-unsafely-without-email", "--standalone",
                       "--http-01-address", "127.0.0.1", "--http-01-port", str(self.http_port),
                       "-d", domain])
        if p.returncode != 0:
            raise AssertionError(f"certbot certonly failed ({p.returncode}):\n{p.stdout}\n{p.stderr}\n{self.log()}")
        lineage = self.dir / "live" / domain
        assert (lineage / "fullchain.pem").exists(), p.stdout
        return lineage

    def renew(self, extra=()):
        """`certbot renew --force-renewal` of every lineage here; the CompletedProcess."""
        return self._run(["renew", "--force-renewal", "--no-random-sleep-on-renew", *extra])

    def log(self):
        # /etc/letsencrypt/cli.ini (Debian) sets max-log-backups = 0: each run overwrites it.
        f = self.logs / "letsencrypt.log"
        return f.read_text() if f.exists() else ""

    def cleanup(self):
        shutil.rmtree(self.base, ignore_errors=True)


def deploy_hook_output(certbot_stdout):
    """The lines a renewal's deploy hook printed, as certbot 2.1 relays them on stdout:
    "Hook 'deploy-hook' ran with output:" then each line indented by one space."""
    lines, inside = [], False
    for line in certbot_stdout.splitlines():
        if line.startswith("Hook 'deploy-hook' ran with output:"):
            inside = True
            continue
        if inside:
            if line.startswith(" ") and line.strip():
                lines.append(line.strip())
            else:
                inside = False
    return lines


# ---------------------------------------------------------------------------------------------
# PostgreSQL with TLS


class TlsPostgres:
    """A scratch PostgreSQL 15 with ssl = on, ssl_cert_file/ssl_key_file = <root>/tls/server.crt|.key
    (the files cert_install manages), starting on a self-signed pair, and `hostssl all all
    127.0.0.1/32 trust` first in pg_hba.conf so TLS clients need no password."""

    def __init__(self):
        if os.geteuid() != 0:
            raise AssertionError("the cert_install tests run as root (files go to the postgres user)")
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="pgshift-cert-pg-"))
        self.tls_dir = self.root / "tls"
        self.cert = self.tls_dir / "server.crt"
        self.key = self.tls_dir / "server.key"
        self.started = False
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        self.tls_dir.mkdir()
        self_signed(self.cert, self.key, "initial-pg.invalid")
        give_to_postgres(self.cert, mode=0o644)
        give_to_postgres(self.key, mode=0o600)
        give_to_postgres(self.tls_dir, mode=0o700)
        self.started = True
        out = run([SCRATCH_PG, "start", self.root, "ssl = on",
                   f"ssl_cert_file = '{self.cert}'", f"ssl_key_file = '{self.key}'"]).stdout
        facts = dict(line.split("=", 1) for line in out.split())
        self.data = pathlib.Path(facts["PGDATA"])
        self.socket = facts["PGHOST"]
        self.port = int(facts["PGPORT"])
        hba = self.data / "pg_hba.conf"
        hba.write_text("hostssl all all 127.0.0.1/32 trust\n" + hba.read_text())
        assert self.psql("SELECT pg_reload_conf()") == "t"
        # The reload is asynchronous: wait until a TLS client gets in without a password.
        wait_until(lambda: self.connect("SELECT 1", sslmode="require").returncode == 0, 10,
                   what="the hostssl trust rule")

    def psql(self, sql):
        """psql as the postgres superuser over the Unix socket; stdout, stripped."""
        uid, gid = postgres_ids()
        return run([PG_BIN / "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.socket,
                    "-p", self.port, "-U", "postgres", "-d", "postgres", "-c", sql],
                   user=uid, group=gid, cwd=self.root, env=client_env()).stdout.strip()

    def conninfo(self, sslmode="verify-full", root_ca=None, hostname=HOSTNAME):
        ci = (f"host={hostname} hostaddr=127.0.0.1 port={self.port} user=postgres dbname=postgres "
              f"sslmode={sslmode} connect_timeout=5")
        if root_ca:
            ci += f" sslrootcert={root_ca}"
        return ci

    def connect(self, sql="SELECT 1", sslmode="verify-full", root_ca=None, hostname=HOSTNAME):
        """A new TCP+TLS connection (as root, the way a remote client would come in); the
        CompletedProcess of psql."""
        return subprocess.run([str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                               self.conninfo(sslmode, root_ca, hostname), "-c", sql],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20,
                              env=client_env())

    def served_sha256(self):
        return served_sha256(self.port, starttls="postgres")

    def reload_and_wait_for(self, fingerprint, timeout=5):
        """pg_reload_conf(), then wait until a new connection is served `fingerprint`."""
        assert self.psql("SELECT pg_reload_conf()") == "t"
        wait_until(lambda: self.served_sha256() == fingerprint, timeout, interval=0.1,
                   what=f"PostgreSQL to serve {fingerprint}")

    def log(self):
        f = self.root / "server.log"
        return f.read_text() if f.exists() else ""

    def stop(self):
        if self.started:
            # Stops the server (fast: open sessions are cut) and removes root.
            subprocess.run([str(SCRATCH_PG), "stop", str(self.root)], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


class HeldSession:
    """A psql session kept open over pipes (psql flushes each result on a pipe), to show that an
    open session outlives a certificate swap. Use as a context manager."""

    def __init__(self, conninfo):
        self.proc = subprocess.Popen(
            [str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env=client_env(), start_new_session=True,
        )

    def query(self, sql, timeout=10):
        try:
            self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"the held session is gone: {self._gone()}")
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the held session did not answer {sql!r} within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the held session ended: {self._gone()}")
        return line.strip()

    def _gone(self):
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        return f"exit {self.proc.returncode}, stderr: {err}"

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ClientLoop:
    """A thread opening new verify-full connections (`connect()` -> CompletedProcess) back to back
    until stopped; bounded by max_runs and max_seconds. Use as a context manager."""

    def __init__(self, connect, max_runs=3000, max_seconds=60):
        self.connect = connect
        self.max_runs = max_runs
        self.max_seconds = max_seconds
        self.results = []  # (start, end, ok, error text)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.results) < self.max_runs and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                p = self.connect()
                ok = p.returncode == 0 and p.stdout.strip() == "1"
                err = "" if ok else f"rc={p.returncode} {p.stdout.strip()} {p.stderr.strip()}"
            except Exception as e:  # a timeout counts as a failure too
                ok, err = False, repr(e)
            self.results.append((t0, time.monotonic(), ok, err))

    @property
    def failures(self):
        return [r for r in self.results if not r[2]]

    def successes_started_after(self, t):
        return sum(1 for r in self.results if r[2] and r[0] > t)

    def wait_for_successes_after(self, t, n, timeout=20):
        wait_until(lambda: self.successes_started_after(t) >= n or not self._thread.is_alive(), timeout,
                   what=f"{n} client connections after t={t}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


# ---------------------------------------------------------------------------------------------
# pgBackRest TLS server


class PgBackRestServer:
    """`pgbackrest server` as postgres on 127.0.0.1:<free port>, with its own config file naming
    <root>/pgbr-tls/server.crt|.key (starting on a self-signed pair), the pebble root as the
    client CA and `tls-server-auth = db1.example.test=*`."""

    def __init__(self, root, client_ca):
        self.root = pathlib.Path(root)
        self.tls_dir = self.root / "pgbr-tls"
        self.cert = self.tls_dir / "server.crt"
        self.key = self.tls_dir / "server.key"
        self.config = self.root / "pgbackrest.conf"
        self.port = free_port()
        self.proc = None
        try:
            self._start(client_ca)
        except BaseException:
            self.stop()
            raise

    def _start(self, client_ca):
        log_dir, lock_dir = self.root / "pgbr-log", self.root / "pgbr-lock"
        for d in (self.tls_dir, log_dir, lock_dir):
            d.mkdir()
        self_signed(self.cert, self.key, "initial-pgbr.invalid")
        give_to_postgres(self.cert, mode=0o644)
        give_to_postgres(self.key, mode=0o600)  # the server refuses a 0644 key
        give_to_postgres(self.tls_dir, mode=0o700)
        give_to_postgres(log_dir, lock_dir)
        self.config.write_text(f"""[global]
tls-server-address=127.0.0.1
tls-server-port={self.port}
tls-server-cert-file={self.cert}
tls-server-key-file={self.key}
tls-server-ca-file={client_ca}
tls-server-auth={HOSTNAME}=*
log-path={log_dir}
lock-path={lock_dir}
log-level-console=info
log-level-stderr=off
log-level-file=off
""")
        give_to_postgres(self.config, mode=0o640)
        uid, gid = postgres_ids()
        self.log = self.root / "pgbackrest-server.out"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["pgbackrest", f"--config={self.config}", "server"], user=uid, group=gid,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                env=dict(client_env(), HOME=str(self.root)), start_new_session=True,
            )

        # Ready means serving a certificate, not just listening: pgBackRest 2.45 binds the port
        # before it installs its SIGHUP handler, and a SIGHUP in that window (~30 ms) kills it.
        # A served connection went through the accept loop, so the handler is in place.
        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f"pgbackrest server exited {self.proc.returncode}:\n{self.log.read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return False
            return self.served_sha256()

        wait_until(serving, 10, what=f"pgbackrest server on 127.0.0.1:{self.port}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def served_sha256(self):
        return served_sha256(self.port)

    def listener_inode(self):
        """Inode of the LISTEN socket on 127.0.0.1:port (from /proc/net/tcp), or None."""
        local = f"0100007F:{self.port:04X}"
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == local and fields[3] == "0A":
                    return fields[9]
        return None

    def hup_and_wait_for(self, fingerprint, timeout=5):
        """SIGHUP, then wait for the re-bound listener before connecting: pgBackRest 2.45 reloads
        by closing its listening socket and binding a new one, and a connection accepted in that
        moment hands the old socket to a child, so the re-bind fails (EADDRINUSE) and the server
        exits (measured: about 1 in 60 HUPs with a connect at once, none 50 ms later)."""
        before = self.listener_inode()
        os.kill(self.proc.pid, signal.SIGHUP)
        wait_until(lambda: self.listener_inode() not in (None, before), timeout, interval=0.01,
                   what="pgBackRest to re-bind its listener after SIGHUP")
        wait_until(lambda: self.served_sha256() == fingerprint, timeout, interval=0.1,
                   what=f"pgBackRest to serve {fingerprint}")

    def stop(self):
        stop_process(self.proc)
