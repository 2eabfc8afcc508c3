"""Shared by the benchmarks in bench/: paths, statistics, community.postgresql for comparison."""

import math
import pathlib
import statistics
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv" / "bin"
CACHE = ROOT / "bench" / ".cache"
ANSIBLE_PACKAGE = "ansible==12.3.0"  # ships community.postgresql for ansible-core 2.19


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def stats(samples):
    """Median and p90 (nearest rank) in ms of samples in seconds."""
    s = sorted(samples)
    return {"median_ms": round(statistics.median(s) * 1000, 1),
            "p90_ms": round(s[max(math.ceil(len(s) * 0.9), 1) - 1] * 1000, 1), "runs": len(s)}


def community_postgresql():
    """community.postgresql from the `ansible` wheel, into a collections path (cached); None if offline."""
    dest = CACHE / "collections"
    if (dest / "ansible_collections" / "community" / "postgresql").is_dir():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    dl = subprocess.run([VENV / "pip", "download", "-q", "--no-deps", "-d", CACHE, ANSIBLE_PACKAGE], capture_output=True)
    wheels = list(CACHE.glob("ansible-*.whl"))
    if dl.returncode != 0 or not wheels:
        return None
    with zipfile.ZipFile(wheels[0]) as z:
        for name in z.namelist():
            if name.startswith("ansible_collections/community/postgresql/"):
                z.extract(name, dest)
    return dest
