"""
Coverage-guided fuzzing of the stream parser with atheris.

Run from the project root (atheris must be installed in the venv):

    .venv/bin/python tests/fuzz/fuzz_xmlstream.py -max_total_time=30
    .venv/bin/python tests/fuzz/fuzz_xmlstream.py corpus_dir/ -max_total_time=300

Each input is fed after a fixed valid stream header, split into chunks at
points the fuzzer also chooses.  A finding is any exception other than
StreamFault, an element that does not come back equal after
serialise -> parse, a serialisation larger than EXPANSION times the element's
wire size plus ALLOWANCE, or a difference when the parser replaces its expat
parser after every stanza.  Small limits make the limit paths reachable.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.trees import tree  # noqa: E402

with atheris.instrument_imports():
    from guard.edges import xmlstream
    from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser, serialise

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='blue.example' from='red.example' version='1.0'>"
)

LIMITS = ParserLimits(
    stanza_bytes=2048,
    element_depth=8,
    attributes_per_element=8,
    attribute_value_bytes=128,
    children_per_stanza=64,
    header_bytes=4096,
)


# serialise's promise: at most 5x the wire size, plus the header's namespaces
# (each written at most twice) and the budget for declaring a namespace again.
EXPANSION = 5
ALLOWANCE = 2 * sum(
    len(uri) + len(' xmlns:ns0=""')
    for uri in ("jabber:server", "http://etherx.jabber.org/streams", "jabber:server:dialback")
) + xmlstream._REDECLARATION_BUDGET



def reparse(element) -> None:
    """Serialise element and parse it back; raise AssertionError if it changed."""
    again = []
    parser = StreamParser(lambda header: None, lambda parsed, size: again.append(parsed), lambda: None)
    parser.feed(HEADER + serialise(element).encode("utf-8"))
    if len(again) != 1 or tree(again[0]) != tree(element):
        raise AssertionError(f"round trip changed {serialise(element)!r}")


def parse(pieces: list[bytes], resting: bool = False) -> tuple[list, list, str | None]:
    """The elements, their sizes and the fault condition (or None) of HEADER then pieces (with ``resting``,
    the parser is told to rest after the header and after each piece)."""
    received = []
    sizes = []
    parser = StreamParser(
        lambda header: None,
        lambda element, size: (received.append(element), sizes.append(size)),
        lambda: None,
        LIMITS,
    )
    parser.feed(HEADER)
    try:
        for piece in pieces:
            if resting:
                parser.rest()
            parser.feed(piece)
    except StreamFault as fault:
        return received, sizes, fault.condition
    return received, sizes, None


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    cuts = sorted(provider.ConsumeIntInRange(0, 4096) for _ in range(provider.ConsumeIntInRange(0, 3)))
    tail = provider.ConsumeBytes(sys.maxsize)
    cuts = [min(cut, len(tail)) for cut in cuts]
    pieces = [tail[start:end] for start, end in zip([0] + cuts, cuts + [len(tail)])]

    received, sizes, fault = parse(pieces)
    if sum(sizes) > len(tail):
        raise AssertionError("elements claim more bytes than were fed")
    for element, size in zip(received, sizes):
        reparse(element)
        if len(serialise(element).encode("utf-8")) > EXPANSION * size + ALLOWANCE:
            raise AssertionError(f"{size} bytes serialise to {serialise(element)!r}")

    renew_every = xmlstream._EXPAT_RENEW_BYTES
    xmlstream._EXPAT_RENEW_BYTES = 0
    try:
        renewed, renewed_sizes, renewed_fault = parse(pieces)
    finally:
        xmlstream._EXPAT_RENEW_BYTES = renew_every
    if [tree(element) for element in renewed] != [tree(element) for element in received] or renewed_sizes != sizes:
        raise AssertionError("renewing expat after every stanza changed what was parsed")
    if (renewed_fault is None) != (fault is None):
        raise AssertionError(f"renewing expat changed the fault: {fault} -> {renewed_fault}")

    rested, rested_sizes, rested_fault = parse(pieces, resting=True)
    if [tree(element) for element in rested] != [tree(element) for element in received] or rested_sizes != sizes:
        raise AssertionError("resting between pieces changed what was parsed")
    if rested_fault != fault:
        raise AssertionError(f"resting between pieces changed the fault: {fault} -> {rested_fault}")


SEEDS = [
    b"<message to='a@b' type='chat'><body>hi &amp; bye</body><x xmlns='jabber:x:data'/></message>",
    b"<presence/> <iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq></stream:stream>",
    b"<db:result from='red.example' to='blue.example'>key</db:result>",
    b"<message xml:lang='en' xmlns:e='urn:e' e:a='&#x1F600;'><![CDATA[<x>]]></message>",
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
]

DICTIONARY = [
    "<", ">", "/>", "</", "='", "\\\"", "&amp;", "&#x", "&#", ";", "<![CDATA[", "]]>", "<!--", "-->",
    "<?", "?>", "<!DOCTYPE", "<!ENTITY", "xmlns", "xmlns:", "xml:lang", "stream:stream",
    "</stream:stream>", "db:result", "message", "body", "jabber:server", "\\x00", "\\xc3\\xa9",
    "\\xed\\xa0\\x80", "\\xef\\xbf\\xbe", "\\x0d\\x0a",
]


def with_seeds(argv: list[str]) -> list[str]:
    """argv plus a seed corpus and a token dictionary when the caller named neither."""
    argv = list(argv)
    scratch = Path(tempfile.mkdtemp(prefix="fuzz_xmlstream_"))
    if not any(argument.startswith("-dict=") for argument in argv):
        dictionary = scratch / "xml.dict"
        dictionary.write_text("".join(f'"{token}"\n' for token in DICTIONARY))
        argv.append(f"-dict={dictionary}")
    if not any(not argument.startswith("-") for argument in argv[1:]):
        corpus = scratch / "corpus"
        corpus.mkdir()
        for number, seed in enumerate(SEEDS):
            (corpus / f"seed{number}").write_bytes(b"\x00" + seed)
        argv.append(str(corpus))
    return argv


def main() -> None:
    atheris.Setup(with_seeds(sys.argv), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
