# pgshift: the two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
VENV := .venv
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
# Where `make collection` puts the tarball; the tests read it from there too. (make test builds
# the lab's collection for this machine alone first, every architecture's beside it later:
# scripts/test.sh.)
PGSHIFT_DIST ?= dist
export PGSHIFT_DIST
TARBALL := $(PGSHIFT_DIST)/pgshift-cluster-$(VERSION).tar.gz

.PHONY: help deps build collection install-collection test lint fmt clippy msrv doclinks cargo-test cargo-test-build ansible-test ansible-test-modules cert-test testkit ansible-test-oldest ansible-test-oldest-full sanity aarch64-test delivery-test lab-test lab-test-full test-full stress molecule-test lab-up lab-down demo bench bench-failover bench-failover-3 clean

help:
	@echo "make demo        build, bring up the three-host lab, deploy a cluster with playbooks/site.yml, show replication"
	@echo "make test        install what is missing, then run the tests CI runs (cargo, Ansible, the lab's smoke set)"
	@echo "make test-full   the same with every lab test (fault sequences, floods, backups, multi-home)"
	@echo "make build       release binaries (x86_64, aarch64) into binaries/, and bin/pgshift"
	@echo "make collection  build dist/pgshift-cluster-<version>.tar.gz"
	@echo "make lab-up      the three-host lab (db1, db2, aux) and lab/inventory.yml; make lab-down removes it"
	@echo "make bench       benchmarks (numbers, not pass/fail)"
	@echo "make stress      the stress battery and a 30-minute soak under write load (about 50 minutes)"

deps:
	scripts/deps.sh all

build:
	scripts/deps.sh build
	scripts/build.sh

collection: build
	@test -x $(VENV)/bin/ansible-galaxy || scripts/deps.sh all
	rm -f $(TARBALL)
	$(VENV)/bin/ansible-galaxy collection build --force --output-path $(PGSHIFT_DIST) .

# The built collection where ansible-playbook (lab, Molecule, demo) finds it.
install-collection: collection
	rm -rf target/collections
	$(VENV)/bin/ansible-galaxy collection install --force -p target/collections $(TARBALL) >/dev/null

lab-up: deps
	lab/lab up

lab-down:
	lab/lab down

# clippy's incompatible_msrv lint holds our code to rust-version; msrv.py holds the rest to it.
lint: fmt clippy msrv doclinks

fmt:
	cargo fmt --all --check

clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings

msrv:
	scripts/msrv.py

doclinks:
	scripts/doclinks.py

# cargo test --workspace with the test binaries run two at a time (scripts/cargo-test.py).
cargo-test:
	scripts/cargo-test.py

cargo-test-build:
	cargo test --workspace --locked --no-run

# Two at a time (pytest-xdist): each test mostly waits on one ansible-playbook process.
# tests/cert alone, after: its pebble and certbot listen on fixed ports.
XDIST := -n 2
ansible-test: ansible-test-modules cert-test

# The scratch PostgreSQL servers and helpers the Python suites start (testkit/).
testkit:
	cargo build --locked -p pgshift-testkit

ansible-test-modules: collection testkit
	$(VENV)/bin/pytest -q $(XDIST) tests/unit tests/ansible

cert-test: collection testkit
	$(VENV)/bin/pytest -q tests/cert

# With the oldest ansible-core meta/runtime.yml claims, the tests of what depends on its
# version: the action plugin's delivery, check and diff modes, results and no_log.
# ansible-test-oldest-full runs every Ansible-level test there.
ansible-test-oldest: collection testkit
	PGSHIFT_ANSIBLE_VENV=$(CURDIR)/.venv-oldest .venv-oldest/bin/pytest -q $(XDIST) tests/ansible/test_delivery.py tests/ansible/test_pg_hba_rule.py

ansible-test-oldest-full: collection testkit
	PGSHIFT_ANSIBLE_VENV=$(CURDIR)/.venv-oldest .venv-oldest/bin/pytest -q $(XDIST) tests/ansible
	PGSHIFT_ANSIBLE_VENV=$(CURDIR)/.venv-oldest .venv-oldest/bin/pytest -q tests/cert

# ansible-test sanity (every test; compile and import on Python 3.8-3.13) and ansible-lint
# --profile production on the built collection, installed as a user installs it.
sanity: collection
	scripts/sanity.sh

# The aarch64 module binary's tests (pg_hba_rule, pg_replication_user against PostgreSQL 15),
# built for aarch64-unknown-linux-musl and run under qemu-aarch64-static.
AARCH64_ENV := CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
	CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
aarch64-test:
	scripts/deps.sh aarch64
	$(AARCH64_ENV) cargo test --locked --target aarch64-unknown-linux-musl -p pgshift-modules \
		--test pg_hba_rule --test pg_replication_user

