# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What the documentation-only module files need: the options (so Ansible validates a task as
the binary would, and ansible-test checks the documentation against them) and the message for
a run without the action plugin."""

from __future__ import annotations

from ansible_collections.pgshift.cluster.plugins.module_utils.argument_specs import ARGUMENT_SPECS

__all__ = ["ARGUMENT_SPECS", "without_action_plugin"]


def without_action_plugin(name):
    return (
        "pgshift.cluster.%s is a static binary that the collection's action plugin "
        "(plugins/action/%s.py) runs on the host; this Python file only documents it and was run "
        "without that plugin. Call the module by its name from an installed pgshift.cluster "
        "collection (e.g. `pgshift.cluster.%s:` in a task or `ansible -m pgshift.cluster.%s`), "
        "not by its path or from a copy of this file." % (name, name, name, name)
    )
