#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

# The documentation of pgshift.cluster.pg_hba_rule. The module itself is a static binary that the
# action plugin plugins/action/pg_hba_rule.py runs on the host (no Python needed there); this file
# only says so if it is ever run without that plugin.

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_hba_rule
short_description: Add, update or remove pg_hba.conf rules without reordering the file
version_added: 0.1.0
author: pgshift developers (!UNKNOWN)
description:
  - Manages rules in a PostgreSQL C(pg_hba.conf) file. A rule is identified by its type,
    databases, users and address; a rule with the same identity but a different method,
    options or comment is updated on its own line. Nothing else in the file moves, and
    comments, blank lines and lines the module does not understand are kept byte for byte.
  - Every option is validated before anything is written (keywords, methods, options per
    method, address syntax, names and comments that cannot be written as one line), and the
    server's connection is made first, so bad input, wrong credentials or an unreachable
    server change nothing.
  - With a running server, the new file is checked by PostgreSQL itself through
    C(pg_hba_file_rules), the server is reloaded, and the load is proven from the server's
    side - a connection opened after the reload must see the new C(pg_conf_load_time)
    (the postmaster re-reads pg_hba.conf before it accepts it), PostgreSQL must reject no
    line and find at least one rule. Otherwise the previous file is put back, the server
    reloaded again, and the task fails with PostgreSQL's reason. The new rules must still
    admit the module's own connection (it is how the reload is proven); use I(reload=false)
    to write a file that does not.
  - The file is read and replaced under its advisory lock (C(flock), waiting up to 10 s for
    another holder), and right before the new file is renamed into place the module checks
    that nobody changed the old one since it was read; if someone did, nothing is written.
  - Warns when an earlier rule already matches every connection the new rule would (so the
    new rule would never be used), and about later duplicates.
  - A static binary; managed hosts need no Python.
