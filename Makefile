# acquired: `make run` and `make test` set everything up themselves (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := libsystemd-dev pkg-config gcc python3-dev python3-venv redis-server
BENCH_APT_PACKAGES := nginx-light aria2 curl wget transmission-cli

.PHONY: setup system-deps run test systest lint format bench install clean

setup: $(STAMP)

# System packages that systemd-python needs to build. As root they are installed;
# otherwise the exact command is printed and setup stops.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "acquired needs Python >= 3.11 (found $$($(PYTHON) --version))" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Runs the daemon in the foreground with the embedded defaults: everything under ./var.
run: setup
	$(BIN)/acquired

# The tests spend most of their time waiting on real servers, daemons and swarms, so three
# workers fit two cores (a test file stays on one worker: its fixtures are shared). Then,
# as root, the system tests, which boot a real systemd in systemd-nspawn, one at a time.
test: setup lint
	$(BIN)/pytest -m "not system" -n 3 --dist loadfile
	$(BIN)/pytest -m system tests/system

systest: setup
	$(BIN)/pytest -m system tests/system

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy cannot follow setuptools' editable finder: give it a symlinked view of the
	@# namespace package, and run it from there so the top-level systemd/ folder does not
	@# shadow the systemd-python package.
	@mkdir -p build/typecheck/acquired
	@for p in common daemon sources unpack; do ln -sfn ../../../$$p build/typecheck/acquired/$$p; done
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml --cache-dir ../../.mypy_cache -p acquired

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks: on demand only, never part of `make test`.
bench: setup
	@missing=""; for p in $(BENCH_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Installs the service: its own venv, units, sysusers/tmpfiles entries, default configuration.
install: system-deps
	bash systemd/install.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
