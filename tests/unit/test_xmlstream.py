"""
The stream parser as a peer meets it: bytes in, callbacks out.

Every stream below is written the way it looks on the wire.  A ``Recorder``
collects what the parser reports as ``("started", header)``,
``("element", serialised, size)`` and ``("ended",)`` tuples, so one
assertion checks order, count and content.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from guard.core.policy.elements import clone, parse_stanza_text, seal, sealed_copy
from guard.core.vocabulary import STREAMS_NS, XML_NS
from guard.edges import xmlstream
from guard.edges.xmlstream import (
    ParserLimits,
    StreamFault,
    StreamHeader,
    OversizedStanza,
    StreamParser,
    serialise,
)

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='blue.example' from='red.example'"
    b" id='s1' version='1.0' xml:lang='en'>"
)

EXPECTED_HEADER = StreamHeader(
    name="stream",
    uri=STREAMS_NS,
    default_namespace="jabber:server",
    prefixes={"stream": STREAMS_NS, "db": "jabber:server:dialback"},
    attributes={
        "to": "blue.example",
        "from": "red.example",
        "id": "s1",
        "version": "1.0",
        "xml:lang": "en",
    },
)

FEATURES = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
)
DB_RESULT = b"<db:result from='red.example' to='blue.example'>b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3</db:result>"
MESSAGE = (
    b"<message from='romeo@red.example/orchard' to='juliet@blue.example' type='chat' id='m1'"
    b" xml:lang='en'><body>Art thou not Romeo, and a Montague? \xe2\x9c\xa8</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
)
PRESENCE = b"<presence from='romeo@red.example/orchard' to='juliet@blue.example'/>"
IQ_RESULT = b"<iq type='result' id='x1' from='blue.example' to='red.example'/>"
FOOTER = b"</stream:stream>"

STREAM = HEADER + FEATURES + b" " + DB_RESULT + b"\n" + MESSAGE + PRESENCE + b"\t" + IQ_RESULT + FOOTER


class Recorder:
    """Collects everything a StreamParser reports, in order."""

    def __init__(self, limits: ParserLimits = ParserLimits()) -> None:
        self.events: list[tuple] = []
        self.elements: list[domish.Element] = []
        self.parser = StreamParser(self.started, self.received, self.ended, limits)

    def started(self, header: StreamHeader) -> None:
        self.events.append(("started", header))

    def received(self, element: domish.Element, size: int) -> None:
        self.elements.append(element)
        self.events.append(("element", serialise(element), size))

    def ended(self) -> None:
        self.events.append(("ended",))

    def feed(self, *chunks: bytes) -> "Recorder":
        for chunk in chunks:
            self.parser.feed(chunk)
        return self


def fault_of(data: bytes, limits: ParserLimits = ParserLimits()) -> StreamFault:
    """The fault the parser raises on data fed in one chunk (fails the test if none)."""
    with pytest.raises(StreamFault) as raised:
        Recorder(limits).feed(data)
    return raised.value


EXPECTED_STREAM_EVENTS = [
    ("started", EXPECTED_HEADER),
    (
        "element",
        '<features xmlns="http://etherx.jabber.org/streams">'
        '<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"><required/></starttls>'
        '<dialback xmlns="urn:xmpp:features:dialback"/></features>',
        len(FEATURES),
    ),
    (
        "element",
        '<result xmlns="jabber:server:dialback" from="red.example" to="blue.example">'
        "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3</result>",
        len(DB_RESULT),
    ),
    (
        "element",
        '<message from="romeo@red.example/orchard" to="juliet@blue.example" type="chat" id="m1"'
        ' xml:lang="en"><body>Art thou not Romeo, and a Montague? \u2728</body>'
        '<active xmlns="http://jabber.org/protocol/chatstates"/></message>',
        len(MESSAGE),
    ),
    ("element", '<presence from="romeo@red.example/orchard" to="juliet@blue.example"/>', len(PRESENCE)),
    ("element", '<iq type="result" id="x1" from="blue.example" to="red.example"/>', len(IQ_RESULT)),
    ("ended",),
]


# -- a well-behaved stream ------------------------------------------------


def test_whole_stream_in_one_chunk():
    """A stream fed in one chunk yields its header, every top-level element with its exact size, and its end."""
    assert Recorder().feed(STREAM).events == EXPECTED_STREAM_EVENTS


def test_stream_one_byte_at_a_time():
    """Feeding a stream one byte at a time reports exactly what feeding it whole does."""
    recorder = Recorder()
    for index in range(len(STREAM)):
        recorder.feed(STREAM[index : index + 1])
    assert recorder.events == EXPECTED_STREAM_EVENTS


def test_stream_split_at_every_boundary():
    """Splitting the stream into two chunks at any byte gives the same events."""
    for split in range(1, len(STREAM)):
        recorder = Recorder().feed(STREAM[:split], STREAM[split:])
        assert recorder.events == EXPECTED_STREAM_EVENTS, f"split at {split}"


def test_elements_carry_namespaces_attributes_and_children():
    """A parsed stanza is a domish tree with uri, defaultUri, attributes and children as the brief describes."""
    recorder = Recorder().feed(HEADER + MESSAGE + DB_RESULT + FEATURES)
    message, result, features = recorder.elements
    assert (message.uri, message.defaultUri, message.name) == ("jabber:server", "jabber:server", "message")
    assert message.attributes == {
        "from": "romeo@red.example/orchard",
        "to": "juliet@blue.example",
        "type": "chat",
        "id": "m1",
        (XML_NS, "lang"): "en",
    }
    body, active = message.children
    assert (body.uri, body.name, body.children, body.parent) == (
        "jabber:server",
        "body",
        ["Art thou not Romeo, and a Montague? \u2728"],
        None,  # no link back up: see test_a_parsed_stanza_is_freed_without_the_garbage_collector
    )
    assert (active.uri, active.defaultUri) == ("http://jabber.org/protocol/chatstates",) * 2
    assert (result.uri, result.name) == ("jabber:server:dialback", "result")
    assert (features.uri, features.name) == (STREAMS_NS, "features")
    assert message.parent is None


def test_a_parsed_stanza_is_freed_without_the_garbage_collector():
    """A stanza tree holds no reference cycle: it is gone as soon as its last reference is, with the cyclic collector off."""
    import gc
    import weakref

    recorder = Recorder().feed(HEADER + MESSAGE)
    (message,) = recorder.elements
    body = message.children[0]
    gone = [weakref.ref(message), weakref.ref(body)]
    recorder.elements.clear()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del message, body
        assert [ref() for ref in gone] == [None, None]
    finally:
        if was_enabled:
            gc.enable()


def test_namespaced_attribute_is_a_tuple_key():
    """An attribute in a namespace other than xml is keyed by (uri, name)."""
    recorder = Recorder().feed(HEADER + b"<message xmlns:e='urn:example' e:mark='1' to='a@b'/>")
    assert recorder.elements[0].attributes == {("urn:example", "mark"): "1", "to": "a@b"}


def test_text_entities_character_references_and_cdata_arrive_as_text():
    """Predefined entities, character references and CDATA sections become one text child."""
    recorder = Recorder().feed(
        HEADER + b"<message><body>a &amp; b &lt; c &gt; d &quot;&apos; &#x263A;&#65;<![CDATA[<x/>&]]>\r\nz</body></message>"
    )
    assert recorder.elements[0].children[0].children == ["a & b < c > d \"' \u263aA<x/>&\nz"]


def test_whitespace_keepalives_between_stanzas_are_ignored():
    """Whitespace pings between stanzas are allowed and produce no events."""
    recorder = Recorder().feed(HEADER, b" ", b"\n\n", PRESENCE, b" \t \r\n" * 1000, PRESENCE)
    assert [event[0] for event in recorder.events] == ["started", "element", "element"]


def test_header_without_xml_declaration_and_with_bom():
    """The XML declaration is optional and a UTF-8 byte order mark is accepted."""
    bare = HEADER[len(b"<?xml version='1.0'?>") :]
    assert Recorder().feed(bare).events == [("started", EXPECTED_HEADER)]
    assert Recorder().feed(b"\xef\xbb\xbf" + HEADER).events == [("started", EXPECTED_HEADER)]
    declared = b"<?xml version='1.0' encoding='UTF-8'?>" + bare
    assert Recorder().feed(declared).events == [("started", EXPECTED_HEADER)]


def test_size_counts_bytes_not_characters():
    """The size handed with an element is in input bytes, multi-byte characters included."""
    stanza = "<message><body>\u00e9\u263a\U0001f600</body></message>".encode()
    assert Recorder().feed(HEADER + stanza).events[1][2] == len(stanza) == 41


def test_sizes_of_empty_element_tags_with_tricky_attributes():
    """Empty-element tags whose attribute values hold '>' and '/>' are measured to their real end."""
    stanzas = [b"<presence to='/>' type=\">\"\n />", b"<iq id='a'></iq>", b"<iq id='/'></iq >", b"<message><![CDATA[]]></message>"]
    for stanza in stanzas:
        data = HEADER + stanza + b"  " + stanza
        for split in range(len(HEADER), len(data)):
            recorder = Recorder().feed(data[:split], data[split:])
            assert [event[2] for event in recorder.events[1:]] == [len(stanza)] * 2, (stanza, split)


# -- what the parser refuses ---------------------------------------------

BILLION_LAUGHS = (
    b"<?xml version='1.0'?><!DOCTYPE lolz ["
    b"<!ENTITY lol 'lol'>"
    + b"".join(
        b"<!ENTITY lol%d '%s'>" % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10) for n in range(1, 10)
    )
    + b"]>"
    + HEADER[len(b"<?xml version='1.0'?>") :]
    + b"<message><body>&lol9;</body></message>"
)
QUADRATIC_BLOWUP = (
    b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY a '"
    + b"A" * 50_000
    + b"'>]>"
    + HEADER[len(b"<?xml version='1.0'?>") :]
    + b"<message><body>"
    + b"&a;" * 10_000
    + b"</body></message>"
)
BODY = b"<message><body>%s</body></message>"

HOSTILE = [
    # name, bytes, condition
    ("doctype", b"<?xml version='1.0'?><!DOCTYPE stream:stream>" + HEADER[21:], "restricted-xml"),
    ("billion-laughs", BILLION_LAUGHS, "restricted-xml"),
    ("quadratic-blowup", QUADRATIC_BLOWUP, "restricted-xml"),
    (
        "external-entity",
        b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + HEADER[21:] + BODY % b"&x;",
        "restricted-xml",
    ),
    (
        "external-dtd",
        b"<?xml version='1.0'?><!DOCTYPE s SYSTEM 'http://127.0.0.1:1/evil.dtd'>" + HEADER[21:],
        "restricted-xml",
    ),
    (
        "parameter-entity",
        b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY % p SYSTEM 'http://127.0.0.1:1/p'>%p;]>" + HEADER[21:],
        "restricted-xml",
    ),
    ("undefined-entity-reference", HEADER + BODY % b"&nbsp;", "restricted-xml"),
    ("doctype-inside-stream", HEADER + b"<!DOCTYPE x>", "restricted-xml"),
    ("entity-declaration-inside-stanza", HEADER + BODY % b"<!ENTITY a 'b'>", "restricted-xml"),
    ("comment-before-header", b"<!-- hi -->" + HEADER[21:], "restricted-xml"),
    ("comment-between-stanzas", HEADER + b"<!-- hi -->", "restricted-xml"),
    ("comment-inside-stanza", HEADER + BODY % b"<!-- hi -->", "restricted-xml"),
    ("processing-instruction-before-header", b"<?foo bar?>" + HEADER[21:], "restricted-xml"),
    ("processing-instruction-inside-stanza", HEADER + BODY % b"<?foo bar?>", "restricted-xml"),
    ("xml-declaration-inside-stream", HEADER + b"<?xml version='1.0'?>", "not-well-formed"),
    ("invalid-utf8-lone-continuation", HEADER + BODY % b"\x80", "unsupported-encoding"),
    ("invalid-utf8-overlong", HEADER + BODY % b"\xc0\xaf", "unsupported-encoding"),
    ("invalid-utf8-surrogate", HEADER + BODY % b"\xed\xa0\x80", "unsupported-encoding"),
    ("invalid-utf8-truncated", HEADER + BODY % b"\xe2\x9c", "unsupported-encoding"),
    ("invalid-utf8-in-header", HEADER[:-1] + b" x='\xff'>", "unsupported-encoding"),
    ("utf16-with-bom", HEADER[21:].decode().encode("utf-16"), "unsupported-encoding"),
    ("utf16le-without-bom", HEADER[21:].decode().encode("utf-16-le"), "unsupported-encoding"),
    ("utf16be-without-bom", HEADER[21:].decode().encode("utf-16-be"), "unsupported-encoding"),
    ("declared-latin1", b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER[21:], "unsupported-encoding"),
    ("declared-utf16", b"<?xml version='1.0' encoding='UTF-16'?>" + HEADER[21:], "unsupported-encoding"),
    ("xml-1.1", b"<?xml version='1.1'?>" + HEADER[21:], "unsupported-version"),
    ("control-character", HEADER + BODY % b"\x01", "not-well-formed"),
    ("nul-character", HEADER + BODY % b"\x00", "not-well-formed"),
    ("escape-character-in-attribute", HEADER + b"<message id='\x1b'/>", "not-well-formed"),
    ("control-character-reference", HEADER + BODY % b"&#1;", "not-well-formed"),
    ("nul-character-reference", HEADER + BODY % b"&#0;", "not-well-formed"),
    ("noncharacter-fffe-reference", HEADER + BODY % b"&#xFFFE;", "not-well-formed"),
    ("noncharacter-fffe-raw", HEADER + BODY % b"\xef\xbf\xbe", "not-well-formed"),
    ("surrogate-reference", HEADER + BODY % b"&#xD800;", "not-well-formed"),
    ("nested-stream-header", HEADER + HEADER[21:], "unsupported-stanza-type"),
    ("stream-header-inside-stanza", HEADER + BODY % HEADER[21:], "policy-violation"),
    ("unbalanced-tags", HEADER + b"<message><body></message>", "not-well-formed"),
    ("stray-end-tag", HEADER + b"</message>", "not-well-formed"),
    ("text-inside-stream", HEADER + b"hello", "bad-format"),
    ("text-between-stanzas", HEADER + PRESENCE + b" x " + PRESENCE, "bad-format"),
    ("entity-text-inside-stream", HEADER + b"&amp;", "bad-format"),
    ("cdata-inside-stream", HEADER + b"<![CDATA[x]]>", "bad-format"),
    ("root-in-wrong-namespace", b"<stream:stream xmlns:stream='urn:not-streams'>", "invalid-namespace"),
    ("root-without-namespace", b"<stream>", "invalid-namespace"),
    ("root-is-a-stanza", b"<message xmlns='jabber:server'>", "invalid-namespace"),
    ("unbound-element-prefix", HEADER + b"<foo:message/>", "not-well-formed"),
    ("unbound-attribute-prefix", HEADER + b"<message foo:id='1'/>", "not-well-formed"),
    ("duplicate-attribute", HEADER + b"<message id='1' id='2'/>", "not-well-formed"),
    (
        "duplicate-attribute-after-namespaces",
        HEADER + b"<message xmlns:a='urn:x' xmlns:b='urn:x' a:id='1' b:id='2'/>",
        "not-well-formed",
    ),
    ("element-in-xml-namespace", HEADER + b"<xml:message/>", "bad-namespace-prefix"),
    ("child-in-xml-namespace", HEADER + BODY % b"<xml:x/>", "bad-namespace-prefix"),
    ("xml-prefix-rebound", HEADER + b"<message xmlns:xml='urn:x'/>", "not-well-formed"),
    ("lt-in-attribute", HEADER + b"<message id='<'/>", "not-well-formed"),
    ("bare-ampersand", HEADER + BODY % b"a & b", "not-well-formed"),
    ("junk-before-header", b"hello" + HEADER[21:], "not-well-formed"),
    ("end-before-start", b"</stream:stream>", "not-well-formed"),
]


@pytest.mark.parametrize("data,condition", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_input_is_refused(data, condition):
    """Each hostile or broken input raises StreamFault with its RFC 6120 condition, whole or dripped."""
    assert fault_of(data).condition == condition
    recorder = Recorder()
    with pytest.raises(StreamFault) as raised:
        for index in range(0, len(data), 7):
            recorder.feed(data[index : index + 7])
    assert raised.value.condition == condition


def test_entity_expansion_is_refused_before_any_expansion():
    """Billion laughs and quadratic blowup are refused at the DOCTYPE, in well under a second, with no element delivered."""
    for data in (BILLION_LAUGHS, QUADRATIC_BLOWUP):
        recorder = Recorder()
        began = time.perf_counter()
        with pytest.raises(StreamFault):
            recorder.feed(data)
        assert time.perf_counter() - began < 0.5
        assert recorder.events == []


def test_expat_message_is_in_the_fault_detail_not_its_text():
    """A fault from expat carries expat's own message in its detail, for the log; its text is the guard's own."""
    fault = fault_of(HEADER + b"<message><body></message>")
    assert "mismatched tag" in fault.detail
    assert fault.text == "the stream is not well-formed XML"


def test_valid_prefix_before_invalid_utf8_is_still_delivered():
    """Stanzas complete before the first invalid byte are delivered, then the stream is refused."""
    recorder = Recorder()
    with pytest.raises(StreamFault) as raised:
        recorder.feed(HEADER + PRESENCE + b"<message>\xff")
    assert raised.value.condition == "unsupported-encoding"
    assert [event[0] for event in recorder.events] == ["started", "element"]


def test_multibyte_character_split_across_chunks_is_fine():
    """A UTF-8 character split between two chunks is not mistaken for an encoding error."""
    recorder = Recorder().feed(HEADER + b"<message><body>\xe2", b"\x9c", b"\xa8</body></message>")
    assert recorder.elements[0].children[0].children == ["\u2728"]


def test_truncated_character_followed_by_ascii_is_an_encoding_error():
    """A chunk that leaves half a character and a chunk of ASCII after it are refused as bad UTF-8."""
    recorder = Recorder().feed(HEADER + b"<message><body>\xe2")
    with pytest.raises(StreamFault) as raised:
        recorder.feed(b"abc</body></message>")
    assert raised.value.condition == "unsupported-encoding"


# -- limits, each at its boundary ----------------------------------------


def stanza_of_size(size: int, name: bytes = b"message") -> bytes:
    """A stanza of exactly size bytes (a body padded with text)."""
    shell = b"<%s><body></body></%s>" % (name, name)
    return b"<%s><body>%s</body></%s>" % (name, b"x" * (size - len(shell)), name)


def test_stanza_at_the_byte_limit_passes_and_one_over_fails():
    """A stanza exactly stanza_bytes long passes; one byte longer is a policy-violation."""
    limits = ParserLimits(stanza_bytes=200)
    recorder = Recorder(limits).feed(HEADER + stanza_of_size(200))
    assert recorder.events[1][2] == 200
    assert fault_of(HEADER + stanza_of_size(201), limits).condition == "policy-violation"


def test_empty_element_stanza_at_the_byte_limit():
    """An empty-element stanza is measured to its '/>' for the limit too."""
    limits = ParserLimits(stanza_bytes=40)
    at_limit = b"<presence id='" + b"p" * (40 - len(b"<presence id=''/>")) + b"'/>"
    assert len(at_limit) == 40
    assert Recorder(limits).feed(HEADER + at_limit).events[1][2] == 40
    over = at_limit.replace(b"p'", b"pp'")
    assert fault_of(HEADER + over, limits).condition == "policy-violation"


def test_default_stanza_limit_is_512_kib():
    """With default limits a 512 KiB stanza passes and one byte more fails."""
    size = 512 * 1024
    assert Recorder().feed(HEADER + stanza_of_size(size)).events[1][2] == size
    assert fault_of(HEADER + stanza_of_size(size + 1)).condition == "policy-violation"


def test_oversized_stanza_is_refused_while_it_arrives():
    """An endless stanza is refused as soon as the bytes fed exceed the limit, before any end tag."""
    limits = ParserLimits(stanza_bytes=10_000)
    recorder = Recorder(limits).feed(HEADER, b"<message><body>")
    fed = len(b"<message><body>")
    with pytest.raises(StreamFault) as raised:
        while fed <= 20_000:
            fed += 100
            recorder.feed(b"y" * 100)
    assert raised.value.condition == "policy-violation"
    assert 10_000 < fed <= 10_100


def test_oversized_start_tag_between_stanzas_is_refused_while_it_arrives():
    """An endless start tag of a top-level element is refused once it exceeds the stanza limit."""
    limits = ParserLimits(stanza_bytes=10_000)
    recorder = Recorder(limits).feed(HEADER, PRESENCE, b"\n<message id='")
    fed = len(b"<message id='")
    with pytest.raises(StreamFault) as raised:
        while fed <= 20_000:
            fed += 100
            recorder.feed(b"z" * 100)
    assert raised.value.condition == "policy-violation"
    assert 10_000 < fed <= 10_100


def test_large_feed_is_checked_in_pieces():
    """One huge feed of an endless stanza is refused without parsing all of it."""
    recorder = Recorder(ParserLimits(stanza_bytes=1024))
    with pytest.raises(StreamFault) as raised:
        recorder.feed(HEADER + b"<message><body>" + b"a" * (64 * 1024 * 1024))
    assert raised.value.condition == "policy-violation"


def test_attribute_value_dripped_in_kib_chunks_is_refused_quickly():
    """A 512 KiB attribute value dripped 1 KiB at a time is refused within a second (expat 2.5 rescans partial tokens)."""
    recorder = Recorder().feed(HEADER, b"<message id='")
    began = time.perf_counter()
    with pytest.raises(StreamFault) as raised:
        for _ in range(600):
            recorder.feed(b"v" * 1024)
    assert raised.value.condition == "policy-violation"
    assert time.perf_counter() - began < 1.0


def nested(depth: int) -> bytes:
    """A message whose innermost element sits at the given depth (the message is depth 1)."""
    return b"<message>" + b"<x>" * (depth - 1) + b"</x>" * (depth - 1) + b"</message>"


def test_depth_at_the_limit_passes_and_one_deeper_fails():
    """Elements nested exactly element_depth deep pass; one level more is a policy-violation."""
    assert len(Recorder().feed(HEADER + nested(48)).elements) == 1
    assert fault_of(HEADER + nested(49)).condition == "policy-violation"


def attributes(count: int) -> bytes:
    """count distinct attributes as they look inside a start tag."""
    return b"".join(b" a%d='%d'" % (n, n) for n in range(count))


def test_attribute_count_at_the_limit_passes_and_one_over_fails():
    """An element with attributes_per_element attributes passes; one more is a policy-violation."""
    assert len(Recorder().feed(HEADER + b"<message><x%s/></message>" % attributes(64)).elements) == 1
    assert fault_of(HEADER + b"<message><x%s/></message>" % attributes(65)).condition == "policy-violation"


def test_namespace_declarations_count_as_attributes():
    """Namespace declarations count toward the attribute limit, so a flood of them is refused."""
    declarations = b"".join(b" xmlns:p%d='urn:p%d'" % (n, n) for n in range(60))
    assert len(Recorder().feed(HEADER + b"<message%s%s/>" % (declarations, attributes(4))).elements) == 1
    flood = HEADER + b"<message%s%s/>" % (declarations, attributes(5))
    assert fault_of(flood).condition == "policy-violation"


def test_stream_header_attribute_count_is_limited():
    """The stream header obeys the attribute limit too."""
    limits = ParserLimits(attributes_per_element=8)
    assert fault_of(HEADER[:-1] + b" extra='1'>", limits).condition == "policy-violation"
    assert Recorder(ParserLimits(attributes_per_element=9)).feed(HEADER[:-1] + b" extra='1'>").events


def test_attribute_value_at_the_byte_limit_passes_and_one_over_fails():
    """An attribute value of attribute_value_bytes UTF-8 bytes passes; one byte more is a policy-violation."""
    at_limit = "\u00e9".encode() * 8192
    assert len(Recorder().feed(HEADER + b"<message id='%s'/>" % at_limit).elements) == 1
    assert fault_of(HEADER + b"<message id='%s'/>" % (at_limit + b"e")).condition == "policy-violation"


def test_attribute_value_limit_counts_expanded_references():
    """The value limit counts the value after character references are expanded."""
    limits = ParserLimits(attribute_value_bytes=40)
    assert len(Recorder(limits).feed(HEADER + b"<message id='%s'/>" % (b"&#x1F600;" * 10)).elements) == 1
    over = HEADER + b"<message id='%sa'/>" % (b"&#x1F600;" * 10)
    assert fault_of(over, limits).condition == "policy-violation"


def test_namespace_name_length_is_limited():
    """A namespace URI longer than attribute_value_bytes is a policy-violation."""
    limits = ParserLimits(attribute_value_bytes=40)
    at_limit = b"urn:" + b"n" * 36
    assert len(Recorder(limits).feed(HEADER + b"<message xmlns='%s'/>" % at_limit).elements) == 1
    over = HEADER + b"<message xmlns:x='%sn'/>" % at_limit
    assert fault_of(over, limits).condition == "policy-violation"


def test_children_per_stanza_at_the_limit_passes_and_one_over_fails():
    """A stanza holding children_per_stanza elements in all passes; one more is a policy-violation."""
    inner = b"<a><b/></a>" * 2500
    assert len(Recorder().feed(HEADER + b"<message>%s</message>" % inner).elements) == 1
    assert fault_of(HEADER + b"<message>%s<c/></message>" % inner).condition == "policy-violation"


def test_children_limit_is_per_stanza():
    """The element count starts again with every stanza."""
    stanza = b"<message>%s</message>" % (b"<x/>" * 5000)
    assert len(Recorder().feed(HEADER + stanza * 3).elements) == 3


def header_of_size(size: int) -> bytes:
    """The test header padded with an attribute to exactly size bytes."""
    padding = size - len(HEADER) - len(b" pad=''")
    return HEADER[:-1] + b" pad='" + b"p" * padding + b"'>"


def test_header_at_the_byte_limit_passes_and_one_over_fails():
    """A header whose start tag ends exactly at header_bytes passes; one byte longer is a policy-violation."""
    exact = header_of_size(4096)
    assert len(exact) == 4096
    assert Recorder().feed(exact + PRESENCE).events[0][0] == "started"
    recorder = Recorder()
    for index in range(len(exact)):
        recorder.feed(exact[index : index + 1])
    assert recorder.events[0][0] == "started"
    assert fault_of(header_of_size(4097) + PRESENCE).condition == "policy-violation"


def test_header_that_never_ends_is_refused_at_the_limit():
    """Bytes that never complete a header are refused once header_bytes have arrived."""
    recorder = Recorder()
    recorder.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x='")
    with pytest.raises(StreamFault) as raised:
        for _ in range(100):
            recorder.feed(b"q" * 100)
    assert raised.value.condition == "policy-violation"


def test_whitespace_before_header_counts_toward_header_limit():
    """Whitespace flooding before the header is bounded by header_bytes."""
    assert fault_of(b"\n" * 5000 + HEADER[21:]).condition == "policy-violation"


# -- stop, end and death -------------------------------------------------


def test_stop_from_a_callback_ignores_the_rest_of_the_chunk_and_later_input():
    """After a callback calls stop(), the rest of the chunk and all later feeds are ignored, even garbage."""
    events = []

    def received(element, size):
        events.append(element.name)
        if element.name == "proceed":
            parser.stop()

    parser = StreamParser(lambda header: events.append("started"), received, lambda: events.append("ended"))
    parser.feed(
        HEADER
        + b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03<junk"
    )
    parser.feed(b"\xff\xfe more junk </stream:stream>")
    assert events == ["started", "proceed"]


def test_stop_from_stream_started():
    """stop() called while the header is reported stops the parser there."""
    events = []

    def started(header):
        events.append("started")
        parser.stop()

    parser = StreamParser(started, lambda element, size: events.append(element.name), lambda: None)
    parser.feed(HEADER + PRESENCE)
    parser.feed(PRESENCE)
    assert events == ["started"]


def test_stream_end_is_reported_once_and_the_parser_is_then_dead():
    """</stream:stream> ends the stream; input after it is ignored in that chunk and refused later."""
    recorder = Recorder().feed(HEADER + PRESENCE + FOOTER + b"<presence/>")
    assert [event[0] for event in recorder.events] == ["started", "element", "ended"]
    with pytest.raises(StreamFault):
        recorder.feed(b" ")
    assert [event[0] for event in recorder.events] == ["started", "element", "ended"]


def test_dead_after_fault():
    """After a fault every later feed raises StreamFault with the same condition and delivers nothing."""
    recorder = Recorder()
    with pytest.raises(StreamFault) as first:
        recorder.feed(HEADER + b"<!-- no -->")
    for _ in range(3):
        with pytest.raises(StreamFault) as again:
            recorder.feed(PRESENCE)
        assert again.value.condition == first.value.condition == "restricted-xml"
    assert [event[0] for event in recorder.events] == ["started"]


def test_callback_exception_propagates_and_kills_the_parser():
    """An exception raised by a callback comes out of feed() and the parser refuses all later input."""

    def received(element, size):
        raise RuntimeError("protocol bug")

    parser = StreamParser(lambda header: None, received, lambda: None)
    with pytest.raises(RuntimeError):
        parser.feed(HEADER + PRESENCE)
    with pytest.raises(StreamFault) as raised:
        parser.feed(PRESENCE)
    assert raised.value.condition == "internal-server-error"


def test_empty_feed_does_nothing():
    """Feeding no bytes reports nothing and is not an error."""
    recorder = Recorder().feed(b"", HEADER, b"")
    assert recorder.events == [("started", EXPECTED_HEADER)]


def test_stream_fault_accepts_only_rfc6120_conditions():
    """StreamFault refuses a condition RFC 6120 does not define."""
    assert StreamFault("not-well-formed", "x").condition == "not-well-formed"
    with pytest.raises(ValueError):
        StreamFault("invalid-stuff", "x")


def test_many_distinct_names_do_not_grow_without_bound():
    """A long stream of ever-new element names keeps the name caches bounded."""
    recorder = Recorder()
    recorder.feed(HEADER)
    for n in range(10_000):
        recorder.feed(b"<m%d/>" % n)
    assert len(recorder.parser._names) <= 4096
    assert len(recorder.parser._element_names) <= 4096
    assert len(recorder.elements) == 10_000


# -- serialise -----------------------------------------------------------


def reparse(xml: str, default_namespace: str = "jabber:server") -> domish.Element:
    """The one element xml holds, parsed inside a stream whose default namespace is default_namespace."""
    header = (
        "<stream:stream xmlns='%s' xmlns:stream='http://etherx.jabber.org/streams'>" % default_namespace
    ).encode()
    recorder = Recorder().feed(header + xml.encode("utf-8"))
    (element,) = recorder.elements
    return element


def test_serialise_leaves_the_default_namespace_implicit():
    """A stanza in the stream's default namespace gets no xmlns; a child in another namespace declares it."""
    message = domish.Element(("jabber:server", "message"))
    message["to"] = "juliet@blue.example"
    message.addElement("body", content="hi")
    message.addElement(("jabber:x:data", "x"))["type"] = "form"
    assert serialise(message) == (
        '<message to="juliet@blue.example"><body>hi</body><x xmlns="jabber:x:data" type="form"/></message>'
    )


