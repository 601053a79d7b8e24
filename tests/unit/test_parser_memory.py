"""
What a stream parser keeps after the stanzas it parsed are gone, measured with
tracemalloc: names a peer invents must not pile up (issue 9.7: 300 stanzas of
~200 KB with unique names left 203 MiB behind).  expat allocates through
Python's allocator, so its own name tables are counted too.
"""

import gc
import tracemalloc

import pytest
from twisted.words.xish import domish

from guard.edges import xmlstream
from guard.edges.xmlstream import StreamParser, serialise

HEADER = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"


def many_new_names(number: int) -> bytes:
    """A ~190 KB stanza of 4900 empty elements, each with a name no other stanza uses."""
    return b"<message>" + b"".join(b"<n%06d_%04d_%s/>" % (number, i, b"x" * 24) for i in range(4900)) + b"</message>"


def long_new_names(number: int) -> bytes:
    """A ~200 KB stanza of two elements whose 100 KB names no other stanza uses."""
    return b"<message>" + b"".join(b"<n%06d_%d_%s/>" % (number, i, b"x" * 100_000) for i in range(2)) + b"</message>"


@pytest.mark.parametrize("stanza, count", [(many_new_names, 24), (long_new_names, 60)], ids=["many", "long"])
def test_names_a_peer_invents_are_not_kept(stanza, count):
    """After megabytes of stanzas with ever-new names, the parser keeps less than 4 MiB (it kept 0.5-0.7 MiB per stanza)."""
    gc.collect()
    tracemalloc.start()
    try:
        parser = StreamParser(lambda header: None, lambda element, size: None, lambda: None)
        parser.feed(HEADER)
        before = tracemalloc.get_traced_memory()[0]
        for number in range(count):
            parser.feed(stanza(number))
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4 * 1024 * 1024, f"{retained / 2**20:.1f} MiB retained"


def test_serialiser_name_cache_keeps_no_long_names():
    """The serialiser's global cache of checked names keeps nothing of 40 elements with 100 KB names (it kept 4 MB)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(40):
            serialise(domish.Element(("jabber:server", "n%d_%s" % (number, "x" * 100_000))))
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 256 * 1024, f"{retained / 2**20:.1f} MiB retained"


def test_serialiser_name_cache_is_bounded_in_bytes():
    """However many distinct short names are serialised, the checked-name cache stays within its byte budget."""
    for number in range(5000):
        serialise(domish.Element(("jabber:server", "name%d_%s" % (number, "y" * 100))))
        assert xmlstream._valid_names_size <= xmlstream._VALID_NAMES_BYTES
        assert len(xmlstream._valid_names) <= xmlstream._NAME_CACHE_ENTRIES
