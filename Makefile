# pgshift: the two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
VENV := .venv
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
TARBALL := dist/pgshift-cluster-$(VERSION).tar.gz

.PHONY: help deps build collection install-collection test lint cargo-test ansible-test lab-test molecule-test lab-up lab-down demo bench bench-failover clean

help:
	@echo "make demo        build, bring up the three-host lab, deploy a cluster with playbooks/site.yml, show replication"
	@echo "make test        install what is missing, then run every test (cargo, Ansible)"
	@echo "make build       release binaries into plugins/modules/ and bin/"
	@echo "make collection  build dist/pgshift-cluster-<version>.tar.gz"
	@echo "make lab-up      the three-host lab (db1, db2, aux) and lab/inventory.yml; make lab-down removes it"
	@echo "make bench       benchmarks (numbers, not pass/fail)"

deps:
	scripts/deps.sh all

build:
	scripts/deps.sh build
	scripts/build.sh

collection: build
	@test -x $(VENV)/bin/ansible-galaxy || scripts/deps.sh all
	rm -f $(TARBALL)
	$(VENV)/bin/ansible-galaxy collection build --force --output-path dist .

# The built collection where ansible-playbook (lab, Molecule, demo) finds it.
install-collection: collection
	rm -rf target/collections
	$(VENV)/bin/ansible-galaxy collection install --force -p target/collections $(TARBALL) >/dev/null

lab-up: deps
	lab/lab up

lab-down:
	lab/lab down

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

cargo-test:
	cargo test --workspace --locked

ansible-test: collection
	cargo build --locked -p pgshift-testkit
	$(VENV)/bin/pytest -q tests/ansible tests/cert

# The lab's own tests, then backups and the agent on clusters built by the playbooks
# (they use the collection installed into target/collections and bin/pgshift).
lab-test: install-collection
	PGSHIFT_REQUIRE_LAB=1 $(VENV)/bin/pytest -q tests/lab tests/backup tests/agent tests/multihome

# Molecule shells out to ansible-config and friends: the venv's bin/ goes first on PATH.
molecule-test: install-collection
	NO_COLOR=1 ANSIBLE_NOCOLOR=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/molecule test

test: deps
	$(MAKE) lint
	$(MAKE) cargo-test
	$(MAKE) ansible-test
	$(MAKE) molecule-test
	$(MAKE) lab-test

demo: deps install-collection
	scripts/demo.sh

bench: deps collection
	cargo build --release --locked -p pgshift-testkit
	$(VENV)/bin/python bench/pg_hba_rule.py
	$(MAKE) install-collection
	$(VENV)/bin/python bench/ssh_tasks.py

# Failover on the lab, 10 trials per fault type (about 15 minutes).
bench-failover: deps install-collection
	$(VENV)/bin/python bench/failover.py 10

clean:
	cargo clean
	rm -rf dist bin $(VENV)
	find plugins/modules -type f ! -name "*.yml" -delete
