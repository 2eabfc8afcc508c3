#!/usr/bin/env bash
# ansible-test sanity (every test, each in its own venv) and ansible-lint --profile production
# on the built collection, installed the way a user installs it, outside this git checkout
# (ansible-test lists a git checkout's files through git, which ignores target/). The only
# exceptions are documented in the collection: tests/sanity/ignore-2.19.txt (the modules'
# license is Apache-2.0, not GPLv3) and .ansible-lint-ignore (sub-second retry delays).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tarball=$(ls -t "${PGSHIFT_DIST:-dist}"/pgshift-cluster-*.tar.gz | head -1)
work=$(mktemp -d /tmp/pgshift-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT
# --force: a pgshift.cluster already in ~/.ansible/collections would make ansible-galaxy skip it.
"$root/.venv/bin/ansible-galaxy" collection install --force -p "$work" "$tarball" >/dev/null
cd "$work/ansible_collections/pgshift/cluster"
NO_COLOR=1 PATH="$root/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$work" \
    "$root/.venv/bin/ansible-lint" --offline --profile production -f pep8
# Every Python the machine has for the import and compile tests (modules: 3.8-3.13). pyenv's
# shims answer only for the current version, and ansible-test passes no PYENV_VERSION: the
# versions' own bin directories go first on PATH, the current one first of all. Versions
# that are missing are reported and skipped by ansible-test.
if command -v pyenv >/dev/null; then
    current=$(pyenv version-name)
    for v in $(pyenv versions --bare | grep -vx "$current" | sort -rV) "$current"; do
        PATH="$(pyenv prefix "$v")/bin:$PATH"
    done
    export PATH
fi
"$root/.venv/bin/ansible-test" sanity --venv --color no "$@"
