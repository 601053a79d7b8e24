"""
Labels translated between two nations' label policies on real traffic: an
ALPHA (red) message reaches BRAVO (blue) carrying BRAVO's label, and a label
with no BRAVO equivalent does not pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.lab.clients import ClientError, ClientLoop

from .policylab import wait_for
from .test_policy_enforcement import start

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def coalition_lab(tmp_path_factory):
    """red (ALPHA) -> blue (BRAVO) judged by coalition.toml, the way back by allow-all."""
    laboratory = start(tmp_path_factory.mktemp("coalition-lab"), (POLICIES / "coalition.toml").read_text(),
                       (POLICIES / "allow-all.toml").read_text())
    yield laboratory
    laboratory.stop()


def test_coalition_label_is_translated_for_the_far_nation(coalition_lab):
    """An ALPHA RESTRICTED REL BRAVO message arrives at BRAVO carrying BRAVO's label, ALPHA's kept as equivalent."""
    with ClientLoop() as loop, coalition_lab.client(loop, "romeo@red.example") as romeo, \
            coalition_lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_xml(
            "<message to='juliet@blue.example' type='chat' id='c1'><body>convoy leaves at six</body>"
            "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
            "<displaymarking fgcolor='black' bgcolor='yellow'>ALPHA RESTRICTED REL BRAVO</displaymarking>"
            "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRsCAQIGA4g3FTERMA+ABIg3FQGBBwwFQlJBVk8="
            "</esssecuritylabel></label></securitylabel></message>")
        received = juliet.wait_for_body("romeo@red.example", "convoy leaves at six", timeout=20)
    assert "<equivalentlabel>" in received.xml
    assert "MRsCAQIGA4g3FTERMA+ABIg3FQGBBwwFQlJBVk8=" in received.xml.split("<equivalentlabel>")[1]
    assert "ALPHA RESTRICTED" not in received.xml.split("<equivalentlabel>")[0]


def test_coalition_label_without_equivalent_does_not_pass(coalition_lab):
    """A label ALPHA has not marked for BRAVO never leaves: Romeo gets an error, Juliet nothing."""
    with ClientLoop() as loop, coalition_lab.client(loop, "romeo@red.example") as romeo, \
            coalition_lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_xml(
            "<message to='juliet@blue.example' type='chat' id='c2'><body>stays home</body>"
            "<securitylabel xmlns='urn:xmpp:sec-label:0'><label>"
            "<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MQgCAQIGA4g3FQ==</esssecuritylabel>"
            "</label></securitylabel></message>")
        with pytest.raises(ClientError):
            juliet.wait_for_body("romeo@red.example", "stays home", timeout=3)
    assert wait_for(lambda: any(r["rule"] == "not-marked-for-bravo" for r in coalition_lab.audit_records()), 5)
