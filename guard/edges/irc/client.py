"""
One IRC client connection of the gateway: registration, IRCv3 capability
negotiation, SASL, TLS, keepalive, flood control, reconnection, and the
events the IRC server tells it, for a listener (``IIrcEvents``).

Why a small ``LineOnlyReceiver`` protocol on our own line codec and not
``twisted.words.protocols.irc.IRCClient``: what IRCClient would bring is its
line-rate throttle (one fixed delay between lines, an unbounded list of
pending lines, nothing reported per message), its ``ServerSupportedFeatures``
and its ``irc_*`` dispatch. The throttle cannot bound a queue in bytes, cannot
say which accepted message was written and which was lost with the
connection, and cannot express ngIRCd's rule (a few lines at once, then a
steady rate): we would replace it. Its parser knows no IRCv3 tags and hands
bytes or loosely decoded text to callbacks in places, so every line would
have to go through ``parse_line`` anyway, and ISUPPORT is read by ``Isupport``
(h-ircwire) with the casemapping our nick book folds by. What remains (a
dispatch table) is a dozen lines here, so the gateway owns every byte it
reads and writes, with one parser for the whole IRC side.

Why not an asyncio IRC library run under Twisted's asyncio reactor: the
guard runs on Twisted's default reactor (epoll, systemd socket activation,
workers), and every timer of the gateway is on the injected clock so that
tests drive reconnection, keepalive and the token bucket with
``task.Clock`` and bytes in ``StringTransport``, without sockets or sleeps.
An asyncio library brings its own loop time, its own TLS setup (we want
``optionsForClientTLS``, the one verification path of the guard), its own
reconnection and flood logic that report nothing per message, and would
force the asyncio reactor on the whole process before anything imports the
reactor; two schedulers would also split cancellation and back-pressure
across Deferreds and Futures.

The shape of one connection::

    IrcConnection (reconnects: LinkDialler's backoff with jitter, on the clock)
      └─ IrcProtocol, one per TCP/TLS connection
           ├─ OutgoingLines: urgent lines (PONG, CAP, SASL, NICK) and the
           │   ordered queue (JOIN, PART, messages), bounded in lines and bytes
           └─ TokenBucket: lines and bytes the server accepts without penalty

Every message the connection takes is a token reported exactly once to the
listener: ``sent(token)`` when the server took it, ``refused(token, reason)``
when the server answered it with an error naming its channel (404
ERR_CANNOTSENDTOCHAN on a moderated channel, 442, 482, ... any 4xx whose
first parameter is that channel), ``unconfirmed(token, reason)`` when it was
written but the server's answer never came (in doubt), ``lost(token,
reason)`` when the connection ended before it was written (``LOSS_REASONS``).

How "the server took it" is known without labeled-response (ngIRCd has
none): a server answers a client's lines in order, and a PRIVMSG it takes
gets no answer at all.  So after writing messages the connection writes a
checkpoint, ``PING :guard-N``; when its PONG comes back, every message whose
last line was written before that PING and that no 4xx naming its channel
came back for (between the last checkpoint and this PONG) was taken: sent;
one that did is refused.  A 4xx does not say which line it answers, so every
message to that channel the checkpoint covers is refused (a message the
server may have taken is bounced rather than claimed delivered).  One
checkpoint is outstanding at a time; it is written when nothing else is
ready to be written, or once CHECKPOINT_MESSAGES messages or
CHECKPOINT_SECONDS wait for one, within the flood bucket.  A PONG that does
not come within ``ConnectionLimits.pong_seconds`` settles what the
checkpoint covers as ``unconfirmed`` (written, answer unknown: the gateway
counts them delivered and audits each as unconfirmed), and so does the end
of the connection for messages written and not yet confirmed.  Messages
written and waiting for a checkpoint are bounded like the queue
(``queue_lines`` messages, ``queue_bytes`` bytes): at the bound, no more
messages are written until a checkpoint answers or times out.
"""

from __future__ import annotations

import base64
import random as _random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

from twisted.internet import defer, endpoints, ssl
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import Interface

from guard.edges.irc.lines import LINE_BYTES, TAGS_BYTES, BadLine, IrcMessage, ctcp_action, format_line, parse_line, read_ctcp
from guard.edges.irc.nicks import Isupport, is_valid_nick, suffixed_nick
from guard.edges.link.dialler import Backoff, LinkDialler

log = Logger()

# Why a connection ended (what ``lost(token, reason)`` and ``connection_lost`` say).
LOSS_REASONS = (
    "netsplit",     # the connection dropped without a word from the server
    "kill",         # an operator (or services) killed our nick
    "restart",      # the server said it is going down or restarting
    "closed",       # closed by us (stop, quit) or by the server for another reason
    "timeout",      # no answer to our PING, or no registration in time
    "tls",          # the TLS handshake failed (certificate not verified, ...)
    "sasl-failed",  # SASL was configured and did not succeed: never a fallback
    "nick-in-use",  # every nick we may use was taken
    "protocol",     # the server broke the protocol (overlong line, flood of urgent lines)
)

MESSAGE_KINDS = ("privmsg", "action", "notice")
REFUSALS = ("not-connected", "queue-lines", "queue-bytes", "invalid-line", "too-many-channels")

QUIT_TEXT = "xmpp-guard gateway closing"  # our own words, whoever asked us to stop
SASL_CHUNK = 400  # IRCv3 SASL: AUTHENTICATE payloads in chunks of 400 bytes
WANTED_CAPABILITIES = ("message-tags", "server-time")  # requested when offered (sasl: when configured)
_SASL_FAILURES = {"902", "904", "905", "906", "907", "908"}
_NICK_TAKEN = {"432", "433", "436", "437"}
CHECKPOINT_PREFIX = "guard-"  # the token of our checkpoint PINGs
CHECKPOINT_MESSAGES = 32  # messages written that make a checkpoint due even while more lines are ready
CHECKPOINT_SECONDS = 10.0  # how long a written message waits at most for its checkpoint to be written