def test_serialise_for_another_default_namespace():
    """The same stanza for a jabber:client stream declares jabber:server on the stanza."""
    message = domish.Element(("jabber:server", "message"))
    assert serialise(message, "jabber:client") == '<message xmlns="jabber:server"/>'


def test_serialise_child_in_no_namespace_undeclares_the_default():
    """A child in no namespace under a namespaced parent gets xmlns=''."""
    message = domish.Element(("jabber:server", "message"))
    message.addChild(domish.Element(("", "bare")))
    assert serialise(message) == '<message><bare xmlns=""/></message>'
    assert reparse(serialise(message)).children[0].uri == ""


def test_serialise_escapes_text_and_attributes():
    """&, <, the delimiting quote, the > of ]]> and whitespace that normalisation would eat are escaped; > is not."""
    message = domish.Element(("jabber:server", "message"))
    message["id"] = "a&b<c>\"d'\te\nf\rg"
    message.addElement("body", content="1 < 2 & 3 > 2 ]]> \"q\" \r\n end")
    xml = serialise(message)
    assert xml == (
        '<message id="a&amp;b&lt;c>&#34;d\'&#9;e&#10;f&#13;g">'
        "<body>1 &lt; 2 &amp; 3 > 2 ]]&gt; \"q\" &#13;\n end</body></message>"
    )
    again = reparse(xml)
    assert again["id"] == message["id"]
    assert again.children[0].children == ["1 < 2 & 3 > 2 ]]> \"q\" \r\n end"]


