"""
A whole guard in memory: the real ``GuardService`` (configuration file,
policies, sides, relay, audit trail, release authority client) on a
``MemoryReactorClock``, with the network replaced at its edges only.

- Listening: ``serverFromString`` on the memory reactor records each side's
  listening factory; a fake server "connects" by building a protocol from it.
- Connecting: the guard's ``HostnameEndpoint``/``clientFromString`` end in
  ``connectTCP`` on the memory reactor; ``InMemoryLab.settle`` finds each new
  attempt and joins it to the fake server (or release authority) behind that
  port, or fails it when that server is down.
- Bytes: ``MemoryWire`` carries them between two ``MemoryTransport`` ends,
  in order, honouring pauses, and hands each end ``connectionLost`` after a
  close.  As a real transport does, it pauses a writer's registered producer
  while more than its ``bufferSize`` bytes wait unread, and resumes it when
  they are read (a fake server can stop reading: back-pressure).

TLS is stubbed at exactly one point: ``MemoryTransport.startTLS`` only marks
the end secure (no handshake happens) and ``MemoryTransport.getHandle``
returns a ``PresentedChain`` holding the certificate chain the *other* end
presents (a lab PKI key pair the scenario chose).  The guard's own
certificate checks (``TrustAnchors.judge_peer``: chain, extended key usage,
subjectAltName) run unchanged on that chain.  Bytes written in the clear
must be read in the clear and bytes written after STARTTLS must be read
after STARTTLS: the wire refuses a mismatch (``TlsMismatch``).

The fake servers (``FakeServer``) speak just enough S2S, with their own
literal bytes, to be both an originating server (header, STARTTLS, SASL
EXTERNAL or dialback, stanzas) and a receiving server (the same, answered;
db:verify answered for keys they issued; dialback keys the guard presents
checked back through the guard), and record, in order, every stanza, stream
error and refusal they receive, and every dialback check they answer or make.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.words.xish import domish

from guard.app.config import load_config
from guard.app.service import GuardService
from guard.core import vocabulary
from guard.edges.tlsidentity import load_pem_chain
from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS, LabPki, write_lab_pki

SIDE_DOMAINS = {"red": RED_DOMAINS, "blue": BLUE_DOMAINS}
# Where the guard listens for each side, and where it finds each side's server and the release authority.
LISTEN_INTERFACE = {"red": "127.0.3.1", "blue": "127.0.3.2"}
SERVER_ADDRESS = {"red": ("127.0.1.1", 5301), "blue": ("127.0.2.1", 5302)}
AUTHORITY_ADDRESS = ("127.0.0.9", 7400)
# Every settle() is bounded: more rounds than this means the conversation never goes quiet.
MAX_ROUNDS = 20000

# The XMPP vocabulary (guard.core.vocabulary) under the short names this lab's peers use.
STREAMS = vocabulary.STREAMS_NS
TLS = vocabulary.TLS_NS
SASL = vocabulary.SASL_NS
DIALBACK = vocabulary.DIALBACK_NS
DIALBACK_FEATURE = vocabulary.DIALBACK_FEATURE_NS
STANZA_ERRORS = vocabulary.STANZA_ERRORS_NS
STREAM_ERRORS = vocabulary.STREAM_ERRORS_NS
STANZA_NAMES = vocabulary.STANZA_NAMES


class TlsMismatch(AssertionError):
    """Bytes written in the clear were read under TLS, or the other way round."""


class NeverQuiet(AssertionError):
    """The conversation did not go quiet within MAX_ROUNDS rounds."""


# -- the network ------------------------------------------------------------------


class PresentedChain:
    """What ``getHandle()`` gives the guard: the certificate chain the other end presented (the TLS stub)."""

    def __init__(self, chain):
        self._chain = list(chain)

    def get_peer_certificate(self):
        return self._chain[0] if self._chain else None

    def get_peer_cert_chain(self):
        return list(self._chain)


class MemoryTransport:
    """One end of a MemoryWire, as a protocol sees its transport."""

    def __init__(self, wire, host, peer, chain):
        self.wire = wire
        self.host = host
        self.peer = peer
        self.chain = chain  # what this end presents when TLS starts
        self.secure = False
        self.reading = True
        self.disconnecting = False
        self.disconnected = False
        self.producer = None
        self.producer_paused = False
        self.bufferSize = 65536
        self.other = None
        self.protocol = None

    def write(self, data):
        if self.disconnecting or self.disconnected:
            return
        if data:
            self.wire.carry(self, self.secure, bytes(data))

    def writeSequence(self, sequence):
        self.write(b"".join(sequence))

    def loseConnection(self):
        self.disconnecting = True

    def abortConnection(self):
        self.disconnecting = True
        self.wire.abort()

    def startTLS(self, options, normal=True):
        """The TLS stub: no handshake; this end is secure from now on and the other end sees what it presents."""
        self.secure = True

    def getHandle(self):
        if not (self.secure and self.other.secure):
            return None
        return PresentedChain(self.other.chain)

    def getPeer(self):
        return self.peer

    def getHost(self):
        return self.host

    def registerProducer(self, producer, streaming):
        self.producer = producer
        self.producer_paused = False

    def unregisterProducer(self):
        self.producer = None
        self.producer_paused = False

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        self.reading = True

    def stopProducing(self):
        self.loseConnection()

    def setTcpNoDelay(self, enabled):
        pass

    def setTcpKeepAlive(self, enabled):
        pass


class MemoryWire:
    """A TCP connection in memory between two protocols: bytes in order, pauses honoured, closes delivered."""

    def __init__(self, near_protocol, near_address, near_chain, far_protocol, far_address, far_chain):
        self.near = MemoryTransport(self, near_address, far_address, near_chain)
        self.far = MemoryTransport(self, far_address, near_address, far_chain)
        self.near.other, self.far.other = self.far, self.near
        self.near.protocol, self.far.protocol = near_protocol, far_protocol
        self._waiting = {self.near: [], self.far: []}  # bytes on their way *to* this end
        self.closed = False
        self._aborted = False

    def start(self):
        self.far.protocol.makeConnection(self.far)
        self.near.protocol.makeConnection(self.near)

    def carry(self, writer, secure, data):
        self._waiting[writer.other].append((secure, data))
        self._tell_producer(writer)

    def _unread(self, writer) -> int:
        return sum(len(data) for _, data in self._waiting[writer.other])

    def _tell_producer(self, writer):
        """As a real transport does: pause the writer's producer while more than bufferSize bytes wait unread, resume when drained."""
        if writer.producer is None:
            return
        unread = self._unread(writer)
        if unread > writer.bufferSize and not writer.producer_paused:
            writer.producer_paused = True
            writer.producer.pauseProducing()
        elif unread == 0 and writer.producer_paused:
            writer.producer_paused = False
            writer.producer.resumeProducing()

    def abort(self):
        self._aborted = True

    def move(self) -> bool:
        """Deliver what each end may read now; close when an end asked to and its bytes are read.  True if anything happened."""
        if self.closed:
            return False
        moved = False
        for reader in (self.near, self.far):
            waiting = self._waiting[reader]
            while waiting and reader.reading and not self._aborted and not reader.disconnected:
                secure, data = waiting.pop(0)
                if secure != reader.secure:
                    raise TlsMismatch(
                        f"{len(data)} bytes written {'under TLS' if secure else 'in the clear'} reached an end "
                        f"{'under TLS' if reader.secure else 'in the clear'}: {data[:80]!r}"
                    )
                reader.protocol.dataReceived(data)
                self._tell_producer(reader.other)
                moved = True
        if self._aborted or any(end.disconnecting and not self._waiting[end.other] for end in (self.near, self.far)):
            self._close()
            moved = True
        return moved

    def _close(self):
        self.closed = True
        reason = Failure(ConnectionLost("aborted") if self._aborted else ConnectionDone("closed"))
        for end in (self.near, self.far):
            end.disconnected = True
            self._waiting[end].clear()
        for end in (self.near, self.far):
            end.protocol.connectionLost(reason)


