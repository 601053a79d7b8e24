# xmpp-guard: the two commands a newcomer needs are `make run` and `make test`.
# Both work on a fresh Debian 12 machine as root; they install what is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GUARD := $(VENV)/bin/guard
FUZZ_SECONDS ?= 60
CI_FUZZ_SECONDS ?= 20
BENCH_MESSAGES ?= 5000

.PHONY: run test unit policies integration demo fuzz bench system-deps venv check-config clean

# Debian packages the project needs: a venv-capable Python, Prosody 0.12 and
# lua-unbound for the integration tests, the demo and the benchmarks;
# chromium and chromium-driver for the management page's browser tests; snmpd,
# snmp and smitools for the SNMP tests (a real snmpd, snmpwalk, smilint).
system-deps:
	@missing=""; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v prosody >/dev/null 2>&1 || missing="$$missing prosody"; \
	dpkg -s lua-unbound >/dev/null 2>&1 || missing="$$missing lua-unbound"; \
	for package in chromium chromium-driver; do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	for package in snmpd snmp smitools; do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    if echo "$$missing" | grep -q prosody; then service prosody stop >/dev/null 2>&1 || true; fi; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run:  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: system-deps $(VENV)/.installed

run/pki/red-ca.pem: | venv
	mkdir -p run
	PYTHON=$(PY) deploy/make-test-pki run/pki >/dev/null

check-config: venv run/pki/red-ca.pem
	$(GUARD) check-config deploy/guard.toml

# Run the guard in the foreground on the sample configuration (Ctrl-C stops it).
run: check-config
	$(GUARD) run --config deploy/guard.toml --pidfile run/guard.pid

unit: venv
	$(PY) -m pytest -q tests/unit

policies: venv
	$(GUARD) check-policy policies/*.toml

# Whole conversations through the real guard service in memory (tests/scenarios/*.scenario): seconds, no sockets.
.PHONY: scenarios
scenarios: venv
	$(PY) -m pytest -q tests/scenarios

integration: venv
	$(PY) -m pytest -q tests/integration

test: venv run/pki/red-ca.pem
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests/scenarios
	$(GUARD) check-policy policies/*.toml
	$(GUARD) check-config deploy/guard.toml
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(CI_FUZZ_SECONDS)
	$(PY) -m pytest -q tests/integration

demo: venv
	$(GUARD) demo

fuzz: venv
	$(PY) -m pip install -q -e '.[fuzz]'
	$(PY) tests/fuzz/fuzz_xmlstream.py -max_total_time=$(FUZZ_SECONDS)
	$(PY) tests/fuzz/fuzz_pipeline.py -max_total_time=$(FUZZ_SECONDS)

bench: venv
	$(PY) bench/bench_parser.py
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_relay.py --messages $(BENCH_MESSAGES)

clean:
	rm -rf run .pytest_cache