def test_serialise_xml_lang_and_namespaced_attributes():
    """xml:lang keeps the xml prefix; other namespaced attributes get a declared prefix."""
    message = domish.Element(("jabber:server", "message"))
    message[(XML_NS, "lang")] = "de"
    message[("urn:example:mark", "level")] = "2"
    message[("urn:example:other", "level")] = "3"
    xml = serialise(message)
    assert xml == (
        '<message xml:lang="de" xmlns:ns0="urn:example:mark" ns0:level="2"'
        ' xmlns:ns1="urn:example:other" ns1:level="3"/>'
    )
    assert reparse(xml).attributes == message.attributes


def test_serialise_unicode_round_trips():
    """Characters beyond ASCII, including astral ones, are written as UTF-8 text and come back equal."""
    message = domish.Element(("jabber:server", "message"))
    message["to"] = "r\u00f6meo@r\u00e9d.example"
    message.addElement("body", content="\u2728 \U0001f600 \u4e2d\u6587 \ufdd0")
    xml = serialise(message)
    assert "\U0001f600" in xml
    again = reparse(xml)
    assert again["to"] == message["to"]
    assert again.children[0].children == ["\u2728 \U0001f600 \u4e2d\u6587 \ufdd0"]


def test_elements_named_like_reserved_prefixes_round_trip():
    """An element whose local name is 'xmlns' or 'xml' is legal XML and survives serialise -> parse."""
    recorder = Recorder().feed(HEADER + b"<xmlns/><xml><xmlns xmlns='urn:x'/></xml>")
    for element in recorder.elements:
        assert serialise(reparse(serialise(element))) == serialise(element)
    assert [event[1] for event in recorder.events[1:]] == ["<xmlns/>", '<xml><xmlns xmlns="urn:x"/></xml>']


