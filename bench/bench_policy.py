"""
How many policy decisions per second the compiled policy makes with 10, 100
and 1000 rules, and how much of that the rule index is worth.

Run from the project root:

    .venv/bin/python bench/bench_policy.py [--seconds 1] [--rules 10 100 1000]

The policy is built like policies/high-to-low.toml: labels (ESS), clearances,
message and presence folding, an iq allow-list, and a growing list of
per-domain rules of the kind a large operator accumulates. Those rules are
blocked destinations, per-peer word lists, and hosts whose presence never
leaves. The stanzas are a realistic mix: a labelled chat message with XHTML-IM
and a chat state (released and folded), presence with caps (folded), a ping,
and a message to a blocked peer. Each is judged as the relay judges it (with
its wire size, and what passes built new from the rule's shapes). For
comparison, the same policy is also judged with the index bypassed (every rule
scanned in order). No network, no reactor.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.core.accepted import accepted_from_element  # noqa: E402
from guard.core.pipeline import Direction  # noqa: E402
from guard.core.policy import compile_policy_text  # noqa: E402
from guard.core.policy.elements import parse_stanza_text  # noqa: E402

DIRECTION = Direction("red", "blue")
MAX_ROUNDS = 10_000_000  # a bound on every measuring loop, besides its time

HEAD = """
[policy]
name = "bench"
from_side = "red"
to_side = "blue"
default = "drop"

[sets.domains]
low_peers = ["blue.example", "*.blue.example"]
blocked = ["quarantine.blue.example"]

[sets.namespaces]
ping = ["urn:xmpp:ping"]

[[label_policies]]
name = "red-national"
ess_oid = "2.999.1"
emit = "ess"
classifications = [
  { name = "UNCLASSIFIED", ess = 1 }, { name = "RESTRICTED", ess = 2 },
  { name = "CONFIDENTIAL", ess = 3 }, { name = "SECRET", ess = 4 },
]
categories = [
  { name = "REL-BLUE", type = "permissive", ess_type = "2.999.1.9", ess_value = "0c04424c5545", marking = "REL BLUE" },
]

[labels]
gateway_clearance = { policy = "red-national", classification = "RESTRICTED", categories = ["REL-BLUE"] }
[labels.peers."red.example"]
default_label = { policy = "red-national", classification = "SECRET" }
[labels.peers."blue.example"]
clearance = { policy = "red-national", classification = "RESTRICTED", categories = ["REL-BLUE"] }
[labels.peers."*.blue.example"]
clearance = { policy = "red-national", classification = "UNCLASSIFIED" }

[folding.message-plain]
message.keep = ["body", "subject", "thread"]
message.drop_types = ["headline"]
message.drop_if_only = ["{http://jabber.org/protocol/chatstates}*"]

[folding.presence-basic]
presence.states = ["available", "away", "unavailable"]

[[rules]]
id = "blocked-destination"
rev = 1
why = "quarantine"
to_domain = "$blocked"
verdict = "drop"
"""

# The general rules, after the per-domain ones (as in high-to-low.toml): 11 with the one above.
TAIL = """
[[rules]]
id = "only-low-peers"
rev = 1
why = "HIGH talks to LOW only"
not = { to_domain = "$low_peers" }
verdict = "drop"

[[rules]]
id = "label-unreadable"
rev = 1
why = "unreadable labels"
label = "present"
label_valid = false
verdict = "bounce"
condition = "policy-violation"

[[rules]]
id = "errors-unlabelled"
rev = 1
why = "errors, reduced"
type = "error"
label = "absent"
verdict = "pass"

[[rules]]
id = "errors-labelled"
rev = 1
why = "labelled errors, reduced"
type = "error"
label_releasable = true
verdict = "pass"

[[rules]]
id = "errors-other"
rev = 1
why = "the rest of the errors"
type = "error"
verdict = "drop"

[[rules]]
id = "iq-ping"
rev = 1
why = "liveness"
kind = "iq"
type = ["get", "result"]
payload_only = "$ping"
verdict = "pass"
keep = ["ping"]

[[rules]]
id = "iq-other"
rev = 1
why = "no other iq"
kind = "iq"
verdict = "bounce"
condition = "service-unavailable"

[[rules]]
id = "presence-fold"
rev = 1
why = "presence folded"
kind = "presence"
verdict = "fold"
fold = "presence-basic"

[[rules]]
id = "label-not-releasable"
rev = 1
why = "clearance"
kind = "message"
label_releasable = false
verdict = "bounce"
condition = "policy-violation"

