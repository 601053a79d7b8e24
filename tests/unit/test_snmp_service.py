"""The SNMP wiring: a standalone guard and a pair half start their AgentX subagent when [snmp] agentx is set, answer
from their own snapshot, and close the session when they stop; without [snmp] nothing connects."""

from __future__ import annotations

import struct

from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.app.config import load_config
from guard.app.half import HalfService
from guard.app.half_config import load_half_config
from guard.app.service import GuardService
from guard.edges.agentx import CLOSE, GET_NEXT, OCTET_STRING, REASON_SHUTDOWN, VarBind, decode_pdu

from .link.test_half_config import tree, variant  # noqa: F401 - the pytest fixture
from .test_agentx import NULL_OID, oid_bytes, request, response, written
from .test_snapshot import lab_service

SOCKET = "/run/test-agentx/master"
APPL_NAME = (1, 3, 6, 1, 2, 1, 27, 1, 1, 2, 1)


def connect_master(reactor):
    """Play snmpd: accept the subagent's connection, answer its Open and both Registers; the transport."""
    [(path, factory, *_)] = reactor.unixClients
    assert path == SOCKET
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(response(1, session=11) + response(2, session=11) + response(3, session=11))
    transport.clear()
    return protocol, transport


def test_a_standalone_guard_answers_over_agentx_from_its_snapshot(tmp_path):
    """With [snmp] agentx the guard connects to the master at start, answers a GetNext of
    NETWORK-SERVICES-MIB with its applName, and sends Close (shutdown) when it stops."""
    unused, reactor = lab_service(tmp_path)
    config_path = unused.config.path
    with open(config_path, "a", encoding="utf-8") as out:
        out.write(f'\n[snmp]\nagentx = "unix:path={SOCKET}"\n')
    service = GuardService(load_config(config_path), reactor)
    service.startService()
    protocol, transport = connect_master(reactor)
    protocol.dataReceived(request(GET_NEXT, [oid_bytes((1, 3, 6, 1, 2, 1, 27)) + NULL_OID], session=11))
    answer = decode_pdu(transport.value())
    assert answer.varbinds == (VarBind(OCTET_STRING, APPL_NAME, b"xmpp-guard"),)
    transport.clear()
    service.stopService()
    data = transport.value()
    assert written(data) == [(CLOSE, 4)]
    assert struct.unpack("!B", data[20:21]) == (REASON_SHUTDOWN,)


def test_without_snmp_nothing_connects(tmp_path):
    """Without an [snmp] table the guard opens no AgentX connection."""
    service, reactor = lab_service(tmp_path)
    service.startService()
    assert service.snmp is None and reactor.unixClients == []
    service.stopService()


def test_a_pair_half_starts_its_subagent_too(tree):  # noqa: F811 - the fixture
    """A pair half with [snmp] agentx connects to the master and answers from its own snapshot."""
    reactor = MemoryReactorClock()
    service = HalfService(load_half_config(variant(tree, [], add=f'\n[snmp]\nagentx = "unix:path={SOCKET}"\n')),
                          reactor)
    service.startService()
    protocol, transport = connect_master(reactor)
    protocol.dataReceived(request(GET_NEXT, [oid_bytes((1, 3, 6, 1, 2, 1, 27)) + NULL_OID], session=11))
    assert decode_pdu(transport.value()).varbinds == (VarBind(OCTET_STRING, APPL_NAME, b"xmpp-guard"),)
    service.stopService()