def test_serialise_round_trips_the_parsed_stream():
    """Every element of the sample stream serialises to XML that parses to the same serialisation."""
    for element in Recorder().feed(STREAM).elements:
        xml = serialise(element)
        assert serialise(reparse(xml)) == xml


def test_serialise_refuses_what_xml_cannot_carry():
    """Forbidden characters, invalid names, non-string values and namespace attributes raise instead of emitting bad XML."""
    cases = []
    bad_text = domish.Element(("jabber:server", "message"))
    bad_text.addElement("body", content="bell \x07")
    cases.append(bad_text)
    bad_attribute = domish.Element(("jabber:server", "message"))
    bad_attribute["id"] = "\x00"
    cases.append(bad_attribute)
    cases.append(domish.Element(("jabber:server", "mes sage")))
    cases.append(domish.Element(("jabber:server", "stream:features")))
    bad_key = domish.Element(("jabber:server", "message"))
    bad_key["xmlns"] = "urn:evil"
    cases.append(bad_key)
    prefixed_key = domish.Element(("jabber:server", "message"))
    prefixed_key["xml:lang"] = "en"
    cases.append(prefixed_key)
    number = domish.Element(("jabber:server", "message"))
    number["id"] = 5
    cases.append(number)
    surrogate = domish.Element(("jabber:server", "message"))
    surrogate.addContent("\ud800")
    cases.append(surrogate)
    in_xml_namespace = domish.Element((XML_NS, "lang"))
    cases.append(in_xml_namespace)
    for element in cases:
        with pytest.raises((ValueError, TypeError)):
            serialise(element)


