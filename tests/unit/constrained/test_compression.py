"""
The constrained link's frames (guard/edges/constrained/compression.py), bytes
in and bytes out: every write one frame decodable on arrival, bombs and
malformed frames refused, secrets stored outside the shared window, wire
bytes still counted.
"""

import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from guard.edges.constrained.compression import (COMPRESSION_MODES, COMPRESSION_PRIORITY, DEFLATED,
                                                 LINK_ELEMENT_ALLOWANCE, MAX_DICTIONARY_BYTES, MAX_READ_RATIO, STORED,
                                                 FrameReader, FrameWriter, carries_secret, deflate_bound,
                                                 encode_length, frame, install_compression, largest_payload,
                                                 link_dictionary, shipped_dictionary)
from guard.edges.filters import IN, OUT, ByteCount, FilterChain, Refused
from guard.edges.link.link import Link
from guard.edges.link.stream import LinkStream

from ..link.pairs import AcceptingCheck, RecordingOwner, message

BUDGET = 16 * 1024 + LINK_ELEMENT_ALLOWANCE
DICTIONARY = link_dictionary(["red.example"], ["blue.example"])

LABELLED_CHAT = (
    b'<message from="alice@red.example/field" to="bob@blue.example" id="m1" type="chat">'
    b"<body>Convoy at grid 4521 moving north, ETA 1400.</body>"
    b'<securitylabel xmlns="urn:xmpp:sec-label:0"><displaymarking fgcolor="black" bgcolor="yellow">'
    b"BRAVO LIMITED ORIGIN ALPHA</displaymarking><label><ConfidentialityLabel "
    b'xmlns="urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"><ConfidentialityInformation>'
    b"<PolicyIdentifier>BRAVO-NATIONAL</PolicyIdentifier><Classification>LIMITED</Classification>"
    b"</ConfidentialityInformation></ConfidentialityLabel></label></securitylabel></message>"
)
PRESENCE = b'<presence from="carol@red.example/radio" to="dave@blue.example"><show>away</show></presence>'
PING = b'<iq from="red.example" to="blue.example" id="p1" type="get"><ping xmlns="urn:xmpp:ping"/></iq>'
SASL_AUTH = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>"
ROOM_PASSWORD = (
    b'<presence from="alice@red.example/field" to="ops@muc.blue.example/alice">'
    b'<x xmlns="http://jabber.org/protocol/muc"><password>cauldronburn</password></x></presence>'
)
WRITES = [b"<resume xmlns='urn:xmpp-guard:link:0' session=\"s\" next='1' h='0'/>", LABELLED_CHAT, PRESENCE, PING,
          SASL_AUTH, LABELLED_CHAT, ROOM_PASSWORD, b"<a xmlns='urn:xmpp:sm:3' h='3'/>", PRESENCE]


def pair(mode="dictionary", budget=BUDGET, dictionary=DICTIONARY):
    """Two chains as the two ends of a link install them: (writing end, reading end)."""
    sender, receiver = FilterChain(), FilterChain()
    install_compression(sender, mode, budget, dictionary)
    install_compression(receiver, mode, budget, dictionary)
    return sender, receiver


def bomb_frame(inflated_bytes):
    """A well-formed deflate frame (sync-flushed, in a fresh window) that inflates to ``inflated_bytes`` zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = compressor.compress(b"\0" * inflated_bytes) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return frame(DEFLATED, payload[:-4])


def refusal(reader, data):
    with pytest.raises(Refused) as refused:
        reader(data)
    assert refused.value.condition == "policy-violation"
    return refused.value.text


@pytest.mark.parametrize("mode", ["zlib", "dictionary"])
def test_every_write_crosses_as_one_frame_and_arrives_as_written(mode):
    """Each write (link elements, stanzas, secrets, repeats) leaves as one frame and the far chain returns exactly that write."""
    sender, receiver = pair(mode)
    kinds = []
    for write in WRITES:
        on_the_wire = sender.outgoing(write)
        kinds.append(on_the_wire[0])
        assert receiver.incoming(on_the_wire) == write
    assert kinds == [DEFLATED, DEFLATED, DEFLATED, DEFLATED, STORED, DEFLATED, STORED, DEFLATED, DEFLATED]


def test_no_compression_installs_nothing():
    """Mode "none" leaves the chain as it was: the bytes on the wire are the stanza's own."""
    chain = FilterChain()
    install_compression(chain, "none", BUDGET, DICTIONARY)
    assert chain.filters(IN) == [] and chain.filters(OUT) == []
    assert chain.outgoing(LABELLED_CHAT) == LABELLED_CHAT


