"""The compression bench (bench/bench_compression.py): the issue's traffic, read back in every mode, and the goals it shows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import bench_compression  # noqa: E402

SCENARIOS = bench_compression.scenarios()


def test_the_traffic_is_the_issues():
    """200 labelled chats of about 100 characters, 50 contacts coming online, a room with 10 occupants behind the link."""
    chats = SCENARIOS["labelled chat"]
    assert len(chats) == 200 and all(95 <= len(str(chat.body)) <= 101 and "securitylabel" in chat.toXml() for chat in chats)
    assert len(SCENARIOS["roster online"]) == 50
    merged = SCENARIOS["room, merged"][-1]
    assert len(re.findall(r"<to jid=", merged.toXml())) == 10
    assert len(SCENARIOS["room, per copy"]) == 55 + 40 * 10


def test_a_labelled_chat_costs_under_four_tenths_of_its_uncompressed_bytes():
    """With the dictionary (and abbreviation), a labelled chat takes well under 0.4 times its plain bytes, the first one too."""
    chats = SCENARIOS["labelled chat"]
    plain = bench_compression.frame_sizes(chats, None, False)
    squeezed = bench_compression.frame_sizes(chats, "dictionary", True)
    zlib_only = bench_compression.frame_sizes(chats, "zlib", False)
    assert sum(squeezed) < 0.4 * sum(plain)
    assert squeezed[0] < 0.4 * plain[0] < zlib_only[0]


def test_a_merged_room_message_costs_less_than_one_plain_copy():
    """Crossing once with its 10 recipients, compressed, a room message costs less than one uncompressed copy did."""
    merged = bench_compression.frame_sizes(SCENARIOS["room, merged"], "dictionary", True)[-40:]
    copies = bench_compression.frame_sizes(SCENARIOS["room, per copy"], None, False)[-400:]
    assert sum(merged) / 40 < sum(copies) / 400
