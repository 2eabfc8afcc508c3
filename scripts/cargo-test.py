#!/usr/bin/env python3
"""`cargo test --workspace`, with the test binaries run two at a time.

cargo runs a workspace's test binaries one after another; ours spend much of their time waiting
(PostgreSQL servers starting, a lock timeout running out, etcd electing itself), so on two cores
two binaries at once finish in about half the wall time. Each binary still runs its own tests
on as many threads as cargo would give it, from its package's directory as cargo does; its
output is printed whole when it ends. Then the doc tests. Extra arguments go to every test
binary (e.g. a test name filter).

Exit status: 0 when every binary passed, 1 otherwise (each failure's output is printed again
at the end), 101 when the build fails.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

JOBS = int(os.environ.get("PGSHIFT_TEST_JOBS", "2"))


def test_binaries():
    """(name, executable, package directory) of every test target, built by cargo."""
    build = subprocess.run(["cargo", "test", "--workspace", "--locked", "--no-run",
                            "--message-format=json-render-diagnostics"],
                           stdout=subprocess.PIPE, text=True)
    if build.returncode != 0:
        sys.exit(101)
    found = []
    for line in build.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["profile"]["test"] and msg.get("executable"):
            found.append((f"{msg['target']['name']} ({'/'.join(msg['target']['kind'])})", msg["executable"],
                          os.path.dirname(msg["manifest_path"])))
    return found


def run(binary, args):
    name, exe, cwd = binary
    started = time.monotonic()
    res = subprocess.run([exe, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL)
    return name, res.returncode, res.stdout, time.monotonic() - started


def main():
    args = sys.argv[1:]
    binaries = test_binaries()
    failed = []
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
        for name, rc, output, seconds in pool.map(lambda b: run(b, args), binaries):
            print(f"     Running {name} ({seconds:.1f} s)\n{output}", flush=True)
            if rc != 0:
                failed.append((name, output))
    print(f"{len(binaries)} test binaries, {JOBS} at a time: {time.monotonic() - started:.1f} s", flush=True)
    doc = subprocess.run(["cargo", "test", "--workspace", "--locked", "--doc", *args])
    for name, output in failed:
        print(f"\n---- FAILED: {name}\n{output[-20000:]}", flush=True)
    if failed or doc.returncode != 0:
        print(f"cargo-test: {len(failed)} test binaries failed: {', '.join(n for n, _ in failed)}"
              + ("; doc tests failed" if doc.returncode != 0 else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
