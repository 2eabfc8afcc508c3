"""The built tarball is what a user installs: lean (binaries once per architecture, no sources,
lab, test suites or build files), within Galaxy's limit and the binaries' budgets."""

import glob
import hashlib
import json
import os
import subprocess
import tarfile

from conftest import DIST, ROOT

MiB = 1024 * 1024
ARCHS = ["aarch64", "x86_64"]
MODULES = ["cert_install", "pg_basebackup_standby", "pg_hba_rule", "pg_logical_replication",
           "pg_replication_user", "pgbackrest_repository"]


def tarball():
    return sorted(glob.glob(str(DIST / "pgshift-cluster-*.tar.gz")))[-1]


def test_tarball_holds_what_a_user_runs_and_nothing_else():
    with tarfile.open(tarball()) as t:
        members = {m.name: m for m in t.getmembers()}
    files = sorted(n for n, m in members.items() if m.isfile())
    allowed_top = {"MANIFEST.json", "FILES.json", "README.md", ".ansible-lint-ignore", "docs", "meta", "plugins", "playbooks",
                   "binaries", "tests"}
    assert {n.split("/")[0] for n in files} <= allowed_top, files
    assert [n for n in files if n.startswith("tests/")] == ["tests/sanity/ignore-2.19.txt"]
    forbidden = [n for n in files if n.endswith((".rs", ".pyc", ".toml", ".lock")) or "inventory" in n
                 or "__pycache__" in n or "/state/" in n or "secrets" in n]
    assert forbidden == []
    # One binary per architecture and kind; modules are documentation stubs and action plugins.
    # binaries/share: the agent's shell completions and man page, which agent.yml installs.
    binaries = [n for n in files if n.startswith("binaries/")]
    share = [f"binaries/share/{f}" for f in ("pgshift.1", "pgshift.bash", "pgshift.fish", "_pgshift")]
    assert sorted(binaries) == sorted(["binaries/manifest.json"] + share
                                      + [f"binaries/{a}/{b}" for a in ARCHS for b in ("pgshift", "pgshift-module")])
    assert all(members[n].size > 0 for n in share), [(n, members[n].size) for n in share]
    assert sorted(n for n in files if n.startswith("plugins/modules/")) == [f"plugins/modules/{m}.py" for m in MODULES]
    assert sorted(n for n in files if n.startswith("plugins/action/")) == [f"plugins/action/{m}.py" for m in MODULES]
    for arch in ARCHS:
        for name, budget in (("pgshift-module", 3 * MiB), ("pgshift", 4 * MiB)):
            m = members[f"binaries/{arch}/{name}"]
            assert m.size <= budget, (m.name, m.size)
            assert m.mode & 0o111, (m.name, oct(m.mode))


def test_tarball_size_and_manifest():
    size = os.path.getsize(tarball())
    assert size < 20 * 1000 * 1000, size  # Galaxy refuses collections over 20 MB
    with tarfile.open(tarball()) as t:
        manifest = json.load(t.extractfile("binaries/manifest.json"))
        for arch in ARCHS:
            for name in ("pgshift", "pgshift-module"):
                data = t.extractfile(f"binaries/{arch}/{name}").read()
                assert manifest[arch][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_binaries_are_static_for_their_architecture():
    machine = {"x86_64": "x86-64", "aarch64": "aarch64"}
    for arch in ARCHS:
        for name in ("pgshift", "pgshift-module"):
            out = subprocess.run(["file", "-b", ROOT / "binaries" / arch / name], capture_output=True, text=True).stdout
            assert ("statically linked" in out or "static-pie linked" in out) and machine[arch] in out.replace("ARM aarch64", "aarch64"), (arch, name, out)


def test_aarch64_binaries_run_and_agree_with_x86_64():
    """The shipped aarch64 builds run (under qemu-aarch64-static; make aarch64-test runs the
    module tests against PostgreSQL that way) and offer exactly the x86_64 builds' options."""
    run = {"x86_64": [], "aarch64": ["qemu-aarch64-static"]}
    specs = {a: subprocess.run(run[a] + [ROOT / "binaries" / a / "pgshift-module", "--argument-specs"],
                               capture_output=True, text=True, check=True).stdout for a in ARCHS}
    assert json.loads(specs["aarch64"]) == json.loads(specs["x86_64"])
    versions = {a: subprocess.run(run[a] + [ROOT / "binaries" / a / "pgshift", "--version"],
                                  capture_output=True, text=True, check=True).stdout for a in ARCHS}
    assert versions["aarch64"] == versions["x86_64"] and versions["x86_64"].startswith("pgshift ")
