"""The three-host lab (lab/lab): hosts, SSH, names, private mounts, faults, systemctl, clean-up.

Needs root, iproute2, openssh-server and nftables (the Makefile installs them). The tests run in file order
against one lab; the module fixture always runs `lab/lab down` at the end, also after a failure.
"""

import json
import os
import pathlib
import subprocess
import time
import uuid

import pytest

from labkit import INVENTORY, ROOT, STATE, VENV_BIN, SharedCluster, lab, needs, on, out

IPS = {"db1": "10.77.0.11", "db2": "10.77.0.12", "aux": "10.77.0.13"}

pytestmark = [pytest.mark.smoke, *needs()]


def netns_names():
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def status():
    lines = lab("status").stdout.splitlines()
    result = {}
    for line in lines:
        name, ip, state, ssh = line.split()
        result[name] = (ip, state, ssh)
    return result


def init_pids():
    return {h: (STATE / h / "init.pid").read_text().strip() for h in IPS}


def tcp_ok(src, dst_host, port=22):
    """True if src opens a TCP connection to dst_host:port (by name) and reads the SSH banner."""
    res = on(src, f"timeout 1 bash -c 'exec 3<>/dev/tcp/{dst_host}/{port} && head -c 4 <&3'")
    return res.returncode == 0 and res.stdout == "SSH-"


@pytest.fixture(scope="module")
def up():
    try:
        # From nothing: a lab an earlier suite left (the shared cluster's) goes first.
        SharedCluster.forget()
        lab("down", check=False)
        started = time.monotonic()
        lab("up")
        yield {"seconds": time.monotonic() - started}
    finally:
        lab("down", check=False)


def test_up_writes_inventory_and_known_hosts(up):
    assert up["seconds"] < 15
    assert sorted(netns_names()) == ["pgshift-aux", "pgshift-db1", "pgshift-db2"]
    assert {h: s for h, (_, s, _) in status().items()} == {"db1": "up", "db2": "up", "aux": "up"}
    known = (STATE / "known_hosts").read_text()
    for host, ip in IPS.items():
        assert f"{host},{ip} ssh-ed25519 " in known
    inventory_bin = VENV_BIN / "ansible-inventory"
    if not inventory_bin.exists():
        pytest.skip("no .venv ansible-inventory to parse the inventory")
    res = subprocess.run(
        [inventory_bin, "-i", INVENTORY, "--list"], capture_output=True, text=True, check=True, timeout=60
    )
    inv = json.loads(res.stdout)
    assert inv["primary"]["hosts"] == ["db1"]
    assert inv["standbys"]["hosts"] == ["db2"]
    assert inv["repository"]["hosts"] == ["aux"]
    assert inv["witness"]["hosts"] == ["aux"]
    assert sorted(inv["etcd"]["hosts"]) == ["aux", "db1", "db2"]
    assert inv["haproxy"]["hosts"] == ["aux"]
    hv = inv["_meta"]["hostvars"]
    for host, ip in IPS.items():
        assert hv[host]["ansible_host"] == ip
        assert hv[host]["ansible_user"] == "root"
        assert hv[host]["ansible_become_method"] == "su"
        assert hv[host]["lab_hosts"] == IPS
        assert hv[host]["pgshift_demo_clients"] == ["10.77.0.0/24"]
        assert f"UserKnownHostsFile={STATE}/known_hosts" in hv[host]["ansible_ssh_common_args"]
        assert "StrictHostKeyChecking=yes" in hv[host]["ansible_ssh_common_args"]
        assert hv[host]["ansible_ssh_private_key_file"] == str(STATE / "id_ed25519")


def test_ssh_runs_in_the_host_and_passes_exit_status(up):
    res = on("db1", "hostname; echo $((1+1))")
    assert (res.returncode, res.stdout) == (0, "db1\n2\n")
    assert on("db2", "exit 3").returncode == 3
    assert out("aux", "hostname") == "aux\n"
    assert out("db2", "cat /etc/hostname") == "db2\n"


def test_hosts_reach_each_other_by_name(up):
    started = time.monotonic()
    assert out("db1", "getent hosts db2").split() == ["10.77.0.12", "db2"]
    # no DNS in the lab: the AAAA lookup `getent hosts` makes must fail at once, not time out
    assert time.monotonic() - started < 2
    for src in IPS:
        for dst in IPS:
            if src != dst:
                assert tcp_ok(src, dst), f"{src} cannot reach {dst}:22"
    # sshd listens only on the host's own address
    assert "10.77.0.11:22" in out("db1", "ss -Hltn")


