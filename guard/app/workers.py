"""
Every core (issue 11): ``[guard] workers = N``.

With N > 1 ``guard run`` becomes a *supervisor*: it binds each side's
listener (or takes the socket systemd passed), never accepts on it, and
starts N worker processes (``guard run --worker K``) that inherit the
listening sockets as file descriptors 3, 4, ... (one per side, in the
configuration's order) and adopt them (``adoptStreamPort``): the kernel
spreads the connections over the workers.  Each worker is a full guard
(``GuardService``) with:

- the dialback secret of the supervisor, read from its standard input (a
  pipe only the two processes hold: never the command line or the
  environment); the pipe stays open, and its end-of-file tells a worker
  that its supervisor is gone, so it stops;
- its own audit trail and status file, named after the configured ones
  (``audit.jsonl`` -> ``audit.worker-0.jsonl``): each trail is one hash
  chain written by one process;
- its share of the limits that must hold for the whole guard
  (``config.WORKER_SHARED_LIMITS``: connections per address, streams per
  domain, dialback verifications and the memory budget, divided by N,
  rounded down; ``guard check`` refuses a value smaller than N: together the
  workers never exceed the limit, in connections, verifications or bytes
  held; a peer may be refused before reaching it when the kernel gives one
  worker more than its share of a peer's connections).

The supervisor forwards SIGHUP (reload) and SIGUSR1 (status) to every
worker, writes the status file as the sum of the workers' (the books add
up, including those of worker processes that died), restarts a worker
that dies (``restart_delay``: bounded exponential backoff), and on
SIGTERM stops the workers and waits for them (bounded).

Each domain pair's outbound traffic leaves from one worker (issue 11: a
pair stays ordered): the pair is pinned to ``pinned_worker(pair, N)``, and
a worker that accepted a stanza for a pair pinned to another hands it over
(guard.edges.handover).  Each worker has one channel (a socketpair, the fd
after its listeners) to the supervisor, which passes frames between
workers (``WorkerRouter``): a restarted worker gets a new channel, and the
others hear PEER_DOWN and PEER_UP.

A worker that dies takes its streams with it: the peers' connections drop
and they reconnect (to another worker, or the restarted one).  Stanzas it
had accepted and not yet delivered (its books' ``in_flight`` when it last
wrote its status) are *in doubt*: their audit records (in that worker's
trail) say what was decided; whether they reached the far server is not
known, and the supervisor reports them as ``in_doubt`` in the status.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from guard.edges.handover import (
    PEER_DOWN,
    PEER_UP,
    ROUTE,
    FrameFault,
    FrameReader,
    WorkerChannels,
    frame,
    hello_frame,
    policy_revision,
    read_hello,
    routed,
    routed_frame_bound,
)

from .config import WORKER_SHARED_LIMITS, ConfigError, GuardConfig
from .metrics import PREFIX, metrics_site

log = Logger()

# The first file descriptor a worker finds a listening socket on (0, 1, 2 are standard input, output and error).
FIRST_LISTENING_FD = 3
# The secret line a worker reads from its standard input is at most this long (bytes, with its newline).
SECRET_LINE_MAX = 1024
# Restarts: the first after RESTART_FIRST_DELAY seconds, doubling per death in a row, at most RESTART_MAX_DELAY;
# a worker that lived RESTART_RESET_AFTER seconds starts the count again.
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
RESTART_RESET_AFTER = 60.0
# How long the supervisor waits for every worker to write a fresh status file, and to stop.
STATUS_WAIT = 3.0
STOP_MARGIN = 10.0
REAP_INTERVAL = 1.0
# Every STATUS_REFRESH seconds the supervisor asks its workers for their status and writes the sum.
STATUS_REFRESH = 5.0
# Numbers that add up over workers in the status file.
BOOK_NAMES = ("accepted", "delivered", "bounced", "dropped", "in_flight")


# The signals a worker handles (reload, status, stop): blocked from its start until its handlers are installed.
WORKER_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT})


def ready_for_signals() -> None:
    """In a worker, once its signal handlers are installed: take the signals the supervisor sent while it started."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)


def restart_delay(deaths_in_a_row: int) -> float:
    """Seconds before restarting a worker that died ``deaths_in_a_row`` times without living RESTART_RESET_AFTER."""
    return min(RESTART_FIRST_DELAY * 2 ** max(deaths_in_a_row - 1, 0), RESTART_MAX_DELAY)


