"""The firehose bench's raw S2S ends: the sink's handshake, its counting, and the check of what arrived."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from guard.lab.pki import write_lab_pki
from guard.lab.raws2s import HandshakeError, MessageCounter, accept_server_stream, server_context
from tests.integration.hostile import HostilePeer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_firehose  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_lab_pki(tmp_path_factory.mktemp("pki"))


def _sink_in_a_thread(pki, outcome: dict):
    """A listening sink on a free loopback port, standing as blue.example; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    context = server_context(pki.guard_red_facing.certificate, pki.guard_red_facing.key, pki.both_cas)

    def serve():
        try:
            connection, _ = listener.accept()
            stream = accept_server_stream(connection, context, "blue.example", timeout=10)
            counter = MessageCounter(keep=True)
            counter.feed(stream.leftover)
            outcome["peer"], outcome["local"] = stream.peer_domain, stream.local_domain
            while counter.count < outcome["expect"]:
                data = stream.connection.recv(65536)
                if not data:
                    break
                counter.feed(data)
            outcome["received"] = counter.received()
            stream.connection.close()
        except Exception as error:
            outcome["error"] = error
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_the_blaster_authenticates_to_the_sink_and_its_messages_arrive_whole(pki):
    """A red server's raw handshake (STARTTLS, SASL EXTERNAL) is accepted by the sink and three messages arrive as sent."""
    outcome = {"expect": 3}
    port, thread = _sink_in_a_thread(pki, outcome)
    with HostilePeer("127.0.0.1", port, source=None, timeout=10).authenticate(pki) as peer:
        peer.send("".join(bench_firehose.message(n) for n in range(3)).encode())
        thread.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["peer"] == "red.example"
    assert outcome["received"] == "".join(bench_firehose.message(n) for n in range(3)).encode()
    assert bench_firehose.check_received("straight", outcome["received"], 3) == []


def test_a_stream_of_another_domain_pair_is_told_apart_by_its_header(pki):
    """A blaster of the fourth pair (conference.red.example -> conference.blue.example) is accepted as that pair
    and its messages, addressed within that pair, pass the check for it."""
    outcome = {"expect": 2}
    port, thread = _sink_in_a_thread(pki, outcome)
    sender, receiver = bench_firehose.PAIRS[3]
    with HostilePeer("127.0.0.1", port, source=None, timeout=10).authenticate(pki, sender, receiver) as peer:
        peer.send("".join(bench_firehose.message(n, 3) for n in range(2)).encode())
        thread.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert (outcome["peer"], outcome["local"]) == (sender, receiver)
    assert bench_firehose.check_received("allow-all", outcome["received"], 2, pair=3) == []
    assert bench_firehose.check_received("allow-all", outcome["received"], 2, pair=0) != []


def test_the_sink_refuses_a_peer_whose_certificate_does_not_name_it(pki):
    """A peer claiming blue.example with red's certificate gets a SASL failure, and the sink reports why."""
    outcome = {"expect": 1}
    port, thread = _sink_in_a_thread(pki, outcome)
    with HostilePeer("127.0.0.1", port, source=None, timeout=10) as peer:
        peer.secure(pki, sender="blue.example")
        peer.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        assert b"<failure" in peer.expect(rb"<failure[^>]*>.*?</failure>")
        thread.join(10)
    assert isinstance(outcome.get("error"), HandshakeError)


def test_the_counter_counts_messages_split_anywhere_across_reads():
    """Fed one byte at a time, the counter counts each complete message once and no partial one."""
    stream = ("".join(bench_firehose.message(n) for n in range(4)) + "<message to='x'><body>half").encode()
    counter = MessageCounter()
    counts = [counter.feed(stream[i:i + 1]) for i in range(len(stream))]
    assert counts[-1] == 4
    assert counts == sorted(counts)


def test_every_message_is_exactly_four_hundred_bytes():
    """The blast's messages are 400 bytes each, whatever their sequence number."""
    assert {len(bench_firehose.message(n, pair).encode())
            for n in (0, 9, 123456, 9999999) for pair in range(len(bench_firehose.PAIRS))} == {400}


def test_the_check_refuses_what_high_to_low_would_not_let_out():
    """Messages as sent (chat state kept, label not re-encoded) fail the high-to-low check, and a missing one is seen."""
    as_sent = "".join(bench_firehose.message(n) for n in range(2)).encode()
    assert bench_firehose.check_received("high-to-low", as_sent, 2) != []
    assert bench_firehose.check_received("allow-all", as_sent, 3) == ["2 stanzas received, 3 sent"]


def test_the_check_accepts_messages_folded_and_labelled_as_high_to_low_lets_them_out():
    """A message without its chat state and with the label's display marking is what high-to-low lets out."""
    folded = (bench_firehose.message(0).replace(bench_firehose.CHAT_STATE, "")
              .replace(bench_firehose.LABEL, bench_firehose.LABEL_RELEASED).replace("'", '"'))
    assert bench_firehose.check_received("high-to-low", folded.encode(), 1) == []
    assert bench_firehose.check_received("allow-all", folded.encode(), 1) != []


def test_the_guard_limits_are_the_shipped_ones_but_the_rate_and_the_queue():
    """The bench's guard runs with every lab limit at its shipped default, except the raised rate and queue."""
    from guard.edges.limits import Limits

    chosen = bench_firehose.shipped_limits()
    raised = {name for name, value in chosen.items() if value != getattr(Limits(), name)}
    assert raised == set(bench_firehose.RAISED_LIMITS)