[[rules]]
id = "message-release"
rev = 1
why = "release, folded"
kind = "message"
label_releasable = true
verdict = "fold"
fold = "message-plain"
"""

BASE_RULES = 11


def per_domain_rule(number: int) -> str:
    """One of the per-domain rules a large policy accumulates (three shapes in turn)."""
    shape = number % 3
    if shape == 0:
        return (f'\n[[rules]]\nid = "blocked-{number}"\nrev = 1\nwhy = "blocked peer"\n'
                f'to_domain = "p{number}.blue.example"\nverdict = "drop"\n')
    if shape == 1:
        return (f'\n[[rules]]\nid = "words-{number}"\nrev = 1\nwhy = "per-peer word list"\nkind = "message"\n'
                f'to_domain = "p{number}.blue.example"\nbody_matches = "(?i)codeword-{number}"\n'
                f'verdict = "bounce"\ncondition = "policy-violation"\n')
    return (f'\n[[rules]]\nid = "quiet-host-{number}"\nrev = 1\nwhy = "host whose presence stays home"\n'
            f'kind = "presence"\nfrom_domain = "h{number}.red.example"\nverdict = "drop"\n')


def policy_text(rule_count: int) -> str:
    """A policy of exactly ``rule_count`` rules (at least the base rules)."""
    extra = max(0, rule_count - BASE_RULES)
    return HEAD + "".join(per_domain_rule(n) for n in range(extra)) + TAIL


STANZAS = {
    "labelled chat (release, fold)": """
<message from='alice@red.example/pc' to='bob@blue.example' type='chat' id='a4f1c2d3-5e6f-4a7b'>
  <body>Meet at the north gate at noon; bring the revised schedule.</body>
  <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>Meet at the <b>north gate</b></p></body></html>
  <active xmlns='http://jabber.org/protocol/chatstates'/>
  <securitylabel xmlns='urn:xmpp:sec-label:0'>
    <displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED REL BLUE</displaymarking>
    <label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==</esssecuritylabel></label>
  </securitylabel>
</message>""",
    "presence with caps (fold)": """
<presence from='alice@red.example/pc' to='bob@blue.example'>
  <show>xa</show><status>In a meeting</status><priority>5</priority>
  <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://red.example' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/>
</presence>""",
    "iq ping (pass)": "<iq from='alice@red.example/pc' to='blue.example' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
    "message to a blocked peer (drop)": """
<message from='alice@red.example/pc' to='carol@p0.blue.example' type='chat' id='m2'><body>hello</body></message>""",
}


def rate(policy, stanza, size, seconds: float, windows: int = 3) -> float:
    """
    Decisions per second of ``policy`` on ``stanza`` (``size`` bytes on the
    wire), judged as the relay judges it: the accepted value (kind, type,
    addresses parsed once, wire size) is built once, as the relay builds it
    after the addressing check, and the policy judges that.  The best of
    ``windows`` measurements sharing about ``seconds`` (the best, because
    other load on the machine only ever slows a window down).
    """
    accepted = accepted_from_element(stanza, DIRECTION, size)
    best = 0.0
    for _ in range(windows):
        count = 0
        began = time.perf_counter()
        deadline = began + seconds / windows
        while time.perf_counter() < deadline and count < MAX_ROUNDS:
            for _ in range(100):
                policy.judge_accepted(accepted, DIRECTION)
            count += 100
        best = max(best, count / (time.perf_counter() - began))
    return best


def scanning(policy):
    """The same policy with its index bypassed: every rule is read in order for every stanza."""
    scanner = copy.copy(policy)
    scanner.candidates = lambda kind, from_domain, to_domain, stanza_type=None: policy.rules
    return scanner


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    arguments.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    arguments.add_argument("--rules", type=int, nargs="+", default=[10, 100, 1000], help="rule counts to measure")
    options = arguments.parse_args()
    stanzas = {name: parse_stanza_text(text) for name, text in STANZAS.items()}
    sizes = {name: len(text.strip().encode("utf-8")) for name, text in STANZAS.items()}
    print(f"{'rules':>6} {'compile':>9}  {'stanza':<34} {'indexed/s':>10} {'us':>6} {'considered':>10} "
          f"{'scan/s':>9} {'us':>7}")
    for count in options.rules:
        began = time.perf_counter()
        policy = compile_policy_text(policy_text(count), f"<bench {count}>")
        compiled_in = time.perf_counter() - began
        assert len(policy.rules) == max(count, BASE_RULES), len(policy.rules)
        scanner = scanning(policy)
        mix_indexed = mix_scanned = 0.0
        for name, stanza in stanzas.items():
            fast, slow = policy.judge(stanza, DIRECTION, sizes[name]), scanner.judge(stanza, DIRECTION, sizes[name])
            assert (fast.verdict, fast.rule_id) == (slow.verdict, slow.rule_id), (name, fast, slow)
            considered = len(policy.candidates(stanza.name, "red.example", stanza["to"].split("@")[-1]))
            indexed = rate(policy, stanza, sizes[name], options.seconds)
            scanned = rate(scanner, stanza, sizes[name], options.seconds)
            mix_indexed += 1 / indexed
            mix_scanned += 1 / scanned
            print(f"{len(policy.rules):>6} {compiled_in:>8.2f}s  {name:<34} {indexed:>10.0f} {1e6 / indexed:>6.1f} "
                  f"{considered:>10} {scanned:>9.0f} {1e6 / scanned:>7.1f}")
        mix = len(stanzas)
        print(f"{len(policy.rules):>6} {'':>9}  {'mix (one of each)':<34} {mix / mix_indexed:>10.0f} "
              f"{1e6 * mix_indexed / mix:>6.1f} {'':>10} {mix / mix_scanned:>9.0f} {1e6 * mix_scanned / mix:>7.1f}")


if __name__ == "__main__":
    main()
