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

The hash chain
--------------
Every line is one JSON object (keys sorted, ASCII only, no newline inside)
followed by one ``\\n``.  Besides its own fields each record carries:

- ``seq``: its number in the trail, 1 for the first record ever written,
  one more for each record after it, across restarts and files;
- ``prev``: the SHA-256, in lowercase hex, of the exact bytes of the line
  before it in the trail without that line's ``\\n`` (the previous file's
  last line for the first line of a file), or ``GENESIS`` (64 zeros) for the
  first record of a new trail.

So the hash of a line is ``sha256(line_bytes_without_newline).hexdigest()``
and ``record[n].prev == hash(line[n-1])``.  The chain head is recorded:

- at start: the first record a process writes carries ``"chain": "start"``;
  its ``prev`` is the last line's hash of the trail it continues (the file
  at ``path``, or when that is missing or empty the newest rotated file
  beside it), or ``GENESIS`` when there is no trail yet.  The head is read
  back from the last ``MAX_RECORD_BYTES`` of the file, never the whole file;
  a last line without its ``\\n`` (or longer than a record can be) stops the
  guard from starting: the message says how to cut it off;
- at rotation: the first line of each new file is a ``chain-continues``
  record (``reason`` "rotated", "moved" when the file was moved away or
  deleted under the guard, "truncated" when it was cut under the guard)
  whose ``prev`` is the last hash of the old file, naming the old file in
  ``previous_file`` when the guard rotated it.

``guard audit verify FILE…`` (guard/app/audit_commands.py) walks the files
in order and reports the first line that breaks the chain.

Rotation by size (``rotate_bytes``): before a record would take the file
past ``rotate_bytes``, the file is renamed ``<path>.NNNNNNNN`` (8 digits,
one more than the newest such file), a new file is started with its
``chain-continues`` record, and only the newest ``keep`` rotated files are
kept.  ``<path>.* <path>`` therefore names the whole trail oldest first.
No file grows past ``rotate_bytes`` (at least ``MIN_ROTATE_BYTES``, twice a
record's largest size).  A record is at most ``MAX_RECORD_BYTES``: a larger
one is written with every text cut to ``CUT_TEXT_CHARS`` characters and
``"cut": <its full size>``.

External rotation: before each record the guard compares the file at
``path`` with the one it has open; moved away, deleted or cut shorter, it
opens ``path`` again and writes a ``chain-continues`` record first.

Copies (``syslog_address``, ``journal_socket``): each line as written to the
file is also sent to syslog (stdlib ``SysLogHandler``) and/or journald's
native socket.  The file is the trail of record: a copy that cannot be sent
is logged and counted (``copies_lost``), it does not halt relaying.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import os
import re
import socket
import time
from dataclasses import dataclass

from twisted.logger import Logger

from guard.core.settlement import RecordUnavailable, SettlementObserver

log = Logger()


class AuditUnavailable(Exception):
    """The audit trail cannot be written."""


AUDIT_LEVELS = ("refusals", "all")

GENESIS = "0" * 64
MAX_RECORD_BYTES = 128 * 1024  # one line, without its newline
CUT_TEXT_CHARS = 1024  # each text of a record over MAX_RECORD_BYTES is cut to this
MIN_ROTATE_BYTES = 2 * MAX_RECORD_BYTES
ROTATED_DIGITS = 8
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "xmpp-guard-audit"
# Seconds between two log lines about audit records that could not be written (each one is counted).
FAILURE_LOG_INTERVAL = 60.0


def line_hash(line: bytes) -> str:
    """The chain hash of one line: SHA-256 of its exact bytes without the newline, lowercase hex."""
    return hashlib.sha256(line).hexdigest()


def rotated_name(path: str, number: int) -> str:
    """The name the ``number``-th rotated file of the trail at ``path`` takes (they sort oldest first)."""
    return f"{path}.{number:0{ROTATED_DIGITS}d}"


def rotated_files(path: str) -> list[str]:
    """The rotated files of the trail at ``path`` that exist, oldest first."""
    folder = os.path.dirname(path) or "."
    pattern = re.compile(re.escape(os.path.basename(path)) + r"\.(\d{%d})" % ROTATED_DIGITS)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(os.path.dirname(path), name) for name in sorted(names) if pattern.fullmatch(name)]


