"""pg_hba_rule through ansible and ansible-playbook: ad-hoc string arguments, check and diff
mode, idempotence, removal restoring the original bytes, bad input, no_log, the docs."""

import pathlib
import subprocess

import yaml

from conftest import VENV_BIN

MODULE = "pgshift.cluster.pg_hba_rule"
RULE = "databases=app users=app address=10.20.0.0/16 method=scram-sha-256 type=hostssl options='clientcert=verify-full'"


def test_adhoc_strings_add_reload_then_nothing_to_do(ansible, pg):
    first = ansible.adhoc(MODULE, f"path={pg.hba} {RULE} create=no backup=yes")
    assert first["changed"] is True, first
    assert first["reloaded"] is True, first
    assert pathlib.Path(first["backup_file"]).exists()
    # The scratch server runs with ssl = off: PostgreSQL loads the line but it cannot match.
    assert any("SSL is disabled" in w for w in first["warnings"]), first
    assert pg.psql("SELECT options FROM pg_hba_file_rules WHERE database = '{app}'") == "{clientcert=verify-full}"
    second = ansible.adhoc(MODULE, f"path={pg.hba} {RULE}")
    assert second["changed"] is False, second
    assert second["rules"][0]["action"] == "unchanged"


def test_check_mode_leaves_file_byte_identical_and_shows_diff(ansible, pg):
    before = pg.hba.read_bytes()
    loaded = pg.psql("SELECT pg_conf_load_time()")
    result = ansible.adhoc(MODULE, f"path={pg.hba} {RULE}", "--check", "--diff")
    assert result["changed"] is True, result
    diff = result["diff"]
    assert "10.20.0.0/16" in diff["after"]
    assert "10.20.0.0/16" not in diff["before"]
    assert pg.hba.read_bytes() == before
    assert pg.psql("SELECT pg_conf_load_time()") == loaded


def test_absent_restores_original_bytes(ansible, pg):
    before = pg.hba.read_bytes()
    ansible.adhoc(MODULE, f"path={pg.hba} {RULE} position=first")
    assert pg.hba.read_bytes() != before
    removed = ansible.adhoc(MODULE, f"path={pg.hba} databases=app users=app address=10.20.0.0/16 type=hostssl state=absent")
    assert removed["changed"] is True, removed
    assert pg.hba.read_bytes() == before
    again = ansible.adhoc(MODULE, f"path={pg.hba} databases=app users=app address=10.20.0.0/16 type=hostssl state=absent")
    assert again["changed"] is False


def test_bad_input_fails_clearly_and_changes_nothing(ansible, pg):
    before = pg.hba.read_bytes()
    cases = {
        "address=10.0.0.0/8 method=scram-sha-256 port=abc": "argument 'login_port' is of type str and we were unable to convert to int",
        "address=10.0.0.0/8 method=md5 colour=blue": "Unsupported parameters for (pg_hba_rule) module: colour",
        "address=10.0.0.0/8 method=trust state=maybe": "value of state must be one of: present, absent, got: maybe",
        "address=10.0.0.0/33 method=md5": "invalid CIDR mask",
        "address=10.0.0.0/8 method=md5 options='map=admins'": "method md5 takes no options",
        "type=local address=10.0.0.0/8 method=peer": "not allowed for local rules",
        "address=10.0.0.0/8 method=md5 create=perhaps": "unable to convert to bool",
    }
    for args, expected in cases.items():
        result = ansible.adhoc(MODULE, f"path={pg.hba} {args}")
        assert result.get("failed") is True, (args, result)
        assert expected in result["msg"], (args, result["msg"])
        assert pg.hba.read_bytes() == before, args
    missing = ansible.adhoc(MODULE, "method=md5 address=10.0.0.0/8")
    assert missing["msg"] == "missing required arguments: path"


def test_password_is_never_shown(ansible, pg):
    before = pg.hba.read_bytes()
    result = ansible.adhoc(
        MODULE,
        f"path={pg.hba} address=10.9.0.0/16 method=md5 login_host=127.0.0.1 login_port={pg.port} "
        "login_password=Very-Secret-42 ssl_mode=disable",
        "-vvv",
    )
    assert result.get("failed") is True
    assert "Very-Secret-42" not in str(result)
    # Refused before anything is written: the credentials are checked first.
    assert "authentication failed" in result["msg"]
    assert pg.hba.read_bytes() == before


def test_playbook_rules_exclusive_idempotent_with_module_defaults(ansible, pg, tmp_path):
    playbook = tmp_path / "hba.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost",
        "gather_facts": False,
        "module_defaults": {"group/pgshift.cluster.postgresql": {"data_directory": str(pg.data)}},
        "tasks": [{
            "name": "exactly these rules",
            "pgshift.cluster.pg_hba_rule": {
                "path": str(pg.hba),
                "exclusive": True,
                "rules": [
                    {"type": "local", "users": "postgres", "method": "peer"},
                    {"type": "local", "method": "peer"},
                    {"databases": "replication", "users": "replicator", "address": "10.0.0.0/24", "method": "scram-sha-256"},
                    {"address": "127.0.0.1/32", "method": "scram-sha-256"},
                ],
            },
        }],
    }]))
    first = ansible.playbook(playbook, "--diff")
    assert first["stats"]["localhost"]["changed"] == 1, first["stats"]
    assert pg.psql("SELECT count(*) FROM pg_hba_file_rules") == "4"
    text = pg.hba.read_text()
    assert text.startswith("# PostgreSQL Client Authentication Configuration File")
    second = ansible.playbook(playbook)
    assert second["stats"]["localhost"]["changed"] == 0, second["stats"]
    assert second["stats"]["localhost"]["failures"] == 0


def test_shadowed_rule_warns(ansible, pg):
    ansible.adhoc(MODULE, f"path={pg.hba} address=0.0.0.0/0 method=reject position=first")
    result = ansible.adhoc(MODULE, f"path={pg.hba} databases=app users=app address=10.1.2.3 method=scram-sha-256")
    assert result["changed"] is True
    assert any("will never be used" in w for w in result.get("warnings", [])), result


def test_ansible_doc(ansible_env):
    out = subprocess.run([VENV_BIN / "ansible-doc", "--json", MODULE], env=ansible_env, capture_output=True, text=True, check=True).stdout
    doc = yaml.safe_load(out)[MODULE]["doc"]
    assert {"path", "databases", "users", "address", "method", "position", "anchor", "rules", "exclusive", "login_password"} <= set(doc["options"])
    assert doc["attributes"]["check_mode"]["support"] == "full"
