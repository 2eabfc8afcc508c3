"""What happens in a lab host's directories while a playbook runs, seen from the host itself:
a small inotify watcher (Python's ctypes, the lab hosts share this machine's /usr) started over
SSH inside the host's own mount namespace, so uploads are counted where they land, not from
what the controller says it did. Used by bench/ssh_tasks.py and tests/delivery."""

import pathlib
import subprocess
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
STATE = ROOT / "lab" / "state"
SSH_OPTS = ["-o", f"IdentityFile={STATE / 'id_ed25519'}", "-o", "IdentitiesOnly=yes", "-o", "User=root",
            "-o", f"UserKnownHostsFile={STATE / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ControlMaster=no", "-o", "ControlPath=none"]

# Prints "<event> <directory> <name>" for files created, written and renamed into the watched
# directories (made if missing, 0700), "ready" once watching, and stops when stdin closes.
WATCHER = r"""
import ctypes, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
if fd < 0:
    sys.exit("inotify_init1: errno %d" % ctypes.get_errno())
KINDS = {0x100: "create", 0x80: "moved_to", 0x8: "close_write"}
dirs = {}
for d in sys.argv[1:]:
    os.makedirs(d, mode=0o700, exist_ok=True)
    wd = libc.inotify_add_watch(fd, d.encode(), 0x100 | 0x80 | 0x8)
    if wd < 0:
        sys.exit("inotify_add_watch %s: errno %d" % (d, ctypes.get_errno()))
    dirs[wd] = d
print("ready", flush=True)
while True:
    ready, _, _ = select.select([fd, 0], [], [])
    if 0 in ready and not os.read(0, 4096):
        break
    if fd not in ready:
        continue
    buf = os.read(fd, 1 << 16)
    i = 0
    while i < len(buf):
        wd, mask, cookie, size = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + size].rstrip(b"\0").decode(errors="replace")
        i += 16 + size
        for bit, kind in KINDS.items():
            if mask & bit:
                print(kind + ("_dir" if mask & 0x40000000 else ""), dirs.get(wd, "?"), name, flush=True)
"""


class HostWatch:
    """Watches directories on a lab host (by address) until stop(); events as (kind, dir, name)."""

    def __init__(self, address, *directories):
        self.events = []
        self._proc = subprocess.Popen(["ssh", *SSH_OPTS, address, "exec python3 -u -c " + _quote(WATCHER),
                                       *directories], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        first = self._proc.stdout.readline().strip()
        if first != "ready":
            self._proc.kill()
            raise RuntimeError(f"host watcher did not start: {first!r} {self._proc.stderr.read()}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self._proc.stdout:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) == 3:
                self.events.append(tuple(parts))

    def stop(self):
        time.sleep(0.2)  # events of the last task are on their way
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reader.join(timeout=5)
        return self.events


def _quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def module_uploads(events):
    """Module binaries renamed into a pgshift cache (one per completed upload)."""
    return [e for e in events if e[0] == "moved_to" and e[2].startswith("pgshift-module-") and not e[2].endswith(".ok")]


def ansible_tmp_dirs(events):
    """Ansible's per-task remote temporary directories (today's path copies the module into each)."""
    return [e for e in events if e[0] == "create_dir" and e[2].startswith("ansible-tmp-")]