def test_the_modes_and_their_arguments_are_checked():
    """An unknown mode, a budget that is not a positive number of bytes, or dictionary mode without a dictionary is refused."""
    assert COMPRESSION_MODES == ("none", "zlib", "dictionary")
    for mode, budget, dictionary in [("brotli", BUDGET, DICTIONARY), ("zlib", 0, b""), ("zlib", True, b""),
                                     ("dictionary", BUDGET, b""), ("dictionary", BUDGET, b"x" * (MAX_DICTIONARY_BYTES + 1))]:
        with pytest.raises(ValueError):
            install_compression(FilterChain(), mode, budget, dictionary)


def test_each_frame_is_decodable_on_arrival_byte_by_byte():
    """Fed one byte at a time, the reader returns nothing until a frame's last byte, then exactly that frame's write."""
    sender, receiver = pair()
    for write in WRITES:
        on_the_wire = sender.outgoing(write)
        results = [receiver.incoming(on_the_wire[index:index + 1]) for index in range(len(on_the_wire))]
        assert results[:-1] == [None] * (len(on_the_wire) - 1)
        assert results[-1] == write


def test_frames_arriving_together_are_returned_together_and_a_partial_one_waits():
    """Two frames and half a third in one read: the two writes come out, the third when its rest arrives."""
    sender, receiver = pair()
    frames = [sender.outgoing(write) for write in (LABELLED_CHAT, PRESENCE, PING)]
    cut = len(frames[2]) // 2
    assert receiver.incoming(frames[0] + frames[1] + frames[2][:cut]) == LABELLED_CHAT + PRESENCE
    reader = receiver.filters(IN)[0]
    assert reader.pending_bytes == cut
    assert receiver.incoming(frames[2][cut:]) == PING and reader.pending_bytes == 0


def test_the_dictionary_makes_the_first_stanzas_smaller():
    """With the shipped dictionary and the link's domains, the first labelled chat takes fewer bytes than with plain zlib."""
    with_dictionary = pair("dictionary")[0].outgoing(LABELLED_CHAT)
    plain = pair("zlib")[0].outgoing(LABELLED_CHAT)
    assert len(with_dictionary) < len(plain) < len(LABELLED_CHAT)


