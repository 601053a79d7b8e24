"""
The audit trail: one JSON line per stanza the guard did not deliver (dropped
or bounced, and each of its own bounces it could not deliver), naming the rule
that decided; with the level ``"all"``, one per stanza it lets through as well.
Refused streams go to the log, not to this trail.  If a record cannot
be written, or the trail is already closed, ``AuditUnavailable`` is raised
and the relay stops relaying (unless the operator chose otherwise).

``AuditObserver`` writes the trail from settlement events
(guard.core.settlement): a record it cannot write becomes
``RecordUnavailable``, on which the settlement core halts relaying and
refuses to let an unrecorded pass leave.
"""

from __future__ import annotations

import json
import time

from twisted.logger import Logger

from guard.core.settlement import RecordUnavailable, SettlementObserver

log = Logger()


class AuditUnavailable(Exception):
    """The audit trail cannot be written."""


AUDIT_LEVELS = ("refusals", "all")


class AuditLog:
    def __init__(self, path: str | None, clock=time.time, level: str = "refusals"):
        if level not in AUDIT_LEVELS:
            raise ValueError(f"unknown audit level {level!r} (known: {', '.join(AUDIT_LEVELS)})")
        self.path = path
        self.level = level
        self._clock = clock
        self._file = None
        self._closed = False
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8", buffering=1)
            except OSError as problem:
                raise AuditUnavailable(f"{path}: {problem.strerror}") from problem
        self.records = 0

    @property
    def records_passes(self) -> bool:
        """Whether every decision is recorded, the stanzas let through too."""
        return self.level == "all"

    def record(self, event: str, **fields) -> None:
        if self._closed:
            raise AuditUnavailable(f"{self.path or 'the audit trail'}: closed")
        entry = {"time": round(self._clock(), 6), "event": event, **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        self.records += 1
        if self._file is None:
            return
        try:
            self._file.write(line + "\n")
        except OSError as problem:
            raise AuditUnavailable(f"{self.path}: {problem.strerror}") from problem

    def close(self):
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None


class AuditObserver(SettlementObserver):
    """
    Writes one audit record per settlement event the trail keeps: every
    bounce, drop and lost bounce of ours, and a pass when the trail records
    every decision (level "all") or a rule asked for a note (its ``log``).
    A record that cannot be written is logged and raised as
    ``RecordUnavailable`` (the settlement core halts relaying, if so configured).
    It also logs what the operator must see at once: relaying halted, and a
    second settlement of a stanza refused (a fault in the guard, counted by
    the core, never written to the trail).
    """

    def __init__(self, trail):
        self.trail = trail

    def stanza_passed(self, event):
        if not getattr(self.trail, "records_passes", False) and not event.notes:
            return
        self._record(event, **self._notes(event))

    def stanza_bounced(self, event):
        self._record(event, condition=event.condition, text=event.text, **self._detail(event), **self._notes(event))

    def stanza_dropped(self, event):
        self._record(event, text=event.text, **self._detail(event), **self._notes(event))

    def bounce_lost(self, event):
        condition = {} if event.condition is None else {"condition": event.condition}
        self._record(event, **condition, detail=event.detail)

    def relaying_halted(self, reason):
        log.critical("the guard stops relaying: {reason}", reason=reason)

    def settled_twice(self, ticket, attempt):
        log.error("refused to settle a stanza twice ({attempt}): {stanza}", attempt=attempt,
                  stanza="no ticket" if ticket is None else f"ticket {ticket.number} ({ticket.direction})")

    @staticmethod
    def _detail(event) -> dict:
        return {} if event.detail is None else {"detail": event.detail}

    @staticmethod
    def _notes(event) -> dict:
        return {"notes": list(event.notes)} if event.notes else {}

    def _record(self, event, **extra):
        try:
            self.trail.record(
                event.event,
                rule=event.rule,
                rev=event.rev,
                direction=str(event.direction) if event.direction else None,
                kind=event.kind,
                type=event.type,
                id=event.id,
                sender=event.sender,
                recipient=event.recipient,
                **extra,
            )
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}", problem=str(problem))
            raise RecordUnavailable(f"audit trail unavailable: {problem}") from problem
