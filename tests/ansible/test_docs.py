"""Every module's documentation (what `ansible-doc` shows, from the Python stub in
plugins/modules/) says exactly what the binary accepts: the same options, aliases, types,
defaults, choices and required flags, and the argument specs the stubs carry are the binary's
own. A stub run without its action plugin fails with a message that says why."""

import ast
import json
import os
import platform
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, VENV_BIN

BINARY = ROOT / "binaries" / platform.machine() / "pgshift-module"
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py"))


def binary_specs():
    return json.loads(subprocess.run([BINARY, "--argument-specs"], capture_output=True, text=True, check=True).stdout)


def accepted_options(module):
    """What the binary's own "Unsupported parameters" error lists (arguments on stdin)."""
    args = json.dumps({"_ansible_module_name": module, "pgshift_doc_probe": 1})
    out = subprocess.run([BINARY, "-"], input=args, capture_output=True, text=True).stdout
    msg = json.loads(out)["msg"]
    listed = re.search(r"Supported parameters include: (.*)\.$", msg)
    assert listed, msg
    options = {}
    for item in re.split(r", (?![^()]*\))", listed.group(1)):
        m = re.fullmatch(r"(\S+)(?: \((.*)\))?", item)
        options[m.group(1)] = sorted(m.group(2).split(", ")) if m.group(2) else []
    return options


def test_every_module_has_a_stub_and_an_action_plugin():
    assert MODULES == sorted(binary_specs())
    for m in MODULES:
        assert (ROOT / "plugins" / "action" / f"{m}.py").is_file(), m


def test_stub_argument_specs_are_the_binarys():
    tree = ast.parse((ROOT / "plugins" / "module_utils" / "argument_specs.py").read_text())
    (assign,) = [n for n in tree.body if isinstance(n, ast.Assign)]
    assert ast.literal_eval(assign.value) == binary_specs(), "run scripts/build.sh to regenerate it"


def compare(documented, spec, where):
    assert sorted(documented) == sorted(spec), where
    for name, s in spec.items():
        d = documented[name]
        w = f"{where}.{name}"
        assert d.get("type", "str") == s["type"], w
        assert d.get("elements") == s.get("elements"), w
        assert bool(d.get("required", False)) == bool(s.get("required", False)), w
        assert d.get("default") == s.get("default"), w
        assert sorted(d.get("choices", [])) == sorted(s.get("choices", [])), w
        assert sorted(d.get("aliases", [])) == sorted(s.get("aliases", [])), w
        if "options" in s:
            compare(d.get("suboptions", {}), s["options"], w)


@pytest.mark.parametrize("module", MODULES)
def test_documentation_says_what_the_binary_accepts(module, ansible_env):
    out = subprocess.run([VENV_BIN / "ansible-doc", "--json", f"pgshift.cluster.{module}"],
                         env=ansible_env, capture_output=True, text=True, check=True).stdout
    doc = yaml.safe_load(out)[f"pgshift.cluster.{module}"]["doc"]
    spec = binary_specs()[module]["argument_spec"]
    compare(doc["options"], spec, module)
    accepted = accepted_options(module)
    assert sorted(accepted) == sorted(spec)
    for name, aliases in accepted.items():
        assert sorted(spec[name].get("aliases", [])) == aliases, name
    assert doc["attributes"]["check_mode"]["support"] == "full"


@pytest.mark.parametrize("module", ["pg_hba_rule", "pg_replication_user"])
def test_stub_without_its_action_plugin_says_so(module, collections_path, tmp_path):
    """The documentation file run as a plain Python module (by path, without the collection's
    action plugin) fails with a message naming the plugin, after validating like the binary."""
    stub = collections_path / "ansible_collections" / "pgshift" / "cluster" / "plugins" / "modules" / f"{module}.py"
    args = tmp_path / "args.json"
    required = {"pg_hba_rule": {"path": "/nonexistent", "address": "10.0.0.0/8", "method": "md5"},
                "pg_replication_user": {"name": "replicator"}}[module]
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": required}))
    env = dict(os.environ, PYTHONPATH=str(collections_path))
    p = subprocess.run([VENV_BIN / "python", stub, args], capture_output=True, text=True, env=env)
    result = json.loads(p.stdout)
    assert result["failed"] is True, result
    assert f"plugins/action/{module}.py" in result["msg"] and "without that plugin" in result["msg"], result
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**required, "colour": "blue"}}))
    p = subprocess.run([VENV_BIN / "python", stub, args], capture_output=True, text=True, env=env)
    assert "Unsupported parameters" in json.loads(p.stdout)["msg"]
