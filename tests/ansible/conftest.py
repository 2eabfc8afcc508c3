"""Ansible-level tests: the built collection, installed from dist/ the way a user installs it,
driven through `ansible` and `ansible-playbook` against real PostgreSQL 15 servers."""

import glob
import json
import os
import pathlib
import shlex
import subprocess
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Where `make collection` put the tarball (the Makefile's PGSHIFT_DIST).
DIST = ROOT / os.environ.get("PGSHIFT_DIST", "dist")
# The ansible-core under test: .venv (requirements.txt) unless PGSHIFT_ANSIBLE_VENV names another
# (make ansible-test-oldest: .venv-oldest, the oldest release meta/runtime.yml claims).
VENV_BIN = pathlib.Path(os.environ.get("PGSHIFT_ANSIBLE_VENV", ROOT / ".venv")) / "bin"
SCRATCH_PG = ROOT / "target" / "debug" / "pgshift-scratch-pg"


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory):
    tarballs = sorted(glob.glob(str(DIST / "pgshift-cluster-*.tar.gz")))
    assert tarballs, "run `make collection` first"
    dest = tmp_path_factory.mktemp("collections")
    subprocess.run(
        [VENV_BIN / "ansible-galaxy", "collection", "install", "--force", "-p", dest, tarballs[-1]],
        check=True, capture_output=True,
    )
    return dest


@pytest.fixture(scope="session")
def ansible_env(collections_path):
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}:{env['PATH']}",
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_DEPRECATION_WARNINGS="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="results_json",
        ANSIBLE_CALLBACK_PLUGINS=str(pathlib.Path(__file__).parent / "callback_plugins"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_RETRY_FILES_ENABLED="false",
    )
    return env


class Ansible:
    """Runs ad-hoc modules and playbooks on localhost and returns the parsed JSON results."""

    def __init__(self, env):
        self.env = env

    def adhoc(self, module, args, *flags):
        cmd = ["ansible", "localhost", "-c", "local", "-m", module, "-a", args, *flags]
        return self._task_result(self._run(cmd))

    def playbook(self, path, *flags, extra_vars=None):
        cmd = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(path), *flags]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        return self._run(cmd)

    def _run(self, cmd):
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        # The results_json callback's document starts a line; at -vvv, logged commands come first.
        start = 0 if p.stdout.startswith("{") else p.stdout.find("\n{") + 1
        assert start > 0 or p.stdout.startswith("{"), f"no JSON from {cmd}: {p.stdout}\n{p.stderr}"
        return json.loads(p.stdout[start:])

    @staticmethod
    def _task_result(doc):
        return doc["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.fixture(scope="session")
def ansible(ansible_env):
    return Ansible(ansible_env)


class ScratchPg:
    def __init__(self, root):
        self.root = root
        out = subprocess.run([SCRATCH_PG, "start", root], check=True, capture_output=True, text=True).stdout
        facts = dict(line.split("=", 1) for line in out.split())
        self.data = pathlib.Path(facts["PGDATA"])
        self.socket = facts["PGHOST"]
        self.port = facts["PGPORT"]
        self.hba = self.data / "pg_hba.conf"

    def psql(self, sql):
        cmd = ["/usr/lib/postgresql/15/bin/psql", "-X", "-At", "-h", self.socket, "-p", self.port,
               "-U", "postgres", "-d", "postgres", "-c", sql]
        if os.geteuid() == 0:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def stop(self):
        subprocess.run([SCRATCH_PG, "stop", self.root], capture_output=True)


@pytest.fixture
def pg():
    root = tempfile.mkdtemp(prefix="pgshift-pytest-")
    server = ScratchPg(root)
    try:
        yield server
    finally:
        server.stop()
