#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# The documentation of pgshift.cluster.pgbackrest_repository. The module itself is a static binary that the
# action plugin plugins/action/pgbackrest_repository.py runs on the host (no Python needed there); this file
# only says so if it is ever run without that plugin.

from __future__ import annotations

DOCUMENTATION = r'''
module: pgbackrest_repository
short_description: A pgBackRest repository host over TLS, and the database hosts archiving to it
version_added: 0.1.0
author: pgshift developers (!UNKNOWN)
description:
  - "One module for both sides of a dedicated pgBackRest repository host that talks TLS
    (C(pgbackrest server)) instead of SSH. Both sides run C(pgbackrest server); one
    certificate per host serves as its TLS server certificate and as its client certificate
    towards the other side."
  - "Only the keys it owns are written to I(config_file): C([global]) repository, TLS server
    and archiving keys, and each stanza's C(pgN-*) instance keys. Foreign keys, comments and
    order survive. The file is written atomically, 0640, owned by I(user)."
  - "C(role: repository): each stanza lists its database I(instances); an instance's
    Debian name (C(15/main)) or explicit path gives C(pgN-path), its host C(pgN-host). The
    repository directory is created (0750, I(user)); an existing one owned by someone else
    is refused. Each new stanza is created with C(stanza-create --no-online), which reads
    pg_control through the instances' TLS servers, so PostgreSQL need not run. A stanza
    leaves the configuration only with C(state: absent), and its backups are deleted only
    with C(delete_backups: true) on that stanza. I(schedules) become systemd timer + oneshot
    service units in I(units_dir) that run backups on the repository host; units are checked
    with C(systemd-analyze verify) before they are written, and units of a schedule that is
    gone are removed (only units this module wrote)."
  - "C(role: database): the local C(pgbackrest server) (a systemd unit), the repository it
    archives to, and asynchronous archiving: C(archive_command) only queues the segment in
    I(spool_path) and a background process ships it, so a repository that is down makes an
    archive attempt fail after I(archive_timeout) instead of blocking PostgreSQL's archiver
    for minutes (120 s per attempt with pgBackRest's defaults when refused, 240 s when
    unreachable); a queue over I(archive_push_queue_max) drops WAL from the archive with a
    warning (the archive then has a hole until the next full backup) rather than filling
    C(pg_wal) until PostgreSQL stops. With I(data_directory), C(archive_command) is set with ALTER SYSTEM and the
    server reloaded (also on a standby, so it archives once promoted); C(archive_mode) must
    be on (a warning says so)."
  - "Before anything is written: the certificate must match its key, be valid now, name this
    host (I(tls.name), default the host name), carry serverAuth and clientAuth, and chain to
    I(tls.ca); the key must be readable by I(user) and nobody else. Hosts must be names, not
    IP addresses (pgBackRest matches certificates by name). Any failure names the problem and
    changes nothing."
  - "A running C(pgbackrest server) is reloaded (SIGHUP) when the configuration changed;
    the module waits until it listens again."
options:
  role:
    description: Which side this host is.
    type: str
    required: true
    choices: [repository, database]
  state:
    description: C(absent) removes the keys and units this module owns; backups stay.
    type: str
    default: present
    choices: [present, absent]
  config_file:
    description:
      - pgBackRest's configuration file on this host. A regular file (a FIFO, device or
        directory is refused unopened) or a new one; a symbolic link is followed and its
        target edited, when root or the target's owner made the link.
      - Every value written into it or into a systemd unit (paths, host and stanza names,
        clients, calendars, sizes) must be one line; line breaks, NUL and control
        characters are refused before anything is written.
    type: path
    default: /etc/pgbackrest/pgbackrest.conf
  user:
    description: The operating-system user pgBackRest runs as (PostgreSQL's).
    type: str
    default: postgres
  tls:
    description: This host's TLS server and client identity.
    type: dict
    suboptions:
      cert:
        description: Certificate (chain) for this host's name, with serverAuth and clientAuth.
        type: path
        required: true
      key:
        description: Its key, 0600 and readable by I(user).
        type: path
        required: true
      ca:
        description: CA that issued every host's certificate.
        type: path
        required: true
      port:
        description: TLS port of every C(pgbackrest server) (this host's and the other side's).
        type: int
        default: 8432
      address:
        description: Address this host's server listens on.
        type: str
        default: "*"
      name:
        description: This host's name as in its certificate; defaults to the host name.
        type: str
  units_dir:
    description: Where systemd units are written.
    type: path
    default: /etc/systemd/system
  stanzas:
    description: (repository) The stanzas and their database instances.
    type: list
    elements: dict
    suboptions:
      name:
        description: Stanza name.
        type: str
        required: true
      instances:
        description: Database instances, C(pg1) first.
        type: list
        elements: dict
        suboptions:
          host:
            description: Host name of the instance (as in its certificate).
            type: str
            required: true
          name:
            description: Debian cluster C(version/cluster), for C(/var/lib/postgresql/version/cluster).
            type: str
          path:
            description: Data directory (instead of I(name)).
            type: path
          port:
            description: PostgreSQL port on that host.
            type: int
            default: 5432
          config_file:
            description: pgBackRest configuration file on that host; defaults to I(config_file).
            type: path
      clients:
        description: Client certificate common names allowed to use this stanza; defaults to the instances' hosts.
        type: list
        elements: str
      state:
        description: C(absent) removes the stanza from the configuration.
        type: str
        default: present
        choices: [present, absent]
      delete_backups:
        description: With C(state=absent), also delete the stanza's backups and archive (C(stanza-delete)).
        type: bool
        default: false
  repo_path:
    description: (repository) The repository directory.
    type: path
    default: /var/lib/pgbackrest
  retention_full:
    description: (repository) Full backups to keep.
    type: int
    default: 2
  retention_diff:
    description: (repository) Differential backups to keep.
    type: int
  schedules:
    description: (repository) Backup schedules, each a systemd timer.
    type: list
    elements: dict
    suboptions:
      type:
        description: Backup type.
        type: str
        required: true
        choices: [full, diff, incr]
      on_calendar:
        description: systemd C(OnCalendar) expression, e.g. C(Sun *-*-* 01:00:00).
        type: str
        required: true
      stanza:
        description: Only this stanza; default every present stanza.
        type: str
  stanza:
    description: (database) The repository's stanza for this cluster.
    type: str
  instance:
    description: (database) Debian cluster C(version/cluster) giving C(pg1-path).
    type: str
  pg_path:
    description: (database) Data directory, instead of I(instance).
    type: path
  pg_port:
    description: (database) PostgreSQL's port.
    type: int
    default: 5432
  repository_host:
    description: (database) The repository's host name, as in its certificate.
    type: str
  repository_config_file:
    description: (database) pgBackRest's configuration file on the repository host; defaults to I(config_file).
    type: path
  spool_path:
    description: (database) Asynchronous archiving's queue, created 0750 for I(user).
    type: path
    default: /var/spool/pgbackrest
  archive_push_queue_max:
    description: (database) Largest archive queue before WAL is dropped from the archive (never from C(pg_wal) too early).
    type: str
    default: 4GiB
  archive_timeout:
    description:
      - (database) Seconds one archive_command attempt waits for the background push (C(archive-timeout) in
        C([global:archive-push])); with the repository down each attempt fails after this long.
    type: int
    default: 5
  io_timeout:
    description: (database) C(io-timeout) of archive-push only (C(protocol-timeout) is three times it); backups and C(check) keep pgBackRest's defaults.
    type: int
    default: 10
  data_directory:
    description: (database) The running server on which to set C(archive_command).
    type: path
  login_host:
    description: Host for the archive_command connection; empty means the Unix socket from postmaster.pid.
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
    description: Password; never logged or returned.
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
    description: libpq sslmode for the archive_command connection.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
    aliases: [sslmode]
  ca_cert:
    description: CA for the archive_command connection.
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description: Client certificate for the archive_command connection.
    type: path
  ssl_key:
    description: Client key for the archive_command connection.
    type: path
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
attributes:
  check_mode:
    support: full
    description: Checks everything and reports what would change, including stanzas it would create; writes nothing.
  diff_mode:
    support: full
    description: The configuration file and each unit, before and after.
  platform:
    platforms: [posix]
    support: full
    description: Linux on x86_64 or aarch64 with pgBackRest installed; no Python needed on the host.
'''

