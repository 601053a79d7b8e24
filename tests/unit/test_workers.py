"""[guard] workers (guard.app.workers): the configuration, what each worker runs with, and how the supervisor adds up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guard.app.config import ConfigError, load_config
from guard.app.workers import (RESTART_MAX_DELAY, add_up, adopted_listeners, read_secret_line, restart_delay,
                               worker_config, worker_file, worker_limits, worker_metrics_file)
from guard.edges.limits import Limits
from guard.lab.topology import render_guard_config

from .link.test_half_config import tree, variant  # noqa: F401 - the fixture of a pair's configuration tree
from .streams.sides import pki


def config_with(tmp_path, guard_lines="", extra="", limits=None):
    """The lab configuration with ``guard_lines`` added to [guard] and ``extra`` tables appended; its path."""
    text = render_guard_config(pki(), "certificate", log_level="info", limits=limits,
                               guard_options={"audit": str(tmp_path / "audit.jsonl"),
                                              "status": str(tmp_path / "status.json")})
    path = tmp_path / "guard.toml"
    path.write_text(text.replace("[guard]\n", f"[guard]\n{guard_lines}\n", 1) + extra)
    return str(path)


def test_one_worker_is_the_default(tmp_path):
    """A configuration without the key runs one process, as before."""
    assert load_config(config_with(tmp_path)).settings.workers == 1


@pytest.mark.parametrize("value", ["0", "65", "1.5", "true", '"2"'])
def test_a_workers_value_out_of_bounds_or_not_a_whole_number_is_refused(tmp_path, value):
    """guard.workers is a whole number from 1 to 64; anything else is refused naming the key."""
    with pytest.raises(ConfigError, match=r"guard\.workers: must be a whole number from 1 to 64"):
        load_config(config_with(tmp_path, f"workers = {value}"))


@pytest.mark.parametrize("limit", ["connections_per_address", "streams_per_domain", "verifications_per_address",
                                   "verifications_per_side", "memory_budget_bytes"])
def test_a_shared_limit_smaller_than_the_workers_is_refused(tmp_path, limit):
    """A limit each worker holds a share of must leave every worker at least one."""
    with pytest.raises(ConfigError, match=rf"limits\.{limit}: must be at least guard.workers \(4\)"):
        load_config(config_with(tmp_path, "workers = 4", limits={limit: 3}))


def test_snmp_is_refused_with_workers_as_it_would_describe_one_worker_only(tmp_path):
    """SNMP reads one process's snapshot: with workers > 1 it is refused, not served wrong."""
    with pytest.raises(ConfigError, match=r"snmp.agentx: is not served with guard.workers > 1 yet"):
        load_config(config_with(tmp_path, "workers = 2", extra='\n[snmp]\nagentx = "unix:path=/var/agentx/master"\n'))


def test_metrics_with_workers_need_a_status_file_to_be_written_beside(tmp_path):
    """The workers write their metrics beside the status file for the supervisor to serve: without one, refused."""
    path = config_with(tmp_path, "workers = 2", extra='\n[metrics]\nlisten = "tcp:9269:interface=127.0.0.1"\n')
    assert worker_metrics_file(load_config(path), 1) == str(tmp_path / "status.worker-1.prom")
    text = Path(path).read_text()
    Path(path).write_text("\n".join(line for line in text.splitlines() if not line.startswith("status =")))
    with pytest.raises(ConfigError, match=r"metrics.listen: with guard.workers > 1 needs guard.status"):
        load_config(path)


