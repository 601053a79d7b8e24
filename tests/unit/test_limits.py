"""Each limit is declared once: the parser's in ParserLimits, the rest in Limits, which extends it."""

import ast
from pathlib import Path

import pytest

from guard.app.config import _Checker, _limits
from guard.edges.limits import Limits
from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser

EDGES = Path(__file__).resolve().parents[2] / "guard" / "edges"


def declared_fields(path: Path, class_name: str) -> list[str]:
    """The names a class in ``path`` declares itself (annotated assignments in its body)."""
    module = ast.parse(path.read_text(), str(path))
    (found,) = [node for node in module.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    return [node.target.id for node in found.body if isinstance(node, ast.AnnAssign)]


def test_no_limit_is_declared_both_for_the_parser_and_for_the_guard():
    """A limit's name and default are written in one class only: Limits declares none of ParserLimits' own."""
    parser = declared_fields(EDGES / "xmlstream.py", "ParserLimits")
    guard = declared_fields(EDGES / "limits.py", "Limits")
    assert set(parser) & set(guard) == set()
    assert Limits.names()[:len(parser)] == tuple(parser)


def test_the_config_keys_and_defaults_of_the_parser_limits_are_unchanged():
    """The [limits] table still names the parser's limits with their documented defaults, and what it sets reaches the parser."""
    defaults = Limits().parser_limits()
    assert defaults == ParserLimits(stanza_bytes=524288, element_depth=48, attributes_per_element=64,
                                    attribute_value_bytes=16384, children_per_stanza=5000, header_bytes=4096)
    configured = _limits(_Checker("guard.toml"), {"stanza_bytes": 200, "outbound_queue": 7})
    assert (configured.parser_limits(), configured.outbound_queue) == (ParserLimits(stanza_bytes=200), 7)


def test_a_stanza_bytes_limit_set_in_limits_is_the_one_the_parser_enforces():
    """A stanza one byte over the configured stanza_bytes is refused with policy-violation by a parser built from Limits."""
    header = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
              b" to='blue.example' from='red.example' version='1.0'>")
    stanza = b"<message from='a@red.example' to='b@blue.example'><body>" + b"x" * 40 + b"</body></message>"
    received = []
    fits = StreamParser(lambda header: None, lambda element, size: received.append(size), lambda: None,
                        Limits(stanza_bytes=len(stanza)).parser_limits())
    fits.feed(header + stanza)
    assert received == [len(stanza)]
    too_small = StreamParser(lambda header: None, lambda element, size: None, lambda: None,
                             Limits(stanza_bytes=len(stanza) - 1).parser_limits())
    with pytest.raises(StreamFault) as refused:
        too_small.feed(header + stanza)
    assert refused.value.condition == "policy-violation"