def test_private_mounts_and_runtime_dirs(up):
    name = f"lab-test-{uuid.uuid4().hex}"
    out("db1", f"echo private > /var/lib/postgresql/{name}")
    assert out("db1", f"cat /var/lib/postgresql/{name}") == "private\n"
    assert on("db2", f"test -e /var/lib/postgresql/{name}").returncode == 1
    assert not os.path.exists(f"/var/lib/postgresql/{name}")
    assert (STATE / "db1" / "disk" / "var" / "lib" / "postgresql" / name).exists()
    # /run is a private tmpfs with the runtime dirs sshd and PostgreSQL need
    assert out("db1", "findmnt -n -o FSTYPE /run") == "tmpfs\n"
    assert out("db1", "stat -c '%U:%G %a' /run/sshd /run/postgresql /root") == (
        "root:root 755\npostgres:postgres 2775\nroot:root 700\n"
    )
    out("db1", f"touch /run/{name}")
    assert on("db2", f"test -e /run/{name}").returncode == 1
    # each host has its own processes: pid 1 is the host's init
    assert "_init db2" in out("db2", "cat /proc/1/cmdline | tr '\\0' ' '")


def test_partition_cuts_peers_but_not_the_controller(up):
    lab("partition", "db1")
    try:
        assert status()["db1"][1] == "partitioned"
        assert out("db1", "hostname") == "db1\n"  # the controller still gets in
        assert not tcp_ok("db1", "db2")
        assert not tcp_ok("db2", "db1")
        assert tcp_ok("db2", "aux")
    finally:
        lab("heal", "db1")
    assert status()["db1"][1] == "up"
    assert tcp_ok("db1", "db2")
    assert tcp_ok("db2", "db1")


def test_freeze_and_thaw(up):
    lab("freeze", "db1")
    try:
        assert status()["db1"][1] == "frozen"
        started = time.monotonic()
        res = on("db1", "true", env={"LAB_SSH_TIMEOUT": "1"}, timeout=20)
        assert res.returncode == 255
        assert time.monotonic() - started < 5
    finally:
        lab("thaw", "db1")
    assert out("db1", "echo thawed") == "thawed\n"
    assert status()["db1"][1] == "up"


def test_crash_and_boot_starts_the_enabled_units(up):
    """The lab's systemctl (lab/systemctl): units in /etc/systemd/system with a drop-in,
    User=, ordering by After=, enablement that survives a crash, a disabled unit left alone."""
    marker = f"/run/lab-test-{uuid.uuid4().hex}"
    out(
        "db2",
        "cat > /etc/systemd/system/lab-marker.service <<'EOF'\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"ExecStart=/usr/bin/touch {marker}-booted\n"
        "[Install]\nWantedBy=multi-user.target\n"
        "EOF\n"
        # a-sleeper sorts first, so only After= starts the marker before it; a drop-in sets $SLEEP.
        "cat > /etc/systemd/system/a-sleeper.service <<'EOF'\n"
        "[Unit]\nAfter=network.target lab-marker.service\n"
        f"[Service]\nUser=postgres\nExecStartPre=/usr/bin/test -e {marker}-booted\n"
        "ExecStart=/usr/bin/sleep $SLEEP\n"
        "[Install]\nWantedBy=multi-user.target\n"
        "EOF\n"
        "mkdir -p /etc/systemd/system/a-sleeper.service.d && "
        "printf '[Service]\\nEnvironment=SLEEP=1000\\n' > /etc/systemd/system/a-sleeper.service.d/time.conf\n"
        "printf '[Service]\\nExecStart=/usr/bin/touch /run/not-enabled\\n[Install]\\nWantedBy=multi-user.target\\n'"
        " > /etc/systemd/system/lab-disabled.service\n"
        "systemctl enable lab-marker a-sleeper\n"
        f"touch {marker}-before; echo disk > /var/lib/pgshift/lab-test",
    )
    # systemctl works on a running host too
    assert out("db2", "systemctl start lab-marker a-sleeper && systemctl is-active a-sleeper") == "active\n"
    assert out("db2", "ps -o user= -C sleep | sort -u | tr '\\n' ' '").split() == ["postgres", "root"]
    assert "sleep 1000" in out("db2", "ps -o args= -u postgres")

    lab("crash", "db2")
    assert "pgshift-db2" not in netns_names()
    assert status()["db2"][1] == "down"
    res = on("db2", "true", env={"LAB_SSH_TIMEOUT": "1"}, timeout=20)
    assert res.returncode == 255
    assert not tcp_ok("db1", "db2")
    assert (STATE / "db2" / "disk" / "var" / "lib" / "pgshift" / "lab-test").exists()  # the disk stays

    started = time.monotonic()
    lab("boot", "db2")
    assert time.monotonic() - started < 10
    assert status()["db2"][1] == "up"
    assert on("db2", f"test -e {marker}-booted").returncode == 0   # the oneshot ran
    assert on("db2", f"test -e {marker}-before").returncode == 1   # /run is fresh
    assert on("db2", "test -e /run/not-enabled").returncode == 1   # not enabled, not started
    assert out("db2", "cat /var/lib/pgshift/lab-test") == "disk\n"
    # started after the marker (its ExecStartPre checks), as postgres
    assert out("db2", "systemctl is-active lab-marker a-sleeper lab-disabled; true") == "active\nactive\ninactive\n"
    assert "sleep 1000" in out("db2", "ps -o args= -u postgres")
    out("db2", "systemctl disable --now a-sleeper lab-marker")
    assert on("db2", "systemctl is-enabled a-sleeper").returncode == 1
    assert "sleep 1000" not in out("db2", "ps -o args= -u postgres; true")
    assert tcp_ok("db1", "db2") and tcp_ok("db2", "db1")
    # boot refuses a running host
    assert lab("boot", "db2", check=False).returncode != 0