EXAMPLES = r'''
- name: aux keeps the backups of db1 and db2, one stanza for both
  pgshift.cluster.pgbackrest_repository:
    role: repository
    stanzas:
      - name: main
        instances:
          - { host: db1, name: 15/main }
          - { host: db2, name: 15/main }
    retention_full: 2
    schedules:
      - { type: full, on_calendar: "Sun *-*-* 01:00:00" }
      - { type: diff, on_calendar: "Mon..Sat *-*-* 01:00:00" }
    tls: { cert: /etc/pgbackrest/tls/aux.crt, key: /etc/pgbackrest/tls/aux.key, ca: /etc/pgbackrest/tls/ca.crt }

- name: db1 archives to aux and sets archive_command
  pgshift.cluster.pgbackrest_repository:
    role: database
    stanza: main
    instance: 15/main
    repository_host: aux
    data_directory: /var/lib/postgresql/15/main
    tls: { cert: /etc/pgbackrest/tls/db1.crt, key: /etc/pgbackrest/tls/db1.key, ca: /etc/pgbackrest/tls/ca.crt }

- name: Retire stanza old and delete its backups
  pgshift.cluster.pgbackrest_repository:
    role: repository
    stanzas:
      - { name: old, state: absent, delete_backups: true }
    tls: { cert: /etc/pgbackrest/tls/aux.crt, key: /etc/pgbackrest/tls/aux.key, ca: /etc/pgbackrest/tls/ca.crt }
'''

RETURN = r'''
config_file:
  description: The configuration file.
  returned: always
  type: str
stanzas_created:
  description: (repository) Stanzas created by this run (or that would be, in check mode).
  returned: role repository
  type: list
  elements: str
stanzas_deleted:
  description: (repository) Stanzas whose backups were deleted.
  returned: role repository
  type: list
  elements: str
units:
  description: File names of every unit this task manages.
  returned: always
  type: list
  elements: str
units_written:
  description: Unit files written (or to write).
  returned: always
  type: list
  elements: str
units_removed:
  description: Unit files of gone schedules removed.
  returned: always
  type: list
  elements: str
server_reloaded:
  description: Whether a running C(pgbackrest server) was sent SIGHUP.
  returned: always
  type: bool
archive_command:
  description: (database) The archive_command to use.
  returned: role database
  type: str
  sample: pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=main archive-push %p
restore_command:
  description: (database) The matching restore_command.
  returned: role database
  type: str
archive_command_changed:
  description: (database) Whether archive_command was (or would be) changed on the server.
  returned: role database
  type: bool
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgshift.cluster.plugins.module_utils.binary_stub import ARGUMENT_SPECS, without_action_plugin


def main():
    module = AnsibleModule(**ARGUMENT_SPECS["pgbackrest_repository"])
    module.fail_json(msg=without_action_plugin("pgbackrest_repository"))


if __name__ == "__main__":
    main()