class IIrcEvents(Interface):
    """What the IRC side tells the gateway (one listener per IrcConnection or IrcConnections)."""

    def connected(network, occupant, nick):
        """The connection for ``occupant`` (None: the network's bot) registered as ``nick``."""

    def connection_lost(network, occupant, reason):
        """The connection ended (``reason`` in LOSS_REASONS); it reconnects after a backoff unless stopped."""

    def joined(network, channel, nick):
        """``nick`` joined ``channel`` (our own join included)."""

    def parted(network, channel, nick, reason):
        """``nick`` left ``channel``."""

    def quit(network, nick, reason):
        """``nick`` left the network."""

    def kicked(network, channel, nick, by, reason):
        """``by`` kicked ``nick`` from ``channel``."""

    def nick_changed(network, old, new):
        """``old`` is now called ``new``."""

    def topic(network, channel, text, by):
        """The topic of ``channel`` is ``text``; ``by`` is None for the topic found on joining."""

    def names(network, channel, nicks):
        """Who was in ``channel`` when we joined it (at most ``ConnectionLimits.names_per_channel``), each as the
        server listed it: with its membership prefixes (``@op``, ``+voiced``), which tell who is an operator."""

    def mode(network, channel, modes, arguments):
        """A MODE on ``channel`` (one we are in): ``modes`` (e.g. ``+o-v``) and their ``arguments``, as the server
        sent them."""

    def message(network, target, nick, kind, text, tags):
        """``nick`` said ``text`` to ``target`` (a channel or our nick); ``kind`` in MESSAGE_KINDS."""

    def sent(token):
        """The message taken with ``token`` was written and the server took it (a checkpoint PONG came back with
        no error naming its channel before it)."""

    def refused(token, reason):
        """The message taken with ``token`` was written and the server refused it: ``reason`` is the numeric and
        the channel (e.g. "404 #ops"), for the log and the audit."""

    def unconfirmed(token, reason):
        """The message taken with ``token`` was written but the server's answer never came (``reason``: "timeout"
        or the connection's loss reason): in doubt."""

    def lost(token, reason):
        """The message taken with ``token`` was not (wholly) written: the connection ended (``reason``)."""


# -- flood control (no I/O, time passed in) -----------------------------------


@dataclass(frozen=True)
class FloodRate:
    """How fast one connection may write: ``burst_lines`` at once, then one line per ``seconds_per_line``.

    The default respects ngIRCd (src/ngircd/conn.c): it handles at most 3
    commands of a client per pass and, when more wait or more than 256 bytes
    came in later reads of the same second, stops reading that client for a
    penalty second; so it takes 3 lines a second at most. We send 2.5 a second
    (burst 3) so that what we send never piles up there and our PONG is never
    stuck behind a backlog. ``burst_bytes``/``bytes_per_second`` (0: no byte
    budget) bound servers that count bytes.
    """

    burst_lines: int = 3
    seconds_per_line: float = 0.4
    burst_bytes: int = 0
    bytes_per_second: int = 0

    def __post_init__(self):
        if self.burst_lines < 1 or self.seconds_per_line <= 0:
            raise ValueError("a flood rate needs burst_lines >= 1 and seconds_per_line > 0")
        if self.bytes_per_second < 0 or self.burst_bytes < 0 or (self.bytes_per_second > 0) != (self.burst_bytes > 0):
            raise ValueError("burst_bytes and bytes_per_second are both set (> 0) or both 0")
        if self.burst_bytes and self.burst_bytes < 512:
            raise ValueError("burst_bytes must hold one whole IRC line (512 bytes)")


NGIRCD_RATE = FloodRate()


class TokenBucket:
    """Tokens for lines (and bytes) refilled with time; the clock is the caller's."""

    def __init__(self, rate: FloodRate, now: float):
        self.rate = rate
        self._lines = float(rate.burst_lines)
        self._bytes = float(rate.burst_bytes)
        self._at = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = max(self._at, now)
        self._lines = min(float(self.rate.burst_lines), self._lines + elapsed / self.rate.seconds_per_line)
        if self.rate.bytes_per_second:
            self._bytes = min(float(self.rate.burst_bytes), self._bytes + elapsed * self.rate.bytes_per_second)

    def wait(self, now: float, size: int) -> float:
        """Seconds from ``now`` until a line of ``size`` bytes may be written (0: now)."""
        self._refill(now)
        waits = [max(0.0, (1.0 - self._lines) * self.rate.seconds_per_line)]
        if self.rate.bytes_per_second:
            waits.append(max(0.0, (min(size, self.rate.burst_bytes) - self._bytes) / self.rate.bytes_per_second))
        wait = max(waits)
        return 0.0 if wait < 1e-6 else wait  # what float rounding leaves is no reason to wait (nor to spin)

    def take(self, now: float, size: int) -> None:
        """Spend one line and ``size`` bytes (call when ``wait`` said 0)."""
        self._refill(now)
        self._lines -= 1.0
        if self.rate.bytes_per_second:
            self._bytes -= min(size, self.rate.burst_bytes)


# -- what waits to be written (no I/O) ----------------------------------------


@dataclass
class _Entry:
    line: bytes
    token: object = None  # set on the last line of a message
    first_of: object = None  # set on the first line of a message (for counting messages)


