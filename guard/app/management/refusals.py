"""
The most recent refusals in the audit trail, for the management page: read
from the tail of the audit file (at most ``TAIL_BYTES``, at most
``SHOWN`` records), one JSON line each, unknown fields ignored.  Only the
rule, the direction, the addresses and the condition are shown: never a
stanza's body, never a peer's words (``text``, ``detail``).
"""

from __future__ import annotations

import json
import os

TAIL_BYTES = 256 * 1024
SHOWN = 50
REFUSAL_EVENTS = frozenset({"bounce", "drop", "bounce-lost"})
SHOWN_FIELDS = ("time", "event", "rule", "direction", "kind", "sender", "recipient", "condition")


def refusals_in(text: str, shown: int = SHOWN) -> list[dict]:
    """The last ``shown`` refusals among the JSON lines of ``text``, newest first, each with SHOWN_FIELDS only."""
    found = []
    for line in reversed(text.splitlines()):
        if len(found) >= shown:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("event") not in REFUSAL_EVENTS:
            continue
        found.append({name: record.get(name) for name in SHOWN_FIELDS})
    return found


def recent_refusals(path: str | None, tail_bytes: int = TAIL_BYTES, shown: int = SHOWN) -> list[dict]:
    """The most recent refusals in the audit file at ``path`` (reading at most ``tail_bytes`` of its end)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as trail:
            size = trail.seek(0, os.SEEK_END)
            start = max(0, size - tail_bytes)
            trail.seek(start)
            tail = trail.read(tail_bytes)
    except OSError:
        return []
    if start > 0:
        tail = tail.partition(b"\n")[2]  # the first line was cut: not a record
    return refusals_in(tail.decode("utf-8", "replace"), shown)
