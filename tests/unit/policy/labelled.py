"""A labelled policy shared by the label tests: nation A (ESS) on the red side, nation B (STANAG 4774) on the blue side."""

from .wire import LABEL_POLICIES, compile_policy

LABELS_AND_MAPS = LABEL_POLICIES + """
[translations.a-to-b]
from = "nation-a"
to = "nation-b"
classifications = { UNCLASSIFIED = "OPEN", RESTRICTED = "PROTECTED" }
categories = { "REL-B" = [] }

[translations.a-to-b-keeping]
from = "nation-a"
to = "nation-b"
classifications = { UNCLASSIFIED = "OPEN", RESTRICTED = "PROTECTED" }
categories = { "REL-B" = [] }
keep_original = true

[labels]
gateway_clearance = { policy = "nation-a", classification = "RESTRICTED", categories = ["REL-B"] }
default_label = { policy = "nation-a", classification = "SECRET" }

[labels.peers."red.example"]
default_label = { policy = "nation-a", classification = "UNCLASSIFIED" }

[labels.peers."blue.example"]
clearance = { policy = "nation-b", classification = "PROTECTED" }

[labels.peers."*.blue.example"]
clearance = { policy = "nation-a", classification = "UNCLASSIFIED" }

[labels.peers."crypto.blue.example"]
clearance = [{ policy = "nation-a", classification = "RESTRICTED", categories = ["CRYPTO", "REL-B"] }]
"""

RELEASE_RULES = """
[[rules]]
id = "errors-pass"
rev = 1
why = "errors leave reduced to their type and condition"
type = "error"
verdict = "pass"

[[rules]]
id = "label-unreadable"
rev = 1
why = "unreadable labels never pass"
kind = "message"
label = "present"
label_valid = false
verdict = "bounce"
condition = "policy-violation"

[[rules]]
id = "not-releasable"
rev = 2
why = "only what the gateway and the peer are cleared for leaves"
kind = "message"
label_releasable = false
verdict = "bounce"
condition = "policy-violation"

[[rules]]
id = "release"
rev = 1
why = "releasable messages leave relabelled for nation B"
kind = "message"
label_releasable = true
verdict = "translate"
translate = "a-to-b"
keep = ["body", "thread"]
"""


def release_policy():
    """Release from A to B: errors pass, unreadable and unreleasable labels bounce, the rest is translated."""
    return compile_policy('[policy]\nname = "release"\n' + LABELS_AND_MAPS + RELEASE_RULES)


def translate_everything(mapping="a-to-b"):
    """Translate every message with no clearance check, to see what translation alone does."""
    return compile_policy('[policy]\nname = "translate-all"\n' + LABELS_AND_MAPS + f"""
[[rules]]
id = "translate-all"
rev = 1
why = "translation under test"
kind = "message"
verdict = "translate"
translate = "{mapping}"
keep = ["body", "thread"]
""")