class QueueFull(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OutgoingLines:
    """Urgent lines (protocol upkeep) before the ordered queue; the ordered queue is bounded in lines and bytes."""

    def __init__(self, max_lines: int, max_bytes: int, max_urgent: int):
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_urgent = max_urgent
        self._urgent: deque[bytes] = deque()
        self._ordered: deque[_Entry] = deque()
        self.ordered_bytes = 0
        self._unfinished: dict[int, object] = {}  # id(token) -> token of messages not wholly written

    def __len__(self) -> int:
        return len(self._urgent) + len(self._ordered)

    @property
    def ordered_lines(self) -> int:
        return len(self._ordered)

    def urgent(self, line: bytes) -> None:
        if len(self._urgent) >= self.max_urgent:
            raise QueueFull("urgent")
        self._urgent.append(line)

    def ordered(self, lines: list[bytes], token=None, front: bool = False) -> None:
        """Queue ``lines`` (one message or command) whole, or refuse them whole (QueueFull)."""
        size = sum(len(line) for line in lines)
        if len(self._ordered) + len(lines) > self.max_lines:
            raise QueueFull("queue-lines")
        if self.ordered_bytes + size > self.max_bytes:
            raise QueueFull("queue-bytes")
        entries = [_Entry(line) for line in lines]
        if token is not None:
            entries[0].first_of = token
            entries[-1].token = token
            self._unfinished[id(token)] = token
        if front:
            self._ordered.extendleft(reversed(entries))
        else:
            self._ordered.extend(entries)
        self.ordered_bytes += size

    def peek(self, ordered_open: bool) -> bytes | None:
        if self._urgent:
            return self._urgent[0]
        if ordered_open and self._ordered:
            return self._ordered[0].line
        return None

    def pop(self, ordered_open: bool):
        """The next line, the token it completes (or None) and the token it starts (or None)."""
        if self._urgent:
            return self._urgent.popleft(), None, None
        entry = self._ordered.popleft()
        self.ordered_bytes -= len(entry.line)
        if entry.token is not None:
            self._unfinished.pop(id(entry.token), None)
        return entry.line, entry.token, entry.first_of

    def drain(self) -> list:
        """Forget everything; the tokens of messages not wholly written, in the order they were taken."""
        tokens = list(self._unfinished.values())
        self._urgent.clear()
        self._ordered.clear()
        self._unfinished.clear()
        self.ordered_bytes = 0
        return tokens


@dataclass
class _Written:
    """A message whose first line was written: waiting for its last line and a checkpoint's answer."""

    token: object
    target: str  # its channel, folded
    size: int = 0  # bytes of its lines written
    complete: bool = False  # its last line was written
    refused: str | None = None  # "<numeric> <channel>" when a 4xx named its channel before a checkpoint's PONG


class Unconfirmed:
    """Messages written and not yet confirmed, in write order, and the one checkpoint (PING) outstanding: which of
    them it covers and the 4xx that came back before its PONG.  No I/O; bounded by its owner."""

    def __init__(self):
        self.messages: deque[_Written] = deque()
        self.bytes = 0
        self.checkpoint: str | None = None  # the token of the PING outstanding
        self.covered = 0  # how many of ``messages`` (the first ones) were wholly written before that PING
        self.reached = 0  # how many had a line written before it (the newest may have been half written)
        self.checkpoint_at = 0.0
        self._serial = 0

    def __len__(self) -> int:
        return len(self.messages)

    def started(self, token, target: str) -> None:
        self.messages.append(_Written(token, target))

    def line_written(self, token, size: int, last: bool) -> None:
        """A line of the message of ``token`` (the newest such message) was written."""
        for written in reversed(self.messages):
            if written.token is token:
                written.size += size
                written.complete = written.complete or last
                self.bytes += size
                return

    @property
    def uncovered(self) -> int:
        """Messages wholly written that no checkpoint covers yet (only the newest message may be half written)."""
        complete = len(self.messages) - (1 if self.messages and not self.messages[-1].complete else 0)
        return complete - self.covered

    def needs_checkpoint(self) -> bool:
        return self.checkpoint is None and self.uncovered > 0

    def open_checkpoint(self, now: float) -> str:
        """A checkpoint PING is written now: it covers every message written so far."""
        self._serial += 1
        self.checkpoint = f"{CHECKPOINT_PREFIX}{self._serial}"
        self.covered = self.covered + self.uncovered
        self.reached = len(self.messages)
        self.checkpoint_at = now
        return self.checkpoint

    def error_for(self, target: str, reason: str) -> bool:
        """A 4xx naming ``target``: every message to it the outstanding checkpoint covers (or, with none
        outstanding, every one written since the last answer) is refused.  Whether any was."""
        limit = self.reached if self.checkpoint is not None else len(self.messages)
        hit = False
        for index, written in enumerate(self.messages):
            if index >= limit:
                break
            if written.target == target:
                written.refused = written.refused or reason
                hit = True
        return hit

    def answered(self, checkpoint: str) -> list | None:
        """The PONG of ``checkpoint``: the messages it covers (wholly written before it), settled now (None: not
        our outstanding checkpoint).  A message half written at the PING waits for the next checkpoint."""
        if checkpoint != self.checkpoint:
            return None
        return self._settle()

    def timed_out(self) -> list:
        """The checkpoint got no PONG in time: what it covers is settled in doubt."""
        return self._settle()

    def _settle(self) -> list:
        settled = [self.messages.popleft() for _ in range(self.covered)]
        self.bytes -= sum(written.size for written in settled)
        self.checkpoint, self.covered, self.reached = None, 0, 0
        return settled

    def drain(self) -> list:
        """The connection ended: the messages wholly written and not confirmed (the others are lost with it)."""
        complete = [written for written in self.messages if written.complete]
        self.messages.clear()
        self.bytes, self.checkpoint, self.covered, self.reached = 0, None, 0, 0
        return complete


# -- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class SaslCredentials:
    """``mechanism`` "PLAIN" (username, password; TLS only) or "EXTERNAL" (the TLS client certificate)."""

    mechanism: str
    username: str = ""
    password: str = ""

    def __post_init__(self):
        if self.mechanism not in ("PLAIN", "EXTERNAL"):
            raise ValueError(f"SASL mechanism {self.mechanism!r}: PLAIN or EXTERNAL")
        if self.mechanism == "PLAIN" and not (self.username and self.password):
            raise ValueError("SASL PLAIN needs a username and a password")


@dataclass(frozen=True)
class IrcServer:
    """Where a network's server is and how to reach it."""

    network: str
    host: str
    port: int
    tls: bool = True
    tls_verify: bool = True
    ca_file: str | None = None  # None: the system's trust store
    server_name: str | None = None  # the name its certificate must carry (default: host)
    client_certificate: str | None = None  # PEM file, for SASL EXTERNAL (CertFP)
    client_key: str | None = None
    password: str | None = None  # PASS, when the server wants one
    sasl: SaslCredentials | None = None
    flood: FloodRate = NGIRCD_RATE
    charset_fallback: str = "latin-1"
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_delay=2.0, max_delay=300.0))

    def __post_init__(self):
        if self.sasl is not None and self.sasl.mechanism == "PLAIN" and not self.tls:
            raise ValueError(f"network {self.network}: SASL PLAIN only over TLS (the password would cross in clear)")
        if self.sasl is not None and self.sasl.mechanism == "EXTERNAL" and not (
                self.tls and self.client_certificate and self.client_key):
            raise ValueError(f"network {self.network}: SASL EXTERNAL needs TLS and a client certificate and key")


