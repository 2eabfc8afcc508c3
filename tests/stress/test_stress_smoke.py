"""The stress battery's smoke subset (tests/stress/battery.py; `make stress` runs all of it),
on the session's shared cluster: pressures that must never move the leadership, each for
half a minute under the battery's write load, probe and reader. Each must end with no
failover, no fence of the healthy primary, writes flowing, and a clean history."""

import json

import pytest

import battery
from labkit import ROOT, needs

pytestmark = needs(etcd=True, haproxy=True)

RESULTS = ROOT / "target" / "stress-smoke.jsonl"


@pytest.fixture(scope="module")
def cluster(shared_cluster):
    shared = shared_cluster.ensure()
    battery.prepare_load_table()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("")
    return shared


@pytest.mark.smoke
@pytest.mark.parametrize("name, seconds", [("etcd_leader_churn", 30), ("packet_loss_5", 30), ("disk_stall", 30)])
def test_pressure_keeps_the_leader(cluster, name, seconds):
    r = battery.run_case(name, cluster.passfile, seconds=seconds)
    with RESULTS.open("a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r))
    battery.assert_sound(r)
    assert r["failovers"] == 0 and r["self_fences"] == 0, r
    assert r["leader_after"] == r["leader_before"], r
    assert r["writes_per_second"]["during"] > 0.5 * r["writes_per_second"]["before"], r
    assert r["longest_write_gap_seconds"] < 3, r