# -- fake XMPP servers ------------------------------------------------------------------


def _text(element) -> str:
    return "".join(child for child in element.children if isinstance(child, str)).strip()


def _child(element, uri, name):
    for child in element.elements():
        if child.uri == uri and child.name == name:
            return child
    return None


def _condition(element, namespace) -> str:
    for child in element.elements():
        if child.uri == namespace and child.name != "text":
            return child.name
        if child.name == "error":
            return _condition(child, namespace)
    return "none"


def _quote(value: str) -> str:
    return "'" + value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;") + "'"


def header(sender, receiver, stream_id=None) -> bytes:
    attributes = f" from={_quote(sender)} to={_quote(receiver)}"
    if stream_id:
        attributes += f" id={_quote(stream_id)}"
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        f" xmlns:db='jabber:server:dialback'{attributes} version='1.0'>"
    ).encode()


class _S2SProtocol(Protocol):
    """What both fake stream roles share: an expat stream parser that starts again at each stream restart."""

    def __init__(self, server):
        self.server = server
        self.secure = False
        self.authenticated = False
        self.stream_id = None
        self._parser = None

    def _new_parser(self):
        parser = domish.elementStream()
        parser.DocumentStartEvent = self._on_header
        parser.ElementEvent = self._on_element
        parser.DocumentEndEvent = self._on_end
        self._parser = parser

    def dataReceived(self, data):
        parser = self._parser
        parser.parse(data)

    def _restart(self):
        """A new stream over the same connection (after STARTTLS or SASL): a new parser; the old one's rest is ignored."""
        self._new_parser()

    def _on_end(self):
        if self.transport is not None and not self.transport.disconnecting:
            self.transport.write(b"</stream:stream>")
            self.transport.loseConnection()

    def _stream_error(self, element):
        self.server.record("stream error", _condition(element, STREAM_ERRORS))
        self.transport.loseConnection()


