# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""pgshift.cluster.cert_install: its binary, run from the host's cache (plugin_utils/binary_module.py)."""

from __future__ import annotations

from ansible_collections.pgshift.cluster.plugins.plugin_utils.binary_module import BinaryModuleAction


class ActionModule(BinaryModuleAction):
    MODULE = "cert_install"