# -- serialise: each namespace once per scope, and a bound on what leaves --


def test_siblings_under_a_long_prefix_uri_declare_it_once():
    """4999 <p:y/> children under a 16 KB namespace name serialise to about the input's size, not 76 MiB (1738x)."""
    uri = "urn:" + "u" * (16 * 1024 - 4)
    wire = (
        b"<message><x xmlns:p='" + uri.encode() + b"'>" + b"<p:y/>" * 4999 + b"</x></message>"
    )
    (element,) = Recorder().feed(HEADER + wire).elements
    began = time.process_time()
    xml = serialise(element)
    assert time.process_time() - began < 0.1
    assert xml.count(uri) == 2
    assert len(xml.encode()) <= 2 * len(wire)
    assert xml.startswith('<message xmlns:ns0="' + uri + '"><x><y xmlns="' + uri + '"/><ns0:y/><ns0:y/>')
    assert serialise(reparse(xml)) == xml


def test_a_short_namespace_entered_again_is_declared_again():
    """A stanza error's condition and text, siblings in one short namespace, each declare it as XMPP software expects."""
    (element,) = Recorder().feed(
        HEADER + b"<message type='error'><error type='cancel' xmlns:s='urn:ietf:params:xml:ns:xmpp-stanzas'>"
        b"<s:gone/><s:text s:lang='x'>gone</s:text></error></message>"
    ).elements
    assert serialise(element) == (
        '<message type="error"><error type="cancel">'
        '<gone xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas" xmlns:ns0="urn:ietf:params:xml:ns:xmpp-stanzas"'
        ' ns0:lang="x">gone</text></error></message>'
    )


