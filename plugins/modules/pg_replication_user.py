#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# The documentation of pgshift.cluster.pg_replication_user. The module itself is a static binary that the
# action plugin plugins/action/pg_replication_user.py runs on the host (no Python needed there); this file
# only says so if it is ever run without that plugin.

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_replication_user
short_description: A LOGIN REPLICATION role with a SCRAM-SHA-256 password hashed on the host
version_added: 0.1.0
author: pgshift developers (!UNKNOWN)
description:
  - Ensures a role for streaming replication that is exactly C(LOGIN REPLICATION NOSUPERUSER
    NOCREATEDB NOCREATEROLE) with the given connection limit. Differing attributes are
    corrected and reported in I(queries).
  - The SCRAM-SHA-256 verifier is computed on the managed host (random salt, 4096
    iterations) and sent instead of the password, so the plaintext never reaches the server,
    its logs or C(pg_stat_activity). An unchanged password is detected by verifying it against
    the stored verifier, so a second run reports C(changed=false).
  - An existing role that is a superuser or is not a replication role (C(NOREPLICATION)) is
    someone else's - an administrator, an application. The module refuses to change it
    (it would make it C(NOSUPERUSER), add C(REPLICATION), take over its password) or to drop
    it, unless I(force=true). Every option is checked, and the server reached, before any
    statement runs; a refused task changes nothing in the catalog.
  - A static binary; managed hosts need no Python or psycopg.
options:
  name:
    description:
      - Role name, used exactly as given (quotes, blanks and non-ASCII are quoted in SQL).
        At most 63 bytes (PostgreSQL would truncate a longer name and manage another role);
        NUL and control characters are refused.
    type: str
    required: true
    aliases: [user]
  password:
    description:
      - The password in plaintext, or an existing C(SCRAM-SHA-256$...) verifier, which is
        stored as given. Omit it to leave the stored password alone. Never logged or
        returned. Quotes, backslashes, blanks and non-ASCII are fine (normalised with
        SASLprep as PostgreSQL does); line breaks, NUL and other control characters are
        refused, as is a string that starts like a verifier but is not a valid one.
    type: str
  conn_limit:
    description: Connection limit; -1 means none.
    type: int
    default: -1
  state:
    description:
      - C(absent) drops the role. Refused while the role has live replication connections
        unless I(force=true), which ends them first; refused for a role that is a superuser
        or not a replication role unless I(force=true).
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Allow changing (I(state=present)) or dropping (I(state=absent)) an existing role that
        is a superuser or is not a replication role.
      - With I(state=absent), also end the role's replication connections before dropping it.
    type: bool
    default: false
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
    description: Reports the statements it would run; runs none.
  diff_mode:
    support: full
    description: Shows the role's attributes before and after.
  platform:
    platforms: [posix]
    support: full
    description: Linux on x86_64 or aarch64; no Python needed on the host.
'''

EXAMPLES = r'''
- name: Replication user on the primary
  pgshift.cluster.pg_replication_user:
    name: replicator
    password: "{{ replication_password }}"
    conn_limit: 5
  no_log: true

- name: Retire it (ends its replication connections)
  pgshift.cluster.pg_replication_user:
    name: replicator
    state: absent
    force: true
'''

RETURN = r'''
role:
  description: The role's attributes after the run (the password only as its kind).
  returned: with I(state=present)
  type: dict
  sample:
    name: replicator
    login: true
    replication: true
    superuser: false
    createdb: false
    createrole: false
    conn_limit: 5
    password: scram-sha-256
queries:
  description: The statements run (or, in check mode, to be run), the password as C(********).
  returned: always
  type: list
  elements: str
  sample: ["CREATE ROLE \"replicator\" LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT 5 PASSWORD '********'"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgshift.cluster.plugins.module_utils.binary_stub import ARGUMENT_SPECS, without_action_plugin


def main():
    module = AnsibleModule(**ARGUMENT_SPECS["pg_replication_user"])
    module.fail_json(msg=without_action_plugin("pg_replication_user"))


if __name__ == "__main__":
    main()
