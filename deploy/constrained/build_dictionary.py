"""
Build the constrained link's preset deflate dictionary
(guard/edges/constrained/dictionary.bin) from a corpus of typical stanzas.

The corpus (deploy/constrained/corpus/*.xml, one stanza per line, UTF-8) is
what the pair link writes: stanzas as the guard's policies emit them and the
wire serialiser writes them (labelled chat with XEP-0258 ESS labels and with
STANAG 4774 labels carrying the ESS original as an equivalent, presence with
entity capabilities, MUC groupchat and occupant presence, receipts, chat
states, iq ping/disco/version), some with the configured domains
abbreviated, and the link's own elements (stream header, resume, acks).

The dictionary is chosen greedily, whole stanzas at a time: the stanza that
covers the most not yet covered 8-byte substrings, weighted by the number of
stanzas of the corpus that contain them, per byte of its own, comes next,
until no stanza adds anything or the dictionary is full (31 KiB: the link
appends its domains, up to deflate's 32 KiB window).  The stanzas are laid
out with the most useful last, where deflate's distances to them are
shortest.  Whole stanzas give deflate the long matches (up to 258 bytes) a
label or a caps element is made of.  Same corpus, same bytes: nothing
depends on hash order or the clock.

Run from the project root:

    .venv/bin/python deploy/constrained/build_dictionary.py                # corpus -> dictionary.bin
    .venv/bin/python deploy/constrained/build_dictionary.py --check        # exit 1 if dictionary.bin is stale
    .venv/bin/python deploy/constrained/build_dictionary.py --write-corpus # regenerate the corpus, then build

``--write-corpus`` writes the corpus from the generators below through the
policies in policies/ and the guard's serialiser (it needs the guard
importable); building only reads the corpus.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
DICTIONARY = ROOT / "guard" / "edges" / "constrained" / "dictionary.bin"

SHIPPED_BYTES = 31 * 1024  # the link appends its domains, up to 32 KiB
GRAM_BYTES = 8

# -- building -------------------------------------------------------------------------


def read_corpus(corpus: Path = CORPUS) -> list[bytes]:
    """The corpus's stanzas, file by file in name order, line by line, without repeats."""
    seen, samples = set(), []
    for path in sorted(corpus.glob("*.xml")):
        for line in path.read_bytes().splitlines():
            if line and line not in seen:
                seen.add(line)
                samples.append(line)
    return samples


def _grams(sample: bytes) -> set[bytes]:
    return {sample[index:index + GRAM_BYTES] for index in range(len(sample) - GRAM_BYTES + 1)}


def build_dictionary(samples: list[bytes], size: int = SHIPPED_BYTES) -> bytes:
    """The dictionary for ``samples``: greedy weighted cover by whole stanzas, the most useful last."""
    grams = [_grams(sample) for sample in samples]
    weight = Counter()
    for each in grams:
        weight.update(each)
    useful = {gram for gram, count in weight.items() if count >= 2}

    def gain(index: int, covered: set) -> int:
        return sum(weight[gram] for gram in grams[index] if gram in useful and gram not in covered)

    covered: set[bytes] = set()
    # Lazy greedy (the gain only shrinks as more is covered): a max-heap on gain per byte, ties by corpus order.
    heap = [(-gain(index, covered) / len(sample), index) for index, sample in enumerate(samples)
            if len(sample) <= size]
    heapq.heapify(heap)
    chosen, used = [], 0
    while heap:
        _, index = heapq.heappop(heap)
        current = gain(index, covered)
        if current == 0:
            continue
        density = -current / len(samples[index])
        if heap and density > heap[0][0]:
            heapq.heappush(heap, (density, index))
            continue
        if used + len(samples[index]) > size:
            continue
        chosen.append(samples[index])
        used += len(samples[index])
        covered |= grams[index]
    return b"".join(reversed(chosen))


# -- the corpus -------------------------------------------------------------------------

RED, BLUE = "red.example", "blue.example"
ROOM_DOMAIN = "muc." + RED
CORPUS_SEED = 4774