def test_the_supervisors_metrics_are_every_workers_labelled_and_its_own(tmp_path):
    """Each worker's samples come out with a worker label (sum without (worker) adds them up), beside workers running, restarts and stanzas in doubt."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from guard.app.workers import WorkersCollector

    config = load_config(config_with(tmp_path, "workers = 2", extra='\n[metrics]\nlisten = "tcp:9269"\n'))
    for index, accepted in ((0, 5), (1, 7)):
        Path(worker_metrics_file(config, index)).write_text(
            "# HELP xmpp_guard_books_accepted Stanzas accepted.\n# TYPE xmpp_guard_books_accepted counter\n"
            f"xmpp_guard_books_accepted_total {accepted}.0\n"
            "# HELP xmpp_guard_streams_open Streams.\n# TYPE xmpp_guard_streams_open gauge\n"
            f'xmpp_guard_streams_open{{side="red"}} {index + 1}.0\n')
    supervisor = SimpleNamespace(config=config, count=2, workers={0: object()}, restarts={0: 0, 1: 3}, in_doubt=2,
                                 policies_differ=False)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersCollector(supervisor))
    page = generate_latest(registry).decode()
    samples = [line for line in page.splitlines() if line and not line.startswith("#")]
    assert samples == [
        'xmpp_guard_books_accepted_total{worker="0"} 5.0',
        'xmpp_guard_books_accepted_total{worker="1"} 7.0',
        'xmpp_guard_streams_open{side="red",worker="0"} 1.0',
        'xmpp_guard_streams_open{side="red",worker="1"} 2.0',
        "xmpp_guard_workers_running 1.0",
        'xmpp_guard_worker_restarts_total{worker="0"} 0.0',
        'xmpp_guard_worker_restarts_total{worker="1"} 3.0',
        "xmpp_guard_stanzas_in_doubt 2.0",
        "xmpp_guard_workers_policies_differ 0.0",
    ]


def test_each_worker_writes_its_own_files_named_after_the_configured_ones():
    """Worker 1's audit trail and status file sit beside the configured ones, the worker's number before the suffix."""
    assert (worker_file("/var/log/xmpp-guard/audit.jsonl", 1), worker_file("/run/status.json", 0),
            worker_file(None, 3)) == ("/var/log/xmpp-guard/audit.worker-1.jsonl", "/run/status.worker-0.json", None)


def test_a_worker_holds_its_share_of_the_limits_that_hold_for_the_whole_guard():
    """connections_per_address and streams_per_domain are divided (rounded down) so the workers never exceed them together; others are untouched."""
    shared = worker_limits(Limits(connections_per_address=64, streams_per_domain=7, outbound_queue=1000), 3)
    assert (shared.connections_per_address, shared.streams_per_domain, shared.outbound_queue) == (21, 2, 1000)


def test_a_peer_spread_over_the_workers_gets_no_more_verifications_nor_held_bytes_than_from_one_process():
    """The per-address and per-side dialback verification caps and the memory budget are divided between the
    workers too: a peer whose connections land on every worker is held to the configured totals."""
    shared = worker_limits(Limits(verifications_per_address=16, verifications_per_side=256,
                                  memory_budget_bytes=32 * 1024 * 1024, verifications_per_stream=4), 3)
    assert (shared.verifications_per_address, shared.verifications_per_side, shared.memory_budget_bytes,
            shared.verifications_per_stream) == (5, 85, 32 * 1024 * 1024 // 3, 4)
    assert 3 * shared.verifications_per_address <= 16 and 3 * shared.memory_budget_bytes <= 32 * 1024 * 1024


def test_a_budget_smaller_than_the_workers_stops_the_supervisor_before_any_worker_starts(tmp_path):
    """A worker's share of nothing would refuse every verification: the supervisor refuses the configuration."""
    from twisted.internet.testing import MemoryReactorClock

    from guard.app.workers import WorkerSupervisor

    import dataclasses

    config = load_config(config_with(tmp_path, "workers = 20", limits={"connections_per_address": 64,
                                                                       "streams_per_domain": 20,
                                                                       "verifications_per_address": 20}))
    # A configuration that did not pass guard check (which refuses it too): the supervisor still refuses it.
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, verifications_per_address=16))
    with pytest.raises(ConfigError, match=r"limits.verifications_per_address: must be at least guard.workers \(20\)"):
        WorkerSupervisor(config, MemoryReactorClock(), environment={})