def test_cousins_in_one_long_namespace_share_one_declaration_past_the_budget():
    """A long namespace entered again is declared again only within the stanza's budget, then bound once on the stanza."""
    q, long = "urn:q:" + "q" * 594, "urn:long:" + "l" * 591
    (element,) = Recorder().feed(
        HEADER + b"<message xmlns:p='" + long.encode() + b"' xmlns:q='" + q.encode() + b"'>"
        b"<q:a><p:y/></q:a><q:a><p:y/></q:a><q:a><p:y><p:z/></p:y></q:a></message>"
    ).elements
    xml = serialise(element)
    assert xml == (
        f'<message xmlns:ns0="{long}" xmlns:ns1="{q}">'
        f'<a xmlns="{q}"><y xmlns="{long}"/></a>'
        f'<a xmlns="{q}"><ns0:y/></a>'
        "<ns1:a><ns0:y><ns0:z/></ns0:y></ns1:a></message>"
    )
    assert serialise(reparse(xml)) == xml


def test_namespaced_attribute_prefix_is_reused_by_descendants():
    """A namespaced attribute's prefix is declared once on the element that first needs it and reused below it."""
    (element,) = Recorder().feed(
        HEADER + b"<message xmlns:m='urn:mark'><x m:a='1'><y m:b='2'><z m:c='3'/></y></x></message>"
    ).elements
    xml = serialise(element)
    assert xml == '<message><x xmlns:ns0="urn:mark" ns0:a="1"><y ns0:b="2"><z ns0:c="3"/></y></x></message>'
    assert tree_of(reparse(xml)) == tree_of(element)


def test_namespaced_attribute_on_many_siblings_binds_a_long_namespace_once():
    """Thousands of siblings with an attribute in a 16 KB namespace declare it once, on the stanza."""
    mark = "urn:" + "m" * (16 * 1024 - 4)
    wire = b"<message xmlns:m='" + mark.encode() + b"'>" + b"<x m:a='1'/>" * 4000 + b"</message>"
    (element,) = Recorder().feed(HEADER + wire).elements
    xml = serialise(element)
    assert xml.count(mark) == 2
    assert len(xml.encode()) <= 2 * len(wire)
    assert xml.startswith(f'<message xmlns:ns0="{mark}"><x xmlns:ns0="{mark}" ns0:a="1"/><x ns0:a="1"/>')
    assert tree_of(reparse(xml)) == tree_of(element)


def tree_of(element: domish.Element) -> tuple:
    """An element as comparable data: namespace, name, attributes and children."""
    return (
        element.uri,
        element.name,
        dict(element.attributes),
        [child if isinstance(child, str) else tree_of(child) for child in element.children],
    )