@dataclass(frozen=True)
class ChainHead:
    """Where the trail stands: the last record's ``seq`` and its line's hash (0 and GENESIS for no trail)."""

    seq: int
    hash: str


def read_chain_head(path: str) -> ChainHead | None:
    """
    The head of the trail in the file at ``path`` (None when the file is
    missing or empty), reading at most its last MAX_RECORD_BYTES + 1 bytes.
    AuditUnavailable when its last line is incomplete, too long or not a
    record of the chain.
    """
    try:
        with open(path, "rb") as trail:
            size = os.fstat(trail.fileno()).st_size
            if size == 0:
                return None
            start = max(0, size - (MAX_RECORD_BYTES + 2))
            trail.seek(start)
            tail = trail.read(size - start)
    except FileNotFoundError:
        return None
    except OSError as problem:
        raise AuditUnavailable(f"{path}: cannot read the chain head: {problem.strerror}") from problem
    if not tail.endswith(b"\n"):
        complete = start + tail.rfind(b"\n") + 1 if b"\n" in tail else None
        where = (f"cut it off with: truncate -s {complete} {path}" if complete is not None
                 else "move the file aside")
        raise AuditUnavailable(f"{path}: the last line is incomplete (no newline): run 'guard audit verify', "
                               f"then {where}")
    before = tail.rfind(b"\n", 0, len(tail) - 1)
    if before < 0 and start > 0:
        raise AuditUnavailable(f"{path}: the last line is longer than a record ({MAX_RECORD_BYTES} bytes)")
    line = tail[before + 1:-1]
    try:
        record = json.loads(line)
        seq = record.get("seq", 0) if isinstance(record, dict) else None
    except ValueError:
        seq = None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise AuditUnavailable(f"{path}: the last line is not a record of the chain: run 'guard audit verify'")
    return ChainHead(seq, line_hash(line))


def trail_head(path: str) -> ChainHead:
    """The head the trail at ``path`` continues from: its file's, else its newest rotated file's, else genesis."""
    for candidate in (path, *reversed(rotated_files(path))):
        head = read_chain_head(candidate)
        if head is not None:
            return head
    return ChainHead(0, GENESIS)


def journald_unavailable(socket_path: str = JOURNAL_SOCKET) -> str | None:
    """Why journald cannot take copies of the trail here, or None when its socket is there."""
    if not os.path.exists(socket_path):
        return f"{socket_path} does not exist (journald is not running on this machine)"
    if not os.access(socket_path, os.W_OK):
        return f"cannot write to {socket_path}"
    return None


def syslog_address(value: str):
    """The SysLogHandler address for a configured ``audit_syslog_address``: a Unix socket path, or "host:port" (UDP)."""
    if value.startswith("/"):
        return value
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('must be a Unix socket path (starting with "/") or "host:port"')
    return (host.strip("[]"), int(port))


class _SyslogCopy(logging.handlers.SysLogHandler):
    """SysLogHandler that counts what it could not send instead of printing a traceback."""

    def __init__(self, address, counted):
        super().__init__(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        self.ident = f"{SYSLOG_IDENTIFIER}: "
        self._counted = counted

    def handleError(self, record):
        self._counted("syslog")


class _JournalCopy:
    """Sends each line to journald's native protocol socket (one datagram per record)."""

    def __init__(self, socket_path, counted):
        self.socket_path = socket_path
        self._counted = counted
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, line: bytes, priority: int, seq: int):
        message = (b"MESSAGE=" + line + b"\nSYSLOG_IDENTIFIER=" + SYSLOG_IDENTIFIER.encode()
                   + b"\nPRIORITY=%d\nXMPP_GUARD_AUDIT_SEQ=%d\n" % (priority, seq))
        try:
            self._socket.sendto(message, self.socket_path)
        except OSError:
            self._counted("journald")

    def close(self):
        self._socket.close()


REFUSALS = frozenset({"bounce", "drop", "bounce-lost"})


