# xmpp-guard: the two commands a newcomer needs are `make run` and `make test`.
# Both work on a fresh Debian 12 machine as root; they install what is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GUARD := $(VENV)/bin/guard
FUZZ_SECONDS ?= 60
CI_FUZZ_SECONDS ?= 20
BENCH_MESSAGES ?= 5000
# Quick forms by default; the long forms: make bench BENCH_STREAMS=1000,5000 BENCH_ROUNDS=3
BENCH_STREAMS ?= 1000
BENCH_ROUNDS ?= 1

.PHONY: run test unit policies integration demo fuzz bench system-deps venv check-config clean
.PHONY: install man

# Debian packages the project needs: a venv-capable Python, Prosody 0.12 and
# lua-unbound for the integration tests, the demo and the benchmarks;
# chromium and chromium-driver for the management page's browser tests; snmpd,
# snmp and smitools for the SNMP tests (a real snmpd, snmpwalk, smilint);
# systemd (systemd-analyze, systemd-socket-activate), man-db, groff-base and
# logrotate for the deployment tests.
# ngircd: the IRC server of the IRC gateway's tests (guard/lab/ngircd.py runs
# its own on loopback; the packaged service is stopped).
system-deps:
	@missing=""; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v prosody >/dev/null 2>&1 || missing="$$missing prosody"; \
	dpkg -s lua-unbound >/dev/null 2>&1 || missing="$$missing lua-unbound"; \
	for package in systemd man-db groff-base logrotate; do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	for package in chromium chromium-driver; do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	for package in snmpd snmp smitools; do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	dpkg -s ngircd >/dev/null 2>&1 || missing="$$missing ngircd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    if echo "$$missing" | grep -q prosody; then service prosody stop >/dev/null 2>&1 || true; fi; \
	    if echo "$$missing" | grep -q ngircd; then service ngircd stop >/dev/null 2>&1 || true; fi; \
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
	$(PY) bench/bench_relay.py --messages $(BENCH_MESSAGES) --blasts windowed,unbounded,latency --rounds $(BENCH_ROUNDS)
	$(PY) bench/bench_firehose.py --rounds $(BENCH_ROUNDS)
	$(PY) bench/bench_streams.py --streams $(BENCH_STREAMS)

# The constrained bearer (issue 13): two gateways and plain S2S through the bearer simulator, quick form
# (about two minutes, so not part of `make bench`); the full run (1,200 and 9,600 bit/s, the issue's traffic,
# most of an hour) by hand: .venv/bin/python bench/bench_constrained.py
.PHONY: bench-constrained
bench-constrained: venv
	$(PY) bench/bench_constrained.py --quick

clean:
	rm -rf run .pytest_cache

# ------------------------------------------------------------------ install
# `make install` (as root) puts the guard where a Debian operator expects it;
# `make install DESTDIR=/tmp/x` stages the same tree under /tmp/x.
#   /opt/xmpp-guard                 the guard and its Python dependencies, in a virtualenv of its own
#   /usr/local/sbin/guard           -> /opt/xmpp-guard/bin/guard
#   /usr/local/lib/systemd/system   xmpp-guard.service, its socket units, xmpp-guard-half@.service
#   /usr/local/lib/sysusers.d       the xmpp-guard user;  /usr/local/lib/tmpfiles.d: its folders
#   /etc/logrotate.d/xmpp-guard     rotation of the audit trail when it is rotated outside the guard
#   /etc/xmpp-guard/guard.toml      sample configuration (never overwrites one), policies/ beside it
#   /usr/local/share/man/man8       guard(8)
# Why a virtualenv: Debian 12's Python is externally managed (PEP 668: pip may
# not install into it) and its python3-twisted (22.4) is older than the guard
# needs; a venv under /opt (the FHS place for an add-on package) keeps the
# guard's dependencies apart from apt's, and `rm -rf /opt/xmpp-guard` removes
# them. Units, sysusers and tmpfiles go under /usr/local/lib (systemd reads
# them there; `systemctl edit` drop-ins in /etc override them).
DESTDIR ?=
PREFIX ?= /usr/local
OPTDIR ?= /opt/xmpp-guard
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
INSTALL_PYTHON ?= $(PYTHON)
UNITS := deploy/systemd/xmpp-guard.service deploy/systemd/xmpp-guard-red.socket \
         deploy/systemd/xmpp-guard-blue.socket deploy/systemd/xmpp-guard-half@.service
