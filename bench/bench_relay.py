"""
Relay benchmark: the same client-to-client message blast (romeo@red.example ->
juliet@blue.example) once through the dumb TCP relay and once through the
guard (certificate authentication), with the lab's real Prosody servers.

For each run it prints messages/s, median and p95 latency, the CPU seconds
used during the blast by the relay/guard process and by each Prosody (from
/proc), and CPU per message; then the guard/relay throughput ratio.

    .venv/bin/python bench/bench_relay.py [--messages 5000] [--window 50] [--modes relay,guard]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.lab.clients import BlastResult, ClientLoop, blast  # noqa: E402
from guard.lab.topology import Lab, Mode  # noqa: E402

WARM_UP_MESSAGES = 50


def run_once(mode: Mode, messages: int, window: int, timeout: float) -> tuple[BlastResult, dict[str, float]]:
    """Bring up the lab in ``mode``, blast, and return the result and CPU seconds per process."""
    lab = Lab(mode, "certificate", prosody_log_level="warn", guard_log_level="warn")
    succeeded = False
    try:
        with ClientLoop() as loop:
            lab.start()
            with lab.client(loop, "romeo@red.example") as romeo, lab.client(loop, "juliet@blue.example") as juliet:
                warm = blast(romeo, juliet, WARM_UP_MESSAGES, window, timeout=30)  # opens the s2s streams
                if warm.received != WARM_UP_MESSAGES:
                    raise RuntimeError(f"warm-up: {warm.received}/{WARM_UP_MESSAGES} messages arrived")
                before = lab.cpu_seconds()
                clients_before = time.process_time()
                result = blast(romeo, juliet, messages, window, timeout=timeout)
                after = lab.cpu_seconds()
                after["clients (this process)"] = time.process_time() - clients_before
                before["clients (this process)"] = 0.0
        cpu = {name: after[name] - before[name] for name in after if name in before}
        succeeded = True
        return result, cpu
    except Exception:
        print(lab.log_tails(30), file=sys.stderr)
        raise
    finally:
        lab.stop()
        if succeeded:
            shutil.rmtree(lab.folder, ignore_errors=True)


def report(mode: Mode, result: BlastResult, cpu: dict[str, float]) -> None:
    print(f"== through the {mode.value} ==")
    print(f"  messages received   {result.received}/{result.sent} in {result.elapsed:.2f} s")
    print(f"  throughput          {result.messages_per_second:.0f} messages/s")
    print(f"  latency median      {result.median_latency * 1000:.1f} ms")
    print(f"  latency p95         {result.p95_latency * 1000:.1f} ms")
    count = max(result.received, 1)
    for name in sorted(cpu):
        print(f"  cpu {name:<24}{cpu[name]:.2f} s   ({cpu[name] / count * 1e6:.0f} us/message)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_relay.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per blast (default 5000)")
    parser.add_argument("--window", type=int, default=50, help="messages outstanding at most (default 50)")
    parser.add_argument("--modes", default="relay,guard", help="comma-separated: relay, guard (default both)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per blast (default scales with N)")
    arguments = parser.parse_args(argv)
    if arguments.messages < 1 or arguments.window < 1:
        parser.error("--messages and --window must be positive")
    modes = [Mode(name.strip()) for name in arguments.modes.split(",") if name.strip()]
    timeout = arguments.timeout or max(60.0, arguments.messages / 50)

    print(f"blast: {arguments.messages} messages romeo@red.example -> juliet@blue.example, window {arguments.window}")
    throughput: dict[Mode, float] = {}
    failures = 0
    for mode in modes:
        started = time.perf_counter()
        try:
            result, cpu = run_once(mode, arguments.messages, arguments.window, timeout)
        except Exception as error:
            failures += 1
            print(f"== through the {mode.value} ==\n  FAILED after {time.perf_counter() - started:.1f} s: {error}")
            continue
        report(mode, result, cpu)
        if result.received < result.sent:
            failures += 1
            print(f"  INCOMPLETE: {result.sent - result.received} messages did not arrive before the timeout")
        throughput[mode] = result.messages_per_second
    if Mode.RELAY in throughput and Mode.GUARD in throughput and throughput[Mode.RELAY] > 0:
        print(f"guard/relay throughput ratio: {throughput[Mode.GUARD] / throughput[Mode.RELAY]:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