@dataclass(frozen=True)
class IrcIdentity:
    nick: str
    user: str = "xmppguard"
    realname: str = "xmpp-guard IRC gateway"


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection holds at most; what a hostile server can make it keep is bounded here."""

    queue_lines: int = 256  # ordered lines waiting (messages, joins, parts)
    queue_bytes: int = 64 * 1024
    urgent_lines: int = 32  # PONG/CAP/SASL lines waiting; more means a hostile server: the connection closes
    max_channels: int = 64  # channels one connection joins
    names_per_channel: int = 4096  # nicks kept from a NAMES reply
    capabilities: int = 64  # capabilities read from CAP LS
    isupport_tokens: int = 256  # RPL_ISUPPORT tokens read
    unparsed_bytes: int = TAGS_BYTES + LINE_BYTES  # a line being received (tags part plus the line), else the connection closes
    idle_seconds: float = 90.0  # silence before we PING the server
    pong_seconds: float = 30.0  # silence after our PING before the connection is dropped (timeout)
    register_seconds: float = 30.0  # connect to 001 (registration, CAP, SASL)
    nick_attempts: int = 16


def next_nick(nick: str, attempt: int, nicklen: int) -> str | None:
    """The nick to try after ``attempt`` refusals of ``nick`` on the server: the NickBook's suffix rule (``nick|2``, ...)."""
    return suffixed_nick(nick, attempt + 1, nicklen)


# -- the protocol (one TCP/TLS connection) ------------------------------------


