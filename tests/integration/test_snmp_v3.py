"""
SNMPv3 USM as deploy/snmp/snmpd.conf documents it: snmpd runs that file
(its address, socket and AgentX permissions moved into a temporary folder,
and the createUser line it tells the operator to add), the lab's guard is
its subagent, and snmpwalk reads the guard with authPriv (SHA-256, AES)
while a wrong passphrase and noAuthNoPriv get nothing.  Its own module, so
that its lab is the only one while it runs.

    .venv/bin/pytest tests/integration/test_snmp_v3.py
"""

from __future__ import annotations

import pytest

from tests.integration.test_snmp import APPL, MIBS, Snmpd, start_lab, wait_for, walk

pytestmark = pytest.mark.guard

AUTH, PRIV = "guard auth passphrase", "guard privacy passphrase"


def usm(auth=AUTH, level="authPriv"):
    security = ["-v3", "-l", level, "-u", "guardmon"]
    if level != "noAuthNoPriv":
        security += ["-a", "SHA-256", "-A", auth]
    if level == "authPriv":
        security += ["-x", "AES", "-X", PRIV]
    return tuple(security)


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory):
    """snmpd running deploy/snmp/snmpd.conf, moved into a temporary folder, with the documented USM user created."""
    text = (MIBS / "snmpd.conf").read_text()
    text = (text.replace("udp:127.0.0.1:161", "udp:127.0.0.1:{port}")
                .replace("agentXSocket /var/agentx/master", "agentXSocket {socket}")
                .replace("agentXPerms 0660 0750 root xmpp-guard", "agentXPerms 0600 0700"))
    assert "{port}" in text and "{socket}" in text and "agentXPerms 0600 0700" in text
    text += f'createUser guardmon SHA-256 "{AUTH}" AES "{PRIV}"\n'
    agent = Snmpd(tmp_path_factory.mktemp("snmpd-v3"), text).start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def lab(snmpd, tmp_path_factory):
    """The lab's guard with [snmp] at this module's snmpd."""
    laboratory = start_lab(snmpd, tmp_path_factory.mktemp("lab-snmp-v3"))
    yield laboratory
    laboratory.stop()


def test_usm_auth_priv_reads_the_guard(lab, snmpd):
    """The documented read-only USM user, SHA-256 and AES, walks the guard's applTable."""
    row = wait_for(lambda: dict(line.split(" = ", 1) for line in walk(snmpd, APPL, security=usm()) if " = " in line)
                   .get(f".{APPL}.2.1"), "the guard's applTable row over SNMPv3")
    assert row == 'STRING: "xmpp-guard"'


def test_usm_refuses_a_wrong_passphrase_and_no_authentication(lab, snmpd):
    """A wrong authentication passphrase, or a request without authentication and privacy, reads nothing."""
    wait_for(lambda: any(" = " in line for line in walk(snmpd, APPL, security=usm())), "the guard over SNMPv3")
    wrong = walk(snmpd, APPL, security=usm(auth="not the passphrase"))
    assert not any(" = " in line for line in wrong) and any("Authentication failure" in line for line in wrong)
    unauthenticated = walk(snmpd, APPL, security=usm(level="authNoPriv"))
    assert not any(line.startswith(f".{APPL}") for line in unauthenticated)
    assert any("authorizationError" in line for line in unauthenticated)
    v2c = walk(snmpd, APPL)
    assert not any(line.startswith(f".{APPL}") for line in v2c)