def test_greater_than_in_text_is_not_escaped():
    """200 KB of '>' in a body leaves as 200 KB, not 800 KB: only the > of ']]>' needs escaping."""
    message = domish.Element(("jabber:server", "message"))
    message.addElement("body", content=">" * 200_000 + "]]>")
    xml = serialise(message)
    assert xml == "<message><body>" + ">" * 200_000 + "]]&gt;</body></message>"
    assert reparse(xml).children[0].children == [">" * 200_000 + "]]>"]


def test_attribute_delimiter_is_the_rarer_quote():
    """A value holding double quotes is written between single quotes, so no quote needs a reference."""
    message = domish.Element(("jabber:server", "message"))
    message["id"] = 'say "hi"'
    message["type"] = "it's"
    message["to"] = "both \"'\" quotes"
    xml = serialise(message)
    assert xml == "<message id='say \"hi\"' type=\"it's\" to='both \"&#39;\" quotes'/>"
    assert reparse(xml).attributes == message.attributes


def test_max_bytes_at_the_bound_passes_and_one_byte_over_fails():
    """The bound counts UTF-8 bytes: output of exactly max_bytes passes, one more byte raises OversizedStanza."""
    message = domish.Element(("jabber:server", "message"))
    message.addElement("body", content="\u00e9" * 100)
    size = len(serialise(message).encode("utf-8"))
    assert size == len("<message><body></body></message>") + 200
    assert serialise(message, max_bytes=size) == serialise(message)
    with pytest.raises(OversizedStanza):
        serialise(message, max_bytes=size - 1)


def test_max_bytes_stops_writing_once_over_the_bound():
    """Once the output passes max_bytes nothing more is written: a child after the bound is never reached."""
    message = domish.Element(("jabber:server", "message"))
    message.addElement("body", content="x" * 10_000)
    message.children.append(object())  # serialising this would raise TypeError
    with pytest.raises(OversizedStanza):
        serialise(message, max_bytes=1000)
    with pytest.raises(TypeError):
        serialise(message)


def test_oversized_stanza_is_a_value_error():
    """Callers that refuse any stanza the serialiser refuses (ValueError) refuse an oversized one too."""
    assert issubclass(OversizedStanza, ValueError)


def test_worst_expansion_is_five_times_the_wire_size():
    """The largest growth we can construct, '&' inside CDATA written back as '&amp;', stays within 5x the wire size."""
    wire = b"<message><body><![CDATA[" + b"&" * 100_000 + b"]]></body></message>"
    recorder = Recorder().feed(HEADER + wire)
    (element,) = recorder.elements
    size = recorder.events[-1][2]
    assert size == len(wire)
    out = len(serialise(element).encode("utf-8"))
    assert 4.9 * size < out <= 5 * size


# -- the parser is renewed at stanza boundaries, and nothing changes ------


@pytest.fixture
def renew_after_every_stanza(monkeypatch):
    """Make the parser replace its expat parser after every stanza instead of after a MiB."""
    monkeypatch.setattr(xmlstream, "_EXPAT_RENEW_BYTES", 0)


def test_renewing_after_every_stanza_changes_no_event(renew_after_every_stanza):
    """With expat replaced after each stanza, the sample stream gives the same events and sizes, whole or byte by byte."""
    assert Recorder().feed(STREAM).events == EXPECTED_STREAM_EVENTS
    recorder = Recorder()
    for index in range(len(STREAM)):
        recorder.feed(STREAM[index : index + 1])
    assert recorder.events == EXPECTED_STREAM_EVENTS


def test_renewed_parser_keeps_the_header_namespaces_and_the_stream_end(renew_after_every_stanza):
    """After renewal, prefixes and the default namespace from the header still apply, and the peer's own root name closes the stream."""
    header = (
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server'"
        b" xmlns:q='urn:a&amp;b&apos;c\"d' xmlns:db='jabber:server:dialback'>"
    )
    recorder = Recorder().feed(header + PRESENCE + b"<q:x/><db:result/>" + PRESENCE + b"</s:stream>")
    assert [event[:2] for event in recorder.events[1:]] == [
        ("element", '<presence from="romeo@red.example/orchard" to="juliet@blue.example"/>'),
        ("element", '<x xmlns="urn:a&amp;b\'c&#34;d"/>'),
        ("element", '<result xmlns="jabber:server:dialback"/>'),
        ("element", '<presence from="romeo@red.example/orchard" to="juliet@blue.example"/>'),
        ("ended",),
    ]
    assert [event[2] for event in recorder.events[1:-1]] == [len(PRESENCE), 6, 12, len(PRESENCE)]


@pytest.mark.parametrize("tail, condition", [
    (PRESENCE + b"<!ENTITY a 'b'>", "restricted-xml"),
    (PRESENCE + b"text", "bad-format"),
    (PRESENCE + b"</stream>", "not-well-formed"),
    (PRESENCE + b"<message>" + b"x" * 600_000, "policy-violation"),
])
def test_renewed_parser_refuses_as_before(renew_after_every_stanza, tail, condition):
    """Faults after a renewal get the same conditions as without one."""
    assert fault_of(HEADER + PRESENCE + tail).condition == condition


def test_a_cdata_end_split_across_text_children_is_escaped():
    """Text children ']]' and '>' next to each other are escaped as one text, so no ']]>' is written."""
    message = domish.Element(("jabber:server", "message"))
    message.children.extend(["a]", "]", ">b"])
    xml = serialise(message)
    assert xml == "<message>a]]&gt;b</message>"
    assert reparse(xml).children == ["a]]>b"]


def test_many_adjacent_text_children_serialise_in_linear_time():
    """20,000 adjacent text children are joined once, not copied into a growing string one by one."""
    message = domish.Element(("jabber:server", "message"))
    message.children.extend(["t" * 100] * 20_000)
    began = time.process_time()
    xml = serialise(message)
    assert time.process_time() - began < 0.5
    assert xml == "<message>" + "t" * 2_000_000 + "</message>"


def test_a_parsed_element_has_the_fields_domish_would_give_it():
    """The parser's lean element type carries exactly what domish.Element(qname, None, attributes) would, but no link to its parent."""
    found = []
    parser = xmlstream.StreamParser(lambda header: None, lambda element, size: found.append(element), lambda: None)
    parser.feed(HEADER + b"<message to='b@blue.example' xml:lang='en'><body>hi</body>"
                         b"<x xmlns='jabber:x:data'><field var='v'/></x></message>")
    elements = [found[0], found[0].children[0], found[0].children[1], found[0].children[1].children[0]]
    for element in elements:
        reference = domish.Element((element.uri, element.name), None, dict(element.attributes))
        assert isinstance(element, domish.Element)
        assert (element.uri, element.name, element.defaultUri, element.localPrefixes, element.attributes) == (
            reference.uri, reference.name, reference.defaultUri, reference.localPrefixes, reference.attributes)
    assert [child.parent for child in elements] == [None] * 4  # no reference cycles: freed without the collector
    assert found[0].parent is None and found[0].body is elements[1]
    assert found[0].toXml() == ("<message xmlns='jabber:server' to='b@blue.example' xml:lang='en'><body>hi</body>"
                                "<x xmlns='jabber:x:data'><field var='v'/></x></message>")