class IrcProtocol(LineOnlyReceiver):
    """Reads lines with ``parse_line``, writes with ``format_line``; its owner decides the rest."""

    delimiter = b"\n"

    def __init__(self, owner: "IrcConnection"):
        self.owner = owner
        self.limits = owner.limits
        self.server = owner.server
        self.clock = owner.clock
        self.MAX_LENGTH = self.limits.unparsed_bytes
        self.when_lost: list[Callable] = []  # LinkDialler's hook
        self.reached_open = False  # registered (001)
        self.lost = False
        self.closing = False  # we asked the transport to close: nothing more is written or read
        self.nick = owner.identity.nick
        self.isupport = Isupport()
        self.channels: dict[str, str] = {}  # folded name -> name as joined
        self.lines = OutgoingLines(self.limits.queue_lines, self.limits.queue_bytes, self.limits.urgent_lines)
        self.unconfirmed = Unconfirmed()
        self._oldest_unchecked = 0.0  # when the first message not covered by a checkpoint was written
        self._checkpoint_call = None
        self._quiet_call = None
        self._quiet = False  # the reactor turned with nothing ready to write: a checkpoint may go
        self.bucket = TokenBucket(self.server.flood, self.clock.seconds())
        self.loss_reason: str | None = None
        self.bad_lines = 0
        self.lines_written = 0
        self._offered: dict[str, str] = {}
        self._acked: set[str] = set()
        self._sasl_done = False
        self._isupport_count = 0
        self._names: dict[str, list[str]] = {}
        self._nick_attempt = 0
        self._pump_call = None
        self._register_call = None
        self._idle_call = None
        self._pong_call = None
        self._last_heard = self.clock.seconds()
        self._pinged_at = 0.0

    # -- connection ------------------------------------------------------

    def connectionMade(self):
        self.owner._protocol_made(self)
        self._register_call = self.clock.callLater(self.limits.register_seconds, self._registration_late)
        self._arm_idle()
        if self.server.password:
            self._urgent("PASS", [self.server.password])
        self._urgent("CAP", ["LS", "302"])
        self._urgent("NICK", [self.nick])
        self._urgent("USER", [self.owner.identity.user, "0", "*", self.owner.identity.realname])

    def connectionLost(self, reason=None):
        if self.lost:
            return
        self.lost = True
        for call in (self._pump_call, self._register_call, self._idle_call, self._pong_call, self._checkpoint_call,
                     self._quiet_call):
            if call is not None and call.active():
                call.cancel()
        if self.loss_reason is None:
            self.loss_reason = "tls" if _is_tls_failure(reason) else "netsplit"
        tokens = self.lines.drain()
        in_doubt = [written.token for written in self.unconfirmed.drain()]
        self.owner._protocol_lost(self, self.loss_reason, tokens, reason, in_doubt)
        for callback in list(self.when_lost):
            callback(self)

    def close(self, condition: str = "closed", text: str = "") -> None:
        """Quit and close (LinkDialler calls this on stop); what was not written is lost ('closed')."""
        self._drop("closed", quit_text=QUIT_TEXT)

    def _drop(self, reason: str, quit_text: str | None = None) -> None:
        if self.lost or self.closing or self.transport is None:
            return
        self.closing = True
        if self.loss_reason is None:
            self.loss_reason = reason
        if quit_text is not None:
            try:
                self.transport.write(format_line("QUIT", [quit_text]))
            except BadLine:
                pass
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        log.warn("irc {network}: the server sent a line over {limit} bytes: connection closed",
                 network=self.server.network, limit=self.MAX_LENGTH)
        self._drop("protocol")

    # -- writing -----------------------------------------------------------

    def _urgent(self, command: str, params: list[str]) -> None:
        try:
            self.lines.urgent(format_line(command, params))
        except QueueFull:
            log.warn("irc {network}: more than {limit} protocol lines waiting: the server floods us; closing",
                     network=self.server.network, limit=self.limits.urgent_lines)
            self._drop("protocol")
            return
        self._pump()

    def ordered(self, lines: list[bytes], token=None, front: bool = False) -> None:
        """Queue lines in order (raises QueueFull); they leave once registered, within the flood rate."""
        self.lines.ordered(lines, token, front)
        self._pump()

    def _pump(self) -> None:
        if self._pump_call is not None and self._pump_call.active():
            return
        self._pump_call = None
        while not (self.lost or self.closing) and self.transport is not None:
            now = self.clock.seconds()
            ordered_open = self.reached_open and not self._unconfirmed_full()
            ready = self.lines.peek(ordered_open)
            checkpoint = self._checkpoint_due(now, ready)
            line = format_line("PING", [CHECKPOINT_PREFIX]) if checkpoint else ready
            if line is None:
                return
            wait = self.bucket.wait(now, len(line))
            if wait > 0:
                self._pump_call = self.clock.callLater(wait, self._pump)
                return
            self.bucket.take(now, len(line))
            if checkpoint:
                self._write_checkpoint(now)
                continue
            line, token, first_of = self.lines.pop(ordered_open)
            self.transport.write(line)
            self.lines_written += 1
            self._track(line, token, first_of, now)

    # -- what the server took (checkpoints) -------------------------------

    def _track(self, line: bytes, token, first_of, now: float) -> None:
        """A line was written: a message's first line starts waiting for a checkpoint, its last completes it."""
        self._quiet = False
        if first_of is not None:
            target = _target_of(line)
            if target is None:  # not a line to a channel (no answer names it): taken as written
                if token is not None:
                    self.owner._token_sent(token)
                return
            if self.unconfirmed.uncovered == 0:
                self._oldest_unchecked = now
            self.unconfirmed.started(first_of, self.isupport.fold(target))
        if first_of is None and token is None:
            for written in reversed(self.unconfirmed.messages):  # a middle line of the newest message
                if not written.complete:
                    self.unconfirmed.line_written(written.token, len(line), False)
                    break
            return
        self.unconfirmed.line_written(first_of if first_of is not None else token, len(line), token is not None)

    def _unconfirmed_full(self) -> bool:
        return (len(self.unconfirmed) >= self.limits.queue_lines
                or self.unconfirmed.bytes >= self.limits.queue_bytes)

    def _checkpoint_due(self, now: float, ready) -> bool:
        """Whether our next line is a checkpoint PING: messages wait for one, none is outstanding, and nothing
        else is ready, or enough messages or time wait."""
        if not self.reached_open or not self.unconfirmed.needs_checkpoint():
            return False
        if self.unconfirmed.uncovered >= CHECKPOINT_MESSAGES or now - self._oldest_unchecked >= CHECKPOINT_SECONDS:
            return True
        if ready is not None:
            return False
        if self._quiet:
            return True
        if self._quiet_call is None:
            # Nothing ready now: messages the gateway hands over in this same turn of the reactor go before it.
            self._quiet_call = self.clock.callLater(0, self._quieted)
        return False

    def _quieted(self) -> None:
        self._quiet_call = None
        self._quiet = True
        self._pump()

    def _write_checkpoint(self, now: float) -> None:
        self._quiet = False
        token = self.unconfirmed.open_checkpoint(now)
        self.transport.write(format_line("PING", [token]))
        self.lines_written += 1
        self._checkpoint_call = self.clock.callLater(self.limits.pong_seconds, self._checkpoint_late, token)

    def _checkpoint_late(self, token: str) -> None:
        self._checkpoint_call = None
        if self.unconfirmed.checkpoint != token or self.lost:
            return
        log.warn("irc {network}: no PONG to checkpoint {token} within {seconds} s: what it covers is settled in doubt",
                 network=self.server.network, token=token, seconds=self.limits.pong_seconds)
        for written in self.unconfirmed.timed_out():
            self.owner._token_unconfirmed(written.token, "timeout")
        self._pump()

    def _on_PONG(self, message):
        settled = self.unconfirmed.answered(message.params[-1] if message.params else "")
        if settled is None:
            return
        if self._checkpoint_call is not None and self._checkpoint_call.active():
            self._checkpoint_call.cancel()
        self._checkpoint_call = None
        for written in settled:
            if written.refused is not None:
                self.owner._token_refused(written.token, written.refused)
            else:
                self.owner._token_sent(written.token)
        self._pump()

    def _on_error_numeric(self, message):
        """A 4xx: when its first parameter after our nick is a channel we wrote messages to, they are refused."""
        target = self._param(message, 1)
        if target[:1] not in _channel_types(self.isupport):
            return
        reason = f"{message.command} {target[:64]}"
        if self.unconfirmed.error_for(self.isupport.fold(target), reason):
            log.info("irc {network}: the server refused a message to {channel} ({numeric}: {text!r})",
                     network=self.server.network, channel=target[:64], numeric=message.command,
                     text=self._param(message, 2)[:200])

    # -- timers ------------------------------------------------------------

    def _registration_late(self):
        self._register_call = None
        if not self.reached_open:
            log.warn("irc {network}: not registered within {seconds} s: connection closed",
                     network=self.server.network, seconds=self.limits.register_seconds)
            self._drop("timeout")

    def _arm_idle(self):
        self._idle_call = self.clock.callLater(self.limits.idle_seconds, self._idle_check)

    def _idle_check(self):
        silent = self.clock.seconds() - self._last_heard
        if silent < self.limits.idle_seconds:
            self._idle_call = self.clock.callLater(max(0.01, self.limits.idle_seconds - silent), self._idle_check)
            return
        self._idle_call = None
        self._pinged_at = self.clock.seconds()
        self._urgent("PING", ["xmpp-guard"])
        self._pong_call = self.clock.callLater(self.limits.pong_seconds, self._pong_check)

    def _pong_check(self):
        self._pong_call = None
        if self._last_heard <= self._pinged_at:  # not a word since our PING
            log.warn("irc {network}: no answer to PING within {seconds} s: connection dropped",
                     network=self.server.network, seconds=self.limits.pong_seconds)
            self._drop("timeout")
        else:
            self._arm_idle()

    # -- reading -----------------------------------------------------------

    def lineReceived(self, raw: bytes):
        if self.lost or self.closing:
            return
        self._last_heard = self.clock.seconds()
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return
        try:
            message = parse_line(raw, self.server.charset_fallback, line_bytes=self.isupport.linelen)
        except BadLine as error:
            self.bad_lines += 1
            log.info("irc {network}: refused a line from the server ({reason})",
                     network=self.server.network, reason=getattr(error, "reason", str(error)))
            return
        handler = getattr(self, "_on_" + message.command, None)
        if handler is None and len(message.command) == 3 and message.command.startswith("4"):
            handler = self._on_error_numeric
        if handler is None:
            return
        try:
            handler(message)
        except Exception:  # noqa: BLE001 - fail closed: a line we cannot handle ends the connection, said in the log
            log.failure("irc {network}: handling a {command} line failed; connection closed",
                        network=self.server.network, command=message.command[:16])
            self._drop("protocol")

    def _is_me(self, nick: str) -> bool:
        return self.isupport.fold(nick) == self.isupport.fold(self.nick)

    def _param(self, message: IrcMessage, index: int) -> str:
        return message.params[index] if len(message.params) > index else ""

    def _on_PING(self, message):
        self._urgent("PONG", [self._param(message, 0) or "xmpp-guard"])

    def _on_ERROR(self, message):
        text = self._param(message, 0).lower()
        if self.loss_reason is None:
            if "kill" in text:
                self.loss_reason = "kill"
            elif "restart" in text or "going down" in text or "shutdown" in text or "shutting down" in text:
                self.loss_reason = "restart"
            else:
                self.loss_reason = "closed"
        log.info("irc {network}: the server closes our connection: {text!r}",
                 network=self.server.network, text=self._param(message, 0)[:200])

    def _on_KILL(self, message):
        if self._is_me(self._param(message, 0)) and self.loss_reason is None:
            self.loss_reason = "kill"

    # registration, CAP, SASL

    def _on_CAP(self, message):
        sub = self._param(message, 1).upper()
        if sub == "LS":
            more = len(message.params) > 3 and message.params[2] == "*"
            for item in message.params[-1].split():
                if len(self._offered) >= self.limits.capabilities:
                    break
                name, _, value = item.partition("=")
                self._offered[name.lower()] = value
            if not more:
                self._request_capabilities()
        elif sub == "ACK":
            for item in message.params[-1].split():
                if len(self._acked) >= self.limits.capabilities:
                    break  # a server repeating ACKs of new names is not given memory for them
                self._acked.add(item.lower().lstrip("-"))
            if self.server.sasl is not None:
                if "sasl" in self._acked:
                    self._urgent("AUTHENTICATE", [self.server.sasl.mechanism])
                else:
                    self._sasl_failed("the server did not grant the sasl capability")
            else:
                self._urgent("CAP", ["END"])
        elif sub == "NAK":
            if self.server.sasl is not None:
                self._sasl_failed("the server refused the sasl capability")
            else:
                self._urgent("CAP", ["END"])

    def _request_capabilities(self):
        wanted = [name for name in WANTED_CAPABILITIES if name in self._offered]
        if self.server.sasl is not None:
            if "sasl" not in self._offered:
                self._sasl_failed("the server offers no SASL")
                return
            mechanisms = self._offered["sasl"]
            if mechanisms and self.server.sasl.mechanism not in mechanisms.upper().split(","):
                self._sasl_failed(f"the server offers SASL {mechanisms!r}, not {self.server.sasl.mechanism}")
                return
            wanted.insert(0, "sasl")
        if wanted:
            self._urgent("CAP", ["REQ", " ".join(wanted)])
        else:
            self._urgent("CAP", ["END"])

    def _on_AUTHENTICATE(self, message):
        if self.server.sasl is None or self._param(message, 0) != "+":
            return
        credentials = self.server.sasl
        if credentials.mechanism == "PLAIN":
            payload = b"\0".join([b"", credentials.username.encode("utf-8"), credentials.password.encode("utf-8")])
        else:
            payload = b""
        for chunk in sasl_chunks(payload):
            self._urgent("AUTHENTICATE", [chunk])

    def _on_903(self, message):
        self._sasl_done = True
        self._urgent("CAP", ["END"])

    def _sasl_failed(self, why: str):
        log.error("irc {network}: SASL {mechanism} failed ({why}): connection closed, no fallback",
                  network=self.server.network, mechanism=self.server.sasl.mechanism, why=why)
        self._drop("sasl-failed", quit_text="SASL failed")

    def _on_001(self, message):
        if self.server.sasl is not None and not self._sasl_done:
            self._sasl_failed("the server registered us without SASL")
            return
        self.nick = self._param(message, 0) or self.nick
        self.reached_open = True
        if self._register_call is not None and self._register_call.active():
            self._register_call.cancel()
        self._register_call = None
        self.owner._protocol_registered(self)
        self._pump()

    def _on_005(self, message):
        room = self.limits.isupport_tokens - self._isupport_count
        tokens = message.params[1:-1][: max(0, room)]
        self._isupport_count += len(tokens)
        self.isupport = self.isupport.updated(tokens)

    def _on_nick_taken(self, message):
        if self.reached_open:
            return  # a NICK we asked for later was refused: we keep the nick we have
        self._nick_attempt += 1
        if self._nick_attempt > self.limits.nick_attempts:
            log.warn("irc {network}: {n} nicks refused: giving up on this connection",
                     network=self.server.network, n=self._nick_attempt - 1)
            self._drop("nick-in-use", quit_text="no nick available")
            return
        candidate = self.owner.next_nick(self.owner.identity.nick, self._nick_attempt, self.isupport.nicklen)
        if candidate is None:
            self._drop("nick-in-use", quit_text="no nick available")
            return
        self.nick = candidate
        self._urgent("NICK", [self.nick])

    _on_432 = _on_433 = _on_436 = _on_437 = _on_nick_taken  # nicks, never channels: not message refusals

    def _on_sasl_failure(self, message):
        if self.server.sasl is not None and not self._sasl_done:
            self._sasl_failed(f"numeric {message.command}")

    _on_902 = _on_904 = _on_905 = _on_906 = _on_907 = _on_908 = _on_sasl_failure

    # channel events

    def _on_JOIN(self, message):
        channel, nick = self._param(message, 0), (message.source_nick or "")
        folded = self.isupport.fold(channel)
        if self._is_me(nick):
            if folded not in self.owner.wanted or len(self.channels) >= self.limits.max_channels:
                return  # a join we did not ask for (forced by the server): not tracked, not reported
            self.channels[folded] = channel
        elif folded not in self.channels:
            return
        self.owner._event("joined", channel, nick)

    def _on_PART(self, message):
        channel, nick = self._param(message, 0), (message.source_nick or "")
        folded = self.isupport.fold(channel)
        if folded not in self.channels:
            return
        if self._is_me(nick):
            self.channels.pop(folded, None)
        self.owner._event("parted", channel, nick, self._param(message, 1))

    def _on_KICK(self, message):
        channel, victim = self._param(message, 0), self._param(message, 1)
        folded = self.isupport.fold(channel)
        if folded not in self.channels:
            return
        if self._is_me(victim):
            self.channels.pop(folded, None)
            self.owner.wanted.pop(folded, None)  # no rejoin after a kick: the bridge decides
        self.owner._event("kicked", channel, victim, (message.source_nick or ""), self._param(message, 2))

    def _on_QUIT(self, message):
        nick = (message.source_nick or "")
        if not self._is_me(nick):
            self.owner._event("quit", nick, self._param(message, 0))

    def _on_NICK(self, message):
        old, new = (message.source_nick or ""), self._param(message, 0)
        if not new:
            return
        if self._is_me(old):
            self.nick = new
        self.owner._event("nick_changed", old, new)

    def _on_TOPIC(self, message):
        channel = self._param(message, 0)
        if self.isupport.fold(channel) in self.channels:
            self.owner._event("topic", channel, self._param(message, 1), (message.source_nick or ""))

    def _on_332(self, message):
        channel = self._param(message, 1)
        if self.isupport.fold(channel) in self.channels:
            self.owner._event("topic", channel, self._param(message, 2), None)

    def _on_353(self, message):
        channel = self._param(message, 2)
        folded = self.isupport.fold(channel)
        if folded not in self.channels:
            return
        names = self._names.setdefault(folded, [])
        for item in message.params[-1].split():
            if len(names) >= self.limits.names_per_channel:
                break
            names.append(item)  # with its prefixes: the listener strips them (and reads who is an operator)

    def _on_MODE(self, message):
        channel = self._param(message, 0)
        if channel[:1] in _channel_types(self.isupport) and self.isupport.fold(channel) in self.channels:
            self.owner._event("mode", channel, self._param(message, 1), tuple(message.params[2:]))

    def _on_366(self, message):
        channel = self._param(message, 1)
        folded = self.isupport.fold(channel)
        if folded in self.channels:
            self.owner._event("names", channel, tuple(self._names.pop(folded, ())))

    def _on_PRIVMSG(self, message, kind="privmsg"):
        if message.source is None or "!" not in message.source:
            return  # from the server itself, not a user
        target, text = self._param(message, 0), self._param(message, 1)
        if target[:1] in _channel_types(self.isupport):
            if self.isupport.fold(target) not in self.channels:
                return
        elif not self._is_me(target):
            return
        ctcp = read_ctcp(text)
        if ctcp is not None:
            what, body = ctcp
            if what != "ACTION" or kind != "privmsg":
                log.info("irc {network}: CTCP {what!r} from {nick!r} ignored",
                         network=self.server.network, what=what[:32], nick=(message.source_nick or "")[:64])
                return
            kind, text = "action", body
        self.owner._event("message", target, (message.source_nick or ""), kind, text, dict(message.tags))

    def _on_NOTICE(self, message):
        self._on_PRIVMSG(message, kind="notice")


