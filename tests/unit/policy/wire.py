"""
What the policy tests share: reading stanzas written the way the wire looks,
compiling policy text, and building real ESS labels with pyasn1 (independently
of the code under test).
"""

import base64
import textwrap

from pyasn1.codec.der import encoder
from pyasn1.type import char
from pyasn1_modules import rfc2634

from guard.core.pipeline import Direction
from guard.core.policy import compile_policy_text
from guard.core.policy.elements import parse_stanza_text

RED_TO_BLUE = Direction("red", "blue")


def read(xml):
    """One stanza from XML text, as it arrives on an S2S stream."""
    return parse_stanza_text(xml)


def compile_policy(text, path="test.toml"):
    """A compiled policy from TOML text (dedented so tests can indent it)."""
    return compile_policy_text(textwrap.dedent(text), path)


def utf8_der(text):
    """DER of a UTF8String, the usual value of an ESS security category."""
    return encoder.encode(char.UTF8String(text))


def ess_label(policy_oid, classification=None, categories=()):
    """Base64 DER ESSSecurityLabel built with pyasn1: policy OID, classification, (type OID, value DER) categories."""
    label = rfc2634.ESSSecurityLabel()
    label["security-policy-identifier"] = policy_oid
    if classification is not None:
        label["security-classification"] = classification
    for index, (type_oid, value_der) in enumerate(categories):
        category = rfc2634.SecurityCategory()
        category["type"] = type_oid
        category["value"] = value_der
        label["security-categories"].setComponentByPosition(index, category)
    return base64.b64encode(encoder.encode(label)).decode("ascii")


def ess_xml(b64, marking=None):
    """A <securitylabel/> holding an ESS label, as XEP-0258 writes it."""
    shown = f"<displaymarking>{marking}</displaymarking>" if marking else ""
    return (f"<securitylabel xmlns='urn:xmpp:sec-label:0'>{shown}"
            f"<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{b64}</esssecuritylabel></label>"
            f"</securitylabel>")


# Two nations' label policies: A speaks ESS, B speaks STANAG 4774.
NATION_A = "2.999.10"
A_REL_B = ("2.999.10.1", "B")
A_CRYPTO = ("2.999.10.2", "CRYPTO")

LABEL_POLICIES = f"""
[[label_policies]]
name = "nation-a"
ess_oid = "{NATION_A}"
stanag_id = "NATION-A"
emit = "ess"
classifications = [
  {{ name = "UNCLASSIFIED", ess = 1, marking = "A UNCLASSIFIED" }},
  {{ name = "RESTRICTED", ess = 2, marking = "A RESTRICTED", fgcolor = "black", bgcolor = "yellow" }},
  {{ name = "SECRET", ess = 4, marking = "A SECRET" }},
]
categories = [
  {{ name = "REL-B", type = "permissive", ess_type = "{A_REL_B[0]}", ess_value = "{utf8_der(A_REL_B[1]).hex()}", stanag_tag = "Releasable to", stanag_value = "B", marking = "REL B" }},
  {{ name = "CRYPTO", type = "restrictive", ess_type = "{A_CRYPTO[0]}", ess_value = "{utf8_der(A_CRYPTO[1]).hex()}", stanag_tag = "Special", stanag_value = "CRYPTO", marking = "CRYPTO" }},
]

[[label_policies]]
name = "nation-b"
stanag_id = "NATION-B"
emit = "stanag4774"
classifications = [
  {{ name = "OPEN", stanag = "OPEN", marking = "B OPEN" }},
  {{ name = "PROTECTED", stanag = "PROTECTED", marking = "B PROTECTED" }},
  {{ name = "CLASSIFIED", stanag = "CLASSIFIED", marking = "B CLASSIFIED" }},
]
categories = [
  {{ name = "REL-A", type = "permissive", stanag_tag = "Releasable to", stanag_value = "A", marking = "REL A" }},
]
"""


def stanag_xml(policy, classification, categories=()):
    """A <securitylabel/> holding a STANAG 4774 confidentiality label."""
    tags = "".join(
        f"<Category TagName='{tag}' Type='PERMISSIVE'><GenericValue>{value}</GenericValue></Category>"
        for tag, value in categories)
    return ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label>"
            "<ConfidentialityLabel xmlns='urn:nato:stanag:4774:confidentialitymetadatalabel:1:0'>"
            f"<ConfidentialityInformation><PolicyIdentifier>{policy}</PolicyIdentifier>"
            f"<Classification>{classification}</Classification>{tags}</ConfidentialityInformation>"
            "</ConfidentialityLabel></label></securitylabel>")