class AuditLog:
    """
    The trail at ``path`` (None: records are counted, chained and copied,
    nothing is written to a file).  ``rotate_bytes`` (None: never) and
    ``keep`` rotate it by size; ``syslog_address`` and ``journal_socket``
    send a copy of each line.  ``clock`` gives the time of each record.
    """

    def __init__(self, path: str | None, clock=time.time, level: str = "refusals", rotate_bytes: int | None = None,
                 keep: int = 10, syslog_address=None, journal_socket: str | None = None):
        if level not in AUDIT_LEVELS:
            raise ValueError(f"unknown audit level {level!r} (known: {', '.join(AUDIT_LEVELS)})")
        if rotate_bytes is not None and rotate_bytes < MIN_ROTATE_BYTES:
            raise ValueError(f"rotate_bytes must be at least {MIN_ROTATE_BYTES}")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.path = path
        self.level = level
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self._clock = clock
        self._fd = None
        self._size = 0
        self._identity = None
        self._closed = False
        self._started = False
        self.records = 0
        self.copies_lost = 0
        self.write_failures = 0  # records that could not be written (with audit_failure = "continue" relaying goes on)
        self.head = ChainHead(0, GENESIS)
        if path is not None:
            self.head = trail_head(path)
            rotated = rotated_files(path)
            self._next_rotation = 1 + (int(rotated[-1][-ROTATED_DIGITS:]) if rotated else 0)
            self._open()
        if syslog_address is not None:
            self._syslog = _SyslogCopy(syslog_address, self._copy_lost)
        else:
            self._syslog = None
        self._journal = _JournalCopy(journal_socket, self._copy_lost) if journal_socket is not None else None

    @property
    def records_passes(self) -> bool:
        """Whether every decision is recorded, the stanzas let through too."""
        return self.level == "all"

    @property
    def clock(self):
        """What gives the time of each record (epoch seconds)."""
        return self._clock

    def record(self, event: str, **fields) -> None:
        """Write one record; AuditUnavailable (counted in ``write_failures``) when it cannot be written."""
        try:
            self._record(event, fields)
        except AuditUnavailable:
            self.write_failures += 1
            raise

    def _record(self, event: str, fields: dict) -> None:
        if self._closed:
            raise AuditUnavailable(f"{self.path or 'the audit trail'}: closed")
        if self.path is not None:
            self._follow_the_file()
        entry = {"time": round(self._clock(), 6), "event": event, **fields}
        if not self._started:
            entry["chain"] = "start"
        line = self._line(entry)
        if self.rotate_bytes is not None and self._size and self._size + len(line) + 1 > self.rotate_bytes:
            self._rotate()
            line = self._line(entry)
        self._append(line, event)
        self._started = True
        self.records += 1

    def close(self):
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._syslog is not None:
            self._syslog.close()
        if self._journal is not None:
            self._journal.close()

    # -- writing -------------------------------------------------------------------

    def _line(self, entry: dict) -> bytes:
        """The record's line (without newline), chained to the head; cut down if over MAX_RECORD_BYTES."""
        chained = {**entry, "seq": self.head.seq + 1, "prev": self.head.hash}
        line = json.dumps(chained, sort_keys=True, default=str).encode("ascii")
        if len(line) <= MAX_RECORD_BYTES:
            return line
        cut = {key: _cut(value) for key, value in chained.items()}
        cut["cut"] = len(line)
        smaller = json.dumps(cut, sort_keys=True, default=str).encode("ascii")
        if len(smaller) <= MAX_RECORD_BYTES:
            return smaller
        kept = ("time", "event", "rule", "rev", "seq", "prev", "cut")
        return json.dumps({key: cut[key] for key in kept if key in cut}, sort_keys=True).encode("ascii")

    def _append(self, line: bytes, event: str) -> None:
        """Write ``line`` and its newline whole, then move the head; nothing half-written stays in the file."""
        data = line + b"\n"
        if self._fd is not None:
            written = 0
            try:
                while written < len(data):
                    written += os.write(self._fd, data[written:])
            except OSError as problem:
                self._cut_back()
                raise AuditUnavailable(f"{self.path}: {problem.strerror}") from problem
            self._size += len(data)
        self.head = ChainHead(self.head.seq + 1, line_hash(line))
        self._copy(line, event in REFUSALS)

    def _cut_back(self):
        """After a failed write, cut the file back to its last whole record (so the next one chains on)."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as problem:
            log.critical("audit trail {path}: cannot cut back a half-written record: {problem}",
                         path=self.path, problem=problem.strerror)

    def _open(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as problem:
            raise AuditUnavailable(f"{self.path}: {problem.strerror}") from problem
        status = os.fstat(fd)
        self._fd, self._size, self._identity = fd, status.st_size, (status.st_dev, status.st_ino)

    def _follow_the_file(self):
        """Open the file at ``path`` again if it was moved, deleted or cut under us, and mark the chain there."""
        if self._fd is None:
            reason = "reopened"
        else:
            try:
                status = os.stat(self.path)
            except FileNotFoundError:
                status = None
            except OSError as problem:
                raise AuditUnavailable(f"{self.path}: {problem.strerror}") from problem
            if status is not None and (status.st_dev, status.st_ino) == self._identity:
                if status.st_size >= self._size:
                    return
                reason = "truncated"
            else:
                reason = "moved"
            os.close(self._fd)
            self._fd = None
        self._open()
        log.warn("audit trail {path}: {reason} outside the guard; the chain continues in it", path=self.path,
                 reason=reason)
        self._continue_chain(reason, None)

    def _rotate(self):
        rotated = rotated_name(self.path, self._next_rotation)
        try:
            os.rename(self.path, rotated)
        except OSError as problem:
            raise AuditUnavailable(f"{self.path}: cannot rotate to {rotated}: {problem.strerror}") from problem
        self._next_rotation += 1
        os.close(self._fd)
        self._fd = None
        self._open()
        self._continue_chain("rotated", os.path.basename(rotated))
        for old in rotated_files(self.path)[:-self.keep]:
            try:
                os.unlink(old)
            except OSError as problem:
                log.error("audit trail: cannot remove {old}: {problem}", old=old, problem=problem.strerror)

    def _continue_chain(self, reason: str, previous_file: str | None):
        entry = {"time": round(self._clock(), 6), "event": "chain-continues", "rule": "guard:chain-continues",
                 "rev": 1, "reason": reason, "previous_file": previous_file}
        self._append(self._line(entry), "chain-continues")
        self.records += 1

    # -- copies ----------------------------------------------------------------------

    def _copy(self, line: bytes, refusal: bool):
        if self._syslog is None and self._journal is None:
            return
        text = line.decode("ascii")
        if self._syslog is not None:
            self._syslog.handle(logging.makeLogRecord(
                {"msg": text, "levelno": logging.WARNING if refusal else logging.INFO,
                 "levelname": "WARNING" if refusal else "INFO"}))
        if self._journal is not None:
            self._journal.send(line, 4 if refusal else 5, self.head.seq)

    def _copy_lost(self, where: str):
        self.copies_lost += 1
        if self.copies_lost == 1 or self.copies_lost % 1000 == 0:
            log.error("audit trail: {count} copies to {where} could not be sent (the file has every record)",
                      count=self.copies_lost, where=where)


def _cut(value):
    """A record value made small: texts cut to CUT_TEXT_CHARS, lists and tables to their cut text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= CUT_TEXT_CHARS else text[:CUT_TEXT_CHARS] + "..."


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

    def __init__(self, trail, clock=None):
        """``clock``: seconds, for spacing the log of write failures (by default the trail's)."""
        self.trail = trail
        self._clock = clock or getattr(trail, "clock", None) or time.monotonic
        self._failure_logged_at: float | None = None
        self._failures_not_logged = 0

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
            self._log_failure(problem)
            raise RecordUnavailable(f"audit trail unavailable: {problem}") from problem

    def _log_failure(self, problem) -> None:
        """Log a record that could not be written: the first at once, then at most one line per
        FAILURE_LOG_INTERVAL saying how many more failed (with audit_failure = "continue" each stanza may fail)."""
        now = self._clock()
        if self._failure_logged_at is not None and now - self._failure_logged_at < FAILURE_LOG_INTERVAL:
            self._failures_not_logged += 1
            return
        more, self._failures_not_logged = self._failures_not_logged, 0
        self._failure_logged_at = now
        log.critical("AUDIT TRAIL UNAVAILABLE: {problem} ({more} more records not written since the last report)",
                     problem=str(problem), more=more)
