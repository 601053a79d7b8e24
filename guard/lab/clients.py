"""
slixmpp clients for the lab, usable from synchronous code (pytest, the demo,
benchmarks): every call blocks for at most its timeout.

All clients of one test share a ``ClientLoop``: an asyncio event loop running
in a daemon thread.  A ``LabClient`` records every message and presence it
receives, so a test can send first and then wait for what should arrive.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

DEFAULT_TIMEOUT = 15.0


class ClientError(RuntimeError):
    """A lab client could not do what it was asked within its timeout."""


class ClientLoop:
    """An asyncio event loop in a daemon thread, shared by the lab's clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lab-clients", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, make_coroutine: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """Run ``make_coroutine()`` on the loop and wait at most ``timeout`` seconds."""

        async def bounded():
            return await asyncio.wait_for(make_coroutine(), timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), self.loop)
        try:
            return future.result(timeout + 5)
        except (asyncio.TimeoutError, TimeoutError) as error:
            future.cancel()
            raise ClientError(f"timed out after {timeout} s") from error

    def close(self) -> None:
        """Cancel what still runs on the loop and stop its thread.

        The loop itself is left open (not closed) so that slixmpp objects
        collected later can still schedule their own clean-up harmlessly.
        """
        if not self._thread.is_alive():
            return

        async def cancel_the_rest():
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=2) if pending else None

        try:
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "ClientLoop":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass(frozen=True)
class ReceivedMessage:
    """One message stanza as a client saw it."""

    sender: str  # full JID as received
    recipient: str
    type: str
    body: str
    error_condition: str
    received_at: float
    id: str = ""  # the stanza's id attribute, to tell bounces apart
    xml: str = ""  # the whole stanza as the client received it


@dataclass(frozen=True)
class ReceivedPresence:
    """One presence stanza as a client saw it."""

    sender: str
    type: str  # "available", "unavailable", "subscribe", "error", ...
    xml: str = ""  # the whole stanza as the client received it