def _channel_types(isupport) -> str:
    return isupport.chantypes or "#&"


_TARGETED = (b"PRIVMSG ", b"NOTICE ", b"TOPIC ")


def _target_of(line: bytes) -> str | None:
    """The channel or nick a PRIVMSG, NOTICE or TOPIC line we wrote (``format_line``'s, no tags or source) names."""
    if not line.startswith(_TARGETED):
        return None
    parts = line.split(b" ", 2)
    return parts[1].decode("utf-8", errors="replace") if len(parts) > 1 else None


def sasl_chunks(payload: bytes) -> list[str]:
    """AUTHENTICATE arguments for ``payload``: base64 in 400-byte pieces, '+' after a full last piece or for nothing."""
    encoded = base64.b64encode(payload).decode("ascii")
    chunks = [encoded[index:index + SASL_CHUNK] for index in range(0, len(encoded), SASL_CHUNK)]
    if not chunks or len(chunks[-1]) == SASL_CHUNK:
        chunks.append("+")
    return chunks


def _is_tls_failure(reason) -> bool:
    try:
        from OpenSSL.SSL import Error as OpenSSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        return False
    return reason is not None and hasattr(reason, "check") and reason.check(OpenSSLError) is not None


# -- one reconnecting connection ----------------------------------------------


