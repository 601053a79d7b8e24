"""The XMPP vocabulary (namespaces, stanza names and types, error conditions) is defined once, in guard.core.vocabulary."""

import ast
from pathlib import Path

import pytest

from guard.core import vocabulary
from guard.core.bounce import error_reply
from guard.core.policy.elements import parse_stanza_text
from guard.edges.s2s import wire
from guard.edges.xmlstream import StreamFault

GUARD = Path(__file__).resolve().parents[2] / "guard"
HOME = GUARD / "core" / "vocabulary.py"

NAMESPACES = {value: name for name, value in vars(vocabulary).items() if name.endswith("_NS")}

# Nothing may be added here: a new copy fails the test.  The reference HAG (guard/reference) parses
# what the guard wrote independently of the guard's code on purpose, so it keeps its own spelling.
LEFT_FOR_THEIR_OWNERS = {
    ("reference/profile.py", "http://www.w3.org/XML/1998/namespace"),
}


def _literal_strings(node):
    if isinstance(node, ast.Dict):
        return {key.value for key in node.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
        return {item.value for item in node.elts if isinstance(item, ast.Constant) and isinstance(item.value, str)}
    return set()


def copies_of_the_vocabulary():
    """(file, word) for each namespace spelled out, and each list of stanza names or error conditions written
    out, anywhere under guard/ but its one home."""
    found = set()
    for path in sorted(GUARD.rglob("*.py")):
        if path == HOME:
            continue
        where = str(path.relative_to(GUARD))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in NAMESPACES:
                found.add((where, node.value))
            words = _literal_strings(node)
            if words and words == vocabulary.STANZA_NAMES:
                found.add((where, "STANZA_NAMES"))
            tables = {name: getattr(vocabulary, name)
                      for name in ("STREAM_ERROR_CONDITIONS", "STANZA_ERROR_CONDITIONS", "STANZA_ERROR_TYPES")}
            tables.update({f"KIND_TYPES[{kind}]": types for kind, types in vocabulary.KIND_TYPES.items()})
            for table, defined in tables.items():
                # a whole list, or all of it but one word: a copy (a few of its words are a choice among them)
                if len(words) >= max(3, len(defined) - 1) and words <= defined:
                    found.add((where, table))
    return found


def test_no_module_spells_out_a_word_of_the_vocabulary_again():
    """No namespace URI, list of stanza names, of stanza types or of error conditions is written anywhere but guard/core/vocabulary.py."""
    assert copies_of_the_vocabulary() - LEFT_FOR_THEIR_OWNERS == set()


def test_the_streams_and_the_parser_check_stream_errors_against_the_same_list():
    """The S2S wire's stream errors and the parser's faults accept exactly the RFC 6120 conditions and nothing else."""
    assert wire.STREAM_ERROR_CONDITIONS is vocabulary.STREAM_ERROR_CONDITIONS
    assert b"<host-gone xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in wire.stream_error("host-gone")
    assert b"<undefined-condition " in wire.stream_error("made-up-condition")
    assert StreamFault("host-gone", "the guard's text").condition == "host-gone"
    with pytest.raises(ValueError):
        StreamFault("made-up-condition", "the guard's text")


def test_every_stanza_error_condition_has_a_defined_type():
    """Each RFC 6120 stanza error condition maps to one of the five error types, and a bounce carries that type."""
    assert set(vocabulary.STANZA_ERROR_CONDITION_TYPES.values()) <= vocabulary.STANZA_ERROR_TYPES
    assert len(vocabulary.STANZA_ERROR_CONDITIONS) == 22
    request = parse_stanza_text("<message xmlns='jabber:server' from='a@red.example' to='b@blue.example' id='1'/>")
    reply = error_reply(request, "recipient-unavailable")
    assert reply.toXml() == (
        "<message xmlns='jabber:server' type='error' from='b@blue.example' to='a@red.example' id='1'>"
        "<error type='wait'><recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