options:
  path:
    description:
      - The pg_hba.conf file, e.g. C(/etc/postgresql/15/main/pg_hba.conf). An absolute path
        to a regular file; a FIFO, device or directory is refused without being opened.
      - A symbolic link is followed and its target is replaced (the link stays a link, the
        target is returned as I(target)); a dangling link, or a link that neither root nor
        the target's owner made, is refused.
      - A file in which no line is a rule, a comment or blank is not a pg_hba.conf and is
        refused; so is a file over 256 MiB. CRLF line endings are kept.
    type: path
    required: true
    aliases: [dest]
  type:
    description:
      - Connection type. Defaults to C(host).
    type: str
    choices: [local, host, hostssl, hostnossl, hostgssenc, hostnogssenc]
    aliases: [contype]
  databases:
    description:
      - Database names, as a list or a comma-separated string; keywords C(all), C(sameuser),
        C(samerole), C(replication); C(@file). Each list item is one name - blanks, commas,
        double quotes and C(#) in it are part of the name and quoted for you. An item wrapped
        in double quotes is a quoted name (never a keyword; a quote inside is written
        C("")), e.g. C('"all"') for a database literally named all; in a comma-separated
        string, quote a name that holds a comma. Newlines and control characters are refused.
        A rule already in the file is recognised whether its names are quoted or not.
        Defaults to C(all).
    type: list
    elements: str
    aliases: [database]
  users:
    description:
      - Role names, as a list or a comma-separated string; C(all), C(+group), C(@file).
        Quoting as for I(databases). Defaults to C(all).
    type: list
    elements: str
    aliases: [user]
  address:
    description:
      - Client address for host types. A CIDR network (C(10.0.0.0/8)), a bare IP address
        (a single host, /32 or /128), a host name, a C(.domain) suffix, C(all), C(samehost)
        or C(samenet). One token - anything after a blank is refused, never dropped (so
        C(0.0.0.0/0 trust) is an error; write an address and netmask in CIDR form). Required
        for host types, refused for C(local).
    type: str
    aliases: [source]
  method:
    description:
      - Authentication method (C(scram-sha-256), C(md5), C(peer), C(trust), C(reject),
        C(cert), C(ldap), ...). Required with I(state=present).
    type: str
  options:
    description:
      - "Authentication options as a dict, e.g. C(clientcert=verify-full) or C(map=admins)
        (ad hoc: C(options='clientcert=verify-full')). Checked against the options
        PostgreSQL accepts for the method. Booleans become C(1)/C(0)."
    type: dict
  comment:
    description:
      - A comment at the end of the rule's line. When given it is part of what is compared,
        so changing it updates the line. When omitted, a matching rule keeps the comment it
        has (and is not reported as changed because of it); an empty string removes it.
        Must be one line without control characters and must not end with a backslash.
    type: str
  state:
    description:
      - C(absent) removes every rule with this identity (method and options are ignored).
      - C(present) when omitted.
    type: str
    choices: [present, absent]
  position:
    description:
      - Where a new rule goes; an existing rule with the same identity is updated in place
        and never moved.
      - C(first) puts it before the first rule (and above the comment lines directly
        describing that rule), C(last) after the last rule, C(before) before the first rule
        matched by I(anchor), C(after) after the last rule matched by I(anchor).
      - C(last) when omitted.
    type: str
    choices: [first, last, before, after]
  anchor:
    description:
      - Selects the rule(s) for I(position=before) or I(position=after). Omitted fields
        match anything.
    type: dict
    suboptions:
      type:
        description: Connection type.
        type: str
        choices: [local, host, hostssl, hostnossl, hostgssenc, hostnogssenc]
        aliases: [contype]
      databases:
        description: Database names.
        type: list
        elements: str
        aliases: [database]
      users:
        description: Role names.
        type: list
        elements: str
        aliases: [user]
      address:
        description: Address.
        type: str
        aliases: [source]
  rules:
    description:
      - Several rules in one task, applied in order. Each item takes the rule options
        (I(type), I(databases), I(users), I(address), I(method), I(options), I(comment),
        I(state), I(position), I(anchor)); I(state) and I(position) default to the
        top-level values. Mutually exclusive with the top-level rule options.
    type: list
    elements: dict
    suboptions:
      type:
        description: Connection type, as the top-level I(type).
        type: str
        choices: [local, host, hostssl, hostnossl, hostgssenc, hostnogssenc]
        aliases: [contype]
      databases:
        description: Database names, as the top-level I(databases).
        type: list
        elements: str
        aliases: [database]
      users:
        description: Role names, as the top-level I(users).
        type: list
        elements: str
        aliases: [user]
      address:
        description: Address, as the top-level I(address).
        type: str
        aliases: [source]
      method:
        description: Authentication method, as the top-level I(method).
        type: str
      options:
        description: Authentication options, as the top-level I(options).
        type: dict
      comment:
        description: Comment at the end of the line, as the top-level I(comment).
        type: str
      state:
        description: C(present) or C(absent); the top-level I(state) when omitted.
        type: str
        choices: [present, absent]
      position:
        description: Where a new rule goes; the top-level I(position) when omitted.
        type: str
        choices: [first, last, before, after]
      anchor:
        description: The rule(s) I(position=before)/I(position=after) refer to, as the top-level I(anchor).
        type: dict
        suboptions:
          type:
            description: Connection type.
            type: str
            choices: [local, host, hostssl, hostnossl, hostgssenc, hostnogssenc]
            aliases: [contype]
          databases:
            description: Database names.
            type: list
            elements: str
            aliases: [database]
          users:
            description: Role names.
            type: list
            elements: str
            aliases: [user]
          address:
            description: Address.
            type: str
            aliases: [source]
  exclusive:
    description:
      - Make the file's rules exactly the given rule(s), in order. The leading comment block
        is kept; rules whose content is already right keep their bytes.
      - A result without any rule is refused (PostgreSQL does not load such a file and would
        not start with it); so is removing the last rule with I(state=absent).
    type: bool
    default: false
  create:
    description:
      - Create the file if it does not exist (owned like its directory, mode 0600 inside a
        data directory, 0640 elsewhere).
    type: bool
    default: false
  backup:
    description:
      - Keep a copy of the previous file next to it (C(<name>.<pid>.<time>~)); its path is
        returned as I(backup_file).
    type: bool
    default: false
  data_directory:
    description:
      - Data directory of the server that reads this file. When omitted it is found from
        the file's location (the file's own directory, or C(data_directory) in a
        C(postgresql.conf) beside it, as in Debian's layout).
    type: path
  reload:
    description:
      - Verify and reload a running server after a change.
    type: bool
    default: true
  login_host:
    description: Host to connect to for verification; empty means the Unix socket.
    type: str
    aliases: [host, login_hostname]
  login_port:
    description: Port; defaults to the running server's port from C(postmaster.pid).
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
    description: Password; never logged or returned.
    type: str
  login_unix_socket:
    description: Socket directory; defaults to the running server's from C(postmaster.pid).
    type: path
    aliases: [unix_socket]
  login_db:
    description: Database to connect to.
    type: str
    default: postgres
    aliases: [db, login_database]
  ssl_mode:
    description:
      - libpq's sslmode. C(require) encrypts without verifying (as C(verify-ca) when
        I(ca_cert) is given), C(verify-ca) checks the chain, C(verify-full) also the name.
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
    description: Computes the new file and the diff; writes and reloads nothing.
  diff_mode:
    support: full
    description: Shows the file before and after (for a file over 1 MiB, the rules that change).
  platform:
    platforms: [posix]
    support: full
    description: Linux on x86_64 or aarch64; no Python needed on the host.
