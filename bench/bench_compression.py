"""
Bytes per stanza on the constrained link's bearer for each compression mode
(none, zlib, dictionary), with and without abbreviation of the configured
domains, on the traffic of issue 13:

- 200 labelled chat messages of about 100 characters (STANAG 4774 label with
  the ESS original as equivalent, as policies/coalition.toml emits them);
- a roster of 50 contacts coming online (presence with caps, avatar hash,
  priority, show, as policies/allow-all.toml passes them);
- a 10-occupant room conversation: 10 occupants join, then 40 messages, each
  copy to each of the 10 occupants behind the link (as a standard link
  carries it), and the same 40 messages merged once per link with a
  recipient list (as the constrained link's groupchat merge carries them).

The traffic is generated deterministically (fixed seed), from other words
and other domains (hq.alpha.example, fob.bravo.example) than the corpus the
shipped dictionary was built from, so the dictionary knows the structure of
the stanzas, not their text.  Each scenario runs on a fresh link (fresh
windows, as after the bearer comes up); every frame is read back by the far
end's reader and checked against what was written.

Run from the project root:

    .venv/bin/python bench/bench_compression.py [--scenario NAME]

Prints a table: bytes per stanza (mean) per scenario and mode, the first
stanza's bytes (what a stanza costs right after the bearer comes up: fresh
windows), the ratio to no compression, and for the merged room the bytes of
one room message crossing once for its 10 recipients.  No timing: the figures are
sizes, the same on every run.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guard.core.pipeline import Direction, Verdict  # noqa: E402
from guard.core.policy import load_policy  # noqa: E402
from guard.core.policy.elements import parse_stanza_text  # noqa: E402
from guard.edges.constrained.abbreviation import Abbreviation  # noqa: E402
from guard.edges.constrained.compression import (LINK_ELEMENT_ALLOWANCE, FrameReader, FrameWriter,  # noqa: E402
                                                 link_dictionary)
from guard.edges.link.wire import LINK_NS  # noqa: E402
from guard.edges.xmlstream import serialise  # noqa: E402


sys.path.insert(0, str(ROOT / "deploy" / "constrained"))
import build_dictionary as corpus  # noqa: E402 - the corpus's generators, with other words and domains

NEAR, FAR = "hq.alpha.example", "fob.bravo.example"
ROOM_DOMAIN = "conference." + NEAR
SEED = 1200
BUDGET = 16 * 1024 + LINK_ELEMENT_ALLOWANCE
# Words of the bench's message bodies: none of them is in the corpus's list.
BENCH_WORDS = (
    "supply drop scheduled tomorrow morning near village river crossing medical crew needs two stretchers "
    "generator broken spare parts requested helicopter delayed storm coming from coast radio relay station "
    "antenna repaired signal strong battery low recharge soon night shift starts midnight guard rotation "
    "civilians gathering market square calm situation normal bakery open schools closed mayor meeting "
    "engineer inspection tunnel flooded pump working kitchen serving dinner six o'clock"
).split()
assert not set(BENCH_WORDS) & set(corpus.CORPUS_WORDS) - {"the", "a", "of", "to", "and", "at", "on", "in", "for",
                                                           "with", "is", "are", "we", "will", "be", "please"}


def _moved(text: str) -> str:
    """A corpus generator's stanza moved to the bench's domains."""
    return text.replace(corpus.ROOM_DOMAIN, ROOM_DOMAIN).replace(corpus.RED, NEAR).replace(corpus.BLUE, FAR)


def _emitted(policy, texts: list[str]):
    """The stanzas as the policy lets them leave (elements), in the bench's domains."""
    elements = []
    for text in texts:
        judgement = policy.judge(parse_stanza_text(text), Direction("red", "blue"))
        if judgement.verdict != Verdict.PASS:
            raise SystemExit(f"the policy did not pass a bench stanza: {judgement.rule_id}")
        elements.append(parse_stanza_text(_moved(serialise(judgement.stanza))))
    return elements


