"""Every module's sidecar documentation (what `ansible-doc` shows) lists exactly the options the
binary accepts, with the same aliases: the binary's own "Unsupported parameters" error names them."""

import json
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, VENV_BIN

MODULES = sorted(p.name for p in (ROOT / "plugins" / "modules").iterdir() if p.suffix == "" and p.is_file())


def accepted_options(module, tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"_ansible_module_name": module, "pgshift_doc_probe": 1}))
    out = subprocess.run([ROOT / "plugins" / "modules" / module, args], capture_output=True, text=True).stdout
    msg = json.loads(out)["msg"]
    listed = re.search(r"Supported parameters include: (.*)\.$", msg)
    assert listed, msg
    options = {}
    for item in re.split(r", (?![^()]*\))", listed.group(1)):
        m = re.fullmatch(r"(\S+)(?: \((.*)\))?", item)
        options[m.group(1)] = sorted(m.group(2).split(", ")) if m.group(2) else []
    return options


@pytest.mark.parametrize("module", MODULES)
def test_sidecar_documents_every_option(module, ansible_env, tmp_path):
    out = subprocess.run([VENV_BIN / "ansible-doc", "--json", f"pgshift.cluster.{module}"],
                         env=ansible_env, capture_output=True, text=True, check=True).stdout
    documented = yaml.safe_load(out)[f"pgshift.cluster.{module}"]["doc"]["options"]
    accepted = accepted_options(module, tmp_path)
    assert sorted(documented) == sorted(accepted)
    for name, aliases in accepted.items():
        assert sorted(documented[name].get("aliases", [])) == aliases, name