class IrcConnection:
    """One IRC client that stays connected: registers, joins its channels, relays; reconnects after a loss."""

    def __init__(self, server: IrcServer, identity: IrcIdentity, clock, connector, listener,
                 occupant=None, limits: ConnectionLimits = ConnectionLimits(), random=_random.random,
                 next_nick=next_nick):
        """``connector(server, factory) -> Deferred[IrcProtocol]`` opens the transport (see ``endpoint_connector``)."""
        self.server = server
        self.identity = identity
        self.clock = clock
        self.connector = connector
        self.listener = listener
        self.occupant = occupant
        self.limits = limits
        self.next_nick = next_nick
        self.wanted: dict[str, tuple[str, str | None]] = {}  # folded channel -> (channel, key)
        self.protocol: IrcProtocol | None = None
        self.dialler = LinkDialler(self._dial, clock, random, server.backoff, dialled="irc")
        self.counts = {"connections": 0, "registered": 0, "sent": 0, "lost": 0, "refused": 0, "unconfirmed": 0}
        self.refusals: dict[str, int] = {}
        self.last_loss: str | None = None
        self.stopped = True

    @property
    def network(self) -> str:
        return self.server.network

    @property
    def registered(self) -> bool:
        return self.protocol is not None and self.protocol.reached_open and not self.protocol.lost

    @property
    def nick(self) -> str:
        return self.protocol.nick if self.protocol is not None else self.identity.nick

    def start(self) -> None:
        self.stopped = False
        self.dialler.start()

    def stop(self) -> None:
        """Quit and stay disconnected; what was not written is lost ('closed')."""
        self.stopped = True
        self.dialler.stop()

    # -- what the gateway asks ---------------------------------------------

    def join(self, channel: str, key: str | None = None) -> str | None:
        """Join ``channel`` now if registered, and again after every reconnection; a refusal reason or None."""
        folded = self._fold(channel)
        if folded not in self.wanted and len(self.wanted) >= self.limits.max_channels:
            return self._refuse("too-many-channels")
        self.wanted[folded] = (channel, key)
        if self.registered:
            return self._queue([self._join_line(channel, key)])
        return None

    def part(self, channel: str, reason: str = "") -> str | None:
        self.wanted.pop(self._fold(channel), None)
        if self.registered and self._fold(channel) in self.protocol.channels:
            return self._queue([self._line("PART", [channel, reason] if reason else [channel])])
        return None

    def change_nick(self, nick: str) -> str | None:
        """Be called ``nick`` from now on: a NICK line after what is queued (nothing waiting is lost, no
        reconnection), and the nick asked for at every later registration.  A refusal reason or None."""
        isupport = self.protocol.isupport if self.protocol is not None else Isupport()
        if not is_valid_nick(nick, isupport.nicklen):
            return self._refuse("invalid-line")
        self.identity = replace(self.identity, nick=nick)
        if self.registered:
            return self._command("NICK", [nick])
        return None

    def set_topic(self, channel: str, text: str, token=None) -> str | None:
        """Set ``channel``'s topic; with ``token``, reported once like a message's (``sent`` when the TOPIC
        line was written, ``lost`` when the connection ended first).  A refusal reason or None."""
        return self._command("TOPIC", [channel, text], token)

    def kick(self, channel: str, nick: str, reason: str = "") -> str | None:
        return self._command("KICK", [channel, nick, reason] if reason else [channel, nick])

    def say(self, target: str, texts: list[str], token, kind: str = "privmsg") -> str | None:
        """Take one message (``texts``: its IRC lines, already split within the line budget) with ``token``.

        None: taken, and ``token`` will be reported once (``sent`` or ``lost``).
        A reason from REFUSALS: not taken, nothing will be reported.
        """
        if kind not in MESSAGE_KINDS or not texts:
            return self._refuse("invalid-line")
        command = "NOTICE" if kind == "notice" else "PRIVMSG"
        try:
            lines = [self._line(command, [target, ctcp_action(text) if kind == "action" else text]) for text in texts]
        except BadLine:
            return self._refuse("invalid-line")
        return self._queue(lines, token)

    def _command(self, command: str, params: list[str], token=None) -> str | None:
        try:
            line = self._line(command, params)
        except BadLine:
            return self._refuse("invalid-line")
        return self._queue([line], token)

    def _queue(self, lines: list[bytes], token=None, front: bool = False) -> str | None:
        if self.protocol is None or self.protocol.lost or self.protocol.closing:
            return self._refuse("not-connected")
        try:
            self.protocol.ordered(lines, token, front)
        except QueueFull as full:
            return self._refuse(full.reason)
        return None

    def _refuse(self, reason: str) -> str:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return reason

    def _join_line(self, channel: str, key: str | None) -> bytes:
        return self._line("JOIN", [channel, key] if key else [channel])

    def _line(self, command: str, params: list[str]) -> bytes:
        """One line within the network's LINELEN (raises BadLine)."""
        isupport = self.protocol.isupport if self.protocol is not None else Isupport()
        return format_line(command, params, line_bytes=isupport.linelen)

    def _fold(self, name: str) -> str:
        isupport = self.protocol.isupport if self.protocol is not None else Isupport()
        return isupport.fold(name)

    # -- what the protocol tells -------------------------------------------

    def _dial(self):
        factory = Factory.forProtocol(lambda: IrcProtocol(self))
        self.counts["connections"] += 1
        pending = self.connector(self.server, factory)

        def attached(protocol):
            if protocol.lost:
                raise ConnectionError(f"irc {self.network}: lost before it was attached ({protocol.loss_reason})")
            return protocol

        return pending.addCallback(attached)

    def _protocol_made(self, protocol: IrcProtocol) -> None:
        self.protocol = protocol

    def _protocol_registered(self, protocol: IrcProtocol) -> None:
        self.counts["registered"] += 1
        # Refold the wanted channels by the casemapping the server announced.
        self.wanted = {protocol.isupport.fold(channel): (channel, key) for channel, key in self.wanted.values()}
        rejoin = [self._join_line(channel, key) for channel, key in self.wanted.values()]
        if rejoin:
            try:
                protocol.ordered(rejoin, front=True)
            except QueueFull as full:
                log.warn("irc {network}: cannot queue the rejoins ({reason})", network=self.network, reason=full.reason)
        log.info("irc {network}: registered as {nick} ({occupant})", network=self.network, nick=protocol.nick,
                 occupant=self.occupant or "bot")
        self.listener.connected(self.network, self.occupant, protocol.nick)

    def _protocol_lost(self, protocol: IrcProtocol, reason: str, tokens: list, failure, in_doubt=()) -> None:
        was_current = protocol is self.protocol
        if was_current:
            self.protocol = None
        self.last_loss = reason
        log.info("irc {network}: connection of {occupant} ended ({reason})", network=self.network,
                 occupant=self.occupant or "bot", reason=reason)
        for token in in_doubt:
            self._token_unconfirmed(token, reason)
        for token in tokens:
            self.counts["lost"] += 1
            self.listener.lost(token, reason)
        self.listener.connection_lost(self.network, self.occupant, reason)

    def _token_sent(self, token) -> None:
        self.counts["sent"] += 1
        self.listener.sent(token)

    def _token_refused(self, token, reason: str) -> None:
        self.counts["refused"] += 1
        self.listener.refused(token, reason)

    def _token_unconfirmed(self, token, reason: str) -> None:
        self.counts["unconfirmed"] += 1
        self.listener.unconfirmed(token, reason)

    def _event(self, name: str, *args) -> None:
        getattr(self.listener, name)(self.network, *args)

    def describe(self) -> dict:
        protocol = self.protocol
        return {
            "network": self.network,
            "occupant": self.occupant,
            "nick": self.nick,
            "registered": self.registered,
            "channels": sorted(channel for channel, _ in self.wanted.values()),
            "queue_lines": protocol.lines.ordered_lines if protocol else 0,
            "queue_bytes": protocol.lines.ordered_bytes if protocol else 0,
            "unanswered": len(protocol.unconfirmed) if protocol else 0,  # written, the server's answer awaited
            "unanswered_bytes": protocol.unconfirmed.bytes if protocol else 0,
            "bad_lines": protocol.bad_lines if protocol else 0,
            "last_loss": self.last_loss,
            "refusals": dict(self.refusals),
            **self.counts,
        }


