"""Fixtures for the cert_install tests: the Ansible runner from tests/ansible plus real parts on
loopback (pebble, certbot, a TLS PostgreSQL, a pgBackRest TLS server, an openssl test CA).
Every process a fixture starts is stopped in its teardown, failed test or not."""

import importlib.util
import pathlib

import pytest

from .cert_harness import Certbot, Pebble, PgBackRestServer, TestCA, TlsPostgres


def _ansible_conftest():
    # Loaded under its own name: both directories' conftest.py would otherwise be "conftest".
    path = pathlib.Path(__file__).resolve().parents[1] / "ansible" / "conftest.py"
    spec = importlib.util.spec_from_file_location("pgshift_tests_ansible_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ansible = _ansible_conftest()
# The built collection installed from dist/ (run `make collection` first) and the runner.
collections_path = _ansible.collections_path
ansible_env = _ansible.ansible_env
ansible = _ansible.ansible


@pytest.fixture(scope="session")
def pebble():
    server = Pebble()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def certbot(pebble):
    cb = Certbot(pebble)
    try:
        yield cb
    finally:
        cb.cleanup()


@pytest.fixture
def tls_pg():
    server = TlsPostgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pgbackrest_server(tls_pg, pebble):
    server = PgBackRestServer(tls_pg.root, pebble.root_ca)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def test_ca(tmp_path):
    return TestCA(tmp_path / "test-ca")
