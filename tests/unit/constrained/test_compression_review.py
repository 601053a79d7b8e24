"""Review of the constrained link's compression (issue 13): a frame too large for the reader says so as its own refusal,
carrying the bytes of the frames before it, so the link can take those and refuse only the oversized stanza."""

import zlib

import pytest

from guard.edges.constrained.compression import (DEFLATED, STORED, FrameReader, FrameWriter, OversizedFrame,
                                                 TEXT_OVER_BUDGET, TEXT_OVER_RATIO, TEXT_TOO_LONG, frame)
from guard.edges.filters import Refused


@pytest.mark.parametrize("big, text", [(b"<message>" + b"x" * 5000 + b"</message>", TEXT_OVER_BUDGET),
                                       (bytes(range(256)) * 20, TEXT_TOO_LONG)])
def test_an_oversized_frame_is_refused_with_the_bytes_of_the_frames_before_it(big, text):
    """A writer with a larger budget than the reader's: the reader's refusal of the big frame keeps the small frame before it."""
    writer, reader = FrameWriter(64 * 1024), FrameReader(1024)
    wire = writer(b"<message>one</message>") + (frame(STORED, big) if text == TEXT_TOO_LONG else writer(big))
    with pytest.raises(OversizedFrame) as refusal:
        reader(wire)
    assert (refusal.value.condition, refusal.value.text, refusal.value.before) == \
        ("policy-violation", text, b"<message>one</message>")


def test_many_small_bombs_in_one_read_are_a_plain_refusal_not_an_oversized_stanza():
    """Frames each within the budget that together inflate past the read's allowance are refused as a bomb, not by number."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bombs = b""
    for _ in range(200):
        payload = compressor.compress(b"A" * 1000) + compressor.flush(zlib.Z_SYNC_FLUSH)
        bombs += frame(DEFLATED, payload[:-4])
    with pytest.raises(Refused) as refusal:
        FrameReader(1024)(bombs)
    assert not isinstance(refusal.value, OversizedFrame) and refusal.value.text == TEXT_OVER_RATIO
