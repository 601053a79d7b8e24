"""
Properties of the stream parser and serialiser, checked on generated input.

- Any element tree the serialiser accepts comes back equal after
  serialise -> parse.
- Whatever bytes follow a valid stream header, the parser either raises
  StreamFault or yields elements that survive serialise -> parse unchanged,
  and how the bytes are split into chunks changes nothing.
"""

from __future__ import annotations

from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from guard.edges import xmlstream
from guard.core.vocabulary import XML_NS
from guard.edges.xmlstream import _REDECLARATION_BUDGET, StreamFault, StreamParser, serialise
from tests.trees import tree

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='blue.example' from='red.example' version='1.0'>"
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])



class Collector:
    """Runs one StreamParser and keeps what it reports, and the fault if any."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.elements: list[domish.Element] = []
        self.fault: str | None = None
        self.parser = StreamParser(self.started, self.received, self.ended)

    def started(self, header) -> None:
        self.events.append(("started",))

    def received(self, element: domish.Element, size: int) -> None:
        self.elements.append(element)
        self.events.append(("element", tree(element), size))

    def ended(self) -> None:
        self.events.append(("ended",))

    def feed(self, *chunks: bytes) -> "Collector":
        try:
            for chunk in chunks:
                self.parser.feed(chunk)
        except StreamFault as fault:
            self.fault = fault.condition
        return self


def parse_one(xml: str) -> domish.Element:
    """The single element xml holds, parsed inside a jabber:server stream."""
    collector = Collector().feed(HEADER + xml.encode("utf-8"))
    assert collector.fault is None, (collector.fault, xml)
    (element,) = collector.elements
    return element


# -- generated element trees ----------------------------------------------

names = st.one_of(
    st.sampled_from(["message", "body", "x", "item", "r\u00e9sum\u00e9", "_z9", "a.b-c", "\u4e2d"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,8}", fullmatch=True),
)
namespaces = st.sampled_from(
    ["jabber:server", "jabber:x:data", "urn:example:a", "", "http://jabber.org/protocol/chatstates", "urn:\u00e9&'\""]
)
xml_characters = st.one_of(
    st.sampled_from(list("\t\n\r &<>\"']]>")),
    st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)).filter(lambda c: c not in "\ufffe\uffff"),
)
xml_text = st.text(alphabet=xml_characters, max_size=20)
attribute_keys = st.one_of(
    names,
    st.just((XML_NS, "lang")),
    st.tuples(st.sampled_from(["urn:attr:a", "urn:attr:b", "jabber:server"]), names),
)


@st.composite
def elements(draw, children=st.just([])):
    element = domish.Element((draw(namespaces), draw(names)))
    element.attributes = draw(st.dictionaries(attribute_keys, xml_text, max_size=4))
    for child in draw(children):
        if isinstance(child, str):
            element.children.append(child)
        else:
            element.addChild(child)
    return element


element_trees = st.recursive(
    elements(),
    lambda inner: elements(st.lists(st.one_of(inner, xml_text), max_size=4)),
    max_leaves=12,
)


@SETTINGS
@given(element_trees)
def test_serialise_then_parse_gives_an_equal_tree(element):
    """Any generated element tree serialises to XML that parses back to an equal tree."""
    assert tree(parse_one(serialise(element))) == tree(element)


@SETTINGS
@given(element_trees, st.sampled_from(["jabber:server", "jabber:client", "urn:example:a"]))
def test_serialise_declares_namespace_relative_to_the_stream_default(element, default_namespace):
    """Serialising for any stream default namespace gives XML that parses back equal in that stream."""
    xml = serialise(element, default_namespace)
    header = HEADER.replace(b"xmlns='jabber:server'", b"xmlns='%s'" % default_namespace.encode())
    collector = Collector().feed(header + xml.encode("utf-8"))
    assert collector.fault is None
    assert [tree(parsed) for parsed in collector.elements] == [tree(element)]


# -- arbitrary bytes after a valid header -----------------------------------

TOKENS = [
    b"<message>", b"</message>", b"<body>", b"</body>", b"<x xmlns='urn:x'/>", b"&amp;", b"&#65;",
    b"&#x1F600;", b"text", b" ", b"\n", b"<a b='c'>", b"</a>", b"<![CDATA[x]]>", b"<!--c-->", b"\xff",
    b"\xc3\xa9", b"\xe2\x9c", b"<y:z/>", b"<presence/>", b"</stream:stream>", b"'", b'"', b">", b"<",
    b"&", b"xml:lang='en'", b"<q xmlns:y='urn:y' y:k='v'>", b"</q>", b"<db:result>", b"</db:result>",
    b"<iq type='get' id='1'>", b"</iq>", b"\r\n", b"]]>", b"&lt;", b"<!DOCTYPE x>", b"<?pi?>",
    b"<stream:stream>", b"/>", b"=", b"\x00", b"\x01", b"&#0;", b"<m xmlns=''>", b"</m>",
]
soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
tails = st.one_of(st.binary(max_size=300), soup)


def assert_elements_survive_a_round_trip(collector: Collector) -> None:
    for element in collector.elements:
        assert tree(parse_one(serialise(element))) == tree(element)


@SETTINGS
@given(tails)
def test_arbitrary_bytes_fault_or_round_trip(tail):
    """Bytes after a valid header either raise StreamFault or yield elements that round-trip unchanged."""
    collector = Collector().feed(HEADER, tail)
    assert_elements_survive_a_round_trip(collector)
    sizes = sum(event[2] for event in collector.events if event[0] == "element")
    assert sizes <= len(tail)


@SETTINGS
@given(tails, st.data())
def test_chunking_changes_nothing(tail, data):
    """Splitting the bytes into chunks anywhere gives the same events and sizes, and a fault whenever one chunk does.

    The condition may differ when the bytes hold two faults: which one expat
    reports first can depend on where a chunk ends (text is reported at the
    end of a chunk, before the byte that breaks the next one).  After the
    stream has ended, the rest of that chunk is ignored but a later chunk is
    refused, so only streams that did not end are compared for faults.
    """
    cuts = sorted(data.draw(st.lists(st.integers(0, len(tail)), max_size=4)))
    pieces = [tail[start:end] for start, end in zip([0] + cuts, cuts + [len(tail)]) if end > start]
    whole = Collector().feed(HEADER + tail)
    chunked = Collector().feed(HEADER, *pieces)
    assert chunked.events == whole.events
    if ("ended",) not in whole.events:
        assert (chunked.fault is None) == (whole.fault is None)


@SETTINGS
@given(st.lists(element_trees, min_size=1, max_size=4), st.data())
def test_serialised_stanzas_stream_back_with_exact_sizes(stanzas, data):
    """A stream of serialised stanzas, chunked anywhere, yields each stanza again with its exact byte size."""
    wire = [serialise(stanza).encode("utf-8") for stanza in stanzas]
    stream = HEADER + b" ".join(wire)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    pieces = [stream[start:end] for start, end in zip([0] + cuts, cuts + [len(stream)])]
    collector = Collector().feed(*pieces)
    assert collector.fault is None
    assert collector.events == [("started",)] + [
        ("element", tree(stanza), len(encoded)) for stanza, encoded in zip(stanzas, wire)
    ]


# -- what leaves is bounded by what arrived ----------------------------------

# The factor the serialiser promises (see serialise's docstring): the worst
# case, '&' inside CDATA, is tested exactly in test_xmlstream.py.
EXPANSION = 5
# Added to it: namespaces a stanza may use without declaring them (those of
# the stream header, each written at most twice per stanza), and the
# characters the serialiser may spend declaring a short namespace again.
HEADER_NAMESPACES = ("jabber:server", "http://etherx.jabber.org/streams", "jabber:server:dialback")
ALLOWANCE = 2 * sum(len(uri) + len(' xmlns:ns0=""') for uri in HEADER_NAMESPACES) + _REDECLARATION_BUDGET

STANZA_TOKENS = [
    b"<x>", b"</x>", b"<y/>", b"<p:e>", b"</p:e>", b"<p:f/>", b"<q:g/>", b"<db:result/>", b"<n xmlns=''>",
    b"</n>", b"<a xmlns='urn:a'>", b"</a>", b"<b xmlns:p='urn:a-rather-long-namespace-name/v1'>", b"</b>",
    b"<c xmlns:q='urn:q' q:k='v' p:k='w'>", b"</c>", b"<![CDATA[&&<<]]>]]>", b"&amp;&lt;", b"&gt;", b">",
    b"text", b"\"'", b"<d k='\"' j=\"'\" t='&#9;&#10;&#13;'/>", b"]]&gt;", b"&#13;", b"\xc3\xa9",
]
stanza_bodies = st.lists(st.sampled_from(STANZA_TOKENS), max_size=60).map(b"".join)


@SETTINGS
@given(stanza_bodies)
def test_output_is_at_most_five_times_the_wire_size(body):
    """Whatever stanza the parser accepts serialises to at most 5x its wire size plus a fixed allowance, and re-parses equal."""
    wire = b"<message xmlns:p='urn:p'>" + body + b"</message>"
    collector = Collector().feed(HEADER, wire)
    for element, (_, _, size) in zip(collector.elements, [e for e in collector.events if e[0] == "element"]):
        xml = serialise(element)
        assert len(xml.encode("utf-8")) <= EXPANSION * size + ALLOWANCE
        assert tree(parse_one(xml)) == tree(element)


@SETTINGS
@given(tails, st.data())
def test_renewing_expat_after_every_stanza_changes_nothing(tail, data):
    """Replacing the expat parser after every stanza gives the same events, sizes and faults, however the bytes are chunked."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(tail)), max_size=4)))
    pieces = [tail[start:end] for start, end in zip([0] + cuts, cuts + [len(tail)]) if end > start]
    plain = Collector().feed(HEADER + tail)
    with patch.object(xmlstream, "_EXPAT_RENEW_BYTES", 0):
        renewed = Collector().feed(HEADER, *pieces)
    assert renewed.events == plain.events
    if ("ended",) not in plain.events:
        assert (renewed.fault is None) == (plain.fault is None)
