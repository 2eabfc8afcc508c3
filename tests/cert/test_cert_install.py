"""cert_install through ansible, against real parts on loopback: a pebble ACME CA and certbot,
a PostgreSQL 15 serving TLS, a pgBackRest TLS server. A certificate counts as installed only when
the server serves it to a new connection and a verify-full client trusts it; a failure must leave
the previous files in place and the previous certificate in service."""

import json
import os
import pwd
import re
import stat
import time

from .cert_harness import (FINGERPRINT, HOSTNAME, ClientLoop, HeldSession, TestCA, deploy_hook_output,
                          sha256_of_pem)

MODULE = "pgshift.cluster.cert_install"
HOOK_NAME = "pgshift-cert-install"


def install(ansible, *flags, **args):
    # JSON arguments keep their types (ad-hoc k=v would make every value a string).
    return ansible.adhoc(MODULE, json.dumps({k: str(v) if isinstance(v, os.PathLike) else v
                                             for k, v in args.items()}), *flags)


def pg_args(tls_pg, certbot, lineage):
    return dict(lineage=lineage, ca_file=certbot.root_ca, hostname=HOSTNAME, dest_dir=tls_pg.tls_dir,
                data_directory=tls_pg.data, login_unix_socket=tls_pg.socket, login_port=tls_pg.port,
                certbot_dir=certbot.dir, deploy_hook="present")


def assert_postgres_owned_key(path):
    st = os.stat(path)
    assert pwd.getpwuid(st.st_uid).pw_name == "postgres", f"{path} is owned by uid {st.st_uid}"
    # PostgreSQL (and pgBackRest) refuse a key with group or world access.
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)


def assert_no_secrets(result):
    text = json.dumps(result)
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, "PEM material in the result"


def verify_full_ok(tls_pg, root_ca):
    p = tls_pg.connect("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", root_ca=root_ca)
    assert p.returncode == 0 and p.stdout.strip() == "t", p.stderr


def test_install_lineage_reload_verify_full_then_nothing_to_do(ansible, certbot, tls_pg):
    initial = tls_pg.served_sha256()
    lineage = certbot.obtain(HOSTNAME)
    new = sha256_of_pem(lineage / "cert.pem")

    first = install(ansible, "--diff", **pg_args(tls_pg, certbot, lineage))
    assert first.get("failed") is not True, first
    assert first["changed"] is True, first
    assert first["reloaded"] is True, first
    assert FINGERPRINT.match(first["cert_sha256"]), first
    assert first["cert_sha256"] == new
    assert first["served_sha256"] == new
    assert tls_pg.served_sha256() == new
    # The files PostgreSQL reads are the lineage's, copied (live/ is root-only) and owned right.
    assert sha256_of_pem(tls_pg.cert) == new
    assert_postgres_owned_key(tls_pg.key)
    # Diff: fingerprints, never key material.
    diff = json.dumps(first["diff"])
    assert initial in diff and new in diff, first["diff"]
    assert_no_secrets(first)
    # The deploy hook and this installation, saved for it.
    hook = certbot.dir / "renewal-hooks" / "deploy" / HOOK_NAME
    assert first["hook"] == str(hook)
    assert hook.is_file() and os.access(hook, os.X_OK)
    saved = first["saved"]
    assert os.path.dirname(saved) == str(certbot.dir / "pgshift"), saved
    assert os.path.isfile(saved) and stat.S_IMODE(os.stat(saved).st_mode) & 0o077 == 0
    verify_full_ok(tls_pg, certbot.root_ca)

    before = (tls_pg.cert.read_bytes(), tls_pg.key.read_bytes())
    second = install(ansible, **pg_args(tls_pg, certbot, lineage))
    assert second.get("failed") is not True, second
    assert second["changed"] is False, second
    assert second["reloaded"] is False, second
    assert second["cert_sha256"] == new
    assert (tls_pg.cert.read_bytes(), tls_pg.key.read_bytes()) == before
    assert tls_pg.served_sha256() == new
    verify_full_ok(tls_pg, certbot.root_ca)


def test_renewal_hook_swaps_certificate_without_dropping_anyone(ansible, certbot, tls_pg):
    lineage = certbot.obtain(HOSTNAME)
    old = sha256_of_pem(lineage / "cert.pem")
    first = install(ansible, **pg_args(tls_pg, certbot, lineage))
    assert first.get("failed") is not True and first["served_sha256"] == old, first

    with HeldSession(tls_pg.conninfo(root_ca=certbot.root_ca)) as held:
        pid = held.query("SELECT pg_backend_pid()")
        assert held.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t"
        with ClientLoop(lambda: tls_pg.connect("SELECT 1", root_ca=certbot.root_ca)) as loop:
            loop.wait_for_successes_after(0, 3)
            started = time.monotonic()
            renewed = certbot.renew()
            done = time.monotonic()
            # New clients keep getting in, now on the renewed certificate.
            loop.wait_for_successes_after(done, 3)
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        assert loop.failures == [], loop.failures[:5]
        assert loop.successes_started_after(started) - loop.successes_started_after(done) > 0, \
            "no client connection ran during the renewal"
        # The session opened before the swap is the same backend and still answers.
        assert held.query("SELECT pg_backend_pid()") == pid
        assert held.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t"

    # certbot ran our hook (renewal-hooks/deploy/), it printed one line for the one installation
    # and did not fail (certbot itself exits 0 even when a hook fails).
    hook_lines = deploy_hook_output(renewed.stdout)
    assert len(hook_lines) == 1, renewed.stdout + renewed.stderr
    assert "reported error code" not in renewed.stderr, renewed.stderr
    assert f"Running deploy-hook command: {certbot.dir / 'renewal-hooks' / 'deploy' / HOOK_NAME}" in certbot.log()

    new = sha256_of_pem(lineage / "cert.pem")
    assert new != old
    assert tls_pg.served_sha256() == new
    assert sha256_of_pem(tls_pg.cert) == new
    assert_postgres_owned_key(tls_pg.key)
    verify_full_ok(tls_pg, certbot.root_ca)