def worker_file(path: str | None, index: int) -> str | None:
    """The file worker ``index`` writes in place of ``path``: ``audit.jsonl`` -> ``audit.worker-0.jsonl``."""
    if path is None:
        return None
    named = Path(path)
    return str(named.with_name(f"{named.stem}.worker-{index}{named.suffix}"))


def worker_limits(limits, workers: int):
    """``limits`` with each limit that holds for the whole guard cut to one worker's share (rounded down);
    ConfigError when a share would be nothing."""
    divided = WORKER_SHARED_LIMITS
    for name in divided:
        if getattr(limits, name) < workers:
            raise ConfigError(f"limits.{name}: must be at least guard.workers ({workers}): each worker holds a share")
    return dataclasses.replace(limits, **{name: getattr(limits, name) // workers for name in divided})


def worker_metrics_file(config: GuardConfig, index: int) -> str | None:
    """Where worker ``index`` writes its metrics (Prometheus text) with its status, when [metrics] is served."""
    if config.settings.metrics_listen is None or config.settings.status_path is None:
        return None
    return str(Path(worker_file(config.settings.status_path, index)).with_suffix(".prom"))


class WorkersCollector:
    """
    The supervisor's metrics: every worker's, as it last wrote them (at most
    STATUS_REFRESH seconds old), each sample labelled ``worker`` (PromQL
    ``sum without (worker) (...)`` adds them up; a timestamp or a state is not
    summed wrong), and the supervisor's own: workers running, restarts, stanzas
    in doubt.
    """

    def __init__(self, supervisor: "WorkerSupervisor"):
        self.supervisor = supervisor

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        supervisor = self.supervisor
        merged: dict[str, Metric] = {}
        for index in range(supervisor.count):
            path = worker_metrics_file(supervisor.config, index)
            try:
                with open(path, encoding="utf-8") as page:
                    families = list(text_string_to_metric_families(page.read()))
            except (OSError, ValueError, TypeError):
                continue  # not written yet, or torn: this worker is missing from this scrape
            for family in families:
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                             family.unit))
                for sample in family.samples:
                    into.add_sample(sample.name, dict(sample.labels, worker=str(index)), sample.value,
                                    sample.timestamp, sample.exemplar)
        yield from merged.values()
        running = GaugeMetricFamily(PREFIX + "workers_running", "Worker processes running now.",
                                    value=len(supervisor.workers))
        yield running
        restarts = CounterMetricFamily(PREFIX + "worker_restarts", "Worker processes restarted after dying.",
                                       labels=["worker"])
        for index, count in supervisor.restarts.items():
            restarts.add_metric([str(index)], count)
        yield restarts
        yield GaugeMetricFamily(PREFIX + "stanzas_in_doubt",
                                "Stanzas accepted by workers that died before settling them.",
                                value=supervisor.in_doubt)
        yield GaugeMetricFamily(PREFIX + "workers_policies_differ",
                                "1 while the running workers enforce different policies (a reload some refused).",
                                value=1 if supervisor.policies_differ else 0)


def worker_config(config: GuardConfig, index: int, dialback_secret: str) -> GuardConfig:
    """What worker ``index`` of ``config.settings.workers`` runs: its own files, the shared secret, its share of the limits."""
    settings = dataclasses.replace(
        config.settings,
        dialback_secret=dialback_secret,
        audit_path=worker_file(config.settings.audit_path, index),
        status_path=worker_file(config.settings.status_path, index),
        metrics_listen=None,  # the supervisor serves the workers' metrics (WorkersCollector)
    )
    return dataclasses.replace(config, settings=settings, limits=worker_limits(config.limits, config.settings.workers))


def read_secret_line(fd: int) -> str:
    """The dialback secret the supervisor wrote on ``fd`` (one line); ConfigError if there is none."""
    line = b""
    while not line.endswith(b"\n"):  # a byte at a time: what follows the line stays in the pipe
        if len(line) >= SECRET_LINE_MAX:
            raise ConfigError("worker: the dialback secret line is too long")
        byte = os.read(fd, 1)
        if not byte:
            raise ConfigError("worker: the supervisor closed the secret pipe before writing the dialback secret")
        line += byte
    try:
        secret = line[:-1].decode("ascii", "strict")
    except UnicodeDecodeError as problem:
        raise ConfigError("worker: the dialback secret is not ASCII") from problem
    if not secret:
        raise ConfigError("worker: the supervisor wrote an empty dialback secret")
    return secret


