"""The multi-home pair's systemd units as playbooks/multihome.yml renders them: systemd
accepts both (`systemd-analyze verify`, offline: no systemd runs as PID 1 here), and the
`pgshift logical watch` service's sandbox rates as `systemd-analyze security` says."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")


def render(tmp_path, name, **values):
    args = [arg for k, v in values.items() for arg in ("-e", f"{k}={v}")]
    dest = tmp_path / name
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false")
    res = subprocess.run(
        [VENV_BIN / "ansible", "localhost", "-c", "local", "-m", "template", "-a",
         f"src={ROOT / 'playbooks' / 'templates' / (name + '.j2')} dest={dest}", *args],
        env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return dest


def verify(unit):
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         cwd=unit.parent, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_postgresql_unit(tmp_path):
    unit = render(tmp_path, "postgresql-multihome.service", pg_bin="/usr/lib/postgresql/15/bin",
                  multihome_data_directory="/var/lib/postgresql/multihome",
                  multihome_log_file="/var/log/postgresql/postgresql-multihome.log")
    text = unit.read_text()
    assert "User=postgres" in text and "-m fast" in text and "PIDFile=/var/lib/postgresql/multihome/postmaster.pid" in text
    verify(unit)


def test_watch_unit_is_accepted_and_sandboxed(tmp_path):
    unit = render(tmp_path, "pgshift-logical-watch.service", pgshift_binary_path="/bin/true",
                  multihome_watch_interval=5, multihome_database="app")
    text = unit.read_text()
    assert "User=postgres" in text and "logical watch --interval 5" in text
    assert re.search(r"^ReadWritePaths=/var/lib/pgshift$", text, re.M)
    verify(unit)
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert level, res.stdout + res.stderr
    assert float(level.group(1)) <= 2.0, res.stdout[-3000:]