def test_bad_inputs_fail_clearly_and_keep_the_previous_certificate(ansible, tls_pg, test_ca, tmp_path):
    good_cert, good_key = test_ca.leaf(HOSTNAME)
    _, other_key = test_ca.leaf(HOSTNAME)
    expired_cert, expired_key = test_ca.leaf(HOSTNAME, not_before="20200101000000Z", not_after="20200201000000Z")
    other_ca = TestCA(tmp_path / "other-ca", name="unrelated CA")
    missing_src = tmp_path / "no-such-cert.pem"
    missing_dest = tls_pg.root / "no-such-dir"
    base = dict(cert=good_cert, key=good_key, ca_file=test_ca.cert, hostname=HOSTNAME, dest_dir=tls_pg.tls_dir,
                data_directory=tls_pg.data, login_unix_socket=tls_pg.socket, login_port=tls_pg.port,
                certbot_dir=tmp_path / "letsencrypt", deploy_hook="unchanged")
    cases = {
        "key of another certificate": (dict(key=other_key), r"(?i)key.*(match|belong)"),
        "expired certificate": (dict(cert=expired_cert, key=expired_key), r"(?i)expired"),
        "wrong hostname": (dict(hostname="db2.example.test"), re.escape("db2.example.test")),
        "chain not to ca_file": (dict(ca_file=other_ca.cert), r"(?i)chain|verif|ca_file|issuer"),
        "missing source": (dict(cert=missing_src), re.escape(str(missing_src))),
        "missing destination directory": (dict(dest_dir=missing_dest), re.escape(str(missing_dest))),
    }
    served = tls_pg.served_sha256()
    files = (tls_pg.cert.read_bytes(), tls_pg.key.read_bytes())
    for name, (override, expected) in cases.items():
        result = install(ansible, **{**base, **override})
        assert result.get("failed") is True, (name, result)
        assert re.search(expected, result.get("msg", "")), (name, result.get("msg"))
        assert_no_secrets(result)
        assert (tls_pg.cert.read_bytes(), tls_pg.key.read_bytes()) == files, name
        assert tls_pg.served_sha256() == served, name
        assert not missing_dest.exists(), name
    assert_postgres_owned_key(tls_pg.key)

    # Control: the same inputs with nothing wrong install, so the failures above were the faults.
    good = install(ansible, **base)
    assert good.get("failed") is not True and good["changed"] is True and good["reloaded"] is True, good
    assert tls_pg.served_sha256() == sha256_of_pem(good_cert) == good["served_sha256"]


def test_one_lineage_two_destinations_postgres_and_pgbackrest(ansible, certbot, tls_pg, pgbackrest_server):
    lineage = certbot.obtain(HOSTNAME)
    old = sha256_of_pem(lineage / "cert.pem")
    pg = install(ansible, **pg_args(tls_pg, certbot, lineage))
    assert pg.get("failed") is not True and pg["changed"] is True and pg["served_sha256"] == old, pg
    br = install(ansible, lineage=lineage, ca_file=certbot.root_ca, hostname=HOSTNAME,
                 dest_dir=pgbackrest_server.tls_dir, owner="postgres", service="pgbackrest",
                 config_file=pgbackrest_server.config, certbot_dir=certbot.dir, deploy_hook="present")
    assert br.get("failed") is not True, br
    assert br["changed"] is True and br["reloaded"] is True, br
    assert br["served_sha256"] == old, br
    assert pgbackrest_server.served_sha256() == old
    assert tls_pg.served_sha256() == old
    assert br["hook"] == pg["hook"]
    assert br["saved"] != pg["saved"], "one saved installation per destination"
    assert_postgres_owned_key(pgbackrest_server.key)

    renewed = certbot.renew()
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert len(deploy_hook_output(renewed.stdout)) == 2, renewed.stdout + renewed.stderr
    assert "reported error code" not in renewed.stderr, renewed.stderr
    new = sha256_of_pem(lineage / "cert.pem")
    assert new != old
    assert tls_pg.served_sha256() == new
    assert pgbackrest_server.served_sha256() == new
    assert pgbackrest_server.alive(), "SIGHUP with the new pair must not kill the pgBackRest server"
    assert sha256_of_pem(pgbackrest_server.cert) == new
    assert_postgres_owned_key(pgbackrest_server.key)
    verify_full_ok(tls_pg, certbot.root_ca)