notes:
  - C(include) lines (PostgreSQL 16) make the module refuse to write the file for a
    PostgreSQL 15 server, which would reject it. Names starting with C(/) (regular
    expressions on 16) are written with a warning on 15, which reads them as literal names.
  - PostgreSQL 15 rejects some lines without putting a reason in C(pg_hba_file_rules)
    (for example RADIUS list lengths); the module still detects the rejection and points
    to the server log.
'''

EXAMPLES = r'''
- name: Allow the application servers with SCRAM
  pgshift.cluster.pg_hba_rule:
    path: /etc/postgresql/15/main/pg_hba.conf
    databases: app
    users: app
    address: 10.20.0.0/16
    method: scram-sha-256
    comment: application servers

- name: Replication from the standby, before the catch-all reject
  pgshift.cluster.pg_hba_rule:
    path: /etc/postgresql/15/main/pg_hba.conf
    databases: replication
    users: replicator
    address: 10.0.0.12
    method: scram-sha-256
    position: before
    anchor:
      address: all

- name: Client certificates required for admins over TLS
  pgshift.cluster.pg_hba_rule:
    path: /etc/postgresql/15/main/pg_hba.conf
    type: hostssl
    users: +admins
    address: 10.0.0.0/8
    method: cert
    options:
      clientcert: verify-full

- name: The whole rule set, nothing else
  pgshift.cluster.pg_hba_rule:
    path: /etc/postgresql/15/main/pg_hba.conf
    exclusive: true
    backup: true
    rules:
      - {type: local, users: postgres, method: peer}
      - {type: local, method: peer}
      - {databases: replication, users: replicator, address: 10.0.0.0/24, method: scram-sha-256}
      - {address: 10.0.0.0/24, method: scram-sha-256}

- name: Remove a rule
  pgshift.cluster.pg_hba_rule:
    path: /etc/postgresql/15/main/pg_hba.conf
    databases: app
    users: app
    address: 10.20.0.0/16
    state: absent
'''

RETURN = r'''
target:
  description: The file actually replaced, when I(path) is a symbolic link.
  returned: when I(path) is a symbolic link
  type: str
  sample: /srv/config/pg_hba.conf
path:
  description: The file managed.
  returned: always
  type: str
rules:
  description: What happened to each rule, and the line it is on now.
  returned: success
  type: list
  elements: dict
  sample:
    - rule: "host    app             app             10.20.0.0/16            scram-sha-256"
      action: added
      line: 105
reloaded:
  description: Whether the server was verified and reloaded.
  returned: success
  type: bool
backup_file:
  description: The copy of the previous file.
  returned: when I(backup=true) and the file changed
  type: str
  sample: /etc/postgresql/15/main/pg_hba.conf.4242.1763782640.123456~
warnings:
  description: Rules that would never be used, duplicates, hostssl rules on a server with ssl off.
  returned: when there are any
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgshift.cluster.plugins.module_utils.binary_stub import ARGUMENT_SPECS, without_action_plugin


def main():
    module = AnsibleModule(**ARGUMENT_SPECS["pg_hba_rule"])
    module.fail_json(msg=without_action_plugin("pg_hba_rule"))


if __name__ == "__main__":
    main()
