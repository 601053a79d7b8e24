"""The release authority client: bytes out, bytes in, and every doubt is an audited denial."""

import json

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from guard.core.pipeline import Direction
from guard.edges.audit import AuditLog, AuditUnavailable
from guard.edges.release import ReleaseAuthority, reparse_stanza

STANZA = "<message from='romeo@red.example/a' to='juliet@blue.example' id='m1' type='chat'><body>hello</body></message>"


def stanza():
    return reparse_stanza(STANZA)


class MemoryEndpoint:
    """Connects each question to a StringTransport the test reads and answers."""

    def __init__(self, fail=False):
        self.fail = fail
        self.connections = []

    def connect(self, factory):
        if self.fail:
            return defer.fail(Failure(ConnectionRefusedError("refused")))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return defer.succeed(protocol)

    def request(self):
        protocol, transport = self.connections[-1]
        return protocol, json.loads(transport.value())


class RecordingAudit(AuditLog):
    def __init__(self):
        super().__init__(None)
        self.entries = []

    def record(self, event, **fields):
        self.entries.append((event, fields["rule"], fields["reason"]))


class BrokenAudit:
    def record(self, event, **fields):
        raise AuditUnavailable("disk full")


def ask(endpoint, audit=None, clock=None):
    audit = audit or RecordingAudit()
    clock = clock or Clock()
    authority = ReleaseAuthority(endpoint, clock, audit, timeout=5.0)
    results = []
    authority.ask(stanza(), Direction("red", "blue"), "refer-high").addBoth(results.append)
    return authority, audit, clock, results


def answer(protocol, request, **fields):
    body = {"version": 1, "id": request["id"], **fields}
    protocol.dataReceived(json.dumps(body).encode() + b"\n")


def test_the_request_is_one_json_line_naming_rule_direction_and_stanza():
    """The guard writes one line: version, id, direction, rule and the serialised stanza."""
    endpoint = MemoryEndpoint()
    ask(endpoint)
    _, transport = endpoint.connections[-1]
    line = transport.value()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = json.loads(line)
    assert request["version"] == 1 and request["direction"] == "red->blue" and request["rule"] == "refer-high"
    assert request["stanza"] == (
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m1" type="chat"><body>hello</body></message>'
    )


def test_release_passes_the_original_stanza_and_is_audited():
    """A plain release answers released=True with the guard's own tree, and the release is recorded."""
    endpoint = MemoryEndpoint()
    _, audit, _, results = ask(endpoint)
    protocol, request = endpoint.request()
    answer(protocol, request, decision="release", reason="cleared")
    (release,) = results
    assert release.released and release.stanza.getAttribute("id") == "m1" and release.reason == "cleared"
    assert audit.entries == [("release", "refer-high", "cleared")]


def test_deny_is_a_denial_with_the_authoritys_reason():
    """A deny answer refuses the stanza and the audit record carries the reason."""
    endpoint = MemoryEndpoint()
    _, audit, _, results = ask(endpoint)
    protocol, request = endpoint.request()
    answer(protocol, request, decision="deny", reason="too secret")
    assert not results[0].released
    assert audit.entries == [("release-denied", "refer-high", "denied by the release authority: too secret")]


def test_release_with_changes_is_parsed_again():
    """The changed stanza is the hardened parser's tree of what the authority wrote."""
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint)
    protocol, request = endpoint.request()
    changed = "<message from='romeo@red.example/a' to='juliet@blue.example' id='m1'><body>[redacted]</body></message>"
    answer(protocol, request, decision="release-with-changes", reason="redacted", stanza=changed)
    release = results[0]
    assert release.released and str(release.stanza.body) == "[redacted]"


def test_release_with_changes_may_not_readdress_the_stanza():
    """A changed stanza with another recipient is denied."""
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint)
    protocol, request = endpoint.request()
    changed = "<message from='romeo@red.example/a' to='mallory@blue.example'><body>x</body></message>"
    answer(protocol, request, decision="release-with-changes", stanza=changed)
    assert not results[0].released and "to" in results[0].reason


def test_release_with_hostile_changes_is_denied():
    """A changed stanza the hardened parser refuses (an entity) is denied."""
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint)
    protocol, request = endpoint.request()
    changed = "<!DOCTYPE x [<!ENTITY e 'boom'>]><message from='romeo@red.example/a' to='juliet@blue.example'/>"
    answer(protocol, request, decision="release-with-changes", stanza=changed)
    assert not results[0].released


def test_garbled_answers_are_denials():
    """Not JSON, another id, an unknown decision, extra keys: each one denies."""
    for line in (b"release\n", b"{\"version\":1}\n", b"[1]\n"):
        endpoint = MemoryEndpoint()
        _, _, _, results = ask(endpoint)
        protocol, _ = endpoint.request()
        protocol.dataReceived(line)
        assert results and not results[0].released, line
    for fields in ({"decision": "maybe"}, {"decision": "release", "stanza": STANZA},
                   {"decision": "release", "extra": 1}):
        endpoint = MemoryEndpoint()
        _, _, _, results = ask(endpoint)
        protocol, request = endpoint.request()
        answer(protocol, request, **fields)
        assert not results[0].released, fields
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint)
    protocol, request = endpoint.request()
    protocol.dataReceived(json.dumps({"version": 1, "id": "0" * 32, "decision": "release"}).encode() + b"\n")
    assert not results[0].released and "another request" in results[0].reason


def test_a_silent_authority_is_a_denial_after_the_timeout():
    """No answer within the timeout: denied, audited, the connection aborted."""
    endpoint = MemoryEndpoint()
    _, audit, clock, results = ask(endpoint)
    clock.advance(4.9)
    assert results == []
    clock.advance(0.1)
    assert not results[0].released and "no answer within" in results[0].reason
    assert audit.entries[0][0] == "release-denied"
    _, transport = endpoint.connections[-1]
    assert transport.disconnecting


