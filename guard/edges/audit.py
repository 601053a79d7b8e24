"""
The audit trail: one JSON line per stanza the guard did not deliver (dropped
or bounced) and per refused stream, naming the rule that decided.  If a
record cannot be written, ``AuditUnavailable`` is raised and the relay stops
relaying (unless the operator chose otherwise).
"""

from __future__ import annotations

import json
import time


class AuditUnavailable(Exception):
    """The audit trail cannot be written."""


class AuditLog:
    def __init__(self, path: str | None, clock=time.time):
        self.path = path
        self._clock = clock
        self._file = None
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8", buffering=1)
            except OSError as problem:
                raise AuditUnavailable(f"{path}: {problem.strerror}") from problem
        self.records = 0

    def record(self, event: str, **fields) -> None:
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
        if self._file is not None:
            self._file.close()
            self._file = None
