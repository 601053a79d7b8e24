"""
Coverage-guided fuzzing of the whole inbound path with atheris: the stream
parser, the addressing checks, every shipped policy, and the bounce builder.

Run from the project root (atheris must be installed in the venv):

    .venv/bin/python tests/fuzz/fuzz_pipeline.py -max_total_time=60
    .venv/bin/python tests/fuzz/fuzz_pipeline.py corpus_dir/ -max_total_time=300

The first input byte chooses the policy (AllowAll or one of policies/*.toml)
and which domain pairs the stream authenticated; the rest follows a fixed
valid stream header.  A finding is any of:

- an exception other than StreamFault from the parser;
- a stream error condition RFC 6120 does not define;
- a stanza judged although its addressing is wrong, or addressed to a domain
  the guard does not front on this side (a hairpin);
- a policy that raises or answers with something that is not a Judgement
  (the relay would fail closed, but it is still a bug);
- a policy that changes the stanza it was given;
- a passed stanza or a bounce that does not serialise to XML that parses back
  to the same tree;
- a passed stanza holding a part its deciding rule does not allow (its
  shapes, its folding profile's, an error's type and condition, the label the
  guard writes), or larger than what arrived plus what the guard adds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

with atheris.instrument_imports():
    from guard.core.accepted import accept
    from guard.core.addressing import Addressed, Misaddressed, check_addressing
    from guard.core.bounce import error_reply, may_bounce
    from guard.core.pipeline import AllowAll, Direction, Judgement, Verdict
    from guard.core.policy import load_policy
    from guard.core.vocabulary import STREAM_ERROR_CONDITIONS
    from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser, serialise

from tests.unit.policy.allowed import disallowed_parts, size_problem  # noqa: E402
from tests.trees import tree  # noqa: E402

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='blue.example' from='red.example' version='1.0'>"
)
FRONTED = frozenset({"blue.example", "conference.blue.example"})
PAIRS = [
    frozenset({("red.example", "blue.example")}),
    frozenset({("red.example", "blue.example"), ("conference.red.example", "conference.blue.example")}),
]
LIMITS = ParserLimits(
    stanza_bytes=8192,
    element_depth=12,
    attributes_per_element=16,
    attribute_value_bytes=512,
    children_per_stanza=128,
    header_bytes=4096,
)


def _policies():
    chosen = [(AllowAll(), Direction("red", "blue"))]
    for path in sorted((PROJECT_ROOT / "policies").glob("*.toml")):
        if path.name.endswith(".tests.toml"):
            continue
        policy = load_policy(path)
        sides = getattr(policy, "sides", None)
        chosen.append((policy, Direction(*sides) if sides else Direction("red", "blue")))
    return chosen


POLICIES = _policies()



def reparsed(element) -> None:
    """Serialise ``element`` and parse it back with default limits; raise AssertionError if it changed."""
    text = serialise(element)
    again = []
    parser = StreamParser(lambda header: None, lambda parsed, size: again.append(parsed), lambda: None)
    try:
        parser.feed(HEADER + text.encode("utf-8"))
    except StreamFault as fault:
        raise AssertionError(f"serialised stanza refused ({fault.condition}): {text!r}") from fault
    if len(again) != 1 or tree(again[0]) != tree(element):
        raise AssertionError(f"round trip changed {text!r}")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    choice, tail = data[0], data[1:]
    policy, direction = POLICIES[choice % len(POLICIES)]
    pairs = PAIRS[(choice // len(POLICIES)) % len(PAIRS)]

    received = []
    parser = StreamParser(lambda header: None, lambda element, size: received.append((element, size)), lambda: None,
                          LIMITS)
    parser.feed(HEADER)
    try:
        parser.feed(tail)
    except StreamFault as fault:
        if fault.condition not in STREAM_ERROR_CONDITIONS:
            raise AssertionError(f"not an RFC 6120 condition: {fault.condition}")

    for stanza, size in received:
        addressed = check_addressing(stanza, pairs, FRONTED)
        if isinstance(addressed, Misaddressed):
            if addressed.condition not in STREAM_ERROR_CONDITIONS:
                raise AssertionError(f"not an RFC 6120 condition: {addressed.condition}")
            continue
        if not isinstance(addressed, Addressed):
            raise AssertionError(f"check_addressing returned {addressed!r}")
        if addressed.pair not in pairs or addressed.recipient.host not in FRONTED:
            raise AssertionError(f"misaddressed stanza let through: {serialise(stanza)!r}")
        before = tree(stanza)
        accepted = accept(stanza, addressed, size, direction)
        judge = getattr(policy, "judge_accepted", None)
        # An exception here is a finding.
        judgement = judge(accepted, direction) if judge is not None else policy.judge(stanza, direction)
        if not isinstance(judgement, Judgement) or not isinstance(judgement.verdict, Verdict):
            raise AssertionError(f"policy returned {judgement!r}")
        if tree(stanza) != before:
            raise AssertionError(f"policy changed its input: {serialise(stanza)!r}")
        if judgement.verdict is Verdict.PASS:
            reparsed(judgement.stanza)
            problems = disallowed_parts(policy, judgement, stanza)
            if problems:
                raise AssertionError(f"parts no rule allows leave: {problems}: {serialise(judgement.stanza)!r}")
            grown = size_problem(serialise, judgement, stanza, size)
            if grown:
                raise AssertionError(f"{grown}: {serialise(judgement.stanza)!r}")
        elif judgement.verdict is Verdict.BOUNCE and may_bounce(stanza):
            reparsed(error_reply(stanza, judgement.condition or "not-allowed", judgement.text))


SEEDS = [
    b"<message from='romeo@red.example/pc' to='juliet@blue.example' type='chat' id='1'><body>hi</body></message>",
    b"<presence from='romeo@red.example/pc' to='juliet@blue.example'><show>away</show><status>x</status></presence>",
    b"<iq from='romeo@red.example/pc' to='blue.example' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<message from='romeo@red.example/pc' to='juliet@blue.example' type='chat'><body>l</body>"
    b"<securitylabel xmlns='urn:xmpp:sec-label:0'><label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>"
    b"MQgCAQEGA4g3AQ==</esssecuritylabel></label></securitylabel></message>",
    b"<message from='romeo@red.example' to='juliet@blue.example'><forwarded xmlns='urn:xmpp:forward:0'>"
    b"<message xmlns='jabber:client' from='a@red.example' to='b@red.example'><body>old</body></message>"
    b"</forwarded></message>",
    b"<message from='romeo@red.example/pc' to='juliet@blue.example' type='error'><error type='cancel'>"
    b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
    b"<presence from='romeo@red.example/pc' to='juliet@blue.example' id='aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    b"aaaaaaaaaaaaaaaaaaaaaaa' xml:lang='en-GB-oxendict-x-plan'><priority>5</priority></presence>",
]

DICTIONARY = [
    "<", ">", "/>", "</", "='", "&amp;", "&#x", "message", "presence", "iq", "body", "from='", "to='",
    "romeo@red.example/pc", "juliet@blue.example", "blue.example", "red.example", "conference.blue.example",
    "conference.red.example", "type='chat'", "type='error'", "type='groupchat'", "type='get'", "type='result'",
    "urn:xmpp:sec-label:0", "securitylabel", "<label>", "esssecuritylabel", "urn:xmpp:sec-label:ess:0",
    "MQgCAQEGA4g3AQ==", "displaymarking", "urn:xmpp:forward:0", "forwarded", "jabber:client",
    "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0", "ConfidentialityLabel", "urn:xmpp:ping",
    "http://jabber.org/protocol/chatstates", "jabber:x:oob", "xml:lang", "xmlns='", "xmlns:",
    "id='", "xml:lang='en-GB'", "-x-", "priority", "subject", "thread", "parent='",
]


def with_seeds(argv: list[str]) -> list[str]:
    """argv plus a seed corpus and a token dictionary when the caller named neither."""
    argv = list(argv)
    scratch = Path(tempfile.mkdtemp(prefix="fuzz_pipeline_"))
    if not any(argument.startswith("-dict=") for argument in argv):
        dictionary = scratch / "pipeline.dict"
        dictionary.write_text("".join(f'"{token}"\n' for token in DICTIONARY))
        argv.append(f"-dict={dictionary}")
    if not any(not argument.startswith("-") for argument in argv[1:]):
        corpus = scratch / "corpus"
        corpus.mkdir()
        for number, seed in enumerate(SEEDS):
            for choice in range(len(POLICIES) * len(PAIRS)):
                (corpus / f"seed{number}-{choice}").write_bytes(bytes([choice]) + seed)
        argv.append(str(corpus))
    return argv


def main() -> None:
    atheris.Setup(with_seeds(sys.argv), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