def adopted_listeners(config: GuardConfig) -> dict[str, int]:
    """The inherited listening socket of each side of ``config`` in a worker: side name -> file descriptor."""
    return {name: FIRST_LISTENING_FD + position for position, name in enumerate(config.sides)}


def socket_family(fd: int) -> int:
    """The address family of the socket on ``fd`` (AF_INET, AF_INET6 or AF_UNIX)."""
    probe = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a duplicate: closing it leaves ``fd`` open
    try:
        return probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    finally:
        probe.close()


def accept_one_at_a_time(port):
    """
    ``port`` (an adopted listening port) accepts one connection per turn of
    the reactor instead of Twisted's up to a hundred: the workers share the
    listening socket, and a worker that took a whole burst would serve it
    alone while the others idle.  One at a time, a busy worker takes fewer
    turns and the idle ones take the rest.  Returns ``port``.
    """
    accept_a_turn = port.doRead

    def accept_one():
        port.numberAccepts = 1
        try:
            return accept_a_turn()
        finally:
            port.numberAccepts = 1

    port.doRead = accept_one
    return port


def add_up(statuses: list[dict], retired_books: dict, in_doubt: int) -> dict:
    """
    The guard's status from its workers' (each as its status file says,
    with ``worker``, ``pid`` and ``restarts`` added): the books summed over
    the live workers and ``retired_books`` (those of worker processes that
    died), ``in_doubt`` the stanzas dead workers had in flight, the inbound
    streams summed per side, links and held bytes by worker.
    """
    books = {name: retired_books.get(name, 0) for name in BOOK_NAMES}
    inbound: dict[str, int] = {}
    halted = []
    # The policies each running worker enforces: after a reload one worker refused, they differ (and must be seen).
    revisions = sorted({status["policy_revision"] for status in statuses
                        if not status.get("stale") and status.get("policy_revision")})
    for status in statuses:
        for name in BOOK_NAMES:
            books[name] += status.get("books", {}).get(name, 0)
        for side, count in status.get("inbound_streams", {}).items():
            inbound[side] = inbound.get(side, 0) + count
        if status.get("halted"):
            halted.append(f"worker {status['worker']}: {status['halted']}")
    return {
        "books": books,
        "in_doubt": in_doubt,
        "halted": "; ".join(halted) or None,
        "inbound_streams": inbound,
        "policy_revisions": revisions,
        "policies_differ": len(revisions) > 1,
        "workers": [
            {key: status.get(key) for key in ("worker", "pid", "restarts", "stale", "books", "held_bytes",
                                              "bounces_lost", "links", "inbound_streams", "halted",
                                              "policy_revision")}
            for status in statuses
        ],
    }


class _ClosesAtOnce(protocol.Protocol):
    """Whatever the supervisor's own listener might accept (it never reads it) is closed at once."""

    def connectionMade(self):
        self.transport.abortConnection()


class WorkerLine(protocol.Protocol):
    """The supervisor's end of one worker's channel: frames from the worker go where ``routed`` says."""

    def __init__(self, router: "WorkerRouter", index: int):
        self.router = router
        self.index = index
        self.reader = FrameReader(routed_frame_bound(router.stanza_bytes), frozenset({ROUTE}))

    def dataReceived(self, data):
        outgoing: dict[int, list[bytes]] = {}  # one write per worker per read
        try:
            running = self.router.running()
            for kind, body in self.reader.feed(data):
                for target, out in routed(self.index, kind, body, running):
                    outgoing.setdefault(target, []).append(out)
        except FrameFault as fault:
            log.error("worker {index} broke its handover channel: {fault}", index=self.index, fault=str(fault))
            self.transport.loseConnection()
        for target, pieces in outgoing.items():
            self.router.lines[target].transport.write(b"".join(pieces))

    def connectionLost(self, reason=None):
        self.router.line_lost(self)


class WorkerRouter:
    """The supervisor's switchboard of handover channels, one per running worker (star routing)."""

    def __init__(self, reactor, count: int, stanza_bytes: int):
        self.reactor = reactor
        self.count = count
        self.stanza_bytes = stanza_bytes
        self.lines: dict[int, WorkerLine] = {}

    def running(self) -> set[int]:
        return set(self.lines)

    def open_line(self, index: int) -> socket.socket:
        """A new channel for worker ``index`` (its last one, if any, ends): returns the worker's end, to pass it."""
        self.close_line(index)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.sendall(hello_frame(index, self.count))
        line = WorkerLine(self, index)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _Once(line))
        ours.close()  # the reactor holds its own duplicate
        for other, other_line in self.lines.items():
            other_line.transport.write(frame(PEER_UP, bytes([index])))
            line.transport.write(frame(PEER_UP, bytes([other])))
        self.lines[index] = line
        return theirs

    def close_line(self, index: int) -> None:
        """Worker ``index`` is gone: the others hear PEER_DOWN, and its channel closes."""
        line = self.lines.pop(index, None)
        if line is None:
            return
        line.transport.loseConnection()
        for other_line in self.lines.values():
            other_line.transport.write(frame(PEER_DOWN, bytes([index])))

    def line_lost(self, line: WorkerLine) -> None:
        if self.lines.get(line.index) is line:
            self.close_line(line.index)


