"""
The audit trail: one JSON line per stanza the guard did not deliver (dropped
or bounced, and each of its own bounces it could not deliver), naming the rule
that decided; with the level ``"all"``, one per stanza it lets through as well.
Refused streams go to the log, not to this trail.  If a record cannot
be written, or the trail is already closed, ``AuditUnavailable`` is raised
and the relay stops relaying (unless the operator chose otherwise).
"""

from __future__ import annotations

import json
import time


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
