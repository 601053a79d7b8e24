"""
SNMP shows a guard that stopped relaying: with an audit trail that cannot be
written (audit = /dev/full) the guard halts at start, and a real snmpwalk
reads applOperStatus halted(3) and the reason in XMPP-GUARD-MIB.  Its own
module, so that its lab is the only one while it runs.

    .venv/bin/pytest tests/integration/test_snmp_halted.py
"""

from __future__ import annotations

import pytest

from tests.integration.test_snmp import APPL, appl_row, snmpd, start_lab, wait_for, walk  # noqa: F401 - fixture

pytestmark = pytest.mark.guard


@pytest.fixture(scope="module")
def lab(snmpd, tmp_path_factory):  # noqa: F811 - this module's lab
    """The lab's guard with an audit trail it cannot write, and [snmp] at the test's snmpd."""
    laboratory = start_lab(snmpd, tmp_path_factory.mktemp("lab-snmp-halted"), guard_options={"audit": "/dev/full"})
    yield laboratory
    laboratory.stop()


def test_a_halted_guard_reads_halted_with_its_reason(lab, snmpd):
    """applOperStatus is halted(3) once the audit trail stopped relaying, and xgHaltedReason says why."""
    status = wait_for(lambda: appl_row(snmpd).get(f"{APPL}.6.1"), "the guard's applOperStatus")
    assert status == "INTEGER: 3"
    named = walk(snmpd, "XMPP-GUARD-MIB::xgHaltedReason", mibs="+XMPP-GUARD-MIB:NETWORK-SERVICES-MIB")
    assert len(named) == 1 and named[0].startswith("XMPP-GUARD-MIB::xgHaltedReason.0 = STRING: audit trail unavailable")
