"""The real parts the cert_install tests stand on, checked without the module: if these fail, the
machine (pebble, certbot, PostgreSQL, pgBackRest, openssl) is the problem, not cert_install.
The certificate swaps here are done by hand (copy + reload / SIGHUP), as an operator does them."""

import os
import shutil
import time

from .cert_harness import (HOSTNAME, ClientLoop, HeldSession, deploy_hook_output, give_to_postgres,
                          served_sha256, sha256_of_pem)


def _copy_lineage(lineage, cert, key):
    shutil.copyfile(lineage / "fullchain.pem", cert)
    shutil.copyfile(lineage / "privkey.pem", key)
    give_to_postgres(cert, mode=0o644)
    give_to_postgres(key, mode=0o600)


def test_pebble_certbot_issue_renew_and_servers_swap_by_hand(certbot, tls_pg, pgbackrest_server):
    # The servers start on their self-signed pairs and serve exactly those files.
    assert tls_pg.served_sha256() == sha256_of_pem(tls_pg.cert)
    assert pgbackrest_server.served_sha256() == sha256_of_pem(pgbackrest_server.cert)
    self_signed = tls_pg.connect("SELECT 1", sslmode="verify-full", root_ca=certbot.root_ca)
    assert self_signed.returncode != 0 and "certificate verify failed" in self_signed.stderr

    lineage = certbot.obtain(HOSTNAME)
    first = sha256_of_pem(lineage / "cert.pem")
    assert oct(os.stat(certbot.dir / "live").st_mode & 0o777) == "0o700"
    _copy_lineage(lineage, tls_pg.cert, tls_pg.key)
    tls_pg.reload_and_wait_for(first)
    ok = tls_pg.connect("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", root_ca=certbot.root_ca)
    assert ok.returncode == 0 and ok.stdout.strip() == "t", ok.stderr
    wrong_name = tls_pg.connect("SELECT 1", root_ca=certbot.root_ca, hostname="db2.example.test")
    assert wrong_name.returncode != 0 and "does not match host name" in wrong_name.stderr
    _copy_lineage(lineage, pgbackrest_server.cert, pgbackrest_server.key)
    pgbackrest_server.hup_and_wait_for(first)

    # A hook in renewal-hooks/deploy/ runs on renewal with RENEWED_LINEAGE and no arguments, and
    # certbot relays its output; a hand swap under a client loop and an open session loses nothing.
    hooks = certbot.dir / "renewal-hooks" / "deploy"
    assert hooks.is_dir()  # certbot makes renewal-hooks/{pre,deploy,post} at first issuance
    (hooks / "probe").write_text('#!/bin/sh\necho "lineage=$RENEWED_LINEAGE domains=$RENEWED_DOMAINS args=$#"\n')
    os.chmod(hooks / "probe", 0o755)
    with HeldSession(tls_pg.conninfo(root_ca=certbot.root_ca)) as held:
        pid = held.query("SELECT pg_backend_pid()")
        with ClientLoop(lambda: tls_pg.connect("SELECT 1", root_ca=certbot.root_ca)) as loop:
            loop.wait_for_successes_after(0, 3)
            renewed = certbot.renew()
            assert renewed.returncode == 0, renewed.stdout + renewed.stderr
            second = sha256_of_pem(lineage / "cert.pem")
            assert second != first
            _copy_lineage(lineage, tls_pg.cert, tls_pg.key)
            tls_pg.reload_and_wait_for(second)
            swapped = time.monotonic()
            loop.wait_for_successes_after(swapped, 3)
        assert loop.failures == [], loop.failures[:3]
        assert held.query("SELECT pg_backend_pid()") == pid
    assert deploy_hook_output(renewed.stdout) == [f"lineage={lineage} domains={HOSTNAME} args=0"], renewed.stdout
    assert "reported error code" not in renewed.stderr
    _copy_lineage(lineage, pgbackrest_server.cert, pgbackrest_server.key)
    pgbackrest_server.hup_and_wait_for(second)
    assert pgbackrest_server.alive()
    assert served_sha256(tls_pg.port, starttls="postgres") == second