# -- opening the transport ------------------------------------------------------


def tls_options(server: IrcServer):
    """TLS client options for ``server``: verified against its CA (or the system's), loudly unverified if so configured."""
    client_certificate = None
    if server.client_certificate and server.client_key:
        with open(server.client_certificate, "rb") as certificate, open(server.client_key, "rb") as key:
            client_certificate = ssl.PrivateCertificate.loadPEM(certificate.read() + b"\n" + key.read())
    extra = {"raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
    if not server.tls_verify:
        log.error("irc {network}: tls_verify = false: the IRC server's certificate is NOT verified; "
                  "anyone on the path can read and change this connection", network=server.network)
        options = {"verify": False, "raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
        if client_certificate is not None:
            options.update(privateKey=client_certificate.privateKey.original, certificate=client_certificate.original)
        return ssl.CertificateOptions(**options)
    if server.ca_file:
        with open(server.ca_file, "rb") as handle:
            trust = ssl.trustRootFromCertificates(_certificates(handle.read()))
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(server.server_name or server.host, trustRoot=trust,
                                   clientCertificate=client_certificate, extraCertificateOptions=extra)


def _certificates(pem: bytes) -> list:
    marker = b"-----END CERTIFICATE-----"
    pieces = [piece + marker for piece in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in piece]
    return [ssl.Certificate.loadPEM(piece) for piece in pieces]


def endpoint_connector(reactor, timeout: float = 30.0):
    """A ``connector`` for IrcConnection: TCP to the server's host and port, wrapped in verified TLS when ``tls``."""

    def connect(server: IrcServer, factory) -> defer.Deferred:
        endpoint = endpoints.HostnameEndpoint(reactor, server.host, server.port, timeout=timeout)
        if server.tls:
            endpoint = endpoints.wrapClientTLS(tls_options(server), endpoint)
        return endpoint.connect(factory)

    return connect
