"""How a module reaches the host (plugins/plugin_utils/binary_module.py), on this machine with the
local connection: the binary uploaded once into a 0700 cache and run from there with the
arguments on stdin; a cache others could write, a replaced binary, a foreign or linked cache
directory, an unsafe parent; become (su and sudo) with a cache per user; no Python on the host;
no secret left behind with ANSIBLE_KEEP_REMOTE_FILES. The same over the lab's SSH:
tests/delivery."""

import hashlib
import json
import os
import pathlib
import platform
import pwd
import shutil
import stat
import subprocess

import pytest

from conftest import ROOT

HBA = "pgshift.cluster.pg_hba_rule"
USER = "pgshift.cluster.pg_replication_user"
ARCH = platform.machine()


def manifest_sha256():
    return json.loads((ROOT / "binaries" / "manifest.json").read_text())[ARCH]["pgshift-module"]["sha256"]


def cached(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture
def cache(tmp_path):
    parent = tmp_path / "home"
    parent.mkdir(mode=0o700)
    return parent / "cache"


@pytest.fixture
def hba_args(pg):
    return f"path={pg.hba} databases=app users=app address=10.30.0.0/16 method=scram-sha-256"


def run(ansible, cache, module, args, *flags):
    return ansible.adhoc(module, args, "-e", f"pgshift_module_cache={cache}", *flags)


def test_uploaded_once_then_run_from_the_cache(ansible, pg, cache, hba_args):
    first = run(ansible, cache, HBA, hba_args)
    assert first["changed"] is True, first
    name = f"pgshift-module-{ARCH}-{manifest_sha256()}"
    assert cached(cache) == [name, name + ".ok"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    binary = cache / name
    assert stat.S_IMODE(binary.stat().st_mode) == 0o700
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == manifest_sha256()
    before = binary.stat()
    second = run(ansible, cache, HBA, hba_args)
    assert second["changed"] is False and "warnings" not in second, second
    after = binary.stat()
    assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns), "uploaded again"


def test_cache_others_could_write_is_emptied_and_repaired(ansible, pg, cache, hba_args):
    run(ansible, cache, HBA, hba_args)
    cache.chmod(0o777)
    (cache / "planted").write_text("#!/bin/sh\necho '{\"changed\": false}'\n")
    old = (cache / f"pgshift-module-{ARCH}-{manifest_sha256()}").stat()
    result = run(ansible, cache, HBA, hba_args)
    assert result.get("failed") is not True, result
    assert any("others could write" in w and "uploaded anew" in w for w in result["warnings"]), result
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert "planted" not in cached(cache)
    binary = cache / f"pgshift-module-{ARCH}-{manifest_sha256()}"
    new = binary.stat()
    assert (new.st_ino, new.st_ctime_ns) != (old.st_ino, old.st_ctime_ns), "not uploaded again"
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == manifest_sha256()


@pytest.mark.parametrize("how", ["impostor script", "same size, other bytes", "symbolic link"])
def test_a_replaced_binary_is_refused_and_replaced(ansible, pg, cache, hba_args, how, tmp_path):
    run(ansible, cache, HBA, hba_args)
    binary = cache / f"pgshift-module-{ARCH}-{manifest_sha256()}"
    impostor = '#!/bin/sh\necho \'{"changed": true, "msg": "impostor ran"}\'\n'
    if how == "impostor script":
        binary.unlink()
        binary.write_text(impostor)
        binary.chmod(0o700)
    elif how == "same size, other bytes":
        data = bytearray(binary.read_bytes())
        data[-1] ^= 0xFF
        with open(binary, "r+b") as f:  # in place: same inode, same size, same mode
            f.write(data)
    else:
        target = tmp_path / "elsewhere"
        target.write_text(impostor)
        target.chmod(0o700)
        binary.unlink()
        binary.symlink_to(target)
    result = run(ansible, cache, HBA, hba_args)
    assert "impostor" not in json.dumps(result), result
    assert result["changed"] is False and result.get("failed") is not True, result
    assert any("was refused" in w for w in result["warnings"]), result
    assert not binary.is_symlink()
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == manifest_sha256()


def test_foreign_or_linked_cache_directory_is_refused(ansible, pg, cache, hba_args, tmp_path):
    run(ansible, cache, HBA, hba_args)
    nobody = pwd.getpwnam("nobody")
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    before = pg.hba.read_bytes()
    result = run(ansible, cache, HBA, hba_args + " state=absent")
    assert result.get("failed") is True, result
    assert "not a directory of this user" in result["msg"], result
    assert pg.hba.read_bytes() == before, "the module ran from a cache it should refuse"
    os.chown(cache, 0, 0)
    shutil.rmtree(cache)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    cache.symlink_to(other)
    result = run(ansible, cache, HBA, hba_args + " state=absent")
    assert result.get("failed") is True and "not a directory of this user" in result["msg"], result
    assert pg.hba.read_bytes() == before


def test_world_writable_parent_is_refused(ansible, pg, hba_args, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    result = run(ansible, shared / "cache", HBA, hba_args)
    assert result.get("failed") is True, result
    assert "parent of the module cache" in result["msg"] and "mode 1777" in result["msg"], result
    assert not (shared / "cache").exists()


def test_cache_path_must_be_absolute_or_home(ansible, pg, hba_args):
    result = run(ansible, "relative/cache", HBA, hba_args)
    assert result.get("failed") is True and "pgshift_module_cache must be" in result["msg"], result


def test_an_architecture_the_collection_lacks_is_named(ansible, pg, hba_args, collections_path, tmp_path, ansible_env):
    copy = tmp_path / "collections"
    shutil.copytree(collections_path, copy, symlinks=True)
    manifest = copy / "ansible_collections" / "pgshift" / "cluster" / "binaries" / "manifest.json"
    listed = json.loads(manifest.read_text())
    other = "aarch64" if ARCH == "x86_64" else "x86_64"
    manifest.write_text(json.dumps({other: listed[other]}))
    env = dict(ansible_env, ANSIBLE_COLLECTIONS_PATH=str(copy))
    p = subprocess.run(["ansible", "localhost", "-c", "local", "-m", HBA, "-a", hba_args, "-e",
                        f"pgshift_module_cache={tmp_path / 'c' / 'cache'}"], env=env, capture_output=True, text=True)
    result = json.loads(p.stdout[p.stdout.find("{"):])["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result.get("failed") is True, result
    assert result["msg"] == f"pgshift.cluster ships its module binary for Linux on {other}; this host is Linux {ARCH}"


def postgres_home():
    return pathlib.Path(pwd.getpwnam("postgres").pw_dir)


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed (scripts/deps.sh installs it)")
def test_become_su_and_sudo_use_the_become_users_own_cache(ansible, pg, hba_args):
    cache = postgres_home() / ".ansible" / "pgshift"
    made_parent = not cache.parent.exists()
    shutil.rmtree(cache, ignore_errors=True)
    try:
        su = ansible.adhoc(HBA, hba_args, "-b", "--become-user", "postgres", "--become-method", "su")
        assert su["changed"] is True, su
        name = f"pgshift-module-{ARCH}-{manifest_sha256()}"
        assert cached(cache) == [name, name + ".ok"]
        st = (cache / name).stat()
        assert pwd.getpwuid(st.st_uid).pw_name == "postgres" and pwd.getpwuid(cache.stat().st_uid).pw_name == "postgres"
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        sudo = ansible.adhoc(HBA, hba_args, "-b", "--become-user", "postgres", "--become-method", "sudo")
        assert sudo["changed"] is False and "warnings" not in sudo, sudo
        assert (cache / name).stat().st_ino == st.st_ino, "the same user's cache serves su and sudo"
        # The file belongs to postgres: the module really ran as postgres.
        assert pwd.getpwuid(pg.hba.stat().st_uid).pw_name == "postgres"
    finally:
        shutil.rmtree(cache.parent if made_parent else cache, ignore_errors=True)


def test_no_python_on_the_host(ansible, pg, cache, hba_args, tmp_path):
    """ansible_python_interpreter=/nonexistent: every module still runs (the binary answers)."""
    nopy = ["-e", "ansible_python_interpreter=/nonexistent"]
    first = run(ansible, cache, HBA, hba_args, *nopy)
    assert first["changed"] is True, first
    user = run(ansible, cache, USER, f"name=nopython_repl login_unix_socket={pg.socket} login_port={pg.port}", *nopy)
    assert user["changed"] is True, user
    assert pg.psql("SELECT rolreplication FROM pg_roles WHERE rolname = 'nopython_repl'") == "t"
    # The other modules need hosts and files of their own (the lab tests run them): here the
    # binary's own validation answers, which only the binary on the host can do.
    for module, missing in (("cert_install", "dest_dir"), ("pg_basebackup_standby", "data_directory"),
                            ("pgbackrest_repository", "role"), ("pg_logical_replication", "peer_host")):
        result = run(ansible, cache, f"pgshift.cluster.{module}", "", *nopy)
        assert result.get("failed") is True and result["msg"] == f"missing required arguments: {missing}", result


def test_keep_remote_files_leaves_no_secret(ansible, ansible_env, pg, cache, tmp_path):
    secret = "Kept-Files-Secret-7731"
    remote_tmp = tmp_path / "remote_tmp"
    env = dict(ansible_env, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=str(remote_tmp))
    p = subprocess.run(["ansible", "localhost", "-c", "local", "-m", USER, "-vvv", "-a",
                        f"name=kept_repl password={secret} login_unix_socket={pg.socket} login_port={pg.port}",
                        "-e", f"pgshift_module_cache={cache}"], env=env, capture_output=True, text=True)
    assert '"changed": true' in p.stdout, p.stdout[-3000:]
    assert secret not in p.stdout + p.stderr
    left = [f for f in tmp_path.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]
    assert left == []
    assert not remote_tmp.exists() or not any(remote_tmp.iterdir()), "a temporary directory was made on the host"


def test_su_with_a_password_is_refused_before_anything_runs(ansible, pg, cache, hba_args):
    """su would wait for its password on a terminal, which cannot also carry the arguments."""
    before = pg.hba.read_bytes()
    result = run(ansible, cache, HBA, hba_args, "-b", "--become-method", "su", "--become-user", "postgres",
                 "-e", "ansible_become_password=not-needed")
    assert result.get("failed") is True and "become_method: su` with a password" in result["msg"], result
    assert "not-needed" not in json.dumps(result)
    assert pg.hba.read_bytes() == before and not cache.exists()