def test_a_worker_runs_with_the_supervisors_secret_its_files_and_its_share(tmp_path):
    """worker_config gives the worker the secret it was handed, its own audit and status paths and its share of the limits."""
    config = load_config(config_with(tmp_path, "workers = 2", limits={"connections_per_address": 9}))
    mine = worker_config(config, 1, "shared-secret")
    assert (mine.dialback_secret, mine.audit_path, mine.status_path, mine.limits.connections_per_address,
            mine.settings.workers) == (
        "shared-secret", str(tmp_path / "audit.worker-1.jsonl"), str(tmp_path / "status.worker-1.json"), 4, 2)


def test_the_listening_sockets_are_inherited_from_fd_3_in_the_order_of_the_sides(tmp_path):
    """The supervisor passes one listening socket per side, from fd 3, in the configuration's order."""
    assert adopted_listeners(load_config(config_with(tmp_path, "workers = 2"))) == {"red": 3, "blue": 4}


def test_the_secret_is_read_as_one_line_from_the_supervisors_pipe():
    """The worker reads the secret line written in pieces, and nothing after it."""
    reading, writing = os.pipe()
    try:
        os.write(writing, b"abc")
        os.write(writing, b"def\nlater")
        assert read_secret_line(reading) == "abcdef"
    finally:
        os.close(reading)
        os.close(writing)


@pytest.mark.parametrize("written, message", [
    (b"", "closed the secret pipe before writing"),
    (b"no-newline", "closed the secret pipe before writing"),
    (b"\n", "empty dialback secret"),
    (b"x" * 2000, "too long"),
])
def test_a_missing_empty_or_endless_secret_stops_the_worker(written, message):
    """Without a whole secret line the worker does not start (fail closed: no secret of its own)."""
    reading, writing = os.pipe()
    os.write(writing, written)
    os.close(writing)
    try:
        with pytest.raises(ConfigError, match=message):
            read_secret_line(reading)
    finally:
        os.close(reading)