def test_a_closed_socket_is_a_denial():
    """The authority hangs up without answering: denied."""
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint)
    protocol, _ = endpoint.request()
    protocol.connectionLost(None)
    assert not results[0].released and "closed" in results[0].reason


def test_an_unreachable_authority_is_a_denial():
    """A refused connection denies at once."""
    _, audit, _, results = ask(MemoryEndpoint(fail=True))
    assert not results[0].released and "cannot reach" in results[0].reason
    assert len(audit.entries) == 1


def test_an_oversized_answer_is_a_denial():
    """An answer line past 1 MiB is not read to its end: denied."""
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint)
    protocol, _ = endpoint.request()
    protocol.dataReceived(b"x" * (1024 * 1024 + 1))
    assert not results[0].released and "too large" in results[0].reason


def test_no_audit_record_means_no_release():
    """If the release cannot be recorded, the stanza does not pass."""
    endpoint = MemoryEndpoint()
    _, _, _, results = ask(endpoint, audit=BrokenAudit())
    protocol, request = endpoint.request()
    answer(protocol, request, decision="release")
    assert not results[0].released and "audit" in results[0].reason


def test_a_late_answer_after_the_timeout_changes_nothing():
    """Once denied for silence, an answer arriving later is ignored: the Deferred fired once."""
    endpoint = MemoryEndpoint()
    _, audit, clock, results = ask(endpoint)
    protocol, request = endpoint.request()
    clock.advance(5.0)
    answer(protocol, request, decision="release")
    assert len(results) == 1 and not results[0].released and len(audit.entries) == 1


def test_ask_never_errbacks_even_when_the_stanza_cannot_be_serialised():
    """A stanza that cannot be written is a denial, not an exception."""
    authority = ReleaseAuthority(MemoryEndpoint(), Clock(), RecordingAudit())
    broken = stanza()
    broken.children.append(object())
    results = []
    authority.ask(broken, Direction("red", "blue"), "r").addBoth(results.append)
    assert not results[0].released


def test_the_authority_is_named_by_an_endpoint_string():
    """Operators write the authority's address as a Twisted client endpoint string; nonsense is refused."""
    import pytest
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    authority = ReleaseAuthority.at(reactor, "unix:path=/run/guard/release.sock", RecordingAudit(), timeout=2.0)
    assert authority.describe() == {"asked": 0, "released": 0, "denied": 0, "timeout": 2.0, "pending": 0,
                                    "waiting": 0, "busy": 0, "max_pending": 16, "max_waiting": 256}
    with pytest.raises(ValueError):
        ReleaseAuthority.at(reactor, "carrier-pigeon:x", RecordingAudit())


def capped(max_pending, max_waiting):
    endpoint = MemoryEndpoint()
    clock = Clock()
    audit = RecordingAudit()
    authority = ReleaseAuthority(endpoint, clock, audit, timeout=5.0, max_pending=max_pending, max_waiting=max_waiting)
    return authority, endpoint, clock, audit


def ask_capped(authority):
    results = []
    authority.ask(stanza(), Direction("red", "blue"), "refer-high").addBoth(results.append)
    return results


def test_no_more_than_max_pending_questions_are_open_and_the_next_waits_its_turn():
    """With max_pending open, a further question waits without a connection and is asked when one is answered."""
    authority, endpoint, _, _ = capped(max_pending=2, max_waiting=4)
    first, second, third = ask_capped(authority), ask_capped(authority), ask_capped(authority)
    assert len(endpoint.connections) == 2 and authority.describe()["waiting"] == 1
    protocol, transport = endpoint.connections[0]
    answer(protocol, json.loads(transport.value()), decision="deny")
    assert not first[0].released and second == [] and third == []
    assert len(endpoint.connections) == 3 and authority.describe()["pending"] == 2


def test_beyond_max_waiting_a_question_is_refused_as_busy_and_audited():
    """Past max_pending open and max_waiting waiting, ask answers at once: not released, busy, with an audit record."""
    authority, endpoint, _, audit = capped(max_pending=1, max_waiting=1)
    ask_capped(authority), ask_capped(authority)
    refused = ask_capped(authority)
    assert len(endpoint.connections) == 1
    assert not refused[0].released and refused[0].busy
    assert audit.entries == [("release-denied", "refer-high",
                              "too many questions open and waiting for the release authority")]
    assert authority.describe()["busy"] == 1


def test_a_question_waiting_its_turn_times_out_from_when_it_was_asked():
    """The timeout counts the wait for a turn: a question still waiting at the timeout is denied and never asked."""
    authority, endpoint, clock, _ = capped(max_pending=1, max_waiting=1)
    first, waiting = ask_capped(authority), ask_capped(authority)
    clock.advance(3.0)
    assert waiting == []
    clock.advance(2.0)
    assert not first[0].released and not waiting[0].released and "waiting for a turn" in waiting[0].reason
    assert len(endpoint.connections) == 1 and authority.describe()["waiting"] == 0
    assert authority.describe()["pending"] == 0


def test_a_question_given_its_turn_late_has_only_the_rest_of_its_timeout():
    """A question that waited 3 s of a 5 s timeout is denied 2 s after it was finally asked."""
    authority, endpoint, clock, _ = capped(max_pending=1, max_waiting=1)
    ask_capped(authority)
    waiting = ask_capped(authority)
    clock.advance(3.0)
    protocol, transport = endpoint.connections[0]
    answer(protocol, json.loads(transport.value()), decision="deny")
    assert len(endpoint.connections) == 2 and waiting == []
    clock.advance(2.0)
    assert not waiting[0].released and "no answer within" in waiting[0].reason