@dataclass
class BlastResult:
    """What a message blast measured: per-message latency in seconds."""

    sent: int
    received: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)

    @property
    def messages_per_second(self) -> float:
        return self.received / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def median_latency(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p95_latency(self) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


class _Blast:
    """Bookkeeping of one blast on the receiving side."""

    def __init__(self, count: int):
        self.count = count
        self.latencies: list[float | None] = [None] * count
        self.received = 0
        self.progress = asyncio.Event()

    def saw(self, body: str, now_ns: int) -> None:
        parts = body.split()
        if len(parts) != 3 or parts[0] != "blast":
            return
        try:
            sequence, sent_ns = int(parts[1]), int(parts[2])
        except ValueError:
            return
        if 0 <= sequence < self.count and self.latencies[sequence] is None:
            self.latencies[sequence] = (now_ns - sent_ns) / 1e9
            self.received += 1
            self.progress.set()


class LabClient:
    """One connected XMPP account, driven synchronously."""

    def __init__(
        self,
        loop: ClientLoop,
        jid: str,
        password: str,
        address: str,
        port: int = 15222,
        cafile: Path | None = None,
        check_hostname: bool = True,
    ):
        self.loop = loop
        self.check_hostname = check_hostname
        self.jid = JID(jid)
        self.password = password
        self.address = address
        self.port = port
        self.cafile = cafile
        self.messages: list[ReceivedMessage] = []
        self.presences: list[ReceivedPresence] = []
        self._arrival: asyncio.Condition | None = None
        self._blast: _Blast | None = None
        self.xmpp: ClientXMPP | None = None

    # -- connection ---------------------------------------------------------

    def connect(self, timeout: float = DEFAULT_TIMEOUT) -> "LabClient":
        """Connect, authenticate, bind, fetch the roster and send initial presence."""
        self.loop.run(lambda: self._connect(), timeout)
        return self

    async def _connect(self) -> None:
        self._arrival = asyncio.Condition()
        xmpp = ClientXMPP(str(self.jid), self.password)
        for plugin in ("xep_0030", "xep_0045", "xep_0199", "xep_0092"):
            xmpp.register_plugin(plugin)
        xmpp.enable_direct_tls = False  # Prosody's c2s port speaks STARTTLS only
        xmpp.enable_plaintext = False
        if self.cafile is not None:
            xmpp.ca_certs = Path(self.cafile)
        xmpp.ssl_context.check_hostname = self.check_hostname
        xmpp.register_handler(Callback("lab messages", StanzaPath("message"), self._on_message))
        xmpp.register_handler(Callback("lab presences", StanzaPath("presence"), self._on_presence))
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        def settle(result):
            if not outcome.done():
                outcome.set_result(result)

        xmpp.add_event_handler("session_start", lambda _event: settle(None))
        xmpp.add_event_handler("failed_all_auth", lambda _event: settle("authentication failed"))
        xmpp.add_event_handler("connection_failed", lambda event: settle(f"connection failed: {event}"))
        self.xmpp = xmpp
        xmpp.connect(host=self.address, port=self.port)
        problem = await outcome
        if problem is not None:
            xmpp.cancel_connection_attempt()
            xmpp.abort()
            raise ClientError(f"{self.jid}: {problem}")
        await xmpp.get_roster()
        xmpp.send_presence()

    def disconnect(self, timeout: float = 5.0) -> None:
        if self.xmpp is None:
            return
        xmpp, self.xmpp = self.xmpp, None

        async def close():
            xmpp.disconnect()
            try:
                await asyncio.wait_for(xmpp.disconnected, timeout)
            except asyncio.TimeoutError:
                xmpp.abort()

        try:
            self.loop.run(close, timeout + 1)
        except ClientError:
            pass

    def __enter__(self) -> "LabClient":
        return self.connect()

    def __exit__(self, *exc_info) -> None:
        self.disconnect()

    @property
    def full_jid(self) -> str:
        if self.xmpp is None:
            raise ClientError(f"{self.jid} is not connected")
        return str(self.xmpp.boundjid.full)

    # -- what arrives -------------------------------------------------------

    def _on_message(self, message) -> None:
        now_ns = time.perf_counter_ns()
        body = message["body"]
        if self._blast is not None and body.startswith("blast "):
            self._blast.saw(body, now_ns)
            return
        condition = message["error"]["condition"] if message["type"] == "error" else ""
        self.messages.append(
            ReceivedMessage(
                sender=str(message["from"]),
                recipient=str(message["to"]),
                type=message["type"],
                body=body,
                error_condition=condition or "",
                received_at=now_ns / 1e9,
                id=str(message["id"] or ""),
                xml=str(message),
            )
        )
        self._notify()

    def _on_presence(self, presence) -> None:
        self.presences.append(ReceivedPresence(sender=str(presence["from"]), type=presence["type"],
                                               xml=str(presence)))
        self._notify()

    def _notify(self) -> None:
        arrival = self._arrival

        async def wake():
            async with arrival:
                arrival.notify_all()

        if arrival is not None:
            asyncio.ensure_future(wake())

    async def _wait_until(self, condition: Callable[[], Any], timeout: float) -> Any:
        """Wait until ``condition()`` is truthy (checked on every arrival and every 100 ms)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = condition()
            if found:
                return found
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            async with self._arrival:
                try:
                    await asyncio.wait_for(self._arrival.wait(), min(remaining, 0.1))
                except asyncio.TimeoutError:
                    pass

    def wait_for_message(
        self,
        predicate: Callable[[ReceivedMessage], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "a matching message",
    ) -> ReceivedMessage:
        """The first received message (past or future) that satisfies ``predicate``."""

        def find():
            return next((message for message in self.messages if predicate(message)), None)

        try:
            return self.loop.run(lambda: self._wait_until(find, timeout), timeout + 1)
        except ClientError as error:
            seen = "\n  ".join(repr(message) for message in self.messages[-10:]) or "(none)"
            raise ClientError(f"{self.jid} did not receive {what} within {timeout} s; last seen:\n  {seen}") from error

    def wait_for_body(self, sender_bare: str, body: str, timeout: float = DEFAULT_TIMEOUT) -> ReceivedMessage:
        """Wait for a non-error message from ``sender_bare`` with exactly ``body``."""
        return self.wait_for_message(
            lambda m: JID(m.sender).bare == sender_bare and m.body == body and m.type != "error",
            timeout,
            f"{body!r} from {sender_bare}",
        )

    def wait_for_error(self, sender_bare: str, timeout: float = DEFAULT_TIMEOUT) -> ReceivedMessage:
        """Wait for a message of type error coming from ``sender_bare``."""
        return self.wait_for_message(
            lambda m: m.type == "error" and JID(m.sender).bare == sender_bare,
            timeout,
            f"an error bounce from {sender_bare}",
        )

    def wait_for_presence(
        self, sender_bare: str, type: str = "available", timeout: float = DEFAULT_TIMEOUT
    ) -> ReceivedPresence:
        """Wait for a presence of ``type`` from any resource of ``sender_bare``."""

        def find():
            return next(
                (p for p in self.presences if JID(p.sender).bare == sender_bare and p.type == type), None
            )

        try:
            return self.loop.run(lambda: self._wait_until(find, timeout), timeout + 1)
        except ClientError as error:
            seen = "\n  ".join(repr(p) for p in self.presences[-10:]) or "(none)"
            raise ClientError(
                f"{self.jid} did not receive presence {type} from {sender_bare} within {timeout} s; last seen:\n  {seen}"
            ) from error

    # -- what we send -------------------------------------------------------

    def _xmpp(self) -> ClientXMPP:
        if self.xmpp is None:
            raise ClientError(f"{self.jid} is not connected")
        return self.xmpp

    def send_xml(self, xml: str) -> None:
        """Send one stanza written exactly as it should look on the wire (jabber:client)."""
        xmpp = self._xmpp()
        self.loop.loop.call_soon_threadsafe(lambda: xmpp.send_raw(xml))

    def send_message(self, to: str, body: str, type: str = "chat") -> None:
        xmpp = self._xmpp()
        self.loop.loop.call_soon_threadsafe(lambda: xmpp.send_message(mto=to, mbody=body, mtype=type))

    def send_presence(self, to: str, type: str) -> None:
        """Send a directed presence such as ``subscribe``."""
        xmpp = self._xmpp()
        self.loop.loop.call_soon_threadsafe(lambda: xmpp.send_presence(pto=to, ptype=type))

    def subscription(self, contact_bare: str) -> str:
        """The roster subscription state toward ``contact_bare`` ("none", "to", "from", "both")."""
        xmpp = self._xmpp()
        return self.loop.run(lambda: self._subscription(xmpp, contact_bare), 5)

    async def _subscription(self, xmpp: ClientXMPP, contact_bare: str) -> str:
        roster = xmpp.client_roster
        return roster[contact_bare]["subscription"] if contact_bare in roster else "none"

    def wait_for_subscription(
        self, contact_bare: str, state: str = "both", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Wait until the roster shows subscription ``state`` toward ``contact_bare``."""
        xmpp = self._xmpp()

        def reached():
            roster = xmpp.client_roster
            return contact_bare in roster and roster[contact_bare]["subscription"] == state

        try:
            self.loop.run(lambda: self._wait_until(reached, timeout), timeout + 1)
        except ClientError as error:
            raise ClientError(
                f"{self.jid}: subscription to {contact_bare} did not reach {state!r} within {timeout} s"
            ) from error

    def software_version(self, to: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
        """XEP-0092 round trip: the name and version the entity ``to`` reports."""
        xmpp = self._xmpp()

        async def ask():
            iq = await xmpp.plugin["xep_0092"].get_version(JID(to), timeout=timeout)
            version = iq["software_version"]
            return {"name": version["name"], "version": version["version"]}

        return self._iq(ask, timeout, f"version of {to}")

    def ping(self, to: str, timeout: float = DEFAULT_TIMEOUT) -> float:
        """XEP-0199 round trip to ``to``; the round-trip time in seconds."""
        xmpp = self._xmpp()

        async def ask():
            started = time.perf_counter()
            await xmpp.plugin["xep_0199"].send_ping(JID(to), timeout=timeout)
            return time.perf_counter() - started

        return self._iq(ask, timeout, f"ping {to}")

    def iq_error_condition(self, to: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Send an iq get that should fail and return the error condition that came back."""
        xmpp = self._xmpp()

        async def ask():
            try:
                await xmpp.plugin["xep_0092"].get_version(JID(to), timeout=timeout)
            except IqError as error:
                return error.iq["error"]["condition"]
            return ""

        return self._iq(ask, timeout, f"an iq error from {to}")

    def _iq(self, ask: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
        try:
            return self.loop.run(ask, timeout + 1)
        except IqTimeout as error:
            raise ClientError(f"{self.jid}: no answer for {what} within {timeout} s") from error
        except IqError as error:
            raise ClientError(f"{self.jid}: {what} answered with error {error.iq['error']['condition']}") from error

    # -- multi-user chat ----------------------------------------------------

    def join_room(self, room: str, nick: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Join ``room`` as ``nick`` and wait for our own occupant presence."""
        xmpp = self._xmpp()

        async def join():
            await xmpp.plugin["xep_0045"].join_muc_wait(JID(room), nick, maxstanzas=0, timeout=timeout)

        try:
            self.loop.run(join, timeout + 1)
        except Exception as error:  # PresenceError, timeouts: all mean "not joined"
            raise ClientError(f"{self.jid} could not join {room} as {nick}: {error!r}") from error

    def wait_for_groupchat(self, room: str, nick: str, body: str, timeout: float = DEFAULT_TIMEOUT) -> ReceivedMessage:
        """Wait for a groupchat message from ``room/nick`` with ``body``."""
        occupant = f"{room}/{nick}"
        return self.wait_for_message(
            lambda m: m.type == "groupchat" and m.sender == occupant and m.body == body,
            timeout,
            f"groupchat {body!r} from {occupant}",
        )


    def wait_for_occupant(self, room: str, nick: str, type: str = "available",
                          timeout: float = DEFAULT_TIMEOUT, after: int = 0) -> ReceivedPresence:
        """Wait for a presence of ``type`` from the occupant ``room/nick`` (past or future; ``after``: only among
        the presences received after the first ``after`` of them, e.g. ``len(client.presences)`` taken earlier)."""
        occupant = f"{room}/{nick}"

        def find():
            return next((p for p in self.presences[after:] if p.sender == occupant and p.type == type), None)

        try:
            return self.loop.run(lambda: self._wait_until(find, timeout), timeout + 1)
        except ClientError as error:
            seen = "\n  ".join(repr(p) for p in self.presences[-10:]) or "(none)"
            raise ClientError(f"{self.jid} did not see {occupant} {type} within {timeout} s; last seen:\n  {seen}") from error

    def leave_room(self, room: str, nick: str) -> None:
        """Leave ``room`` (an unavailable presence to our occupant)."""
        self.send_xml(f"<presence to='{room}/{nick}' type='unavailable'/>")

    def set_subject(self, room: str, subject: str) -> None:
        """Change the room's subject (needs the right to: the room's configuration)."""
        xmpp = self._xmpp()
        self.loop.loop.call_soon_threadsafe(lambda: xmpp.send_message(mto=room, mbody=None, msubject=subject,
                                                                      mtype="groupchat"))


def blast(
    sender: LabClient,
    receiver: LabClient,
    count: int,
    window: int = 50,
    timeout: float = 300.0,
) -> BlastResult:
    """Send ``count`` chat messages sender->receiver with at most ``window`` unanswered.

    Each body carries a sequence number and a send timestamp; the receiver
    computes per-message latency.  Stops at ``timeout`` seconds and reports
    what arrived by then.
    """
    if sender.loop is not receiver.loop:
        raise ClientError("blast needs both clients on the same ClientLoop")
    sending = sender._xmpp()
    to = receiver.full_jid

    async def run() -> BlastResult:
        tracker = _Blast(count)
        receiver._blast = tracker
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + timeout
        sent = 0
        try:
            for sequence in range(count):
                while sequence - tracker.received >= window:
                    tracker.progress.clear()
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(tracker.progress.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
                if loop.time() >= deadline:
                    break
                sending.send_message(mto=to, mbody=f"blast {sequence} {time.perf_counter_ns()}", mtype="chat")
                sent += 1
                if sequence % window == 0:
                    await asyncio.sleep(0)
            while tracker.received < sent and loop.time() < deadline:
                tracker.progress.clear()
                try:
                    await asyncio.wait_for(tracker.progress.wait(), min(1.0, max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    pass
            elapsed = time.perf_counter() - started
        finally:
            receiver._blast = None
        latencies = [latency for latency in tracker.latencies if latency is not None]
        return BlastResult(sent=sent, received=tracker.received, elapsed=elapsed, latencies=latencies)

    return sender.loop.run(run, timeout + 10)
