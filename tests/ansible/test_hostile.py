"""Hostile input through ansible and ansible-playbook, where Ansible's own handling matters:
ad-hoc strings (k=v splitting, quoting), YAML lists, check mode, no_log'd secrets in failures.
Each refusal must fail the task naming the option, show no secret and change nothing; each
value that can be represented must reach PostgreSQL exactly as written."""

import hashlib
import json
import os
import time

import yaml

PG_HBA = "pgshift.cluster.pg_hba_rule"
REPL_USER = "pgshift.cluster.pg_replication_user"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tasks(doc):
    return [t["hosts"]["localhost"] for t in doc["plays"][0]["tasks"]]


def playbook(ansible, tmp_path, task_list, *flags):
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": task_list}]))
    return ansible.playbook(path, *flags)


def test_a_fifo_path_fails_at_once_even_in_check_mode(ansible, tmp_path):
    fifo = tmp_path / "pg_hba.conf"
    os.mkfifo(fifo)
    for flags in ([], ["--check"]):
        started = time.monotonic()
        result = ansible.adhoc(PG_HBA, f"path={fifo} address=10.0.0.0/8 method=md5", *flags)
        assert time.monotonic() - started < 30, "the module hung on a FIFO"
        assert result.get("failed") is True, result
        assert "path" in result["msg"] and "FIFO" in result["msg"], result["msg"]


def test_adhoc_values_that_would_inject_are_refused(ansible, pg):
    before = digest(pg.hba)
    loaded = pg.psql("SELECT pg_conf_load_time()")
    cases = {
        # The blank inside the quoted value used to be cut, turning this into 0.0.0.0/0.
        "address='0.0.0.0/0 trust' method=md5": "address",
        "address=10.0.0.0/8 method='md5 clientcert=verify-full'": "method",
        "type=local method=peer options='map=\"a\nlocal all all trust\"'": "options",
        "address=10.0.0.0/8 method=md5 databases='\"a\"b\"'": "databases",
    }
    for args, option in cases.items():
        result = ansible.adhoc(PG_HBA, f"path={pg.hba} {args}")
        assert result.get("failed") is True, (args, result)
        assert option in result["msg"], (args, result["msg"])
        assert digest(pg.hba) == before, args
    assert pg.psql("SELECT pg_conf_load_time()") == loaded


def test_names_with_commas_and_quotes_reach_postgresql_intact(ansible, pg, tmp_path):
    # Ad hoc: a comma-separated string, with a quoted item holding a comma.
    result = ansible.adhoc(PG_HBA, f"path={pg.hba} databases='\"a,b\",c' users=app address=10.5.0.0/16 method=md5")
    assert result["changed"] is True, result
    assert pg.psql("SELECT array_to_json(database) FROM pg_hba_file_rules WHERE address = '10.5.0.0'") == '["a,b","c"]'
    # A playbook: one YAML list item is one name, whatever it holds; a trailing comment on
    # the existing line is kept and is no reason to report a change.
    text = pg.hba.read_text() + 'host "x, y","q""uote" all 10.6.0.0/16 md5 # ticket 7\n'
    pg.hba.write_text(text)
    rule = {"path": str(pg.hba), "databases": ["x, y", 'q"uote'], "address": "10.6.0.0/16", "method": "md5"}
    doc = playbook(ansible, tmp_path, [{"pgshift.cluster.pg_hba_rule": rule}])
    assert doc["stats"]["localhost"]["changed"] == 0, doc["stats"]
    assert pg.hba.read_text() == text
    rule.update(users=["it's \\ü"], address="10.8.0.0/16")
    doc = playbook(ansible, tmp_path, [{"pgshift.cluster.pg_hba_rule": rule}])
    assert doc["stats"]["localhost"]["changed"] == 1, doc["stats"]
    got = pg.psql("SELECT array_to_json(user_name) FROM pg_hba_file_rules WHERE address = '10.8.0.0'")
    assert json.loads(got) == ["it's \\ü"]


def test_a_file_without_rules_is_never_written(ansible, pg, tmp_path):
    before = digest(pg.hba)
    doc = playbook(ansible, tmp_path, [{"pgshift.cluster.pg_hba_rule": {"path": str(pg.hba), "exclusive": True, "rules": []}}])
    result = tasks(doc)[0]
    assert result.get("failed") is True, result
    assert "no rules" in result["msg"], result["msg"]
    assert digest(pg.hba) == before


def test_a_symlinked_pg_hba_conf_is_edited_through_the_link(ansible, pg):
    real = pg.hba.with_name("pg_hba.real")
    real.write_bytes(pg.hba.read_bytes())
    st = pg.hba.stat()
    os.chown(real, st.st_uid, st.st_gid)
    pg.hba.unlink()
    pg.hba.symlink_to(real)
    result = ansible.adhoc(PG_HBA, f"path={pg.hba} address=10.7.0.0/16 method=md5")
    assert result["changed"] is True and result["reloaded"] is True, result
    assert pg.hba.is_symlink()
    assert "10.7.0.0/16" in real.read_text()


def test_secrets_in_refused_values_are_never_shown(ansible, pg, tmp_path):
    secret = "Hidden-In-A-Newline-91"
    roles = pg.psql("SELECT string_agg(rolname || rolsuper::text, ',' ORDER BY rolname) FROM pg_roles")
    doc = playbook(ansible, tmp_path, [
        {"pgshift.cluster.pg_replication_user": {
            "name": "replicator", "password": f"{secret}\nsecond line",
            "login_unix_socket": pg.socket, "login_port": int(pg.port)}},
    ], "-vvv")
    result = tasks(doc)[0]
    assert result.get("failed") is True, result
    assert "password" in result["msg"], result["msg"]
    assert secret not in json.dumps(doc), "the secret reached Ansible's output"
    assert pg.psql("SELECT string_agg(rolname || rolsuper::text, ',' ORDER BY rolname) FROM pg_roles") == roles


def test_an_existing_superuser_is_not_taken_over_without_force(ansible, pg):
    result = ansible.adhoc(REPL_USER, f"name=postgres login_unix_socket={pg.socket} login_port={pg.port}")
    assert result.get("failed") is True, result
    assert "force" in result["msg"], result["msg"]
    assert pg.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'") == "t"
    result = ansible.adhoc(REPL_USER, f"name=postgres state=absent login_unix_socket={pg.socket} login_port={pg.port}")
    assert result.get("failed") is True, result
    assert pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'") == "1"
