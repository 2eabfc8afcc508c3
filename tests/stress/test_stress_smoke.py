"""The stress battery's smoke subset (tests/stress/battery.py; `make stress` runs all of it),
on the session's shared cluster: pressures that must never move the leadership, each for
20 s under the battery's write load, probe and reader (5 s of load before and after). Each must end with no
failover, no fence of the healthy primary, writes flowing, and a clean history."""

import json

import pytest

import battery
from labkit import ROOT, collect_logs, needs

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
@pytest.mark.parametrize("name", ["etcd_leader_churn", "packet_loss_5", "disk_stall"])
def test_pressure_keeps_the_leader(cluster, name):
    r = battery.run_case(name, cluster.passfile, seconds=20, before=5, after=5)
    with RESULTS.open("a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r))
    if r["violations"] or r["failovers"] or r["self_fences"]:
        collect_logs(into=f"stress-{name}")
    battery.assert_sound(r)
    assert r["failovers"] == 0 and r["self_fences"] == 0, r
    assert r["leader_after"] == r["leader_before"], r
    assert r["writes_per_second"]["during"] > 0.5 * r["writes_per_second"]["before"], r
    assert r["longest_write_gap_seconds"] < 3, r