# Words of the corpus's message bodies (the bench writes its bodies from other words).
CORPUS_WORDS = (
    "convoy grid moving north south east west eta hold position report status ready copy over out "
    "request support casualty evacuation fuel water rations ammunition checkpoint bridge road route "
    "clear blocked patrol returning base sector alpha bravo charlie delta echo team leader confirm "
    "negative affirmative standby wait arrival departure time hours minutes weather visibility wind "
    "landing zone secure contact enemy friendly observed vehicles trucks moving towards heading the a "
    "of to and at on in for with is are we will be please send update"
).split()

CLIENTS = (  # (caps node, a caps ver as such clients send it)
    ("https://conversations.im", "q5yuBkWtlmUSg0Je9H6YuTf/PcE="),
    ("http://gajim.org", "Z8FVyoeMuIsRcigdmg+plcTuhQ8="),
    ("https://dino.im", "BVxD1bdgD6E1nP6L6FgLmnLwqBw="),
    ("http://psi-im.org", "Y1JzSL3Hrkv3DbYyfYCnnVVEy9g="),
)
RESOURCES = ("field", "pc", "radio", "phone", "laptop", "tablet", "ops")
SHOWS = (None, "away", "dnd", "xa", "chat")


def stanza_id(rng: random.Random) -> str:
    """An id as clients write them: random, so no dictionary knows it."""
    return "%08x-%04x-%04x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16),
                                          rng.getrandbits(16), rng.getrandbits(48))


def body(rng: random.Random, words, characters: int = 100) -> str:
    """A message text of about ``characters`` characters from ``words``."""
    text = []
    while sum(len(word) + 1 for word in text) < characters:
        text.append(rng.choice(words))
    return " ".join(text).capitalize()[:characters].rstrip() + "."


# ESS labels (base64 DER) the policies' test cases use, by policy file.
COALITION_LABELS = (
    "MRsCAQIGA4g3FTERMA+ABIg3FQGBBwwFQlJBVk8=",  # ALPHA RESTRICTED REL-BRAVO
    "MRsCAQMGA4g3FTERMA+ABIg3FQGBBwwFQlJBVk8=",  # ALPHA CONFIDENTIAL REL-BRAVO
    "MQgCAQEGA4g3FQ==",  # ALPHA UNCLASSIFIED
)
HIGH_TO_LOW_LABELS = (
    "MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==",  # RESTRICTED REL BLUE
    "MQgCAQEGA4g3AQ==",  # UNCLASSIFIED
)


def labelled_chat(rng: random.Random, words, label: str, characters: int = 100) -> str:
    """A chat message as a red client sends it: body, chat state, receipt request and an ESS label."""
    sender = f"user{rng.randrange(50)}@{RED}/{rng.choice(RESOURCES)}"
    recipient = f"user{rng.randrange(50)}@{BLUE}"
    return (
        f"<message from='{sender}' to='{recipient}' type='chat' id='{stanza_id(rng)}'>"
        f"<body>{body(rng, words, characters)}</body><active xmlns='http://jabber.org/protocol/chatstates'/>"
        f"<request xmlns='urn:xmpp:receipts'/><securitylabel xmlns='urn:xmpp:sec-label:0'><label>"
        f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{label}</esssecuritylabel></label></securitylabel>"
        "</message>"
    )


def roster_presence(rng: random.Random, contact: int, subscriber: str) -> str:
    """A contact of the red side coming online, as its server sends it to a subscriber on the blue side."""
    node, ver = CLIENTS[contact % len(CLIENTS)]
    show = SHOWS[contact % len(SHOWS)]
    parts = [f"<presence from='contact{contact}@{RED}/{RESOURCES[contact % len(RESOURCES)]}' to='{subscriber}'>"]
    if show:
        parts.append(f"<show>{show}</show>")
    parts.append(f"<priority>{contact % 3}</priority>")
    parts.append(f"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{node}' ver='{ver}'/>")
    parts.append(f"<x xmlns='vcard-temp:x:update'><photo>{rng.getrandbits(160):040x}</photo></x></presence>")
    return "".join(parts)