# Module delivery over the lab's SSH alone: one upload per host and version (counted on the
# host), become su and sudo, a host without Python, the cache's checks. `make test` runs it
# as part of lab-test, on the shared cluster.
delivery-test: install-collection
	PGSHIFT_REQUIRE_LAB=1 $(VENV)/bin/pytest -q tests/delivery

# The lab's own tests, module delivery, then the agent, backups and multi-home on clusters
# built by the playbooks (the collection installed into target/collections, or from the
# tarball by a clean ansible-core: tests/labkit.py). Suites that need nothing but site.yml's
# defaults share one cluster, built once and brought back to healthy between them; the order
# below keeps them together, last, and the stress smoke subset last of all: in `make test` the
# background's compiles (scripts/test.sh) are over or ending by then. lab-test, in `make test`,
# runs the smoke set (tests marked `smoke`: the lab itself; module delivery; on the shared
# cluster status, etcd's and the API's authentication, switchovers, a crash and a partition of
# the primary, the stress battery's smoke subset (tests/stress: pressures under write load); on
# one replicating over verify-full TLS with client certificates and inventory names DB1 and
# db2.lab.example, slots and TLS after switchovers both ways; on three database hosts
# (tests/members), quorum commit's promotion rule through a crash of the primary); lab-test-full
# runs every one (fault sequences, floods, backups, rebuilds, multi-home, every fault in each
# synchronous mode on three database hosts).
LAB_TESTS := tests/lab tests/members tests/agent/test_standby.py tests/agent/test_pgsql_check.py tests/agent/test_rejoin.py \
	tests/backup tests/multihome tests/delivery tests/agent/test_failover.py tests/agent/test_haproxy.py \
	tests/agent/test_day2.py tests/stress
lab-test: install-collection
	PGSHIFT_REQUIRE_LAB=1 $(VENV)/bin/pytest -q --durations=15 -m smoke $(LAB_TESTS)

lab-test-full: install-collection
	PGSHIFT_REQUIRE_LAB=1 $(VENV)/bin/pytest -q $(LAB_TESTS)

# The stress battery (tests/stress/battery.py): every fault and pressure under a write load,
# then a soak of random faults, judged by the history checker; one JSON line per case into
# target/stress.jsonl and a table. STRESS_TIMING=tight weighs the tighter timing set;
# STRESS_SOAK_MINUTES (default 30) the soak. Under 60 minutes on 2 cores.
STRESS_TIMING ?= default
STRESS_SOAK_MINUTES ?= 30
stress: deps install-collection
	$(VENV)/bin/python tests/stress/battery.py --timing $(STRESS_TIMING) --soak-minutes $(STRESS_SOAK_MINUTES)

# Molecule shells out to ansible-config and friends: the venv's bin/ goes first on PATH.
molecule-test: install-collection
	NO_COLOR=1 ANSIBLE_NOCOLOR=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/molecule test

# CI's target (.ci/run): these checks and lab-test, arranged for two cores by scripts/test.sh
# (the CPU-only work in the background while the lab's tests wait on the network; it names
# each check's parts, so a new check goes there too). test-full runs every lab test too, one
# step after the other.
CHECKS := lint cargo-test ansible-test ansible-test-oldest sanity aarch64-test molecule-test
test: deps
	MAKE="$(MAKE)" CHECKS="$(CHECKS)" scripts/test.sh

test-full: deps
	$(MAKE) $(subst ansible-test-oldest,ansible-test-oldest-full,$(CHECKS)) lab-test-full

demo: deps install-collection
	scripts/demo.sh

bench: deps collection
	cargo build --release --locked -p pgshift-testkit
	$(VENV)/bin/python bench/pg_hba_rule.py
	$(MAKE) install-collection
	$(VENV)/bin/python bench/ssh_tasks.py

# Failover on the lab, 10 trials per fault type (about 15 minutes); a timeline plot per fault
# type (target/bench-failover-<fault>.png, matplotlib from requirements-bench.txt).
bench-failover: deps install-collection
	scripts/deps.sh bench
	$(VENV)/bin/python bench/failover.py 10

# The crash of the primary with three database hosts (lab/lab up --with db3): two standbys,
# the synchronous one takes over, the third follows it; then the same with quorum commit, any
# 1 and any 2 of the two (target/bench-failover-3-summary.json; about 15 minutes).
bench-failover-3: deps install-collection
	scripts/deps.sh bench
	$(VENV)/bin/python bench/failover.py 10 crash_3 crash_3_any_1 crash_3_any_2

clean:
	cargo clean
	rm -rf dist bin $(VENV)
	rm -rf binaries
