"""
The ``guard`` command: run, check-config, check-policy, explain, audit, reload, status, demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap

from .config import ConfigError, check_writable, load_config, written_files



class _ParserWithExamples(argparse.ArgumentParser):
    """An argument parser whose description is re-flowed to 78 columns and whose epilog (examples, signals, files) keeps its lines."""

    def __init__(self, *args, description=None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, description=textwrap.fill(description, 78) if description else None, **kwargs)


TOP_EPILOG = """\
examples:
  guard check-config /etc/xmpp-guard/guard.toml
  guard run --config /etc/xmpp-guard/guard.toml --pidfile /run/xmpp-guard/guard.pid
  guard check-policy policies/*.toml
  guard explain --policy policies/allow-all.toml stanza.xml
  guard reload --pidfile /run/xmpp-guard/guard.pid --config /etc/xmpp-guard/guard.toml
  guard status --config /etc/xmpp-guard/guard.toml --pidfile /run/xmpp-guard/guard.pid
  guard audit verify /var/log/xmpp-guard/audit.jsonl.* /var/log/xmpp-guard/audit.jsonl

signals:
  SIGHUP   load every policy again (all or none; the old ones stay otherwise)
  SIGUSR1  write the status file now
  SIGTERM  stop: stop listening, bounce what is held (limits.shutdown_grace),
           close every stream, write the books (SIGINT does the same)

exit status:
  0  success; 1  a check failed, the guard could not start or could not be
  signalled; 2  a configuration that does not load, or bad arguments

files:
  /etc/xmpp-guard/guard.toml         the configuration ('make install' puts a sample)
  /etc/xmpp-guard/policies/          policies and their .tests.toml
  /var/log/xmpp-guard/audit.jsonl    the audit trail ([guard] audit), rotated files beside it
  /run/xmpp-guard/status.json        the status file ([guard] status)
  /etc/logrotate.d/xmpp-guard        external rotation of the audit trail (the guard's own
                                     audit_rotate_bytes is preferred)
  xmpp-guard.service, xmpp-guard-red.socket, xmpp-guard-blue.socket,
  xmpp-guard-half@.service           the systemd units, in /usr/local/lib/systemd/system
  listen = "systemd:domain=INET:name=red" adopts the socket of the unit
  whose FileDescriptorName is red (socket activation)
"""

RUN_EPILOG = """\
examples:
  guard run --config deploy/guard.toml --pidfile run/guard.pid
  guard run -c /etc/xmpp-guard/half-a.toml      (one half of a pair)
  systemd-socket-activate -l 127.0.3.1:5269 -l 127.0.3.2:5269 --fdname=red:blue \\
      guard run -c guard.toml      (listen = "systemd:domain=INET:name=red" ...)

signals: SIGHUP reloads the policies, SIGUSR1 writes the status file,
SIGTERM and SIGINT stop the guard gracefully.

workers: with [guard] workers = N > 1 this process is a supervisor: it binds
the listeners and runs N worker processes that accept on them; it passes
each signal on to every worker, restarts a worker that dies, and writes the
status file as the sum of the workers' (each worker writes its own audit
trail, audit.worker-K.jsonl beside the configured file).
"""

CHECK_CONFIG_EPILOG = """\
examples:
  guard check-config /etc/xmpp-guard/guard.toml
  guard check-config deploy/pair/half-a.toml deploy/pair/half-b.toml

exit status: 0 when every file checks, 1 otherwise.
"""

RELOAD_EPILOG = """\
example:
  guard reload --pidfile /run/xmpp-guard/guard.pid --config /etc/xmpp-guard/guard.toml

exit status: 0 when signalled, 1 when the configuration does not check or
the guard cannot be signalled. The guard logs whether it took the policies.
"""

STATUS_EPILOG = """\
example:
  guard status -c /etc/xmpp-guard/guard.toml --pidfile /run/xmpp-guard/guard.pid

exit status: 0 when printed, 1 when there is no status file to read, 2 when
the configuration does not load.
"""


def process_reactor():
    """The process's reactor: only the command lines' composition roots take the global one (library code is
    given a reactor)."""
    from twisted.internet import reactor

    return reactor


def _run(arguments) -> int:
    from twisted.internet import reactor
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner, textFileLogObserver)

    try:
        config, guard = _load_process(arguments.config, reactor, arguments.worker)
    except ConfigError as problem:
        print(f"guard: {problem}", file=sys.stderr)
        return 2
    level = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
             "error": LogLevel.error}[config.log_level]
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout),
                                    [LogLevelFilterPredicate(defaultLogLevel=level), _quiet_factories])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if arguments.worker is not None:
        from .workers import SupervisorWatch

        # The supervisor's pipe on standard input: its end-of-file means the supervisor is gone, and so is this worker.
        reactor.addReader(SupervisorWatch(reactor, 0, lambda: reactor.stop() if reactor.running else None))
    if arguments.pidfile and arguments.worker is None:
        with open(arguments.pidfile, "w") as pidfile:
            pidfile.write(f"{os.getpid()}\n")

    def reload_on_hangup(signum, frame):
        reactor.callFromThread(guard.reload_policies)

    def write_status_on_usr1(signum, frame):
        reactor.callFromThread(guard.write_status)

    stopping = []

    def stop_once(signum, frame):
        if not stopping:
            stopping.append(signum)
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGHUP, reload_on_hangup)
    signal.signal(signal.SIGUSR1, write_status_on_usr1)
    signal.signal(signal.SIGTERM, stop_once)
    signal.signal(signal.SIGINT, stop_once)
    if arguments.worker is not None:
        from .workers import ready_for_signals

        ready_for_signals()
    exit_code = []

    def start():
        started = guard.startService()
        if started is not None:
            def failed(failure):
                print(f"guard: cannot start: {failure.getErrorMessage()}", file=sys.stderr)
                exit_code.append(1)
                reactor.stop()
            started.addErrback(failed)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", guard.stopService)
    reactor.run(installSignalHandlers=False)
    return exit_code[0] if exit_code else 0


def _quiet_factories(event):
    """Drop Twisted's per-connection "Starting factory" chatter; everything else passes."""
    from twisted.logger import PredicateResult

    text = event.get("log_format") or ""
    if text.startswith(("Starting factory", "Stopping factory")) or text.endswith("starting on {port!r}"):
        return PredicateResult.no
    return PredicateResult.maybe


def _load_process(path, reactor, worker=None):
    """
    The configuration at ``path`` and the guard process it describes: a
    standalone guard, a half of a pair, the supervisor of ``[guard] workers``
    > 1 worker processes, or (``worker``, the index a supervisor gave) one
    of those workers (guard.app.workers).
    """
    from .half_config import is_half_config

    if is_half_config(path):
        from .half import HalfService
        from .half_config import load_half_config

        config = load_half_config(path)
        _refuse_workers_in_a_half(config)
        return config, HalfService(config, reactor)
    from .service import GuardService

    config = load_config(path)
    if worker is not None:
        from .workers import adopted_listeners, read_secret_line, worker_config, worker_metrics_file

        if not 0 <= worker < config.settings.workers:
            raise ConfigError(f"{path}: guard.workers: there is no worker {worker} of {config.settings.workers}")
        metrics_path = worker_metrics_file(config, worker)
        config = worker_config(config, worker, read_secret_line(0))
        guard = GuardService(config, reactor)
        guard.adopted_listeners = adopted_listeners(config)
        guard.metrics_path = metrics_path
        return config, guard
    if config.settings.workers > 1:
        from .workers import WorkerSupervisor

        return config, WorkerSupervisor(config, reactor)
    return config, GuardService(config, reactor)


def _refuse_workers_in_a_half(config) -> None:
    """A half of a back-to-back pair runs as one process: ``[guard] workers`` > 1 is refused there."""
    if config.settings.workers > 1:
        raise ConfigError(f"{config.path}: guard.workers: a half of a pair runs as one process (workers = 1)")


def checked_configuration(path):
    """
    The configuration at ``path`` and a one-line summary of it, after every
    check that starts nothing: keys and values, the files it names, the
    certificates, keys and CA bundles (loaded), each policy (for the
    direction it judges) and the test cases beside it, and that the audit
    trail and the status file could be written.  No service is built: nothing
    is opened for writing, created, bound or connected.  ConfigError names
    the file and the key of the first problem.
    """
    from .half_config import is_half_config
    from .service import load_checked_policy, load_side_material

    if is_half_config(path):
        from guard.edges.link.tls import certificate_fingerprint

        from .half import half_policy_files
        from .half_config import load_half_config

        config = load_half_config(path)
        _refuse_workers_in_a_half(config)
        sides = {config.side.name: config.side}
        policies = half_policy_files(config)
        certificate = config.link.leg.certificate
        fingerprint = certificate_fingerprint(certificate) if certificate else "none (security = bearer: no TLS)"
        summary = f"; half of a pair, link fingerprint {fingerprint}"
    else:
        from .service import policy_files

        config = load_config(path)
        sides = config.sides
        policies = policy_files(config)
        summary = ""
    for side in sides.values():
        load_side_material(config.path, side)
    for direction, key, policy_path in policies:
        _check_cases(config.path, key, policy_path, load_checked_policy(config.path, key, policy_path, direction))
    for key, written, replaced in written_files(config.settings):
        check_writable(config.path, key, written, replaced)
    counts = ", ".join(f"{name}: {len(side.domains)} domains" for name, side in sides.items())
    return config, counts + summary


def _check_cases(config_path: str, key: str, policy_path: str, policy) -> None:
    """ConfigError naming ``key`` when the test cases beside the policy (if it has any) do not all pass."""
    from guard.core.policy import PolicyError
    from guard.core.policy.cases import cases_path, run_cases

    tests = cases_path(policy_path)
    if not os.path.exists(tests):
        return
    try:
        results = run_cases(policy, tests)
    except PolicyError as problem:
        raise ConfigError(f"{config_path}: {key}: {problem}") from problem
    for result in results:
        for failure in result.failures:
            raise ConfigError(f"{config_path}: {key}: {tests}: case {result.name!r}: {failure}")


def _check_config(arguments) -> int:
    status = 0
    for path in arguments.config:
        try:
            _, summary = checked_configuration(path)
        except ConfigError as problem:
            print(f"{problem}", file=sys.stderr)
            status = 1
            continue
        print(f"{path}: OK ({summary})")
    return status


def _signal_running(arguments, signum) -> int:
    try:
        with open(arguments.pidfile) as pidfile:
            pid = int(pidfile.read().strip())
        os.kill(pid, signum)
    except (OSError, ValueError) as problem:
        print(f"guard: cannot signal the guard named in {arguments.pidfile}: {problem}", file=sys.stderr)
        return 1
    return 0


def _reload(arguments) -> int:
    if arguments.config:
        try:
            checked_configuration(arguments.config)
        except ConfigError as problem:
            print(f"guard: reload refused: {problem}", file=sys.stderr)
            return 1
    return _signal_running(arguments, signal.SIGHUP)


def _status(arguments) -> int:
    from .half_config import is_half_config, load_half_config

    try:
        config = load_half_config(arguments.config) if is_half_config(arguments.config) else load_config(arguments.config)
    except ConfigError as problem:
        print(f"guard: {problem}", file=sys.stderr)
        return 2
    if config.status_path is None:
        print("guard: the configuration names no [guard] status file", file=sys.stderr)
        return 1
    if arguments.pidfile:
        import time

        before = _modified(config.status_path)
        if _signal_running(arguments, signal.SIGUSR1) == 0:
            # A guard writes at once; a supervisor of workers asks each of them first (at most STATUS_WAIT seconds).
            from .workers import STATUS_WAIT

            deadline = time.monotonic() + STATUS_WAIT + 1.0
            time.sleep(0.3)
            while _modified(config.status_path) == before and time.monotonic() < deadline:
                time.sleep(0.05)
    try:
        with open(config.status_path) as status:
            print(json.dumps(json.load(status), indent=2, sort_keys=True))
    except (OSError, ValueError) as problem:
        print(f"guard: no status in {config.status_path}: {problem}", file=sys.stderr)
        return 1
    return 0


def _modified(path) -> int:
    """When the file at ``path`` was last written (nanoseconds), 0 if there is none."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _demo(arguments) -> int:
    from guard.lab.demo import run_demo

    return run_demo()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-policy":
        from .policy_commands import check_policy_main

        return check_policy_main(argv[1:])
    if argv and argv[0] == "explain":
        from .policy_commands import explain_main

        return explain_main(argv[1:])
    if argv and argv[0] == "audit":
        from .audit_commands import audit_main

        return audit_main(argv[1:])
    parser = _ParserWithExamples(
        prog="guard",
        description=("An XMPP server-to-server boundary guard. It joins two sides: the XMPP servers of each side "
                     "federate with the other side only through the guard, which terminates every S2S stream on "
                     "each side with its own TLS and authentication, judges every stanza with the policy for its "
                     "direction, and writes what passes onto a stream of its own toward the far side. "
                     "One command per task; 'guard COMMAND --help' describes each."),
        epilog=TOP_EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run the guard in the foreground",
        description=("Run the guard (or one half of a back-to-back pair, when the configuration has a [link] "
                     "table) in the foreground until SIGTERM or SIGINT, logging to standard output. The "
                     "configuration is checked first; the guard does not start on one that does not check."),
        epilog=RUN_EPILOG)
    run.add_argument("--config", "-c", required=True, metavar="FILE",
                     help="the guard's configuration (TOML; see the sample deploy/guard.toml)")
    run.add_argument("--pidfile", metavar="FILE",
                     help="write the guard's process id here once it runs, for 'guard reload' and 'guard status'")
    run.add_argument("--worker", type=int, metavar="INDEX",
                     help="internal: run as worker INDEX of a guard with [guard] workers > 1; the supervisor starts "
                          "its workers with this and hands each the listening sockets and the dialback secret")
    run.set_defaults(act=_run)
    check = commands.add_parser(
        "check-config", help="check configuration files without starting anything",
        description=("Check each configuration as 'guard run' would, without starting anything: keys and "
                     "values, listen strings, the files it names, the certificates, keys and CA bundles (loaded), "
                     "each policy and the test cases beside it, and that the audit trail and the status file "
                     "could be written. Nothing is created, bound or connected. Prints 'FILE: OK (...)' for a "
                     "good file and the file, the key and the problem on standard error for a bad one."),
        epilog=CHECK_CONFIG_EPILOG)
    check.add_argument("config", nargs="+", metavar="FILE", help="a guard or pair-half configuration (TOML)")
    check.set_defaults(act=_check_config)
    commands.add_parser("check-policy", help="check policy files and run their tests (see 'guard check-policy --help')",
                        add_help=False)
    commands.add_parser("explain", help="show how a policy judges a stanza (see 'guard explain --help')",
                        add_help=False)
    commands.add_parser("audit", help="verify the audit trail's hash chain (see 'guard audit --help')",
                        add_help=False)
    reload = commands.add_parser(
        "reload", help="reload the policies of a running guard (SIGHUP)",
        description=("Make the running guard named by its pid file load every policy again (SIGHUP). The "
                     "new policies replace the old ones only if all of them load; stanzas still held are judged "
                     "again by the new ones before they leave. Under systemd use 'systemctl reload xmpp-guard'."),
        epilog=RELOAD_EPILOG)
    reload.add_argument("--pidfile", required=True, metavar="FILE",
                        help="the pid file the guard was started with (guard run --pidfile)")
    reload.add_argument("--config", metavar="FILE",
                        help="check this configuration and the policies it names first; signal nothing if it "
                             "does not check")
    reload.set_defaults(act=_reload)
    status = commands.add_parser(
        "status", help="print the running guard's status",
        description=("Print, as JSON, the status file the configuration's [guard] status key names: the "
                     "books (accepted, delivered, bounced, dropped, in flight), the outbound links and their "
                     "queues, and the streams of each side. With --pidfile the guard is first asked (SIGUSR1) "
                     "to write a fresh one."),
        epilog=STATUS_EPILOG)
    status.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="the running guard's configuration (for the path of its status file)")
    status.add_argument("--pidfile", metavar="FILE",
                        help="the running guard's pid file: ask it for a fresh status first")
    status.set_defaults(act=_status)
    demo = commands.add_parser(
        "demo", help="two Prosody servers, the guard and two clients: watch a message cross",
        description=("Start the loopback lab (two Prosody servers on 127.0.1.1 and 127.0.2.1, the guard "
                     "between them on 127.0.3.1 and 127.0.3.2, a throwaway PKI), send a message from "
                     "romeo@red.example to juliet@blue.example through the guard, print what happens, and stop "
                     "everything. Needs Debian's prosody and lua-unbound and the addresses free."),
        epilog="example:\n  guard demo")
    demo.set_defaults(act=_demo)
    arguments = parser.parse_args(argv)
    return arguments.act(arguments)