class OriginatingStream(_S2SProtocol):
    """A fake server connecting to the guard for (sender, receiver): sends stanzas, or one db:verify (``verify``)."""

    def __init__(self, server, sender, receiver, verify=None):
        super().__init__(server)
        self.sender = sender
        self.receiver = receiver
        self.verify = verify  # (stream id, key, answered(verdict)) for a verification stream
        self.ready = False
        self.queue = []

    def connectionMade(self):
        self._open()

    def _open(self):
        self._new_parser()
        self.transport.write(header(self.sender, self.receiver))

    def send(self, xml: bytes):
        if self.ready:
            self.transport.write(xml)
        else:
            self.queue.append(xml)

    def _become_ready(self):
        self.ready = True
        for xml in self.queue:
            self.transport.write(xml)
        self.queue.clear()

    def _on_header(self, root):
        self.stream_id = root.getAttribute("id")

    def _on_element(self, element):
        kind = (element.uri, element.name)
        if kind == (STREAMS, "features"):
            self._features(element)
        elif kind == (TLS, "proceed"):
            self.secure = True
            self.transport.startTLS(None)
            self._open()
        elif kind == (SASL, "success"):
            self.authenticated = True
            self._open()
        elif kind == (SASL, "failure"):
            self._refused(_condition(element, SASL))
        elif kind == (DIALBACK, "result"):
            if element.getAttribute("type") == "valid":
                self.authenticated = True
                self._become_ready()
            else:
                self._refused(element.getAttribute("type") if element.getAttribute("type") != "error"
                              else _condition(element, STANZA_ERRORS))
        elif kind == (DIALBACK, "verify") and self.verify is not None:
            answered = self.verify[2]
            self.verify = None
            answered(element.getAttribute("type") or "none")
            self.transport.write(b"</stream:stream>")
            self.transport.loseConnection()
        elif kind == (STREAMS, "error"):
            self._stream_error(element)
        else:
            self.server.record("unexpected", element.toXml())

    def _features(self, features):
        if not self.secure:
            if _child(features, TLS, "starttls") is not None:
                self.transport.write(f"<starttls xmlns='{TLS}'/>".encode())
            else:
                self._refused("no-starttls")
            return
        if self.authenticated:
            self._become_ready()
            return
        mechanisms = _child(features, SASL, "mechanisms")
        offers_external = mechanisms is not None and any(_text(m) == "EXTERNAL" for m in mechanisms.elements())
        offers_dialback = _child(features, DIALBACK_FEATURE, "dialback") is not None
        if self.verify is not None and offers_dialback:
            stream_id, key, _ = self.verify
            self.transport.write(
                f"<db:verify from={_quote(self.sender)} to={_quote(self.receiver)} id={_quote(stream_id)}>"
                f"{key}</db:verify>".encode())
        elif self.server.authentication == "certificate" and offers_external:
            authzid = base64.b64encode(self.sender.encode()).decode()
            self.transport.write(f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>{authzid}</auth>".encode())
        elif self.server.authentication == "dialback" and offers_dialback:
            key = self.server.dialback_key(self.receiver, self.sender, self.stream_id)
            if self.server.forging:
                key = "0" * len(key)
            self.transport.write(
                f"<db:result from={_quote(self.sender)} to={_quote(self.receiver)}>{key}</db:result>".encode())
        else:
            self._refused("no-mechanism")

    def _refused(self, condition):
        if self.verify is not None:
            answered = self.verify[2]
            self.verify = None
            answered("none")
        else:
            self.server.record("refused", condition)
        self.transport.write(b"</stream:stream>")
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.server.forget(self)
        if self.verify is not None:
            answered = self.verify[2]
            self.verify = None
            answered("none")


class ReceivingStream(_S2SProtocol):
    """A fake server the guard connected to: answers the negotiation and records each stanza it receives."""

    def connectionMade(self):
        self._new_parser()

    def _on_header(self, root):
        self.stream_id = secrets.token_hex(8)
        self.transport.write(header(root.getAttribute("to"), root.getAttribute("from"), self.stream_id))
        if not self.secure:
            features = f"<starttls xmlns='{TLS}'><required/></starttls>"
        elif self.authenticated:
            features = ""
        elif self.server.authentication == "certificate":
            features = f"<mechanisms xmlns='{SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
        else:
            features = f"<dialback xmlns='{DIALBACK_FEATURE}'><errors/></dialback>"
        self.transport.write(f"<stream:features>{features}</stream:features>".encode())

    def _on_element(self, element):
        kind = (element.uri, element.name)
        if element.uri == vocabulary.SERVER_NS and element.name in STANZA_NAMES:
            if self.authenticated:
                self.server.record("stanza", element)
            else:
                self.server.record("unexpected", element.toXml())
        elif kind == (TLS, "starttls"):
            self.transport.write(f"<proceed xmlns='{TLS}'/>".encode())
            self.secure = True
            self.transport.startTLS(None)
            self._restart()
        elif kind == (SASL, "auth"):
            self.authenticated = True
            self.transport.write(f"<success xmlns='{SASL}'/>".encode())
            self._restart()
        elif kind == (DIALBACK, "result") and not element.getAttribute("type"):
            self._check_dialback(element)
        elif kind == (DIALBACK, "verify") and not element.getAttribute("type"):
            self._answer_verify(element)
        elif kind == (STREAMS, "error"):
            self._stream_error(element)
        else:
            self.server.record("unexpected", element.toXml())

    def _check_dialback(self, element):
        """Ask the originating domain's authoritative server (for us: the guard, on our side) whether the key is its."""
        originating, receiving = element.getAttribute("from"), element.getAttribute("to")

        def answered(verdict):
            self.server.record("dialback checked", verdict)
            if self.transport.disconnected:
                return
            if verdict == "valid":
                self.authenticated = True
            self.transport.write(
                f"<db:result from={_quote(receiving)} to={_quote(originating)} type={_quote(verdict)}/>".encode())

        self.server.open_verification(receiving, originating, self.stream_id, _text(element), answered)

    def _answer_verify(self, element):
        asking, claimed, stream_id = element.getAttribute("from"), element.getAttribute("to"), element.getAttribute("id")
        genuine = hmac.compare_digest(_text(element), self.server.dialback_key(asking, claimed, stream_id))
        verdict = "valid" if genuine else "invalid"
        self.server.record("asked to verify", verdict)
        self.transport.write(
            f"<db:verify from={_quote(claimed)} to={_quote(asking)} id={_quote(stream_id)} type='{verdict}'/>".encode())

    def connectionLost(self, reason=None):
        self.server.forget(self)


class FakeServer:
    """One side's XMPP server as the guard sees it; records what it receives, in order, in ``received``."""

    def __init__(self, lab, side: str, keypair, authentication: str):
        self.lab = lab
        self.side = side
        self.domains = SIDE_DOMAINS[side]
        self.authentication = authentication
        self.present(keypair)
        self.up = True
        self.silent = False  # accepts connections and never answers
        self.forging = False  # presents dialback keys it did not make
        self.reading = True  # reads what the guard writes to it
        self.receiving: list[MemoryTransport] = []  # its ends of the connections the guard opened to it
        self.received: list[tuple[str, object]] = []
        self.streams: dict[tuple[str, str], OriginatingStream] = {}
        self._secret = secrets.token_bytes(16)

    def present(self, keypair):
        self.chain = load_pem_chain(str(keypair.certificate))

    def record(self, kind, value):
        self.received.append((kind, value))

    def dialback_key(self, receiving, originating, stream_id) -> str:
        message = f"{receiving} {originating} {stream_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def send(self, sender_domain, receiver_domain, xml: bytes):
        """Send ``xml`` on this server's stream for the domain pair, opening it (and negotiating) first if need be."""
        stream = self.streams.get((sender_domain, receiver_domain))
        if stream is None:
            stream = self.streams[(sender_domain, receiver_domain)] = OriginatingStream(self, sender_domain,
                                                                                       receiver_domain)
            self.lab.connect_to_guard(self, stream)
        stream.send(xml)

    def open_verification(self, asking, originating, stream_id, key, answered):
        stream = OriginatingStream(self, asking, originating, verify=(stream_id, key, answered))
        self.lab.connect_to_guard(self, stream)

    def read(self, reading: bool):
        """Stop or start reading what the guard writes on every connection it opened to this server (and later ones)."""
        self.reading = reading
        for end in self.receiving:
            if reading:
                end.resumeProducing()
            else:
                end.pauseProducing()

    def forget(self, stream):
        self.receiving = [end for end in self.receiving if end.protocol is not stream]
        for pair, known in list(self.streams.items()):
            if known is stream:
                del self.streams[pair]


class FakeAuthority(Protocol):
    """The release authority's end of one question: reads one JSON line, records it, answers as told."""

    def __init__(self, lab):
        self.lab = lab
        self._buffer = b""

    def dataReceived(self, data):
        self._buffer += data
        if b"\n" not in self._buffer:
            return
        line, _, _ = self._buffer.partition(b"\n")
        question = json.loads(line)
        self.lab.questions.append(question)
        answer = {"version": 1, "id": question["id"], "decision": self.lab.authority_answer,
                  "reason": "scenario"}
        self.transport.write(json.dumps(answer).encode() + b"\n")
        self.transport.loseConnection()


# -- the guard --------------------------------------------------------------------


_PKI: list[LabPki] = []


def lab_pki() -> LabPki:
    """The lab's throwaway PKI, written once per process."""
    if not _PKI:
        _PKI.append(write_lab_pki(Path(tempfile.mkdtemp(prefix="guard-scenario-pki-"))))
    return _PKI[0]


@dataclass
class LabSettings:
    """What a scenario may choose about the guard it runs against."""

    policies: dict[str, str] = field(default_factory=lambda: {"red->blue": "policies/allow-all.toml",
                                                              "blue->red": "policies/allow-all.toml"})
    authentication: dict[str, str] = field(default_factory=lambda: {"red": "certificate", "blue": "certificate"})
    audit_level: str = "refusals"
    release_authority: bool = False
    limits: dict[str, object] = field(default_factory=dict)


def _toml_value(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def write_config(folder: Path, settings: LabSettings, root: Path) -> Path:
    """A guard configuration file for ``settings``, with the lab PKI and memory-only addresses."""
    pki = lab_pki()
    lines = ["[guard]", f"audit = {_toml_value(str(folder / 'audit.jsonl'))}",
             f"audit_level = {_toml_value(settings.audit_level)}", 'audit_failure = "stop"']
    if settings.release_authority:
        host, port = AUTHORITY_ADDRESS
        lines += ["[release]", f'endpoint = "tcp:host={host}:port={port}"', "timeout = 5.0"]
    if settings.limits:
        lines.append("[limits]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in settings.limits.items()]
    for side, far in (("red", "blue"), ("blue", "red")):
        facing = pki.guard_facing(side)
        host, port = SERVER_ADDRESS[side]
        policy = settings.policies[f"{side}->{far}"]
        lines += [
            f"[sides.{side}]",
            f'listen = "tcp:5269:interface={LISTEN_INTERFACE[side]}"',
            f"ca = {_toml_value(str(pki.side_ca(side)))}",
            f"authentication = {_toml_value(settings.authentication[side])}",
            f"policy = {_toml_value(str(root / policy))}",
            f"[sides.{side}.domains]",
            *[f'"{domain}" = "{host}:{port}"' for domain in SIDE_DOMAINS[side]],
            f"[[sides.{side}.certificates]]",
            f"domains = {json.dumps(list(SIDE_DOMAINS[far]))}",
            f"certificate = {_toml_value(str(facing.certificate))}",
            f"key = {_toml_value(str(facing.key))}",
        ]
    path = folder / "guard.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class InMemoryLab:
    """The real GuardService on a memory reactor, a fake server per side, an optional fake release authority."""

    def __init__(self, settings: LabSettings, root: Path, folder: Path | None = None):
        self.folder = folder or Path(tempfile.mkdtemp(prefix="guard-scenario-"))
        self.reactor = MemoryReactorClock()
        self.config = load_config(str(write_config(self.folder, settings, root)))
        self.service = GuardService(self.config, self.reactor)
        pki = lab_pki()
        self.servers = {side: FakeServer(self, side, pki.server(side), settings.authentication[side])
                        for side in ("red", "blue")}
        self.questions: list[dict] = []
        self.authority_answer = "deny"
        self.wires: list[MemoryWire] = []
        self._attempts_seen = 0
        self._next_port = 40000
        self._audit_read = 0
        self.running = False

    # -- the guard's lifecycle ----------------------------------------------------

    def start(self):
        started = self.service.startService()
        self.settle()
        if not started.called:
            raise AssertionError("the guard did not start")
        self.running = True

    def stop(self):
        """``stopService``, with the memory clock advanced until it has finished (bounded by the shutdown grace)."""
        stopped = self.service.stopService()
        self.running = False
        limit = self.config.limits.shutdown_grace + 5.0
        spent = 0.0
        self.settle()
        while not stopped.called and spent <= limit:
            self.advance(0.05)
            spent += 0.05
        if not stopped.called:
            raise AssertionError("the guard did not finish stopping")

    def advance(self, seconds):
        self.reactor.advance(seconds)
        self.settle()

    def wait(self, seconds: float, step: float = 0.25):
        """Let ``seconds`` of memory time pass, a step at a time, the conversation settling after each."""
        spent = 0.0
        while spent < seconds:
            amount = min(step, seconds - spent)
            self.advance(amount)
            spent += amount

    # -- the network ---------------------------------------------------------------

    def _listening_factory(self, side):
        for port, factory, _backlog, interface in self.reactor.tcpServers:
            if interface == LISTEN_INTERFACE[side] and port == 5269:
                return factory
        raise AssertionError(f"the guard does not listen for side {side}")

    def _address(self, host):
        self._next_port += 1
        return IPv4Address("TCP", host, self._next_port)

    def connect_to_guard(self, server: FakeServer, stream: Protocol):
        """``server`` opens a connection to the guard's listener on its side."""
        if not self.running:
            server.record("refused", "guard-not-listening")
            return
        guard_address = IPv4Address("TCP", LISTEN_INTERFACE[server.side], 5269)
        server_address = self._address(SERVER_ADDRESS[server.side][0])
        guard_protocol = self._listening_factory(server.side).buildProtocol(server_address)
        wire = MemoryWire(stream, server_address, server.chain, guard_protocol, guard_address,
                          load_pem_chain(str(lab_pki().guard_facing(server.side).certificate)))
        self.wires.append(wire)
        wire.start()

    def _answer_attempts(self) -> bool:
        """Join each connection the guard started since last time to what listens there, or fail it."""
        attempts = self.reactor.tcpClients[self._attempts_seen:]
        self._attempts_seen = len(self.reactor.tcpClients)
        for host, port, factory, _timeout, _bind in attempts:
            self._answer_attempt(host, port, factory)
        return bool(attempts)

    def _answer_attempt(self, host, port, factory):
        guard_address = self._address("127.0.3.9")
        target = IPv4Address("TCP", host, port)
        server = next((s for s in self.servers.values() if SERVER_ADDRESS[s.side][1] == port), None)
        if server is not None and server.up and server.silent:
            far_protocol, far_chain = Protocol(), server.chain
        elif server is not None and server.up:
            far_protocol = ReceivingStream(server)
            far_chain = server.chain
        elif server is None and port == AUTHORITY_ADDRESS[1]:
            far_protocol, far_chain = FakeAuthority(self), []
        else:
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError(f"{host}:{port} is down")))
            return
        guard_protocol = factory.buildProtocol(target)
        guard_chain = []
        if server is not None:
            guard_chain = load_pem_chain(str(lab_pki().guard_facing(server.side).certificate))
        wire = MemoryWire(guard_protocol, guard_address, guard_chain, far_protocol, target, far_chain)
        self.wires.append(wire)
        wire.start()
        if server is not None:
            server.receiving.append(wire.far)
            if not server.reading:
                wire.far.pauseProducing()

    def settle(self):
        """Carry bytes, connections and due timers until nothing moves (bounded by MAX_ROUNDS)."""
        for _ in range(MAX_ROUNDS):
            moved = self._answer_attempts()
            for wire in list(self.wires):
                moved = wire.move() or moved
            self.wires = [wire for wire in self.wires if not wire.closed]
            due = [call for call in self.reactor.getDelayedCalls() if call.getTime() <= self.reactor.seconds()]
            if due:
                self.reactor.advance(0)
                moved = True
            if not moved:
                return
        raise NeverQuiet(f"still busy after {MAX_ROUNDS} rounds")

    # -- what the guard wrote down ----------------------------------------------------

    def audit_records(self) -> list[dict]:
        """Every audit record written so far, in order."""
        path = Path(self.config.audit_path)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    @property
    def books(self) -> dict:
        return self.service.books.summary()
