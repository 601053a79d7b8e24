"""
The client for the ``refer`` verdict: asks an external release authority
whether a stanza may cross, and never lets one through on doubt.

The socket protocol (Unix or TCP stream socket; the endpoint is a Twisted
client endpoint string such as ``unix:path=/run/guard/release.sock`` or
``tcp:host=127.0.0.1:port=7400``):

- one question per connection: the guard connects, writes one request
  frame, reads one answer frame, and closes;
- a frame is one line: a UTF-8 JSON object followed by ``\\n`` (no newline
  inside it: JSON escapes them), at most 1 MiB;
- request::

    {"version": 1, "id": "<32 hex>", "direction": "red->blue", "rule": "<rule id>",
     "stanza": "<message from='...' to='...'>...</message>"}

  ``stanza`` is the stanza serialised by the guard with ``jabber:server`` as
  the default namespace (no xmlns on the stanza element);
- answer::

    {"version": 1, "id": "<the request's id>", "decision": "release" | "deny" | "release-with-changes",
     "reason": "<text, at most 1000 characters>", "stanza": "<...>"}

  ``stanza`` is required with ``release-with-changes`` and forbidden
  otherwise.  The changed stanza is parsed again by the guard's hardened
  parser and must be one stanza of the same kind with the same ``from`` and
  ``to``; it is never trusted as given.

A timeout, a refused or failed connection, a closed socket, an oversized or
garbled answer, an answer to another id, or an audit trail that cannot be
written: each means *deny*, with an audit record.  ``ask`` never errbacks.

At most ``max_pending`` questions are open at once; up to ``max_waiting``
more wait their turn, and the timeout counts from ``ask``, waiting included.
Beyond both, a question is not asked: the answer is a denial marked ``busy``
(the relay bounces it with ``resource-constraint``).
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.words.xish import domish

from guard.core.vocabulary import SERVER_NS, STANZA_NAMES, STREAMS_NS
from guard.edges.audit import AuditUnavailable
from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser, serialise

log = Logger()

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1024 * 1024
MAX_REASON_CHARACTERS = 1000
DECISIONS = ("release", "deny", "release-with-changes")
_ANSWER_KEYS = frozenset({"version", "id", "decision", "reason", "stanza"})
_HEADER = f"<stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS_NS}' version='1.0'>".encode("utf-8")


@dataclass(frozen=True)
class Release:
    """The authority's answer as the relay acts on it."""

    released: bool
    stanza: domish.Element | None
    reason: str
    busy: bool = False  # not asked: too many questions open and waiting


