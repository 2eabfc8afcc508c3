#!/usr/bin/env python3
"""Every relative link in the project's Markdown resolves inside the repository: the file
exists, it does not climb out of the checkout, and a #fragment names a heading of the target.
Links to the web are left alone (checking them would send traffic off the machine)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def anchors(md: Path) -> set:
    """GitHub's heading ids: lower case, punctuation other than '-' and '_' dropped, blanks to '-'."""
    out = set()
    in_code = False
    for line in md.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return out


def links(md: Path):
    in_code = False
    for n, line in enumerate(md.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            yield n, m.group(1) or m.group(2)


def check(md: Path) -> list:
    errors = []
    for n, target in links(md):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        where = f"{md.relative_to(ROOT)}:{n}: {target}"
        if ROOT not in dest.parents and dest != ROOT:
            errors.append(f"{where}: points outside the repository")
        elif not dest.exists():
            errors.append(f"{where}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            errors.append(f"{where}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    return errors


def main() -> int:
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    errors = [e for f in files for e in check(ROOT / f)]
    for e in errors:
        print(f"doclinks: {e}", file=sys.stderr)
    print(f"doclinks: {len(files)} Markdown files, {len(errors)} broken links")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
