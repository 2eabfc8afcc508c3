#!/usr/bin/env bash
# `make test` on two cores: the checks of the Makefile's CHECKS and lab-test, arranged so the
# work that only needs a CPU runs while the timing-sensitive tests wait on the network, the
# disk and each other.
#
#   1. formatting, MSRV, documentation links; the workspace's tests built
#   2. the workspace's tests run            | the release build and the collection, for this
#                                           | machine's architecture (background)
#   3. Molecule, then the lab's smoke set   | the collection for every architecture (into
#                                           | target/dist-full), clippy, the aarch64 tests,
#                                           | the Ansible-level tests, sanity (background)
#   4. tests/cert (its pebble and certbot listen on fixed ports; it waits on clients)
#
# The lab needs only this machine's binaries: building the other architecture's (as long
# again: fat LTO, one codegen unit) waits until the lab runs. It goes to its own tarball, so
# the lab's (dist/, installed into target/collections) does not change under it, and the
# binaries that do not change are left alone (scripts/build.sh).
#
# The background runs in a cgroup whose CPU weight is 1/512 of anything else's: the tests in
# the foreground (a fence guard's deadline, an etcd election, "health checks answer within
# 50 ms") get the CPU first and the background what they leave. They still run a little
# slower than alone (the two cores share caches and a disk: Molecule 107 s against 83 s).
# The background's output goes to target/test-logs/<target>.log, printed when it fails.
# Without a writable cgroup v1 cpu controller (the lab's `starve` needs it too) the checks
# run one after the other, as `make test-full` runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
LOGS=target/test-logs
CPU_CONTROLLER=/sys/fs/cgroup/cpu
CGROUP=$CPU_CONTROLLER/pgshift-test-background
# Once the collection is built and installed, no step rebuilds it under the tests using it.
BUILT=(-o build -o collection -o install-collection)

mkdir -p "$LOGS"
started=$SECONDS
background_pid=
collection_ready=0

say() { printf '\n== %s (%d s)\n' "$*" $((SECONDS - started)); }

low_weight() {
    [[ -w $CPU_CONTROLLER/cgroup.procs ]] || return 1
    mkdir -p "$CGROUP" && echo 2 >"$CGROUP/cpu.shares"
}

# shellcheck disable=SC2317  # the EXIT trap calls it
cleanup() {
    if [[ -n $background_pid ]] && kill -0 "$background_pid" 2>/dev/null; then
        # The background's own process group (set -m below), children included.
        kill -TERM -- "-$background_pid" 2>/dev/null || true
        wait "$background_pid" 2>/dev/null || true
    fi
    if [[ -d $CGROUP ]]; then rmdir "$CGROUP" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs each make target in the background, one after the other, all of them even after a
# failure (as `make -k` would); a line per target into target/test-logs/background.log.
start_background() {
    local done=()
    ((collection_ready)) && done=("${BUILT[@]}")
    say "in the background: $*"
    : >"$LOGS/background.log"
    set -m
    (
        echo "$BASHPID" >"$CGROUP/cgroup.procs"
        failed=0
        for target in "$@"; do
            # NAME=value: the environment of the targets that follow.
            if [[ $target == *=* ]]; then
                export "${target?}"
                continue
            fi
            begun=$SECONDS
            flags=("${done[@]}")
            [[ $target == collection ]] && flags=()
            if $MAKE "${flags[@]}" "$target" >"$LOGS/$target.log" 2>&1; then
                echo "$target passed in $((SECONDS - begun)) s"
            else
                echo "$target FAILED in $((SECONDS - begun)) s: target/test-logs/$target.log"
                failed=1
            fi >>"$LOGS/background.log"
        done
        exit $failed
    ) &
    background_pid=$!
    set +m
}

# Waits for the background; its summary, and the whole output of each target that failed.
finish_background() {
    local rc=0 target
    wait "$background_pid" || rc=$?
    background_pid=
    say "the background"
    cat "$LOGS/background.log"
    while read -r target _ result _; do
        if [[ $result == FAILED ]]; then
            say "$target (background) failed; its output"
            cat "$LOGS/$target.log"
        fi
    done <"$LOGS/background.log"
    return $rc
}

if ! low_weight; then
    echo "test: no writable cgroup v1 cpu controller: the checks one after the other"
    # shellcheck disable=SC2086  # CHECKS: the Makefile's list of targets
    exec $MAKE ${CHECKS:?the Makefile passes CHECKS} lab-test
fi

say "formatting, MSRV, documentation links"
$MAKE fmt msrv doclinks
say "the workspace's tests, built"
$MAKE cargo-test-build

start_background "PGSHIFT_ARCHS=$(uname -m)" install-collection
rc=0
{ say "the workspace's tests, run"; scripts/cargo-test.py; } || rc=1
finish_background || { say "make test: FAILED (the release build)"; exit 1; }
collection_ready=1
((rc == 0)) || { say "make test: FAILED (the workspace's tests)"; exit 1; }

start_background PGSHIFT_DIST=target/dist-full collection \
    clippy aarch64-test ansible-test-modules ansible-test-oldest sanity
# Timing budgets that a foreground sharing the machine cannot keep are reported, not asserted,
# while the background runs (tests/delivery's 50 ms per task: 46 ms alone, 52-55 beside it).
export PGSHIFT_CPU_SHARED=1
{ say "Molecule"; $MAKE "${BUILT[@]}" molecule-test; } || rc=1
{ say "the lab's smoke set"; $MAKE "${BUILT[@]}" lab-test; } || rc=1
unset PGSHIFT_CPU_SHARED
finish_background || rc=1
{ say "tests/cert"; $MAKE "${BUILT[@]}" cert-test; } || rc=1
say "make test: $( ((rc == 0)) && echo passed || echo FAILED) in $((SECONDS - started)) s"
exit $rc
