#!/usr/bin/env bash
# Release build of every binary: the multi-call module binary is staged under each module's
# name in plugins/modules/ (static, stripped, x86_64) and the agent in bin/pgshift.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULES=(cert_install pg_basebackup_standby pg_hba_rule pg_logical_replication pg_replication_user pgbackrest_repository)
MAX_BYTES=$((3 * 1024 * 1024))

if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    target=x86_64-unknown-linux-musl
    # ring's C parts build fine with the system gcc against musl's ABI.
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}"
else
    target=x86_64-unknown-linux-gnu
    export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
fi
cargo build --release --locked --target "$target" -p pgshift-modules -p pgshift-agent
out="target/$target/release"

for m in "${MODULES[@]}"; do
    install -m 0755 "$out/pgshift-module" "plugins/modules/$m"
done
mkdir -p bin
install -m 0755 "$out/pgshift" bin/pgshift

for f in "${MODULES[@]/#/plugins/modules/}" bin/pgshift; do
    size=$(stat -c %s "$f")
    if ((size > MAX_BYTES)); then
        echo "build: $f is $size bytes, over the 3 MB budget" >&2
        exit 1
    fi
    printf 'build: %-32s %8d bytes (%s)\n' "$f" "$size" "$target"
done
