#!/usr/bin/env python3
"""The minimum supported Rust version (the workspace's rust-version) holds: every crate inherits
it, no locked dependency needs a newer compiler, and the toolchain here is at least that new.
Only one toolchain is installable on the build machines, so this is as far as a check can go
without compiling with the old compiler; clippy's incompatible_msrv lint (in `make lint`, it reads
rust-version) covers the standard library items our own code uses."""
import json
import re
import subprocess
import sys


def ver(s: str) -> tuple:
    parts = [int(x) for x in s.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main() -> int:
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked"],
                                     capture_output=True, text=True, check=True).stdout)
    members = set(meta["workspace_members"])
    ours = [p for p in meta["packages"] if p["id"] in members]
    declared = {p["rust_version"] for p in ours}
    if len(declared) != 1 or None in declared:
        names = ", ".join(f"{p['name']}={p['rust_version']}" for p in ours)
        sys.exit(f"msrv: every crate must inherit the workspace's rust-version "
                 f"(rust-version.workspace = true): {names}")
    msrv = declared.pop()
    errors = [f"{p['name']} {p['version']} needs Rust {p['rust_version']}"
              for p in meta["packages"]
              if p["id"] not in members and p.get("rust_version") and ver(p["rust_version"]) > ver(msrv)]
    rustc = re.search(r"rustc (\d+\.\d+\.\d+)",
                      subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout)
    if ver(rustc.group(1)) < ver(msrv):
        errors.append(f"rustc {rustc.group(1)} is older than rust-version {msrv}")
    for e in sorted(set(errors)):
        print(f"msrv: {e} (rust-version is {msrv})", file=sys.stderr)
    if not errors:
        print(f"msrv: rust-version {msrv}, inherited by {len(ours)} crates; no locked dependency needs newer")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