def test_a_bomb_is_refused_without_inflating_more_than_the_budget():
    """A 10 MB run of zeros in a frame of about 10 KB is refused, and reading it never holds much more than the budget."""
    bomb = bomb_frame(10 * 1000 * 1000)
    assert len(bomb) < 12 * 1024 and len(bomb) <= largest_payload(DEFLATED, BUDGET)
    reader = FrameReader(BUDGET, DICTIONARY)
    tracemalloc.start()
    try:
        text = refusal(reader, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert text == "a compressed frame inflates past the frame budget"
    assert peak < BUDGET + 256 * 1024


def test_the_budget_is_checked_on_inflated_bytes():
    """A frame inflating to exactly the budget passes; one byte more is refused, however few compressed bytes it takes."""
    assert FrameReader(BUDGET)(bomb_frame(BUDGET)) == b"\0" * BUDGET
    over = bomb_frame(BUDGET + 1)
    assert len(over) < 100
    assert refusal(FrameReader(BUDGET), over) == "a compressed frame inflates past the frame budget"


def test_many_small_bombs_in_one_read_are_refused():
    """Frames each within the budget but together inflating far more than their compressed size allows are refused."""
    small_bomb = bomb_frame(BUDGET)
    read = small_bomb * 40
    assert 40 * BUDGET > 2 * BUDGET + MAX_READ_RATIO * len(read)
    assert refusal(FrameReader(BUDGET), read) == "compressed frames inflate too much for their size"


def test_many_ordinary_frames_in_one_read_pass():
    """A read holding a hundred repeated stanzas (well compressed in the shared window) is not mistaken for a bomb."""
    sender, receiver = pair()
    writes = [PRESENCE.replace(b"radio", b"radio%d" % number) for number in range(100)]
    assert receiver.incoming(b"".join(sender.outgoing(write) for write in writes)) == b"".join(writes)


def test_an_oversized_length_is_refused_before_its_payload_is_buffered():
    """A header announcing more than a budget-sized frame can take compressed is refused on its own, nothing buffered."""
    for frame_type in (DEFLATED, STORED):
        reader = FrameReader(BUDGET)
        longest = largest_payload(frame_type, BUDGET)
        assert reader(bytes((frame_type,)) + encode_length(longest) + b"\0") is None
        assert reader.pending_bytes == 1 + len(encode_length(longest)) + 1
        reader = FrameReader(BUDGET)
        assert refusal(reader, bytes((frame_type,)) + encode_length(longest + 1)) == (
            "a compressed frame longer than the frame budget allows")
        assert reader.pending_bytes == 0
    assert deflate_bound(BUDGET) < 2 * BUDGET


@pytest.mark.parametrize("header, text", [
    (b"Z\x05", "a compressed frame of unknown type"),
    (b"D\x00", "a compressed frame with a malformed length"),
    (b"D\x85\x00", "a compressed frame with a malformed length"),
    (b"D\x80\x80\x80\x80\x01", "a compressed frame with a malformed length"),
])
def test_malformed_headers_are_refused(header, text):
    """An unknown type, a zero length, a non-minimal length or a length of five bytes is refused."""
    assert refusal(FrameReader(BUDGET), header) == text


def test_a_truncated_payload_is_refused_wherever_it_is_cut():
    """A deflate payload cut short (with a length that matches the cut) never passes: it does not end on a flush."""
    whole = FrameWriter(BUDGET, DICTIONARY)(LABELLED_CHAT)
    payload = whole[1 + len(encode_length(len(whole) - 3)):]
    assert whole == frame(DEFLATED, payload)
    for cut in range(1, len(payload)):
        reader = FrameReader(BUDGET, DICTIONARY)
        with pytest.raises(Refused):
            reader(frame(DEFLATED, payload[:cut]))


def test_garbled_payloads_are_refused():
    """A payload that is not deflate (a reserved block type), or one that ends the deflate stream, is refused."""
    assert refusal(FrameReader(BUDGET), frame(DEFLATED, b"\x07\xff\xff")) == "a compressed frame that does not inflate"
    final = zlib.compressobj(9, zlib.DEFLATED, -15)
    ended = final.compress(PRESENCE) + final.flush(zlib.Z_FINISH)
    assert refusal(FrameReader(BUDGET), frame(DEFLATED, ended)) == "a compressed frame that does not end on a flush"


def test_a_refused_reader_refuses_everything_after():
    """Once a frame was refused, the reader takes nothing more, not even a good frame (the stream is over)."""
    reader = FrameReader(BUDGET)
    refusal(reader, b"Z")
    assert refusal(reader, FrameWriter(BUDGET)(PRESENCE)) == "compressed input after a refused frame"


def test_a_write_larger_than_a_frame_may_carry_is_refused_by_the_writer():
    """The writing end refuses a write the far end's budget could not take (the connection drops)."""
    writer = FrameWriter(1000)
    assert writer(b"x" * 1000)[0] == DEFLATED
    with pytest.raises(Refused):
        writer(b"x" * 1001)


@pytest.mark.parametrize("write", [
    SASL_AUTH,
    ROOM_PASSWORD,
    b"<db:result xmlns:db='jabber:server:dialback' from='red.example' to='blue.example'>37c69b1cf07a3f67</db:result>",
    b'<iq type="set" id="a1"><query xmlns="jabber:iq:auth"><username>bill</username><digest>48fc78be</digest></query></iq>',
    b'<iq type="set" id="r1"><query xmlns="jabber:iq:register"><username>bill</username></query></iq>',
    b'<message><x xmlns="jabber:x:data" type="submit"><field var="pin" type="text-private"><value>1234</value></field></x></message>',
    b'<message from="a@red.example" to="b@blue.example"><body>the wifi PassWord is on the board</body></message>',
])
def test_secrets_are_stored_not_deflated(write):
    """A write holding a password, a SASL exchange, a dialback key, legacy auth, registration or a private field goes stored."""
    assert carries_secret(write)
    assert FrameWriter(BUDGET, DICTIONARY)(write) == frame(STORED, write)


def test_a_secret_never_enters_the_shared_window():
    """After a stored secret, the next frames are exactly those of a writer that never saw it (nothing to guess it against)."""
    plain, saw_secret = FrameWriter(BUDGET, DICTIONARY), FrameWriter(BUDGET, DICTIONARY)
    plain(LABELLED_CHAT)
    saw_secret(LABELLED_CHAT)
    saw_secret(ROOM_PASSWORD)
    guess = b'<message to="x@blue.example"><body>cauldronburn</body></message>'
    assert not carries_secret(guess) and not carries_secret(LABELLED_CHAT)
    assert saw_secret(guess) == plain(guess)


def test_ordinary_stanzas_carry_no_secret():
    """Chats, labels (SECRET classifications included), presence and pings are compressed."""
    for write in (LABELLED_CHAT, PRESENCE, PING, LABELLED_CHAT.replace(b"LIMITED", b"SECRET")):
        assert not carries_secret(write)


def test_byte_count_counts_compressed_bytes_on_a_real_chain():
    """Installed on a chain with ByteCount, compression runs inside counting: bytes_out and bytes_in are the frames' bytes."""
    sender, receiver = pair()
    sent, received = ByteCount().install(sender), ByteCount().install(receiver)
    on_the_wire = [sender.outgoing(write) for write in WRITES]
    assert sent.bytes_out == sum(map(len, on_the_wire)) < sum(map(len, WRITES))
    for data in on_the_wire:
        receiver.incoming(data)
    assert received.bytes_in == sent.bytes_out
    def kinds(chain, direction):
        return [type(getattr(each, "__self__", each)).__name__ for each in chain.filters(direction)]

    assert kinds(sender, OUT) == ["FrameWriter", "ByteCount"] and kinds(receiver, IN) == ["ByteCount", "FrameReader"]
    assert 800 > COMPRESSION_PRIORITY > 0


def test_the_link_dictionary_is_the_same_at_both_ends_and_fits_the_window():
    """Mirrored configurations give the same bytes: the shipped dictionary, then the sorted domains of both ends, 32 KiB at most."""
    red_end = link_dictionary(["red.example", "muc.red.example"], ["blue.example"])
    blue_end = link_dictionary(["blue.example"], ["muc.red.example", "red.example"])
    assert red_end == blue_end and len(red_end) <= MAX_DICTIONARY_BYTES
    assert red_end.endswith(b'="blue.example" @blue.example/="muc.red.example" @muc.red.example/="red.example" @red.example/')
    shipped = shipped_dictionary()
    assert 0 < len(shipped) <= MAX_DICTIONARY_BYTES
    assert shipped.endswith(red_end[: -len(b'="blue.example" @blue.example/="muc.red.example" @muc.red.example/="red.example" @red.example/')])
    many = link_dictionary([f"d{number}.example" for number in range(3000)], [])
    assert len(many) == MAX_DICTIONARY_BYTES
    with pytest.raises(ValueError):
        link_dictionary([""], ["blue.example"])


def compressed_link_streams(mode="dictionary"):
    """Two real link streams (half-a and half-b) with compression installed before they connect, joined by hand."""
    ends = []
    for own, peer, session in (("half-a", "half-b", "sessiona"), ("half-b", "half-a", "sessionb")):
        clock = Clock()
        owner = RecordingOwner()
        link = Link(owner, own, peer, clock, session=session)
        link.start()
        stream = LinkStream(link, AcceptingCheck(), clock)
        install_compression(stream.filters, mode, BUDGET, link_dictionary([own], [peer]))
        transport = StringTransport()
        stream.makeConnection(transport)
        ends.append((owner, link, stream, transport))
    return ends


def pump(ends):
    """Move what each end wrote to the other, until both are quiet; the bytes moved, per direction."""
    moved = [0, 0]
    for _ in range(10):
        quiet = True
        for index, (_, _, _, transport) in enumerate(ends):
            data = transport.value()
            if data:
                transport.clear()
                moved[index] += len(data)
                ends[1 - index][2].dataReceived(data)
                quiet = False
        if quiet:
            break
    return moved


def test_two_link_streams_talk_through_compression():
    """Two real link streams with compression open, carry stanzas and acknowledge them; ByteCount counts the frames."""
    ends = compressed_link_streams()
    for _, _, stream, _ in ends:
        stream.handshakeCompleted()
    pump(ends)
    (owner_a, link_a, stream_a, _), (owner_b, _, stream_b, _) = ends
    for number in range(1, 4):
        link_a.send(message(number))
    moved = pump(ends)
    assert owner_b.of("received") == ["1", "2", "3"]
    assert not stream_a.closing and not stream_b.closing
    assert stream_b.byte_count.bytes_in == stream_a.byte_count.bytes_out
    assert moved[0] < sum(len(message(n).stanza.toXml()) for n in range(1, 4))


def test_a_bomb_closes_a_real_link_stream_with_policy_violation():
    """A link stream with compression refuses a bomb frame: it answers with a policy-violation stream error and closes."""
    ends = compressed_link_streams("zlib")
    for _, _, stream, _ in ends:
        stream.handshakeCompleted()
    pump(ends)
    _, _, stream_b, transport_b = ends[1]
    transport_b.clear()
    stream_b.dataReceived(bomb_frame(10 * 1000 * 1000))
    assert stream_b.closing and transport_b.disconnecting
    error = ends[0][2].filters.incoming(transport_b.value())
    assert error.startswith(b"<stream:error><policy-violation ") and error.endswith(b"</stream:stream>")


FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD_FRAMES = b"".join(FrameWriter(BUDGET, DICTIONARY)(write) for write in WRITES)


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.integers(0, len(GOOD_FRAMES) - 1), st.integers(0, 255)).map(
                     lambda change: GOOD_FRAMES[:change[0]] + bytes((change[1],)) + GOOD_FRAMES[change[0] + 1:])),
       st.integers(1, 64))
def test_whatever_arrives_is_read_or_refused_within_bounds(data, chunk):
    """Random bytes, or good frames with one byte changed, in any chunking: the reader returns bytes within its read
    allowance, or None, or refuses; it never fails otherwise, and what waits is never more than one frame."""
    reader = FrameReader(BUDGET, DICTIONARY)
    longest = 1 + 4 + largest_payload(DEFLATED, BUDGET)
    try:
        for start in range(0, len(data), chunk):
            piece = data[start:start + chunk]
            waiting = reader.pending_bytes
            result = reader(piece)
            assert result is None or len(result) <= 2 * BUDGET + MAX_READ_RATIO * (waiting + len(piece))
            assert reader.pending_bytes <= longest
    except Refused as refused:
        assert refused.condition == "policy-violation"