def test_restarts_back_off_and_stay_bounded():
    """The first restart is quick, each death in a row doubles the wait, never beyond the cap."""
    assert [restart_delay(deaths) for deaths in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == RESTART_MAX_DELAY


def test_the_books_add_up_over_live_workers_and_dead_ones():
    """The status sums the books of each live worker and of the workers that died, and reports their in-flight stanzas as in doubt."""
    statuses = [
        {"worker": 0, "pid": 10, "restarts": 1, "books": {"accepted": 5, "delivered": 4, "bounced": 0, "dropped": 1,
                                                          "in_flight": 0}, "inbound_streams": {"red": 1, "blue": 2}},
        {"worker": 1, "pid": 11, "restarts": 0, "books": {"accepted": 3, "delivered": 1, "bounced": 1, "dropped": 0,
                                                          "in_flight": 1}, "inbound_streams": {"red": 1},
         "halted": "audit trail unavailable"},
    ]
    total = add_up(statuses, {"accepted": 7, "delivered": 6, "bounced": 0, "dropped": 0, "in_flight": 0}, 1)
    assert (total["books"], total["in_doubt"], total["inbound_streams"], total["halted"],
            [(w["worker"], w["pid"], w["restarts"], w["inbound_streams"]) for w in total["workers"]]) == (
        {"accepted": 15, "delivered": 11, "bounced": 1, "dropped": 1, "in_flight": 1}, 1, {"red": 2, "blue": 2},
        "worker 1: audit trail unavailable", [(0, 10, 1, {"red": 1, "blue": 2}), (1, 11, 0, {"red": 1})])


def test_a_worker_accepts_one_connection_per_turn_of_its_reactor():
    """Three connections wait on a shared listening socket: one turn of a worker's port accepts one of them, leaving the others for the other workers."""
    import socket

    from twisted.internet import protocol
    from twisted.internet.epollreactor import EPollReactor

    from guard.app.workers import accept_one_at_a_time, socket_family

    accepted = []

    class Counted(protocol.Protocol):
        def connectionMade(self):
            accepted.append(self.transport.getPeer().port)

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    waiting = [socket.create_connection(listening.getsockname(), timeout=5) for _ in range(3)]
    reactor = EPollReactor()
    try:
        port = accept_one_at_a_time(reactor.adoptStreamPort(listening.fileno(), socket_family(listening.fileno()),
                                                            protocol.Factory.forProtocol(Counted)))
        port.doRead()
        assert len(accepted) == 1
        port.doRead()
        assert len(accepted) == 2
        port.stopListening()
    finally:
        for connection in waiting:
            connection.close()
        listening.close()


def test_a_half_of_a_pair_refuses_workers(tree):
    """A half of a back-to-back pair runs as one process: guard run and check-config refuse workers > 1 there."""
    from twisted.internet.testing import MemoryReactorClock

    from guard.app.cli import _load_process, checked_configuration

    path = variant(tree, [("[guard]\n", "[guard]\nworkers = 2\n")])
    for load in (lambda: checked_configuration(path), lambda: _load_process(path, MemoryReactorClock())):
        with pytest.raises(ConfigError, match=r"guard.workers: a half of a pair runs as one process"):
            load()


def _supervisor_with_two_stopped_workers(tmp_path, in_flight):
    """A supervisor whose two workers wrote their last status files (worker 1 with ``in_flight``), stopping."""
    import json
    from types import SimpleNamespace

    from twisted.internet.testing import MemoryReactorClock

    from guard.app.workers import WorkerProcess, WorkerSupervisor

    config = load_config(config_with(tmp_path, "workers = 2"))
    supervisor = WorkerSupervisor(config, MemoryReactorClock(), environment={})
    for index, (accepted, delivered, flying) in enumerate(((4, 4, 0), (3, 3 - in_flight, in_flight))):
        worker = WorkerProcess(supervisor, index, 0.0)
        worker.transport = SimpleNamespace(pid=100 + index)
        supervisor.workers[index] = worker
        Path(worker_file(config.status_path, index)).write_text(json.dumps({"books": {
            "accepted": accepted, "delivered": delivered, "bounced": 0, "dropped": 0, "in_flight": flying}}))
    supervisor.stopping = True
    return supervisor


def test_the_final_status_after_a_stop_keeps_the_books_of_every_worker(tmp_path):
    """Workers stopped by SIGTERM leave their books in the supervisor's final sum: nothing they settled disappears."""
    import json

    supervisor = _supervisor_with_two_stopped_workers(tmp_path, in_flight=0)
    for worker in list(supervisor.workers.values()):
        supervisor.worker_ended(worker, "stopped")
    supervisor._write_sum()
    final = json.loads(Path(supervisor.config.status_path).read_text())
    assert (final["books"], final["in_doubt"]) == (
        {"accepted": 7, "delivered": 7, "bounced": 0, "dropped": 0, "in_flight": 0}, 0)


def test_a_worker_stopped_with_stanzas_in_flight_leaves_them_in_doubt_counted_once(tmp_path):
    """A worker that ended while stopping with stanzas in flight (killed after the grace) has them in doubt, once."""
    import json

    supervisor = _supervisor_with_two_stopped_workers(tmp_path, in_flight=2)
    for worker in list(supervisor.workers.values()):
        supervisor.worker_ended(worker, "killed")
        supervisor.worker_ended(worker, "killed")  # told twice: its file is forgotten after the first
    supervisor._write_sum()
    final = json.loads(Path(supervisor.config.status_path).read_text())
    assert (final["books"]["accepted"], final["books"]["delivered"], final["in_doubt"]) == (7, 5, 2)


def test_a_status_file_left_by_an_earlier_run_is_not_counted_when_a_new_worker_dies_before_writing_its_own(tmp_path):
    """A supervisor killed last time left worker 0's status file: worker 0 of this run dies before its first
    status, and the old books are counted neither as retired nor as in doubt."""
    import json
    from types import SimpleNamespace

    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from guard.app.workers import WorkerSupervisor

    class SpawningReactor(MemoryReactorClock):
        def spawnProcess(self, process, executable, args, env, childFDs):
            process.transport = SimpleNamespace(pid=4242)
            return process.transport

        def adoptStreamConnection(self, fileDescriptor, addressFamily, factory):
            factory.buildProtocol(None).makeConnection(StringTransport())

    config = load_config(config_with(tmp_path, "workers = 2"))
    Path(worker_file(config.status_path, 0)).write_text(json.dumps({"books": {
        "accepted": 9, "delivered": 6, "bounced": 0, "dropped": 0, "in_flight": 3}}))
    supervisor = WorkerSupervisor(config, SpawningReactor(), environment={})
    supervisor._spawn(0)
    supervisor.worker_ended(supervisor.workers[0], "died while starting")
    assert (supervisor.retired_books["accepted"], supervisor.in_doubt) == (0, 0)
    for call in supervisor._restart_calls.values():
        call.cancel()


def _running_workers_with_revisions(tmp_path, revisions):
    """A supervisor whose running workers last wrote a status naming the policy revisions ``revisions``."""
    import json
    from types import SimpleNamespace

    from twisted.internet.testing import MemoryReactorClock

    from guard.app.workers import WorkerProcess, WorkerSupervisor

    config = load_config(config_with(tmp_path, f"workers = {len(revisions)}"))
    supervisor = WorkerSupervisor(config, MemoryReactorClock(), environment={})
    for index, revision in enumerate(revisions):
        worker = WorkerProcess(supervisor, index, 0.0)
        worker.transport = SimpleNamespace(pid=100 + index)
        supervisor.workers[index] = worker
        Path(worker_file(config.status_path, index)).write_text(json.dumps({"policy_revision": revision}))
    return supervisor


def test_workers_that_enforce_different_policies_are_said_to_in_the_status_the_log_and_the_metrics(tmp_path):
    """After a reload one worker refused, the workers judge by different policies: the status names each
    worker's revision and says they differ, the supervisor logs it once (and once when they agree again),
    and xmpp_guard_workers_policies_differ is 1 meanwhile."""
    import json

    from prometheus_client import CollectorRegistry, generate_latest
    from twisted.logger import globalLogPublisher

    from guard.app.workers import WorkersCollector

    supervisor = _running_workers_with_revisions(tmp_path, ["aaa", "bbb"])
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        supervisor._write_sum()
        supervisor._write_sum()
        status = json.loads(Path(supervisor.config.status_path).read_text())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkersCollector(supervisor))
        differ_metric = [line for line in generate_latest(registry).decode().splitlines()
                         if line.startswith("xmpp_guard_workers_policies_differ ")]
        Path(worker_file(supervisor.config.status_path, 1)).write_text(json.dumps({"policy_revision": "aaa"}))
        supervisor._write_sum()
        agreed = json.loads(Path(supervisor.config.status_path).read_text())
    finally:
        globalLogPublisher.removeObserver(said.append)
    assert (status["policies_differ"], status["policy_revisions"],
            [worker["policy_revision"] for worker in status["workers"]]) == (True, ["aaa", "bbb"], ["aaa", "bbb"])
    assert differ_metric == ["xmpp_guard_workers_policies_differ 1.0"]
    assert (agreed["policies_differ"], agreed["policy_revisions"]) == (False, ["aaa"])
    texts = [event.get("log_format", "") for event in said if "polic" in event.get("log_format", "")]
    assert len(texts) == 2 and texts[0].startswith("the workers enforce different policies") and (
        texts[1] == "the workers enforce the same policies again")


def test_a_stale_or_dead_workers_revision_does_not_count_as_a_difference(tmp_path):
    """Only running workers with a fresh status are compared: a dead worker's old revision says nothing."""
    statuses = [{"worker": 0, "policy_revision": "aaa"}, {"worker": 1, "policy_revision": "bbb", "stale": True}]
    total = add_up(statuses, {}, 0)
    assert (total["policies_differ"], total["policy_revisions"]) == (False, ["aaa"])


def test_a_guard_process_names_the_revision_of_its_policies_in_its_status(tmp_path):
    """Every process's status carries policy_revision, the same for the same files (what the supervisor compares)."""
    from twisted.internet.testing import MemoryReactorClock

    from guard.app.service import GuardService
    from guard.edges.handover import policy_revision

    config = load_config(config_with(tmp_path, "workers = 1"))
    one, two = GuardService(config, MemoryReactorClock()), GuardService(config, MemoryReactorClock())
    assert one.status()["policy_revision"] == two.status()["policy_revision"] == policy_revision(one.policy_records)
