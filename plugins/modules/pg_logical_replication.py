#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# The documentation of pgshift.cluster.pg_logical_replication. The module itself is a static binary that the
# action plugin plugins/action/pg_logical_replication.py runs on the host (no Python needed there); this file
# only says so if it is ever run without that plugin.

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_logical_replication
short_description: One side of a two-node multi-home pair over bidirectional logical replication (PostgreSQL 16+)
version_added: 0.1.0
author: pgshift developers (!UNKNOWN)
description:
  - Run on one node, ensures the publication I(publication) on this node B(and) on the peer
    (it connects to both), then this node's subscription to the peer's publication with
    C(origin = none), so changes that arrived by replication are not sent back. Running it on
    each node in turn makes the pair replicate both ways without loops.
  - Every check comes before the first change, so a refusal changes nothing on either side.
    Refused when either server runs PostgreSQL older than 16, when the peer lacks a table this
    side publishes or this side lacks one the peer publishes (a table missing on the receiving
    end stops the whole apply stream; the message names the tables), and with
    I(copy_data=true) when both sides hold rows of the same table.
  - The subscription's connection names I(peer_passfile), never a password, so no password
    is stored in the catalog; the file must be readable by the PostgreSQL server's user.
  - C(CREATE SUBSCRIPTION) and friends run outside a transaction (PostgreSQL requires it);
    publication changes run in one transaction per side.
  - A static binary; managed hosts need no Python or psycopg.
options:
  publication:
    description: Publication name, the same on both nodes.
    type: str
    default: pgshift_multihome
  tables:
    description:
      - Tables to publish (C(schema.table), or C(table) for C(public)); omitted, every table
        (C(FOR ALL TABLES)).
    type: list
    elements: str
  subscription:
    description: This node's subscription name; default C(pgshift_from_<peer_host>).
    type: str
  peer_host:
    description: The peer's host name or address, as this node's server reaches it.
    type: str
    required: true
  peer_port:
    description: The peer's port.
    type: int
    default: 5432
  peer_user:
    description: Role on the peer for the module's own connection (its checks and the peer's
      publication, which needs a superuser for C(FOR ALL TABLES)), and for the subscription's
      connection unless I(subscription_user) is given.
    type: str
    default: postgres
  subscription_user:
    description:
      - Role the subscription's connection logs in as, when it is not I(peer_user); a role
        with C(REPLICATION) (and C(SELECT) on the tables, e.g. C(pg_read_all_data), for
        I(copy_data)), authenticated by I(peer_ssl_cert)/I(peer_ssl_key) (a C(hostssl ... cert)
        rule on the peer) or by its entry in I(peer_passfile). The module itself still
        connects as I(peer_user).
    type: str
  peer_dbname:
    description: Database on the peer; default the same as I(login_db).
    type: str
  peer_passfile:
    description: A C(.pgpass) file with the password for I(peer_user) on the peer; used by the
      module and named in the subscription's connection string. A regular file (a FIFO or
      directory is refused unopened). Values that go into the connection string or SQL
      (I(peer_host), I(peer_user), I(peer_dbname), names, paths) must be one line; line
      breaks, NUL and control characters are refused before either server is asked anything.
    type: path
  peer_ssl_mode:
    description: libpq's sslmode towards the peer.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  peer_ca_cert:
    description: CA certificate(s) to verify the peer with.
    type: path
  peer_ssl_cert:
    description: Client certificate towards the peer.
    type: path
  peer_ssl_key:
    description: Client key towards the peer.
    type: path
  copy_data:
    description:
      - Copy the peer's existing rows when the subscription is created (or refreshed). Set it
        on one side only; refused when both sides hold rows of the same table.
    type: bool
    default: false
  refresh:
    description:
      - Run C(ALTER SUBSCRIPTION ... REFRESH PUBLICATION) when the peer publishes tables the
        subscription does not receive yet (after DDL on both sides).
    type: bool
    default: false
  state:
    description:
      - C(absent) drops this node's subscription (and its replication slot on the peer) and
        this node's publication; the peer's half is left to the peer's run.
    type: str
    choices: [present, absent]
    default: present
  login_host:
    description: Host to connect to; empty means the Unix socket.
    type: str
    aliases: [host, login_hostname]
  login_port:
    description: Port.
    type: int
    aliases: [port]
  login_user:
    description:
      - Role to connect as. Over the Unix socket, a module running as root connects with
        the matching operating-system user's ids, so Debian's C(peer) rule admits it.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description: Password for I(login_user); never logged or returned.
    type: str
  login_unix_socket:
    description: Socket directory (default C(/var/run/postgresql)).
    type: path
    aliases: [unix_socket]
  login_db:
    description: Database to connect to.
    type: str
    default: postgres
    aliases: [db, login_database]
  ssl_mode:
    description: libpq's sslmode (C(require) encrypts without verifying).
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
    aliases: [sslmode]
  ca_cert:
    description: CA certificate(s) for C(verify-ca)/C(verify-full).
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description: Client certificate.
    type: path
  ssl_key:
    description: Client key.
    type: path
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
attributes:
  check_mode:
    support: full
    description: Reports the statements it would run on each side; runs none.
  diff_mode:
    support: full
    description: Shows this node's publication and subscription before and after.
  platform:
    platforms: [posix]
    support: full
    description: Linux on x86_64 or aarch64; no Python needed on the host.
'''

EXAMPLES = r'''
- name: db1 subscribes to db2 (and both publish every table)
  pgshift.cluster.pg_logical_replication:
    login_db: app
    peer_host: db2
    peer_user: replicator
    peer_passfile: /var/lib/postgresql/.pgpass
    peer_ssl_mode: verify-full
    peer_ca_cert: /etc/postgresql/ca.crt
    copy_data: true

- name: db2 subscribes to db1, without copying back
  pgshift.cluster.pg_logical_replication:
    login_db: app
    peer_host: db1
    peer_user: replicator
    peer_passfile: /var/lib/postgresql/.pgpass

- name: db1 subscribes to db2 as a replication role with its client certificate
  pgshift.cluster.pg_logical_replication:
    login_db: app
    peer_host: db2
    peer_user: pgshift_admin             # the module's own connection (scram, passfile)
    peer_passfile: /var/lib/postgresql/.pgpass-multihome
    subscription_user: pgshift_replicator  # hostssl app pgshift_replicator <db1> cert map=...
    peer_ssl_mode: verify-full
    peer_ca_cert: /etc/pgshift/multihome-tls/ca.crt
    peer_ssl_cert: /etc/pgshift/multihome-tls/server.crt
    peer_ssl_key: /etc/pgshift/multihome-tls/server.key
'''

RETURN = r'''
queries:
  description: The statements run (or, in check mode, to be run), each prefixed with the side.
  returned: always
  type: list
  elements: str
  sample:
    - "peer: CREATE PUBLICATION \"pgshift_multihome\" FOR ALL TABLES"
    - "here: CREATE SUBSCRIPTION \"pgshift_from_db2\" CONNECTION '...' PUBLICATION \"pgshift_multihome\" WITH (origin = none, copy_data = false)"
publication:
  description: The publication name.
  returned: always
  type: str
subscription:
  description: This node's subscription name.
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgshift.cluster.plugins.module_utils.binary_stub import ARGUMENT_SPECS, without_action_plugin


def main():
    module = AnsibleModule(**ARGUMENT_SPECS["pg_logical_replication"])
    module.fail_json(msg=without_action_plugin("pg_logical_replication"))


if __name__ == "__main__":
    main()
