#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# The documentation of pgshift.cluster.cert_install. The module itself is a static binary that the
# action plugin plugins/action/cert_install.py runs on the host (no Python needed there); this file
# only says so if it is ever run without that plugin.

from __future__ import annotations

DOCUMENTATION = r'''
module: cert_install
short_description: Install a certificate and key for PostgreSQL (or pgBackRest, the agent), verified live; certbot deploy hook
version_added: 0.1.0
author: pgshift developers (!UNKNOWN)
description:
  - Before touching anything it parses the PEMs and checks that the key belongs to the
    certificate, the certificate is valid now, names I(hostname), carries serverAuth (and
    clientAuth for pgBackRest, which uses one certificate both ways) and chains to I(ca_file).
    Any failure names the problem and the option, and changes nothing.
  - Every file named (I(cert), I(key), I(ca_file), the destinations, pgBackRest's
    I(config_file)) must be a regular file of at most 1 MiB; a FIFO, device or directory is
    refused without being opened. A destination that is a symbolic link is followed and its
    target replaced, when root or the target's owner made the link.
  - Installs both files atomically with the right owner and modes (key 0600 when owned by the
    server's user; a root-owned key gets 0640 with the server's group). Unchanged content
    reports C(changed=false).
  - "For C(service: postgres) the server's effective C(ssl_cert_file)/C(ssl_key_file) must
    name the installed files and C(ssl) be on; otherwise the task fails saying what to set,
    or, with I(configure=true), sets them with ALTER SYSTEM. Then it reloads the running
    server (SIGHUP through postmaster.pid), waits until it has re-read its configuration,
    opens a new TLS connection to the port and first listen address of postmaster.pid and
    checks that the served certificate is the new one. If not, the previous files (and
    settings) are put back, the server reloaded again, and the task fails. Open sessions stay
    connected."
  - "Logical replication (multi-home): when an enabled subscription of that server presents
    the installed files as its client certificate (C(sslcert)/C(sslkey) in its connection),
    the certificate must also carry clientAuth. After the served certificate is verified,
    those subscriptions' apply workers are ended (they read the client certificate only when
    they connect; this is not an apply error) and the task waits, up to 20 s, until each is
    running again on a new connection and has received from its peer, which proves the peer
    accepted the new client certificate. Otherwise the previous files come back, the server
    is reloaded and the workers reconnect with the old files, and the task fails."
  - "For C(service: pgbackrest) the C([global]) C(tls-server-cert-file)/C(tls-server-key-file)
    of I(config_file) must name the installed files; every C(pgbackrest server) process gets
    SIGHUP (after the pair was checked: a mismatched key would kill it) and the certificate
    served on C(tls-server-address):C(tls-server-port) is compared."
  - "C(service: pgshift) signals a running C(pgshift agent); C(none) only installs."
  - "I(deploy_hook=present) copies this binary to
    C(<certbot_dir>/renewal-hooks/deploy/pgshift-cert-install) and saves this installation
    (0600, root) under C(<certbot_dir>/pgshift/), one file per destination. On every renewal
    certbot runs the hook with C(RENEWED_LINEAGE); it repeats each saved installation of that
    lineage with the same checks, reload and verification, prints one line per installation
    and exits non-zero if any failed (logging to syslog too, since certbot only logs failing
    hooks), leaving a failed destination on its previous, working certificate."
options:
  cert:
    description: Full-chain PEM (leaf first) on the host.
    type: path
  key:
    description: Private key PEM on the host (PKCS#8, PKCS#1 RSA or SEC1 EC), not encrypted (a passphrase-protected key is refused with how to decrypt it).
    type: path
  lineage:
    description: A certbot lineage directory (C(<certbot_dir>/live/<name>)), used instead of I(cert)/I(key) (its C(fullchain.pem) and C(privkey.pem)).
    type: path
  ca_file:
    description: Trust anchor(s) the chain must verify to.
    type: path
  hostname:
    description: A name (or IP address) the certificate must be valid for.
    type: str
  dest_dir:
    description: Where the files go; an existing directory.
    type: path
    required: true
  cert_name:
    description: File name of the installed certificate, a plain name inside I(dest_dir) (no C(/), not C(..)).
    type: str
    default: server.crt
  key_name:
    description: File name of the installed key, a plain name inside I(dest_dir), different from I(cert_name).
    type: str
    default: server.key
  owner:
    description: Owner of the installed files.
    type: str
    default: postgres
  group:
    description: Group of the installed files (default the owner's group).
    type: str
  service:
    description: What uses the files and gets reloaded and checked.
    type: str
    choices: [postgres, pgbackrest, pgshift, none]
    default: postgres
  data_directory:
    description: The PostgreSQL data directory (for C(service=postgres)); it must hold a cluster (C(PG_VERSION)), or nothing is installed.
    type: path
  config_file:
    description: pgBackRest's configuration (for C(service=pgbackrest)); C(/etc/pgbackrest/pgbackrest.conf) when omitted.
    type: path
  deploy_hook:
    description: Register (C(present)) or unregister (C(absent)) this installation with certbot's renewals.
    type: str
    choices: [present, absent, unchanged]
    default: unchanged
  certbot_dir:
    description: certbot's configuration directory.
    type: path
    default: /etc/letsencrypt
  configure:
    description: Set C(ssl_cert_file), C(ssl_key_file) and C(ssl = on) (ALTER SYSTEM) when the server does not use the installed files yet.
    type: bool
    default: false
  login_host:
    description: Host for the settings query; empty means the Unix socket from postmaster.pid.
    type: str
    aliases: [host, login_hostname]
  login_port:
    description: Port; defaults to the running server's.
    type: int
    aliases: [port]
  login_user:
    description: Role to connect as (peer authentication over the socket from root).
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description: Password; never saved for the deploy hook, never logged or returned.
    type: str
  login_unix_socket:
    description: Socket directory; defaults to the running server's.
    type: path
    aliases: [unix_socket]
  login_db:
    description: Database to connect to.
    type: str
    default: postgres
    aliases: [db, login_database]
  ssl_mode:
    description: libpq sslmode for the settings connection.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
    aliases: [sslmode]
  ca_cert:
    description: CA for the settings connection.
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description: Client certificate for the settings connection.
    type: path
  ssl_key:
    description: Client key for the settings connection.
    type: path
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
attributes:
  check_mode:
    support: full
    description: Checks everything and reports what would change; writes and reloads nothing.
  diff_mode:
    support: full
    description: Certificate fingerprints before and after, never key material.
  platform:
    platforms: [posix]
    support: full
    description: Linux on x86_64 or aarch64; no Python needed on the host.
'''

