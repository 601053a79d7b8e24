"""
The reference release authority for the ``refer`` verdict.  It speaks the
protocol documented in ``guard.edges.release`` (one newline-terminated JSON
request per connection, one JSON answer line back) and decides by simple
rules given on the command line:

- a stanza whose text contains a ``--deny-word`` is denied;
- else, if its text contains a ``--redact-word``, it is released with
  changes: each occurrence in <body/> and <subject/> becomes ``[redacted]``;
- else it is released.

``--silent`` never answers and ``--garble`` answers nonsense: both exist so
that tests can show the guard denies on them.

Run: ``python -m guard.reference.authority --listen unix:/run/guard/release.sock --deny-word secret``
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from guard.edges.release import MAX_FRAME_BYTES, PROTOCOL_VERSION, reparse_stanza
from guard.edges.xmlstream import serialise

log = Logger()


@dataclass(frozen=True)
class Rules:
    deny_words: tuple[str, ...] = ()
    redact_words: tuple[str, ...] = ()
    silent: bool = False
    garble: bool = False


def _texts(element):
    for child in element.children:
        if isinstance(child, str):
            yield child
        else:
            yield from _texts(child)


def decide(request: dict, rules: Rules) -> dict:
    """The answer object for one request object (pure)."""
    answer = {"version": PROTOCOL_VERSION, "id": request.get("id")}
    stanza_text = request.get("stanza")
    stanza = reparse_stanza(stanza_text) if isinstance(stanza_text, str) else None
    if request.get("version") != PROTOCOL_VERSION or stanza is None:
        return {**answer, "decision": "deny", "reason": "the request could not be read"}
    text = " ".join(_texts(stanza))
    for word in rules.deny_words:
        if word in text:
            return {**answer, "decision": "deny", "reason": f"contains {word!r}"}
    if any(word in text for word in rules.redact_words):
        for child in stanza.elements():
            if child.name in ("body", "subject"):
                redacted = "".join(c for c in child.children if isinstance(c, str))
                for word in rules.redact_words:
                    redacted = redacted.replace(word, "[redacted]")
                child.children = [redacted]
        return {**answer, "decision": "release-with-changes", "reason": "redacted", "stanza": serialise(stanza)}
    return {**answer, "decision": "release", "reason": "no rule objects"}


class Question(Protocol):
    def __init__(self, rules: Rules):
        self.rules = rules
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_FRAME_BYTES:
                self.transport.loseConnection()
            return
        line, self.buffer = self.buffer[:end], b""
        if self.rules.silent:
            return
        if self.rules.garble:
            self.transport.write(b"{not json\n")
            self.transport.loseConnection()
            return
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except (UnicodeError, ValueError):
            request = {}
        answer = decide(request, self.rules)
        log.info("authority: {decision} {id} ({reason})", decision=answer["decision"], id=answer.get("id"),
                 reason=answer.get("reason"))
        self.transport.write(json.dumps(answer).encode("utf-8") + b"\n")
        self.transport.loseConnection()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="guard-release-authority",
                                     description="Reference release authority for the refer verdict")
    parser.add_argument("--listen", required=True, help="Twisted server endpoint, e.g. unix:/run/guard/release.sock")
    parser.add_argument("--deny-word", action="append", default=[], help="deny stanzas whose text contains this")
    parser.add_argument("--redact-word", action="append", default=[], help="release with this word redacted")
    parser.add_argument("--silent", action="store_true", help="never answer (to test the guard's timeout)")
    parser.add_argument("--garble", action="store_true", help="answer nonsense (to test the guard's parsing)")
    arguments = parser.parse_args(argv)
    rules = Rules(tuple(arguments.deny_word), tuple(arguments.redact_word), arguments.silent, arguments.garble)

    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)

    @defer.inlineCallbacks
    def serve(reactor):
        endpoint = serverFromString(reactor, arguments.listen)
        yield endpoint.listen(Factory.forProtocol(lambda: Question(rules)))  # a failure ends the process
        log.info("release authority listening on {listen}", listen=arguments.listen)
        yield defer.Deferred()  # until SIGTERM or SIGINT

    task.react(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