def request_frame(request_id: str, stanza, direction, rule_id: str) -> bytes:
    """The request line for ``stanza``."""
    body = {
        "version": PROTOCOL_VERSION,
        "id": request_id,
        "direction": str(direction),
        "rule": rule_id,
        "stanza": serialise(stanza),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def reparse_stanza(text: str, limits: ParserLimits = ParserLimits()) -> domish.Element | None:
    """The single stanza in ``text`` after the hardened parser, or None when it is not exactly one."""
    elements, ended = [], []
    parser = StreamParser(lambda header: None, lambda element, size: elements.append(element),
                          lambda: ended.append(True), limits)
    try:
        parser.feed(_HEADER + text.encode("utf-8") + b"</stream:stream>")
    except (StreamFault, UnicodeError):
        return None
    if not ended or len(elements) != 1:
        return None
    element = elements[0]
    if element.uri != SERVER_NS or element.name not in STANZA_NAMES:
        return None
    return element


def read_answer(line: bytes, request_id: str, original) -> Release:
    """Turn one answer line into a Release; anything unexpected is a denial naming the fault."""
    try:
        answer = json.loads(line.decode("utf-8"))
    except (UnicodeError, ValueError):
        return Release(False, None, "garbled answer: not UTF-8 JSON")
    if not isinstance(answer, dict) or not set(answer) <= _ANSWER_KEYS:
        return Release(False, None, "garbled answer: not an answer object")
    if answer.get("version") != PROTOCOL_VERSION:
        return Release(False, None, "garbled answer: unknown version")
    if answer.get("id") != request_id:
        return Release(False, None, "garbled answer: answers another request")
    decision = answer.get("decision")
    reason = answer.get("reason", "")
    if decision not in DECISIONS:
        return Release(False, None, "garbled answer: unknown decision")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARACTERS:
        return Release(False, None, "garbled answer: bad reason")
    reason = reason or decision
    if decision == "deny":
        return Release(False, None, f"denied by the release authority: {reason}")
    if decision == "release":
        if "stanza" in answer:
            return Release(False, None, "garbled answer: a plain release carries no stanza")
        return Release(True, original, reason)
    changed_text = answer.get("stanza")
    if not isinstance(changed_text, str):
        return Release(False, None, "garbled answer: release-with-changes without a stanza")
    changed = reparse_stanza(changed_text)
    if changed is None:
        return Release(False, None, "changed stanza refused by the parser")
    if changed.name != original.name:
        return Release(False, None, "changed stanza is of another kind")
    for attribute in ("from", "to"):
        if changed.getAttribute(attribute) != original.getAttribute(attribute):
            return Release(False, None, f"changed stanza changed its {attribute}")
    return Release(True, changed, reason)


class _Question(Protocol):
    """One connection to the authority: write the request, read one line, report it."""

    def __init__(self, frame: bytes, answered):
        self.frame = frame
        self.answered = answered  # called once with the line (bytes) or None
        self._buffer = b""
        self._done = False

    def connectionMade(self):
        self.transport.write(self.frame)

    def dataReceived(self, data):
        if self._done:
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_FRAME_BYTES:
                self._finish(None, "answer too large")
            return
        if end > MAX_FRAME_BYTES:
            self._finish(None, "answer too large")
            return
        self._finish(self._buffer[:end], None)

    def connectionLost(self, reason=None):
        self._finish(None, "the authority closed the socket without an answer")

    def _finish(self, line, problem):
        if self._done:
            return
        self._done = True
        if self.transport is not None:
            self.transport.loseConnection()
        self.answered(line, problem)

    def abort(self):
        self._done = True
        if self.transport is not None:
            self.transport.abortConnection()


class ReleaseAuthority:
    """Asks the release authority at ``endpoint``; every failure is a denial, audited."""

    def __init__(self, endpoint, clock, audit, timeout: float = 5.0, max_pending: int = 16, max_waiting: int = 256):
        self.endpoint = endpoint
        self.clock = clock
        self.audit = audit
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_waiting = max_waiting
        self.pending = 0  # questions open now
        self.waiting: deque = deque()  # (start, result) of questions waiting for a turn
        self.asked = 0
        self.released = 0
        self.denied = 0
        self.busy = 0
        # How long answers took (asked to settled, on the clock), and who hears of each question and answer
        # (``asked(kind, direction)``, ``answered(outcome, seconds)``: guard.edges.metrics.ReleaseCounts).
        self.answered = 0
        self.answered_seconds = 0.0
        self.last_answer_seconds: float | None = None
        self.answer_listeners: list = []

    @classmethod
    def at(cls, reactor, description: str, audit, timeout: float = 5.0, max_pending: int = 16,
           max_waiting: int = 256) -> "ReleaseAuthority":
        """The authority at a Twisted client endpoint string (``unix:path=...``, ``tcp:host=...:port=...``);
        ValueError when the string is not one."""
        from twisted.internet.endpoints import clientFromString

        if timeout <= 0:
            raise ValueError("the release timeout must be greater than zero")
        if max_pending < 1 or max_waiting < 0:
            raise ValueError("max_pending must be at least 1 and max_waiting at least 0")
        return cls(clientFromString(reactor, description), reactor, audit, timeout, max_pending, max_waiting)

    def describe(self) -> dict:
        return {"asked": self.asked, "released": self.released, "denied": self.denied, "timeout": self.timeout,
                "pending": self.pending, "waiting": len(self.waiting), "busy": self.busy,
                "max_pending": self.max_pending, "max_waiting": self.max_waiting}

    def ask(self, stanza, direction, rule_id: str) -> defer.Deferred:
        """A Deferred firing with a Release; it never errbacks."""
        result = defer.Deferred()
        result.addCallback(self._timed, self.clock.seconds())
        self._tell_listeners("asked", stanza.name, direction)
        if self.pending >= self.max_pending and len(self.waiting) >= self.max_waiting:
            self.busy += 1
            self._settle(result, stanza, direction, rule_id,
                         Release(False, None, "too many questions open and waiting for the release authority",
                                 busy=True))
            return result
        timer = None

        def timed_out_waiting():
            if entry in self.waiting:
                self.waiting.remove(entry)
            self._settle(result, stanza, direction, rule_id,
                         Release(False, None, f"no answer within {self.timeout}s (never asked: waiting for a turn)"))

        def start():
            if timer is not None and timer.active():
                timer.cancel()
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:  # its time ran out while it waited: never asked
                timed_out_waiting()
                return
            self.pending += 1
            result.addBoth(self._question_done)
            try:
                self._ask(stanza, direction, rule_id, result, remaining)
            except Exception as problem:  # noqa: BLE001 - fail closed on anything
                self._settle(result, stanza, direction, rule_id, Release(False, None, f"could not ask: {problem!r}"))

        deadline = self.clock.seconds() + self.timeout
        if self.pending < self.max_pending:
            start()
        else:
            entry = (start, result)
            timer = self.clock.callLater(self.timeout, timed_out_waiting)
            self.waiting.append(entry)
        return result

    def _timed(self, release, asked_at):
        """Count how long the answer took and tell the listeners (a fault in one is logged: the answer stands)."""
        seconds = max(0.0, self.clock.seconds() - asked_at)
        outcome = "busy" if release.busy else "released" if release.released else "denied"
        self.answered += 1
        self.answered_seconds += seconds
        self.last_answer_seconds = seconds
        self._tell_listeners("answered", outcome, seconds)
        return release

    def _tell_listeners(self, event, *args):
        for listener in self.answer_listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:  # noqa: BLE001 - counting must not change the question or the answer
                log.failure("a listener to the release authority failed on {event}", event=event)

    def _question_done(self, outcome):
        """An open question settled: give the next waiting one its turn."""
        self.pending -= 1
        while self.waiting and self.pending < self.max_pending:
            start, result = self.waiting.popleft()
            if not result.called:
                start()
        return outcome

    def _ask(self, stanza, direction, rule_id, result, timeout):
        self.asked += 1
        request_id = secrets.token_hex(16)
        frame = request_frame(request_id, stanza, direction, rule_id)
        state = {"question": None, "timer": None, "attempt": None}

        def answered(line, problem):
            timer = state["timer"]
            if timer is not None and timer.active():
                timer.cancel()
            if line is None:
                release = Release(False, None, problem or "no answer")
            else:
                try:
                    release = read_answer(line, request_id, stanza)
                except Exception as error:  # noqa: BLE001 - fail closed on anything
                    release = Release(False, None, f"answer could not be read: {error!r}")
            self._settle(result, stanza, direction, rule_id, release)

        def timed_out():
            state["timer"] = None
            if state["question"] is not None:
                state["question"].abort()
            elif state["attempt"] is not None:
                state["attempt"].cancel()
            self._settle(result, stanza, direction, rule_id,
                         Release(False, None, f"no answer within {self.timeout}s"))

        def connected(question):
            state["question"] = question
            return question

        def failed(failure):
            answered(None, f"cannot reach the release authority: {failure.getErrorMessage()}")

        question = _Question(frame, answered)
        factory = Factory.forProtocol(lambda: question)
        state["timer"] = self.clock.callLater(timeout, timed_out)
        attempt = state["attempt"] = self.endpoint.connect(factory)
        attempt.addCallbacks(connected, failed)

    def _settle(self, result, stanza, direction, rule_id, release: Release) -> None:
        if result.called:
            return
        try:
            self.audit.record(
                "release" if release.released else "release-denied",
                rule=rule_id,
                direction=str(direction),
                kind=stanza.name,
                type=stanza.getAttribute("type"),
                id=stanza.getAttribute("id"),
                sender=stanza.getAttribute("from"),
                recipient=stanza.getAttribute("to"),
                reason=release.reason,
                changed=release.released and release.stanza is not stanza,
            )
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}; release denied", problem=str(problem))
            release = Release(False, None, f"audit trail unavailable: {problem}")
        except Exception as problem:  # noqa: BLE001 - no record, no release
            release = Release(False, None, f"audit failed: {problem!r}")
        if release.released:
            self.released += 1
        else:
            self.denied += 1
            log.info("release denied for {rule}: {reason}", rule=rule_id, reason=release.reason)
        result.callback(release)
