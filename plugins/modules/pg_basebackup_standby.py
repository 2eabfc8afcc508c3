#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# The documentation of pgshift.cluster.pg_basebackup_standby. The module itself is a static binary that the
# action plugin plugins/action/pg_basebackup_standby.py runs on the host (no Python needed there); this file
# only says so if it is ever run without that plugin.

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_basebackup_standby
short_description: Turn an empty host into a streaming standby of a primary
version_added: 0.1.0
author: pgshift developers (!UNKNOWN)
description:
  - Run on the standby host. On a missing or empty data directory it creates the standby's
    physical replication slot on the primary, runs C(pg_basebackup -X stream -c fast) as the
    cluster owner, merges the replication entry into the owner's passfile (0600), writes
    C(primary_conninfo) (with C(application_name) and C(passfile), never a password) and
    C(primary_slot_name) into C(postgresql.auto.conf), creates C(standby.signal), starts the
    server and waits until C(pg_stat_wal_receiver) reports C(streaming).
  - With I(method=pgbackrest) the copy is C(pgbackrest restore --type=standby) of the latest
    backup of I(stanza) from the pgBackRest repository (as C(pgshift.cluster.pgbackrest_repository)
    sets it up) instead of a base backup, so the primary serves no copy; pgBackRest writes a
    C(restore_command) (archive-get) that replays the archive until the standby streams
    through its slot. A former primary of this cluster with I(force_rebuild=true) is restored
    over in place with C(--delta) (only the files that differ are copied).
  - On a data directory that already is a standby of that primary (same system identifier)
    it only converges those settings, reloading a running server; C(changed=false) when
    nothing differs.
  - A data directory of another cluster, or a non-empty directory without a cluster, is
    refused unless I(force_rebuild=true), which moves it aside (never deletes it) and
    rebuilds. A data directory whose server runs as a primary is always refused, even with
    I(force_rebuild), because after a failover the inventory may be stale and a re-run must never
    destroy the live primary.
  - The password reaches pg_basebackup and psql only through a temporary 0600 passfile
    (C(PGPASSFILE)); it never appears in argv, logs or results.
  - Every option is checked before the primary is asked anything and before any change -
    values that go into the connection string, C(postgresql.auto.conf) or the passfile are
    escaped for that format (quotes, backslashes, blanks and non-ASCII work), and line
    breaks, NUL and other control characters are refused; the passfile, certificate and key
    files must be regular files (a FIFO, directory or device is refused unopened), the
    passfile must belong to I(owner), and without I(replication_password) it must already
    hold the entry for the primary.
  - When a step fails that the checks could not foresee (the base backup is cut off, the
    server does not start), everything this run did is undone, newest first - the server it
    started is stopped, files it wrote are restored or removed, the data directory it
    created or filled is removed or emptied, a directory it moved aside is moved back and the
    slot it created is dropped - and the failure lists it in I(undone). The last lines of
    the server's startup log are kept in the message.
  - Works with Debian's layout (configuration in C(/etc/postgresql/<version>/<cluster>),
    started with C(pg_ctlcluster)) and with a plain initdb layout (started with C(pg_ctl)).