class _Once(protocol.Factory):
    """A factory for the one protocol instance of an adopted connection."""

    def __init__(self, instance):
        self.instance = instance

    def buildProtocol(self, addr):
        return self.instance


def join_handover(guard) -> WorkerChannels | None:
    """
    In a worker: take the handover channel the supervisor passed (the fd after
    the listeners), read which worker this is, and give the relay its per-pair
    hook.  None when no channel was passed (the worker then carries every pair
    itself).
    """
    import stat

    fd = FIRST_LISTENING_FD + len(guard.adopted_listeners)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
    except OSError:
        return None
    index, count = read_hello(fd)
    # Each frame names the revision of the policies it was judged under; the pinned worker judges again on another.
    channels = WorkerChannels(index, count, guard.relay, guard.config.limits.stanza_bytes,
                              guard.config.limits.parser_limits(), revision=revision_in_force(guard))
    guard.reactor.adoptStreamConnection(fd, socket.AF_UNIX, _Once(channels))
    os.close(fd)
    guard.relay.carrier_for_pair = channels.carrier_for_pair
    log.info("worker {index} of {count}: pairs pinned to other workers are handed over", index=index, count=count)
    return channels


def revision_in_force(guard):
    """``revision()``: the revision of ``guard``'s policies in force (``policy_revision``), worked out once per load."""
    known = [None, ""]

    def revision() -> str:
        records = guard.policy_records
        if known[0] is not records:
            known[:] = [records, policy_revision(records)]
        return known[1]

    return revision


class WorkerProcess(protocol.ProcessProtocol):
    """One running worker, as its supervisor sees it: it hears the secret on standard input and tells of its end."""

    def __init__(self, supervisor: "WorkerSupervisor", index: int, started: float):
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.writeToChild(0, self.supervisor.dialback_secret.encode("ascii") + b"\n")

    def processEnded(self, reason):
        self.supervisor.worker_ended(self, reason.value)
        self.ended.callback(None)


