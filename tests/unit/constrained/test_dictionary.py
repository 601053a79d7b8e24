"""
The shipped preset dictionary (guard/edges/constrained/dictionary.bin) and
its builder (deploy/constrained/build_dictionary.py): current, reproducible,
shipped as package data, and made of what the link carries.
"""

import configparser
import importlib.util
from pathlib import Path

from guard.edges.constrained.compression import MAX_DICTIONARY_BYTES, shipped_dictionary

ROOT = Path(__file__).resolve().parents[3]


def builder():
    spec = importlib.util.spec_from_file_location("build_dictionary", ROOT / "deploy" / "constrained" / "build_dictionary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_dictionary_is_what_the_corpus_gives():
    """Rebuilding from deploy/constrained/corpus gives exactly the shipped bytes (run build_dictionary.py after changing the corpus)."""
    build = builder()
    assert build.build_dictionary(build.read_corpus()) == shipped_dictionary()


def test_the_dictionary_fits_the_window_with_room_for_the_domains():
    """The shipped dictionary leaves at least 1 KiB of deflate's 32 KiB window for the link's domains."""
    assert 16 * 1024 < len(shipped_dictionary()) <= MAX_DICTIONARY_BYTES - 1024


def test_the_most_useful_stanza_comes_last():
    """Whole stanzas, chosen by shared bytes covered per byte, the best last; a stanza sharing nothing new is left out."""
    build = builder()
    samples = [b"<message><body>alpha</body><label>RESTRICTED</label></message>",
               b"<message><body>bravo</body><label>RESTRICTED</label></message>",
               b"<presence><show>away</show></presence>",
               b"<presence><show>away</show></presence><x/>",
               b"<iq type='result' id='unique'/>"]
    dictionary = build.build_dictionary(samples, size=1024)
    assert dictionary == samples[0] + samples[2]
    assert build.build_dictionary(samples, size=len(samples[0])) == samples[2]


def test_the_corpus_holds_the_traffic_the_link_carries():
    """The corpus has labelled chat in both label formats, caps, MUC, receipts, chat states, pings and the link's elements."""
    lines = b"\n".join(builder().read_corpus())
    for needle in (b"<esssecuritylabel", b"<ConfidentialityLabel", b"<equivalentlabel>", b"http://jabber.org/protocol/caps",
                   b"muc#user", b'type="groupchat"', b"urn:xmpp:receipts", b"chatstates", b"urn:xmpp:ping",
                   b"disco#info", b"jabber:iq:version", b"<resume xmlns='urn:xmpp-guard:link:0'", b'from="user'):
        assert needle in lines, needle
    assert b"password" not in lines.lower()


def test_the_dictionary_is_package_data():
    """setup.cfg ships dictionary.bin with the guard.edges.constrained package, so an installed guard finds it."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    shipped = config["options.package_data"]["guard.edges.constrained"]
    assert "dictionary.bin" in [name.strip() for name in shipped.split(",")]