options:
  primary_host:
    description: The primary's host name or address. Required (an empty value is refused as missing).
    type: str
  primary_port:
    description: The primary's port.
    type: int
    default: 5432
  replication_user:
    description: The replication role (see M(pgshift.cluster.pg_replication_user)).
    type: str
    default: replicator
  replication_password:
    description:
      - Its password; stored only in I(passfile). Never logged or returned. Any characters
        but line breaks, NUL and other control characters.
    type: str
  passfile:
    description:
      - The owner's passfile that C(primary_conninfo) points to. A regular file owned by
        I(owner), or a new one in an existing directory; a symbolic link is followed and its
        target written. Without I(replication_password) it must hold the entry already.
      - When omitted, C(.pgpass) in the home directory of I(owner).
    type: path
  data_directory:
    description: The standby's data directory (absolute).
    type: path
    required: true
  slot_name:
    description:
      - The physical replication slot on the primary.
      - Defaults to I(application_name) by the rule the pgshift agent uses for every member (lower case,
        C(_) for every character outside C([a-z0-9_]), at most 63 bytes), so the agent keeps using the
        same slot after a failover.
    type: str
  create_slot:
    description: Create the slot on the primary when it does not exist.
    type: bool
    default: true
  application_name:
    description:
      - C(application_name) in C(primary_conninfo), as C(pg_stat_replication) and C(synchronous_standby_names)
        see it; escaped for the connection string and for C(postgresql.auto.conf). Defaults to the host name.
    type: str
  ssl_mode:
    description: libpq sslmode for the replication connection.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
    aliases: [sslmode]
  ca_cert:
    description: C(sslrootcert) for the replication connection.
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description: Client certificate for the replication connection.
    type: path
  ssl_key:
    description: Client key for the replication connection.
    type: path
  pg_bin_dir:
    description: PostgreSQL's programs; defaults to C(/usr/lib/postgresql/<version>/bin) for the data directory's version, or the newest installed.
    type: path
  owner:
    description: Operating-system user that owns and runs the cluster.
    type: str
    default: postgres
  max_rate:
    description: C(pg_basebackup --max-rate), a number of kB/s with an optional C(k) or C(M), e.g. C(50M).
    type: str
  method:
    description:
      - How an empty data directory is filled - C(basebackup) (C(pg_basebackup) from the primary)
        or C(pgbackrest) (a restore from the pgBackRest repository).
    type: str
    choices: [basebackup, pgbackrest]
    default: basebackup
  stanza:
    description: The pgBackRest stanza to restore with I(method=pgbackrest).
    type: str
    default: main
  pgbackrest_bin:
    description: The pgbackrest program.
    type: path
    default: /usr/bin/pgbackrest
  pgbackrest_config:
    description: pgBackRest's configuration file, when not its default (C(/etc/pgbackrest/pgbackrest.conf)).
    type: path
  start:
    description: Start the standby after building it.
    type: bool
    default: true
  wait_streaming:
    description: Seconds to wait for streaming after start; 0 does not wait.
    type: int
    default: 60
  force_rebuild:
    description:
      - Move a data directory of another cluster (or a former primary) aside and rebuild; with
        I(method=pgbackrest) a former primary of this cluster is restored over with C(--delta)
        instead. Never applies to a running primary.
    type: bool
    default: false
  force:
    description: With I(state=absent), stop this host's standby so its slot can be dropped.
    type: bool
    default: false
  state:
    description:
      - C(absent) drops the standby's slot on the primary so WAL stops piling up for it;
        refused while the slot is active unless I(force=true). The data directory is kept.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Connects to the primary and reports the actions it would take; changes nothing.
  diff_mode:
    support: partial
    description: Shows the change to postgresql.auto.conf on an existing standby.
  platform:
    platforms: [posix]
    support: full
    description: Linux on x86_64 or aarch64 with PostgreSQL's client programs; no Python needed on the host.
'''

EXAMPLES = r'''
- name: db2 streams from db1
  pgshift.cluster.pg_basebackup_standby:
    primary_host: db1
    replication_user: replicator
    replication_password: "{{ replication_password }}"
    data_directory: /var/lib/postgresql/15/main
  no_log: true

- name: db3 restored from the pgBackRest repository, then streaming from db1
  pgshift.cluster.pg_basebackup_standby:
    primary_host: db1
    replication_user: replicator
    data_directory: /var/lib/postgresql/15/main
    method: pgbackrest
    stanza: main

- name: Retire db2's slot on the primary
  pgshift.cluster.pg_basebackup_standby:
    primary_host: db1
    replication_user: replicator
    replication_password: "{{ replication_password }}"
    data_directory: /var/lib/postgresql/15/main
    state: absent
    force: true
  no_log: true
'''

RETURN = r'''
undone:
  description: When the run failed after changing something, what it put back.
  returned: on failure after a change
  type: list
  elements: str
  sample: ["stopped the server this run started", "removed /var/lib/postgresql/15/main", "dropped slot db2 on db1"]
actions:
  description: What was done (or, in check mode, would be done).
  returned: with I(state=present)
  type: list
  elements: str
  sample: ["create slot db2 on db1", "base backup from db1:5432", "write primary_conninfo, primary_slot_name and standby.signal", "start PostgreSQL"]
system_identifier:
  description: The primary's system identifier.
  returned: with I(state=present)
  type: str
slot_name:
  description: The slot used (the one a playbook should not compute itself).
  returned: always
  type: str
primary_conninfo:
  description: The connection string written (no password in it).
  returned: with I(state=present)
  type: str
moved_aside:
  description: Where the previous data directory went with I(force_rebuild).
  returned: when a directory was moved aside
  type: str
streaming:
  description: True once pg_stat_wal_receiver reported streaming.
  returned: when the module waited
  type: bool
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgshift.cluster.plugins.module_utils.binary_stub import ARGUMENT_SPECS, without_action_plugin


def main():
    module = AnsibleModule(**ARGUMENT_SPECS["pg_basebackup_standby"])
    module.fail_json(msg=without_action_plugin("pg_basebackup_standby"))


if __name__ == "__main__":
    main()