# The sample configuration as installed: sockets passed by systemd, absolute
# paths in the folders the service unit gives the guard.
INSTALLED_CONFIG_EDITS := \
	-e '1i \# Installed by make install from deploy/guard.toml: each side listens on the socket its unit\n\# (xmpp-guard-red.socket, xmpp-guard-blue.socket) passes by name; the certificates and keys go in\n\# $(SYSCONFDIR)/xmpp-guard/pki (root:xmpp-guard 0640); the audit trail and status file are in the\n\# folders xmpp-guard.service gives the guard. Check it: guard check-config $(SYSCONFDIR)/xmpp-guard/guard.toml\n' \
	-e 's|"\.\./run/audit\.jsonl"|"/var/log/xmpp-guard/audit.jsonl"|' \
	-e 's|"\.\./run/status\.json"|"/run/xmpp-guard/status.json"|' \
	-e 's|"\.\./run/pki/|"$(SYSCONFDIR)/xmpp-guard/pki/|' \
	-e 's|"\.\./policies/|"$(SYSCONFDIR)/xmpp-guard/policies/|' \
	-e '/^\[sides\.red\]/,/^\[sides\.red\./ s|^listen = .*|listen = "systemd:domain=INET:name=red"|' \
	-e '/^\[sides\.blue\]/,/^\[sides\.blue\./ s|^listen = .*|listen = "systemd:domain=INET:name=blue"|'

install: deploy/man/guard.8
	@$(INSTALL_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  { echo "make install needs a Python with venv: apt-get install -y python3-venv"; exit 1; }
	install -d $(DESTDIR)$(OPTDIR) $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(PREFIX)/lib/sysusers.d $(DESTDIR)$(PREFIX)/lib/tmpfiles.d $(DESTDIR)$(SYSCONFDIR)/logrotate.d \
	  $(DESTDIR)$(MANDIR)/man8
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)/xmpp-guard $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/pki \
	  $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/policies
	$(INSTALL_PYTHON) -m venv $(DESTDIR)$(OPTDIR)
	rm -rf build
	$(DESTDIR)$(OPTDIR)/bin/python -m pip install -q --disable-pip-version-check --no-compile $(PIP_INSTALL_FLAGS) .
	rm -rf build
	@# Byte-compiled here (the service cannot write beside its code): naming $(OPTDIR), not the staging folder.
	$(DESTDIR)$(OPTDIR)/bin/python -m compileall -q $(if $(DESTDIR),-s $(DESTDIR) -p /) $(DESTDIR)$(OPTDIR)/lib
	@# Staged under DESTDIR: the venv's scripts must name $(OPTDIR), where they will run.
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlI -- "$(DESTDIR)$(OPTDIR)" $(DESTDIR)$(OPTDIR)/bin $(DESTDIR)$(OPTDIR)/pyvenv.cfg \
	    | xargs -r sed -i "s|$(DESTDIR)$(OPTDIR)|$(OPTDIR)|g"; \
	fi
	ln -sfn $(OPTDIR)/bin/guard $(DESTDIR)$(PREFIX)/sbin/guard
	install -m 0644 $(UNITS) $(DESTDIR)$(UNITDIR)/
	install -m 0644 deploy/sysusers/xmpp-guard.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/xmpp-guard.conf
	install -m 0644 deploy/tmpfiles/xmpp-guard.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/xmpp-guard.conf
	install -m 0644 deploy/logrotate/xmpp-guard $(DESTDIR)$(SYSCONFDIR)/logrotate.d/xmpp-guard
	install -m 0644 deploy/man/guard.8 $(DESTDIR)$(MANDIR)/man8/guard.8
	@# Never overwrite the operator's configuration or policies.
	if [ ! -e $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/guard.toml ]; then \
	  sed $(INSTALLED_CONFIG_EDITS) deploy/guard.toml > $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/guard.toml; \
	  chmod 0640 $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/guard.toml; \
	fi
	for policy in policies/*.toml; do \
	  [ -e $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/$$policy ] || install -m 0640 $$policy $(DESTDIR)$(SYSCONFDIR)/xmpp-guard/$$policy; \
	done
	@if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers xmpp-guard.conf; \
	  systemd-tmpfiles --create xmpp-guard.conf; \
	  chgrp -R xmpp-guard $(SYSCONFDIR)/xmpp-guard; \
	  systemctl daemon-reload 2>/dev/null || true; \
	  echo "installed. Next: put the certificates and keys in $(SYSCONFDIR)/xmpp-guard/pki (root:xmpp-guard 0640),"; \
	  echo "edit $(SYSCONFDIR)/xmpp-guard/guard.toml and the ListenStream= of the socket units, then:"; \
	  echo "  guard check-config $(SYSCONFDIR)/xmpp-guard/guard.toml"; \
	  echo "  systemctl enable --now xmpp-guard-red.socket xmpp-guard-blue.socket xmpp-guard.service"; \
	fi

# guard(8), generated from the help of `guard` and of each subcommand (a test checks it is current).
man: venv
	$(PY) deploy/man/make_man.py > deploy/man/guard.8
