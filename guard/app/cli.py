"""
The ``guard`` command: run, check-config, check-policy, explain, audit, reload, status, demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .config import ConfigError, check_writable, load_config, written_files


def _run(arguments) -> int:
    from twisted.internet import reactor
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner, textFileLogObserver)

    try:
        config, guard = _load_process(arguments.config, reactor)
    except ConfigError as problem:
        print(f"guard: {problem}", file=sys.stderr)
        return 2
    level = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
             "error": LogLevel.error}[config.log_level]
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout),
                                    [LogLevelFilterPredicate(defaultLogLevel=level), _quiet_factories])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if arguments.pidfile:
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


def _load_process(path, reactor):
    """The configuration at ``path`` and the guard process it describes: a standalone guard, or a half of a pair."""
    from .half_config import is_half_config

    if is_half_config(path):
        from .half import HalfService
        from .half_config import load_half_config

        config = load_half_config(path)
        return config, HalfService(config, reactor)
    from .service import GuardService

    config = load_config(path)
    return config, GuardService(config, reactor)


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
        sides = {config.side.name: config.side}
        policies = half_policy_files(config)
        summary = f"; half of a pair, link fingerprint {certificate_fingerprint(config.link.leg.certificate)}"
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
    if arguments.pidfile and _signal_running(arguments, signal.SIGUSR1) == 0:
        import time

        time.sleep(0.3)
    try:
        with open(config.status_path) as status:
            print(json.dumps(json.load(status), indent=2, sort_keys=True))
    except (OSError, ValueError) as problem:
        print(f"guard: no status in {config.status_path}: {problem}", file=sys.stderr)
        return 1
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
    parser = argparse.ArgumentParser(prog="guard", description="An XMPP server-to-server boundary guard.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the guard in the foreground")
    run.add_argument("--config", "-c", required=True)
    run.add_argument("--pidfile")
    run.set_defaults(act=_run)
    check = commands.add_parser("check-config", help="check configuration files without starting anything")
    check.add_argument("config", nargs="+")
    check.set_defaults(act=_check_config)
    commands.add_parser("check-policy", help="check policy files and run their tests")
    commands.add_parser("explain", help="show how a policy judges a stanza")
    commands.add_parser("audit", help="verify the audit trail's hash chain (guard audit verify FILE...)")
    reload = commands.add_parser("reload", help="reload the policies of a running guard (SIGHUP)")
    reload.add_argument("--pidfile", required=True)
    reload.add_argument("--config", help="check the policies this configuration names first")
    reload.set_defaults(act=_reload)
    status = commands.add_parser("status", help="print the running guard's status")
    status.add_argument("--config", "-c", required=True)
    status.add_argument("--pidfile")
    status.set_defaults(act=_status)
    demo = commands.add_parser("demo", help="two Prosody servers, the guard and two clients: watch a message cross")
    demo.set_defaults(act=_demo)
    arguments = parser.parse_args(argv)
    return arguments.act(arguments)