def occupant_presence(rng: random.Random, room: str, nick: str, occupant: str) -> str:
    """A room occupant's presence as the red room sends it to an occupant on the blue side."""
    node, ver = rng.choice(CLIENTS)
    return (
        f"<presence from='{room}@{ROOM_DOMAIN}/{nick}' to='{occupant}'>"
        f"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{node}' ver='{ver}'/>"
        "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member' role='participant'/></x>"
        "</presence>"
    )


def groupchat(rng: random.Random, words, room: str, nick: str, occupant: str, message_id: str) -> str:
    """A room message as the red room sends it to one occupant on the blue side."""
    return (
        f"<message from='{room}@{ROOM_DOMAIN}/{nick}' to='{occupant}' type='groupchat' id='{message_id}'>"
        f"<body>{body(rng, words, rng.randrange(20, 120))}</body>"
        f"<stanza-id xmlns='urn:xmpp:sid:0' id='{stanza_id(rng)}' by='{room}@{ROOM_DOMAIN}'/>"
        "</message>"
    )


def small_talk(rng: random.Random) -> list[str]:
    """Receipts, chat states and iq traffic between a red and a blue user."""
    sender = f"user{rng.randrange(50)}@{RED}/{rng.choice(RESOURCES)}"
    recipient = f"user{rng.randrange(50)}@{BLUE}/{rng.choice(RESOURCES)}"
    state = rng.choice(("composing", "paused", "active", "inactive", "gone"))
    node, ver = rng.choice(CLIENTS)
    query = rng.randrange(6)
    iq_id = stanza_id(rng)
    stanzas = [
        f"<message from='{sender}' to='{recipient}' id='{stanza_id(rng)}'>"
        f"<received xmlns='urn:xmpp:receipts' id='{stanza_id(rng)}'/></message>",
        f"<message from='{sender}' to='{recipient}' type='chat'><{state} xmlns='http://jabber.org/protocol/chatstates'/>"
        "</message>",
    ]
    if query == 0:
        stanzas.append(f"<iq from='{RED}' to='{BLUE}' id='{iq_id}' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        stanzas.append(f"<iq from='{RED}' to='{BLUE}' id='{iq_id}' type='result'/>")
    elif query == 1:
        stanzas.append(f"<iq from='{sender}' to='{recipient}' id='{iq_id}' type='get'>"
                       f"<query xmlns='http://jabber.org/protocol/disco#info' node='{node}#{ver}'/></iq>")
        stanzas.append(
            f"<iq from='{sender}' to='{recipient}' id='{iq_id}' type='result'>"
            f"<query xmlns='http://jabber.org/protocol/disco#info' node='{node}#{ver}'>"
            "<identity category='client' type='phone' name='Conversations'/>"
            "<feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/chatstates'/>"
            "<feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:receipts'/>"
            "<feature var='urn:xmpp:ping'/><feature var='urn:xmpp:sec-label:0'/><feature var='jabber:iq:version'/>"
            "</query></iq>")
    elif query == 2:
        stanzas.append(f"<iq from='{sender}' to='{recipient}' id='{iq_id}' type='get'>"
                       "<query xmlns='jabber:iq:version'/></iq>")
        stanzas.append(f"<iq from='{sender}' to='{recipient}' id='{iq_id}' type='result'>"
                       "<query xmlns='jabber:iq:version'><name>Gajim</name><version>1.8.4</version>"
                       "<os>Debian GNU/Linux 12</os></query></iq>")
    elif query == 3:
        stanzas.append(f"<iq from='{sender}' to='{recipient}' id='{iq_id}' type='error'>"
                       "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                       "</error></iq>")
    elif query == 4:
        stanzas.append(f"<presence from='{sender}' to='{recipient}' type='unavailable'/>")
    else:
        stanzas.append(f"<presence from='{sender}' to='{recipient.split('/')[0]}' type='subscribe'/>")
    return stanzas


def link_elements(rng: random.Random) -> list[bytes]:
    """What the link writes besides stanzas: header, resume, acknowledgements, the end of the stream."""
    from guard.edges.link import wire

    elements = [wire.stream_header("half-a", "half-b"), wire.stream_header("half-b", "half-a"), wire.STREAM_CLOSE,
                wire.ACK_REQUEST]
    for _ in range(8):
        session = "%016x" % rng.getrandbits(64)
        elements.append(wire.resume(session, rng.randrange(1, 5000), "%016x" % rng.getrandbits(64),
                                    rng.randrange(5000)))
        elements.append(wire.ack(rng.randrange(5000)))
    return elements


def write_corpus(corpus: Path = CORPUS) -> dict[str, int]:
    """Write the corpus files from the generators, judged by the policies as the link would carry them."""
    from guard.core.pipeline import Direction, Verdict
    from guard.core.policy import load_policy
    from guard.core.policy.elements import parse_stanza_text
    from guard.edges.constrained.abbreviation import Abbreviation
    from guard.edges.xmlstream import serialise

    rng = random.Random(CORPUS_SEED)
    policies = {name: load_policy(ROOT / "policies" / f"{name}.toml")
                for name in ("coalition", "high-to-low", "allow-all")}
    direction = Direction("red", "blue")
    abbreviation = Abbreviation(RED, BLUE)

    def emitted(policy: str, texts: list[str], abbreviate_every: int = 3) -> list[bytes]:
        lines = []
        for number, text in enumerate(texts):
            judgement = policies[policy].judge(parse_stanza_text(text), direction)
            if judgement.verdict != Verdict.PASS:
                continue
            element = judgement.stanza
            if number % abbreviate_every == abbreviate_every - 1:
                element = abbreviation.shorten(element)
            lines.append(serialise(element).encode("utf-8"))
        return lines

    chats = {
        "coalition": [labelled_chat(rng, CORPUS_WORDS, rng.choice(COALITION_LABELS), rng.randrange(20, 160))
                      for _ in range(160)],
        "high-to-low": [labelled_chat(rng, CORPUS_WORDS, rng.choice(HIGH_TO_LOW_LABELS), rng.randrange(20, 160))
                        for _ in range(120)],
    }
    presence = [roster_presence(rng, contact, f"user{rng.randrange(50)}@{BLUE}") for contact in range(60)]
    occupants = [f"user{number}@{BLUE}/{rng.choice(RESOURCES)}" for number in range(12)]
    room = []
    for number in range(12):
        room.append(occupant_presence(rng, "ops", f"nick{number}", rng.choice(occupants)))
    for number in range(60):
        room.append(groupchat(rng, CORPUS_WORDS, "ops", f"nick{rng.randrange(12)}", rng.choice(occupants),
                              stanza_id(rng)))
    talk = [text for _ in range(50) for text in small_talk(rng)]
    files = {
        "labelled-chat-coalition.xml": emitted("coalition", chats["coalition"]),
        "labelled-chat-high-to-low.xml": emitted("high-to-low", chats["high-to-low"]),
        "presence-roster.xml": emitted("allow-all", presence) + emitted("coalition", presence[:20]),
        "muc-room.xml": emitted("allow-all", room),
        "receipts-states-iq.xml": emitted("allow-all", talk),
        "link-elements.xml": link_elements(rng),
    }
    corpus.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        if not lines:
            raise SystemExit(f"{name}: the policies let nothing of it pass; the corpus would be empty")
        (corpus / name).write_bytes(b"".join(line + b"\n" for line in lines))
    return {name: len(lines) for name, lines in files.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if dictionary.bin is not what the corpus gives")
    parser.add_argument("--write-corpus", action="store_true", help="regenerate the corpus first (needs the guard)")
    arguments = parser.parse_args(argv)
    if arguments.write_corpus:
        sys.path.insert(0, str(ROOT))
        for name, count in write_corpus().items():
            print(f"corpus/{name}: {count} stanzas")
    dictionary = build_dictionary(read_corpus())
    if arguments.check:
        current = DICTIONARY.read_bytes() == dictionary
        print(f"{DICTIONARY.relative_to(ROOT)}: {'current' if current else 'STALE: run without --check'}")
        return 0 if current else 1
    DICTIONARY.write_bytes(dictionary)
    print(f"{DICTIONARY.relative_to(ROOT)}: {len(dictionary)} bytes from {len(read_corpus())} stanzas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
