"""Fixtures every suite under tests/ may use (helpers live in tests/labkit.py)."""

import pytest

import labkit


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory):
    """The session's one site.yml cluster (labkit.SharedCluster); each suite calls ensure()
    in its own module fixture to get it healthy. `lab/lab down` at the end of the session.
    Its files (the clean install, playbooks) live under pytest's own temporary directory."""
    shared = labkit.SharedCluster(tmp_path_factory.mktemp("shared-cluster"))
    try:
        yield shared
    finally:
        shared.close()
