"""
``guard audit verify FILE…``: walk the audit trail's hash chain
(guard/edges/audit.py says what is hashed) through the files in the order
given, oldest first, and report the first broken or missing record: a
changed line, a deleted line, lines or files out of order, a file missing
in the sequence, a truncated last line.  Exit status 0 when the chain is
whole, 1 when it is broken, 2 on usage errors (no file, a file that cannot
be read).  Memory stays bounded: one line at a time, each at most
MAX_RECORD_BYTES.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass

from guard.edges.audit import GENESIS, MAX_RECORD_BYTES, line_hash

_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Break:
    """The first place the chain does not hold: the file, the line number (from 1) and what is wrong there."""

    path: str
    line: int
    problem: str

    def __str__(self):
        return f"{self.path}:{self.line}: {self.problem}"


@dataclass(frozen=True)
class Link:
    """One record read from a file: where it is, its ``seq``, ``prev`` and the hash of its line."""

    path: str
    line: int
    seq: int
    prev: str
    hash: str
    record: dict


@dataclass(frozen=True)
class TrailReport:
    """What ``verify_trail`` found: the records walked, where the chain begins and ends, and its first break."""

    files: int
    records: int
    first: Link | None
    last: Link | None
    broken: Break | None

    @property
    def whole(self) -> bool:
        return self.broken is None and self.records > 0

    def summary(self) -> str:
        if self.broken is not None:
            return f"BROKEN: {self.broken}"
        if self.records == 0:
            return "BROKEN: no records in the files given"
        begins = ("from its beginning (genesis)" if self.first.prev == GENESIS
                  else f"continuing a record not given (prev {self.first.prev})")
        return (f"OK: {self.records} records in {self.files} file(s), seq {self.first.seq} to {self.last.seq}, "
                f"chained {begins}; the last record is seq {self.last.seq}, hash {self.last.hash} "
                f"(records removed after it can only be seen against a copy: syslog, journald)")


def _lines(paths):
    """(path, line number, raw bytes) of every line of every file in order; a line over the size limit is cut."""
    for path in paths:
        with open(path, "rb") as trail:
            number = 0
            while True:
                raw = trail.readline(MAX_RECORD_BYTES + 2)
                if not raw:
                    break
                number += 1
                yield path, number, raw
                if len(raw) == MAX_RECORD_BYTES + 2 and not raw.endswith(b"\n"):
                    while (rest := trail.readline(MAX_RECORD_BYTES + 2)) and not rest.endswith(b"\n"):
                        pass


def _link(path, number, raw) -> Link | Break:
    if not raw.endswith(b"\n"):
        if len(raw) == MAX_RECORD_BYTES + 2:
            return Break(path, number, f"longer than a record can be ({MAX_RECORD_BYTES} bytes): not a record")
        return Break(path, number, "the last line is truncated (no newline): the record was cut short")
    line = raw[:-1]
    try:
        record = json.loads(line)
    except ValueError:
        return Break(path, number, "not a JSON record: the line was changed (or cut)")
    seq = record.get("seq") if isinstance(record, dict) else None
    prev = record.get("prev") if isinstance(record, dict) else None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or not isinstance(prev, str) \
            or not _HASH.fullmatch(prev):
        return Break(path, number, "not a record of the chain (no seq or prev): changed, or written without the chain")
    return Link(path, number, seq, prev, line_hash(line), record)


def _found_later(rest, low: int, high: int):
    """The first (path, line) among the lines still to read whose record has a seq from ``low`` to ``high``."""
    for path, number, raw in rest:
        link = _link(path, number, raw)
        if isinstance(link, Link) and low <= link.seq <= high:
            return path, number
    return None


def _classify(before: Link, link: Link, rest) -> Break:
    """Why ``link`` does not follow ``before``: a changed record, records missing, or records out of order."""
    crossing = link.path != before.path
    expected = before.seq + 1
    if link.prev == GENESIS:
        return Break(link.path, link.line, "a new chain begins here (genesis): the records before it are not linked "
                                           "to it (the trail was started again without its last file?)")
    if link.seq == expected:
        where = "the last record of its file" if crossing else "the record"
        return Break(before.path, before.line, f"{where} was changed: its hash is not the one the next record "
                                               f"({link.path}:{link.line}) names")
    if link.seq < expected:
        return Break(link.path, link.line, f"out of order or repeated: seq {link.seq} comes after seq {before.seq}"
                                           f" ({before.path}:{before.line})")
    missing = (f"record seq {expected} is" if link.seq == expected + 1
               else f"records seq {expected} to {link.seq - 1} are")
    later = _found_later(rest, expected, link.seq - 1)
    if later is not None:
        what = "files given out of order" if crossing or later[0] != link.path else "lines out of order"
        return Break(link.path, link.line, f"{what}: seq {link.seq} comes where seq {expected} belongs; "
                                           f"seq {expected} is later, at {later[0]}:{later[1]}")
    if crossing:
        named = link.record.get("previous_file")
        after = f" (it continues from {named})" if isinstance(named, str) and named != os.path.basename(before.path) \
            else ""
        return Break(link.path, link.line, f"{missing} missing before this file{after}: a file missing "
                                           f"in the sequence, or records deleted from the end of {before.path}")
    return Break(link.path, link.line, f"{missing} missing before this line: deleted")


def verify_trail(paths: list[str]) -> TrailReport:
    """Walk the chain through ``paths`` (oldest first); OSError when a file cannot be read."""
    for path in paths:
        if not os.path.isfile(path):
            raise OSError(f"{path}: not a file")
    lines = _lines(paths)
    first = before = None
    count = 0
    for path, number, raw in lines:
        link = _link(path, number, raw)
        if isinstance(link, Break):
            return TrailReport(len(paths), count, first, before, link)
        if before is None:
            if link.prev == GENESIS and link.seq != 1:
                return TrailReport(len(paths), count, None, None,
                                   Break(path, number, f"the chain's first record must be seq 1, not {link.seq}"))
            first = link
        elif link.seq != before.seq + 1 or link.prev != before.hash:
            return TrailReport(len(paths), count, first, before, _classify(before, link, lines))
        before = link
        count += 1
    return TrailReport(len(paths), count, first, before, None)


def audit_main(argv: list[str], out=None, err=None) -> int:
    """``guard audit verify FILE…``: 0 when the chain is whole, 1 when broken, 2 on usage errors."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = argparse.ArgumentParser(prog="guard audit", description="Tools for the guard's audit trail.")
    actions = parser.add_subparsers(dest="action", required=True)
    verify = actions.add_parser(
        "verify", help="check the audit trail's hash chain",
        description="Check the SHA-256 chain of the audit trail through FILE... given oldest first (with rotation "
                    "by size: 'guard audit verify audit.jsonl.* audit.jsonl') and report the first broken or "
                    "missing record.  Exit status: 0 whole, 1 broken, 2 usage error.")
    verify.add_argument("files", nargs="+", metavar="FILE", help="audit trail files, oldest first")
    arguments = parser.parse_args(argv)
    try:
        report = verify_trail(arguments.files)
    except OSError as problem:
        reason = f"{problem.filename}: {problem.strerror}" if problem.filename else str(problem)
        print(f"guard audit verify: cannot read {reason}", file=err)
        return 2
    print(report.summary(), file=out if report.whole else err)
    return 0 if report.whole else 1