class WorkerSupervisor(service.Service):
    """The ``guard run`` of a guard with ``workers`` > 1: binds the listeners, runs, restarts and signals the workers."""

    def __init__(self, config: GuardConfig, reactor, python: str = sys.executable, environment=None):
        import secrets

        self.config = config
        self.reactor = reactor
        self.python = python
        self.environment = dict(os.environ if environment is None else environment)
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):  # the sockets systemd passed are ours, by fd 3...
            self.environment.pop(name, None)
        self.dialback_secret = config.dialback_secret or secrets.token_hex(32)
        self.count = config.settings.workers
        worker_limits(config.limits, self.count)  # refused here, before any worker starts, when a share is nothing
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts = {index: 0 for index in range(self.count)}
        self.deaths_in_a_row = {index: 0 for index in range(self.count)}
        self.retired_books = {name: 0 for name in BOOK_NAMES}
        self.policies_differ = False  # as the last status written said (WorkerSupervisor._note_policies)
        self.in_doubt = 0
        self.stopping = False
        self._ports = []
        self._restart_calls = {}
        self._reaper = None
        self._refresh = None
        self._metrics_port = None
        self.router = WorkerRouter(reactor, self.count, config.limits.stanza_bytes)

    # -- starting -------------------------------------------------------------

    def _reap_on_sigchld(self) -> None:
        """
        ``guard run`` runs the reactor without its signal handlers, so the
        reactor would not notice a worker's end: reap on SIGCHLD, and every
        REAP_INTERVAL seconds as well (a signal lost between two checks).
        """
        from twisted.internet import process

        signal.signal(signal.SIGCHLD, lambda signum, frame: self.reactor.callFromThread(process.reapAllProcesses))
        self._reaper = LoopingCall(process.reapAllProcesses)
        self._reaper.clock = self.reactor
        self._reaper.start(REAP_INTERVAL, now=False)

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        self._reap_on_sigchld()
        for name, side in self.config.sides.items():
            try:
                endpoint = serverFromString(self.reactor, side.listen)
            except (KeyError, IndexError) as problem:
                raise ConfigError(f"{self.config.path}: sides.{name}.listen: {side.listen}: no such socket was "
                                  f"passed by systemd: {problem!r}") from problem
            port = yield endpoint.listen(protocol.Factory.forProtocol(_ClosesAtOnce))
            port.stopReading()  # the workers accept; the supervisor only holds the socket for them and their successors
            self._ports.append(port)
            log.info("side {side}: listening on {listen}, accepted by {count} workers", side=name,
                     listen=side.listen, count=self.count)
        for index in range(self.count):
            self._spawn(index)
        listen = self.config.settings.metrics_listen
        if listen is not None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(WorkersCollector(self))
            self._metrics_port = yield serverFromString(self.reactor, listen).listen(metrics_site(registry))
            log.info("metrics: serving /metrics on {listen} for {count} workers", listen=listen, count=self.count)
        if self.config.status_path is not None:
            # The books of a worker that dies are those of its last status: ask for one every STATUS_REFRESH seconds.
            self._refresh = LoopingCall(self.write_status)
            self._refresh.clock = self.reactor
            self._refresh.start(STATUS_REFRESH, now=False)

    def _spawn(self, index: int) -> None:
        self._restart_calls.pop(index, None)
        if self.stopping:
            return
        # A status file there now is an earlier run's (a supervisor killed): never this worker's books.
        self._forget_worker_status(index)
        child_fds = {0: "w", 1: 1, 2: 2}
        for position, port in enumerate(self._ports):
            child_fds[FIRST_LISTENING_FD + position] = port.fileno()
        channel = self.router.open_line(index)  # the worker's handover channel, on the fd after its listeners
        child_fds[FIRST_LISTENING_FD + len(self._ports)] = channel.fileno()
        worker = WorkerProcess(self, index, self.reactor.seconds())
        arguments = [self.python, "-m", "guard", "run", "--config", self.config.path, "--worker", str(index)]
        # The worker starts with the signals it will handle blocked (a mask survives fork and exec): a SIGUSR1 or
        # SIGHUP sent before its handlers are installed waits for them instead of killing it (ready_for_signals).
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            self.reactor.spawnProcess(worker, self.python, arguments, env=self.environment, childFDs=child_fds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
            channel.close()  # the worker holds its end
        self.workers[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.transport.pid)

    # -- a worker's end -------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason) -> None:
        """Count what the dead worker's last status says, and restart it (unless the guard is stopping)."""
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
            self.router.close_line(worker.index)
        books = self._retire_books(worker.index)
        if self.stopping:  # its last status is the one it wrote as it stopped: counted in the final sum
            log.info("worker {index} stopped: {reason}", index=worker.index, reason=str(reason))
            return
        lived = self.reactor.seconds() - worker.started
        self.deaths_in_a_row[worker.index] = 1 if lived >= RESTART_RESET_AFTER else \
            self.deaths_in_a_row[worker.index] + 1
        delay = restart_delay(self.deaths_in_a_row[worker.index])
        self.restarts[worker.index] += 1
        log.error("worker {index} died ({reason}) after {lived:.1f} s with {in_flight} stanzas in flight (in doubt); "
                  "restarting it in {delay} s", index=worker.index, reason=str(reason), lived=lived,
                  in_flight=books.get("in_flight", 0), delay=delay)
        self._restart_calls[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def _retire_books(self, index: int) -> dict:
        """
        The books of worker ``index``, which ended, as its last status file
        says: counted in ``retired_books`` (stopped or dead, a worker's books
        stay in the sum), what it had in flight in ``in_doubt`` (its audit
        trail says what was decided), and the file forgotten so that they are
        never counted twice.  Returns those books.
        """
        books = (self._read_worker_status(index) or {}).get("books", {})
        for name in BOOK_NAMES:
            if name != "in_flight":
                self.retired_books[name] += books.get(name, 0)
        self.in_doubt += books.get("in_flight", 0)
        self._forget_worker_status(index)
        return books

    # -- signals --------------------------------------------------------------

    def _signal_workers(self, signum) -> list[WorkerProcess]:
        signalled = []
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(signum)
            except Exception as problem:  # noqa: BLE001 - a worker that just ended is not signalled
                log.warn("worker {index} not signalled: {problem}", index=worker.index, problem=str(problem))
                continue
            signalled.append(worker)
        return signalled

    def reload_policies(self):
        """SIGHUP to every worker: each loads its policies again (all or none), and logs whether it took them."""
        self._signal_workers(signal.SIGHUP)
        return True

    def write_status(self):
        """Ask every worker for a fresh status (SIGUSR1), then write their sum (waiting at most STATUS_WAIT)."""
        if self.config.status_path is None:
            return defer.succeed(None)
        before = {index: self._status_mtime(index) for index in self.workers}
        self._signal_workers(signal.SIGUSR1)
        deadline = self.reactor.seconds() + STATUS_WAIT
        done = defer.Deferred()

        def check():
            fresh = all(self._status_mtime(index) != mtime for index, mtime in before.items() if index in self.workers)
            if fresh or self.reactor.seconds() >= deadline:
                self._write_sum(stale={index for index, mtime in before.items() if self._status_mtime(index) == mtime})
                done.callback(None)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return done

    def status(self, stale=frozenset()) -> dict:
        statuses = []
        for index in range(self.count):
            status = self._read_worker_status(index) if index in self.workers else None
            status = dict(status or {})
            worker = self.workers.get(index)
            status.update(worker=index, pid=worker.transport.pid if worker is not None else None,
                          restarts=self.restarts[index], stale=index in stale or worker is None)
            statuses.append(status)
        return add_up(statuses, self.retired_books, self.in_doubt)

    def _write_sum(self, stale=frozenset()) -> None:
        status = self.status(stale)
        self._note_policies(status)
        temporary = self.config.status_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(status, out, indent=2, sort_keys=True)
        os.replace(temporary, self.config.status_path)

    def _note_policies(self, status: dict) -> None:
        """Log when the running workers come to enforce different policies (a reload one refused) and when
        they agree again; ``policies_differ`` is what the status file and the metrics say meanwhile."""
        differ = status["policies_differ"]
        if differ and not self.policies_differ:
            log.error("the workers enforce different policies (revisions {revisions}): a reload was refused by "
                      "some; see each worker's log, fix the policy and reload again",
                      revisions=", ".join(status["policy_revisions"]))
        elif self.policies_differ and not differ:
            log.info("the workers enforce the same policies again")
        self.policies_differ = differ

    def _status_mtime(self, index: int) -> int:
        try:
            return os.stat(worker_file(self.config.status_path, index)).st_mtime_ns
        except (OSError, TypeError):
            return 0

    def _read_worker_status(self, index: int) -> dict | None:
        path = worker_file(self.config.status_path, index)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as status:
                return json.load(status)
        except (OSError, ValueError):
            return None

    def _forget_worker_status(self, index: int) -> None:
        """The dead worker's books are counted (retired): its file must not be counted again."""
        path = worker_file(self.config.status_path, index)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- stopping -------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        """SIGTERM every worker (each stops as a guard does) and wait for all, at most shutdown_grace + STOP_MARGIN."""
        super().stopService()
        self.stopping = True
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        for call in self._restart_calls.values():
            if call.active():
                call.cancel()
        self._restart_calls.clear()
        ending = [worker.ended for worker in self.workers.values()]
        self._signal_workers(signal.SIGTERM)
        timeout = self.reactor.callLater(self.config.limits.shutdown_grace + STOP_MARGIN,
                                         self._signal_workers, signal.SIGKILL)
        yield defer.DeferredList(ending)
        if timeout.active():
            timeout.cancel()
        for port in self._ports:
            yield port.stopListening()
        self._ports = []
        if self._metrics_port is not None:
            yield self._metrics_port.stopListening()
            self._metrics_port = None
        if self.config.status_path is not None:
            self._write_sum()
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()


class SupervisorWatch:
    """
    A worker's end of its standard input (the supervisor's pipe), read by the
    reactor after the secret line: end-of-file means the supervisor is gone,
    and the worker stops (``on_gone``).  Anything written later is ignored.
    """

    def __init__(self, reactor, fd: int, on_gone):
        self.reactor = reactor
        self.fd = fd
        self.on_gone = on_gone
        self.gone = False

    def fileno(self):
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            self._supervisor_gone()
        return None

    def connectionLost(self, reason):
        """The reactor saw the pipe hang up (end-of-file without data to read)."""
        self._supervisor_gone()

    def _supervisor_gone(self):
        if not self.gone:
            self.gone = True
            self.on_gone()

    def logPrefix(self):
        return "supervisor-watch"