EXAMPLES = r'''
- name: Let's Encrypt certificate into PostgreSQL, renewed by certbot from now on
  pgshift.cluster.cert_install:
    lineage: /etc/letsencrypt/live/db1.example.com
    hostname: db1.example.com
    dest_dir: /etc/postgresql/15/main/tls
    data_directory: /var/lib/postgresql/15/main
    configure: true
    deploy_hook: present

- name: The same certificate for pgBackRest's TLS server
  pgshift.cluster.cert_install:
    lineage: /etc/letsencrypt/live/db1.example.com
    dest_dir: /etc/pgbackrest/tls
    service: pgbackrest
    deploy_hook: present
'''

RETURN = r'''
cert_sha256:
  description: SHA-256 fingerprint of the certificate (as openssl prints it).
  returned: success
  type: str
served_sha256:
  description: What the service serves after the reload (equal to I(cert_sha256)).
  returned: when verified
  type: str
reloaded:
  description: Whether the service was reloaded and verified.
  returned: success
  type: bool
subscriptions:
  description: Subscriptions whose apply workers reconnected with the new files (they present them as their client certificate).
  returned: when the certificate changed and such subscriptions exist
  type: list
  elements: str
not_after:
  description: Expiry of the certificate.
  returned: success
  type: str
settings:
  description: PostgreSQL settings changed (or to change) with I(configure).
  returned: when any
  type: list
  elements: str
hook:
  description: The installed deploy hook.
  returned: with I(deploy_hook=present)
  type: str
saved:
  description: The saved installation the hook replays.
  returned: with I(deploy_hook=present)
  type: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgshift.cluster.plugins.module_utils.binary_stub import ARGUMENT_SPECS, without_action_plugin


def main():
    module = AnsibleModule(**ARGUMENT_SPECS["cert_install"])
    module.fail_json(msg=without_action_plugin("cert_install"))


if __name__ == "__main__":
    main()
