"""The agent's systemd unit as playbooks/agent.yml renders it: systemd accepts it
(`systemd-analyze verify`) and its sandbox scores as `systemd-analyze security` rates it (no
systemd runs as PID 1 here, so both run offline on the rendered file)."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")


def render(tmp_path, **overrides):
    # The playbooks' own defaults, then what a host would have.
    values = {
        "pgshift_agent_user": "postgres",
        "pgshift_binary_path": "/bin/true",
        "pgshift_state_dir": "/var/lib/pgshift",
        "pg_data_directory": "/var/lib/postgresql/15/main",
        "pg_log_file": "/var/log/postgresql/postgresql-15-main.log",
        **overrides,
    }
    args = [arg for k, v in values.items() for arg in ("-e", f"{k}={v}")]
    dest = tmp_path / "pgshift-agent.service"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false")
    res = subprocess.run(
        [VENV_BIN / "ansible", "localhost", "-c", "local", "-m", "template", "-a",
         f"src={ROOT / 'playbooks' / 'templates' / 'pgshift-agent.service.j2'} dest={dest}", *args],
        env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return dest


def test_systemd_accepts_the_unit_and_rates_its_sandbox(tmp_path):
    unit = render(tmp_path)
    text = unit.read_text()
    assert "User=postgres" in text and "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
    # The paths PostgreSQL (the agent's child, in the same sandbox) writes.
    for path in ["/var/lib/pgshift", "/var/lib/postgresql/15", "/var/log/postgresql", "/run/postgresql"]:
        assert re.search(rf"^ReadWritePaths=.*{re.escape(path)}( |$)", text, re.M), path
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert level, res.stdout + res.stderr
    # 2.0 when written; the unit before hardening rated 9.6 ("UNSAFE").
    assert float(level.group(1)) <= 2.5, res.stdout[-3000:]