def test_up_twice_is_harmless(up):
    before = init_pids()
    lab("up")
    assert init_pids() == before
    assert {h: s for h, (_, s, _) in status().items()} == {"db1": "up", "db2": "up", "aux": "up"}
    assert out("db1", "hostname") == "db1\n"
    # a crashed host is brought back by up
    lab("crash", "aux")
    lab("up")
    assert out("aux", "hostname") == "aux\n"
    assert init_pids()["db1"] == before["db1"]


def test_with_db3_adds_a_third_database_host_and_plain_up_removes_it(up):
    before = init_pids()
    lab("up", "--with", "db3")
    assert init_pids() == before  # the others untouched
    assert status()["db3"] == ("10.77.0.14", "up", "ssh=yes")
    assert out("db3", "hostname") == "db3\n"
    assert tcp_ok("db3", "db1") and tcp_ok("db1", "db3")
    inventory = INVENTORY.read_text()
    # A standby and a database host, no etcd member (etcd stays on three hosts).
    groups = inventory.split("  children:")[1]
    assert "db3" in groups.split("primary:")[0] and "db3" in groups.split("standbys:")[1].split("repository:")[0]
    assert "db3" not in groups.split("etcd:")[1].split("haproxy:")[0]
    lab("crash", "db3")
    lab("boot", "db3")
    assert status()["db3"][1] == "up"
    # Plain `up` keeps today's three hosts: db3 goes, with its disk.
    lab("up")
    assert "db3" not in status() and "db3" not in INVENTORY.read_text()
    assert not (STATE / "db3").exists()
    assert lab("ssh", "db3", "true", check=False).returncode != 0
    assert "not in this lab" in lab("crash", "db3", check=False).stderr
    assert "not an optional host" in lab("up", "--with", "aux", check=False).stderr
    assert init_pids() == before


def lab_processes():
    """Live (not zombie) processes that belong to the lab."""
    found = []
    marker = str(ROOT / "lab") + "/"
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in cmd:
            found.append((p.name, cmd))
    return found


def test_down_removes_everything(up):
    lab("freeze", "db1")  # down must cope with a frozen host
    lab("down")
    assert [n for n in netns_names() if n.startswith("pgshift-")] == []
    assert subprocess.run(["ip", "link", "show", "pgshift-br0"], capture_output=True).returncode != 0
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "pgs-" not in links
    assert lab_processes() == []
    assert not STATE.exists() and not INVENTORY.exists()
    assert not list(pathlib.Path("/etc/netns").glob("pgshift-*")) if os.path.isdir("/etc/netns") else True
    assert lab("down").returncode == 0  # twice is fine