LABEL = (
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED &amp; REL BLUE</displaymarking>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIG</esssecuritylabel></label>"
    "</securitylabel>"
)


def _with_children(stanza_xml: str, *children: domish.Element) -> tuple[domish.Element, domish.Element]:
    """The stanza read from stanza_xml with children appended: once as given, once as plain copies."""
    with_given, with_copies = parse_stanza_text(stanza_xml), parse_stanza_text(stanza_xml)
    for child in children:
        with_given.addChild(child)
        with_copies.addChild(clone(child))
    return with_given, with_copies


@pytest.mark.parametrize("stanza_xml, label_xml", [
    ("<message to='b@blue.example'><body>hi</body></message>", LABEL),
    ("<message><x xmlns='urn:xmpp:sec-label:0'/></message>", LABEL),
    ("<message><x xmlns='urn:xmpp:sec-label:ess:0'/></message>", LABEL),
    ("<message xmlns='urn:xmpp:sec-label:0'/>", LABEL),
    ("<message><x xmlns='urn:a' xmlns:p='urn:xmpp:sec-label:0' p:y='1'/></message>", LABEL),
    ("<message/>", "<securitylabel xmlns='urn:xmpp:sec-label:0' xmlns:q='urn:q' q:a='1'/>"),
    ("<message/>", "<securitylabel xmlns='urn:xmpp:sec-label:0'><label xmlns=''/></securitylabel>"),
    ("<message>" + "<x xmlns='urn:r{}'/>".format("r" * 100) * 12 + "</message>",
     "<securitylabel xmlns='urn:xmpp:sec-label:0'><a><e xmlns='urn:e'/></a><b><e xmlns='urn:e'/></b></securitylabel>"),
], ids=["fresh", "namespace-declared-before", "inner-namespace-declared-before", "stanza-in-its-namespace",
        "namespace-bound-to-a-prefix", "namespaced-attribute", "child-in-no-namespace",
        "declared-twice-inside-after-the-budget-is-spent"])
def test_a_sealed_element_serialises_as_its_plain_copy(stanza_xml, label_xml):
    """A sealed element written from its remembered text, or by the general path where that text would differ, gives the bytes its plain copy gives, here and in every stanza after."""
    sealed = seal(parse_stanza_text(label_xml, "urn:none"))
    for _ in range(3):
        with_sealed, with_plain = _with_children(stanza_xml, sealed_copy(sealed))
        assert serialise(with_sealed) == serialise(with_plain)
    twice, twice_plain = _with_children(stanza_xml, sealed_copy(sealed), sealed_copy(sealed))
    assert serialise(twice) == serialise(twice_plain)
    assert reparse(serialise(twice)).toXml() == reparse(serialise(twice_plain)).toXml()


def test_a_sealed_element_counts_against_max_bytes():
    """The stanza bound holds when a sealed element is written from its remembered text: exactly the size passes, one byte less raises OversizedStanza."""
    sealed = seal(parse_stanza_text(LABEL, "urn:none"))
    stanza, _ = _with_children("<message to='b@blue.example'/>", sealed_copy(sealed))
    size = len(serialise(stanza).encode("utf-8"))
    assert serialise(stanza, max_bytes=size) == serialise(stanza)
    with pytest.raises(OversizedStanza):
        serialise(stanza, max_bytes=size - 1)


def test_a_sealed_element_refuses_every_change():
    """Copies of a sealed element share its children and its remembered text, so every mutator raises instead of changing them."""
    sealed = seal(parse_stanza_text(LABEL, "urn:none"))
    copy = sealed_copy(sealed)
    marking = next(copy.elements())
    for change in (lambda: copy.addElement("x"), lambda: marking.addContent("x"),
                   lambda: marking.__setitem__("fgcolor", "red"), lambda: copy.addChild(domish.Element(("u", "x"))),
                   lambda: marking.__delitem__("fgcolor")):
        with pytest.raises(TypeError):
            change()
    assert serialise(copy) == serialise(clone(sealed))


# -- the serialiser against Twisted's domish parser, on random trees ------------------------------

_URIS = ["jabber:server", "urn:xmpp:a", "urn:xmpp:b", ""]
_NAMES = ["message", "body", "x", "a.b", "_c-1", "\u00e9l\u00e9ment", "xmlns", "xml"]
# Text and attribute values hold every character XML escaping is about, and some that need none.
_TEXT = st.text(alphabet=st.sampled_from(list("ab &<>]\"'\r\n\t\u00e9\u2728\U0001f600")), max_size=12)
_ATTRIBUTE_KEYS = st.one_of(
    st.sampled_from(["id", "to", "type", "a-b", "_x"]),
    st.sampled_from([(XML_NS, "lang"), ("urn:xmpp:a", "mark"), ("urn:xmpp:b", "mark"), ("urn:xmpp:c", "k")]),
)


@st.composite
def _trees(draw, depth=0):
    """A domish element with random namespaces, attributes (plain and namespaced), text runs and children."""
    element = domish.Element((draw(st.sampled_from(_URIS)), draw(st.sampled_from(_NAMES))))
    for key, value in draw(st.dictionaries(_ATTRIBUTE_KEYS, _TEXT, max_size=4)).items():
        element.attributes[key] = value
    for _ in range(draw(st.integers(0, 3 if depth < 3 else 0))):
        if draw(st.booleans()):
            element.children.append(draw(_TEXT))  # appended, not added: adjacent texts stay separate
        else:
            child = draw(_trees(depth + 1))
            child.parent = element
            element.children.append(child)
    return element


def _as_parsed(element: domish.Element):
    """What a parser gives back for element: (uri, name, attributes, children) with adjacent texts joined,
    empty texts gone and a CR read as a parser reads it in text."""
    children = []
    for child in element.children:
        if isinstance(child, str):
            if children and isinstance(children[-1], str):
                children[-1] += child
            elif child:
                children.append(child)
        else:
            children.append(_as_parsed(child))
    attributes = {key if isinstance(key, str) else tuple(key): value for key, value in element.attributes.items()}
    return (element.uri, element.name, attributes, [c for c in children if c != ""])


@settings(max_examples=300, deadline=None)
@given(_trees(), st.integers(1, 400))
def test_serialise_reads_back_equal_in_domish_and_keeps_its_bound(tree, max_bytes):
    """Any tree serialises to XML that Twisted's domish parser reads back as the same tree, and with
    max_bytes it is refused exactly when its UTF-8 text is longer."""
    xml = serialise(tree)
    assert _as_parsed(parse_stanza_text(xml)) == _as_parsed(tree)
    if len(xml.encode("utf-8")) > max_bytes:
        with pytest.raises(OversizedStanza):
            serialise(tree, max_bytes=max_bytes)
    else:
        assert serialise(tree, max_bytes=max_bytes) == xml