def scenarios() -> dict[str, list]:
    """Each scenario's stanzas in the order the link writes them."""
    rng = random.Random(SEED)
    coalition = load_policy(ROOT / "policies" / "coalition.toml")
    allow_all = load_policy(ROOT / "policies" / "allow-all.toml")
    chats = [corpus.labelled_chat(rng, BENCH_WORDS, corpus.COALITION_LABELS[number % 2], 100) for number in range(200)]
    subscriber = f"watcher@{corpus.BLUE}"
    roster = [corpus.roster_presence(rng, contact, subscriber) for contact in range(50)]
    occupants = [f"member{number}@{corpus.BLUE}/{corpus.RESOURCES[number % len(corpus.RESOURCES)]}" for number in range(10)]
    joins = [corpus.occupant_presence(rng, "watch", f"member{joining}", occupant)
             for joining in range(10) for occupant in occupants[: joining + 1]]
    talk = []
    for _ in range(40):
        nick, message_id = f"member{rng.randrange(10)}", corpus.stanza_id(rng)
        text = corpus.groupchat(rng, BENCH_WORDS, "watch", nick, occupants[0], message_id)
        talk.append([text.replace(occupants[0], occupant) for occupant in occupants])
    room_copies = _emitted(allow_all, joins + [copy for copies in talk for copy in copies])
    merged = []
    for copies in talk:
        element = _emitted(allow_all, copies[:1])[0]
        recipients = element.addElement((LINK_NS, "recipients"))
        for occupant in occupants:
            recipients.addElement("to")["jid"] = _moved(occupant)
        merged.append(element)
    return {
        "labelled chat": _emitted(coalition, chats),
        "roster online": _emitted(allow_all, roster),
        "room, per copy": room_copies,
        "room, merged": _emitted(allow_all, joins) + merged,
    }


MODES = (("none", None, False), ("zlib", "zlib", False), ("dictionary", "dictionary", False),
         ("none+abbrev", None, True), ("zlib+abbrev", "zlib", True), ("dict+abbrev", "dictionary", True))


def frame_sizes(elements, mode, abbreviate: bool) -> list[int]:
    """Bytes each stanza takes on the bearer on a fresh link (checked by reading every frame back)."""
    abbreviation, peer = Abbreviation(NEAR, FAR), Abbreviation(FAR, NEAR)
    dictionary = link_dictionary([NEAR, ROOM_DOMAIN], [FAR]) if mode == "dictionary" else None
    writer, reader = (FrameWriter(BUDGET, dictionary), FrameReader(BUDGET, dictionary)) if mode else (None, None)
    sizes = []
    for element in elements:
        written = abbreviation.shorten(element) if abbreviate else element
        data = serialise(written).encode("utf-8")
        if writer is None:
            sizes.append(len(data))
            continue
        on_the_wire = writer(data)
        if reader(on_the_wire) != data:
            raise SystemExit("a frame did not read back as written")
        if abbreviate and serialise(peer.expand(parse_stanza_text(data.decode()))) != serialise(element):
            raise SystemExit("an abbreviated stanza did not expand back")
        sizes.append(len(on_the_wire))
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Bytes per stanza on the constrained link, per compression mode.")
    parser.add_argument("--scenario", help="run only this scenario")
    arguments = parser.parse_args(argv)
    print(f"near {NEAR} (room {ROOM_DOMAIN}), far {FAR}; frame budget {BUDGET} bytes; "
          f"dictionary {len(link_dictionary([NEAR, ROOM_DOMAIN], [FAR]))} bytes")
    header = f"{'scenario':<16} {'stanzas':>7} " + " ".join(f"{name:>12}" for name, _, _ in MODES)
    print("\nbytes per stanza on the bearer (mean; first stanza in brackets; ratio to none below)")
    print(header)
    for name, elements in scenarios().items():
        if arguments.scenario and name != arguments.scenario:
            continue
        results = [frame_sizes(elements, mode, abbreviate) for _, mode, abbreviate in MODES]
        means = [sum(sizes) / len(sizes) for sizes in results]
        print(f"{name:<16} {len(elements):>7} " + " ".join(f"{mean:>6.1f} [{sizes[0]:>3}]"
                                                         for mean, sizes in zip(means, results)))
        print(f"{'':<16} {'':>7} " + " ".join(f"{mean / means[0]:>12.2f}" for mean in means))
        if name == "room, merged":
            messages = [sizes[-40:] for sizes in results]
            print(f"{'  one message':<16} {'':>7} " + " ".join(f"{sum(m) / len(m):>12.1f}" for m in messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
