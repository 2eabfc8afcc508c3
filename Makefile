# pgshift: the two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
VENV := .venv
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
TARBALL := dist/pgshift-cluster-$(VERSION).tar.gz

.PHONY: help deps build collection test lint cargo-test ansible-test demo bench clean

help:
	@echo "make demo        build, start a throw-away PostgreSQL 15, apply pg_hba_rule via ansible-playbook"
	@echo "make test        install what is missing, then run every test (cargo, Ansible)"
	@echo "make build       release binaries into plugins/modules/ and bin/"
	@echo "make collection  build dist/pgshift-cluster-<version>.tar.gz"
	@echo "make bench       pg_hba_rule benchmark (numbers, not pass/fail)"

deps:
	scripts/deps.sh all

build:
	scripts/deps.sh build
	scripts/build.sh

collection: build
	@test -x $(VENV)/bin/ansible-galaxy || scripts/deps.sh all
	rm -f $(TARBALL)
	$(VENV)/bin/ansible-galaxy collection build --force --output-path dist .

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

cargo-test:
	cargo test --workspace --locked

ansible-test: collection
	cargo build --locked -p pgshift-testkit
	$(VENV)/bin/pytest -q tests/ansible

test: deps
	$(MAKE) lint
	$(MAKE) cargo-test
	$(MAKE) ansible-test

demo: deps collection
	cargo build --locked -p pgshift-testkit
	scripts/demo.sh

bench: deps collection
	cargo build --release --locked -p pgshift-testkit
	$(VENV)/bin/python bench/pg_hba_rule.py

clean:
	cargo clean
	rm -rf dist bin $(VENV)
	find plugins/modules -type f ! -name "*.yml" -delete
