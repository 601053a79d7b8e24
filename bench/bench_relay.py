"""
Relay benchmark: the same client-to-client message blast (romeo@red.example ->
juliet@blue.example) once through the dumb TCP relay and once through the
guard (certificate authentication), with the lab's real Prosody servers.

Three kinds of blast, each run in the same lab (one lab per mode and round):

- ``windowed``: at most ``--window`` messages outstanding (the default);
- ``unbounded``: every message sent at once, as fast as the sender's client
  can (issue 11, goal 1): after both modes it prints the guard/relay
  throughput ratio and the guard's CPU per message against the mean Prosody
  CPU per message of the same guard run;
- ``latency``: single messages with nothing else in flight (window 1,
  ``--latency-messages`` of them; goal 6): after both modes, the guard's
  median and p95 latency minus the relay's.

For each blast it prints messages/s, median and p95 latency, the CPU seconds
used during the blast by the relay/guard process, by each Prosody and by the
clients (this process), and CPU per message.  With ``--rounds N`` the modes
alternate (relay, guard, relay, ...) and the comparisons are medians over
the rounds with their spread.

    .venv/bin/python bench/bench_relay.py [--messages 5000] [--window 50] [--modes relay,guard]
        [--blasts windowed,unbounded,latency] [--latency-messages 300] [--rounds 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.lab.clients import BlastResult, ClientLoop, blast  # noqa: E402
from guard.lab.topology import Lab, Mode  # noqa: E402

WARM_UP_MESSAGES = 50
BLASTS = ("windowed", "unbounded", "latency")
CLIENTS = "clients (this process)"
PROSODIES = ("prosody-red", "prosody-blue")

Measured = dict[str, tuple[BlastResult, dict[str, float]]]  # blast kind -> result, CPU seconds per process


def windows(blasts: Sequence[str], messages: int, window: int, latency_messages: int) -> dict[str, tuple[int, int]]:
    """(messages, window) of each blast kind asked for."""
    sizes = {"windowed": (messages, window), "unbounded": (messages, messages), "latency": (latency_messages, 1)}
    return {kind: sizes[kind] for kind in blasts}


def run_once(mode: Mode, blasts: dict[str, tuple[int, int]], timeout: float) -> Measured:
    """Bring up the lab in ``mode``, run each blast in turn; the result and CPU seconds per process of each."""
    lab = Lab(mode, "certificate", prosody_log_level="warn", guard_log_level="warn")
    succeeded = False
    measured: Measured = {}
    try:
        with ClientLoop() as loop:
            lab.start()
            with lab.client(loop, "romeo@red.example") as romeo, lab.client(loop, "juliet@blue.example") as juliet:
                warm = blast(romeo, juliet, WARM_UP_MESSAGES, 50, timeout=30)  # opens the s2s streams
                if warm.received != WARM_UP_MESSAGES:
                    raise RuntimeError(f"warm-up: {warm.received}/{WARM_UP_MESSAGES} messages arrived")
                for kind, (count, window) in blasts.items():
                    before = lab.cpu_seconds()
                    clients_before = time.process_time()
                    result = blast(romeo, juliet, count, window, timeout=timeout)
                    after = lab.cpu_seconds()
                    after[CLIENTS] = time.process_time() - clients_before
                    before[CLIENTS] = 0.0
                    measured[kind] = result, {name: after[name] - before[name] for name in after if name in before}
        succeeded = True
        return measured
    except Exception:
        print(lab.log_tails(30), file=sys.stderr)
        raise
    finally:
        lab.stop()
        if succeeded:
            shutil.rmtree(lab.folder, ignore_errors=True)


def per_message_us(result: BlastResult, cpu: dict[str, float], name: str) -> float:
    return cpu.get(name, float("nan")) / max(result.received, 1) * 1e6


def report(mode: Mode, kind: str, window: int, result: BlastResult, cpu: dict[str, float]) -> None:
    print(f"== through the {mode.value}, {kind} blast (window {window}) ==")
    print(f"  messages received   {result.received}/{result.sent} in {result.elapsed:.2f} s")
    print(f"  throughput          {result.messages_per_second:.0f} messages/s")
    print(f"  latency median      {result.median_latency * 1000:.2f} ms")
    print(f"  latency p95         {result.p95_latency * 1000:.2f} ms")
    for name in sorted(cpu):
        print(f"  cpu {name:<24}{cpu[name]:.2f} s   ({per_message_us(result, cpu, name):.0f} us/message)")


def _spread(values: list[float], unit: str, scale: float = 1.0, digits: int = 2) -> str:
    text = f"{statistics.median(values) * scale:.{digits}f}{unit}"
    if len(values) > 1:
        text += f" ({min(values) * scale:.{digits}f}..{max(values) * scale:.{digits}f})"
    return text


def compare(rounds: list[dict[Mode, Measured]]) -> None:
    """Guard against relay, per blast kind, over the rounds that measured both."""
    both = [measured for measured in rounds if Mode.RELAY in measured and Mode.GUARD in measured]
    if not both:
        return
    print(f"== guard against relay, same run ({len(both)} round(s): median (min..max)) ==")
    for kind in BLASTS:
        pairs = [(m[Mode.RELAY][kind], m[Mode.GUARD][kind]) for m in both
                 if kind in m[Mode.RELAY] and kind in m[Mode.GUARD]]
        if not pairs:
            continue
        ratios = [guard[0].messages_per_second / relay[0].messages_per_second for relay, guard in pairs
                  if relay[0].messages_per_second > 0]
        if ratios:
            print(f"  {kind}: guard/relay throughput {_spread(ratios, '')}")
        if kind == "unbounded":
            guard_us = [per_message_us(guard[0], guard[1], "guard") for _, guard in pairs]
            prosody_us = [statistics.mean(per_message_us(guard[0], guard[1], name) for name in PROSODIES)
                          for _, guard in pairs]
            print(f"  unbounded: guard cpu {_spread(guard_us, ' us/message', digits=0)}, mean Prosody cpu "
                  f"{_spread(prosody_us, ' us/message', digits=0)}, guard/Prosody "
                  f"{_spread([g / p for g, p in zip(guard_us, prosody_us)], '')} (goal <= 0.5)")
        if kind == "latency":
            medians = [guard[0].median_latency - relay[0].median_latency for relay, guard in pairs]
            p95s = [guard[0].p95_latency - relay[0].p95_latency for relay, guard in pairs]
            print(f"  latency: guard minus relay, median {_spread(medians, ' ms', 1000)}, p95 {_spread(p95s, ' ms', 1000)}"
                  f" (goal: median <= +0.20 ms)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_relay.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per blast (default 5000)")
    parser.add_argument("--window", type=int, default=50, help="messages outstanding at most (default 50)")
    parser.add_argument("--modes", default="relay,guard", help="comma-separated: relay, guard (default both)")
    parser.add_argument("--blasts", default="windowed", help=f"comma-separated: {', '.join(BLASTS)} (default windowed)")
    parser.add_argument("--latency-messages", type=int, default=300, help="single messages of the latency blast")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, the modes alternating (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per blast (default scales with N)")
    arguments = parser.parse_args(argv)
    if arguments.messages < 1 or arguments.window < 1 or arguments.latency_messages < 1:
        parser.error("--messages, --window and --latency-messages must be positive")
    if not 1 <= arguments.rounds <= 20:
        parser.error("--rounds must be 1..20")
    modes = [Mode(name.strip()) for name in arguments.modes.split(",") if name.strip()]
    kinds = [name.strip() for name in arguments.blasts.split(",") if name.strip()]
    unknown = [kind for kind in kinds if kind not in BLASTS]
    if unknown:
        parser.error(f"unknown blast {unknown[0]!r} (known: {', '.join(BLASTS)})")
    blasts = windows(kinds, arguments.messages, arguments.window, arguments.latency_messages)
    timeout = arguments.timeout or max(60.0, arguments.messages / 50)

    print(f"blasts: {', '.join(f'{kind} {count} messages window {window}' for kind, (count, window) in blasts.items())};"
          f" romeo@red.example -> juliet@blue.example; modes {', '.join(mode.value for mode in modes)}, "
          f"{arguments.rounds} round(s)")
    rounds: list[dict[Mode, Measured]] = []
    failures = 0
    for _ in range(arguments.rounds):
        this_round: dict[Mode, Measured] = {}
        for mode in modes:
            started = time.perf_counter()
            try:
                measured = run_once(mode, blasts, timeout)
            except Exception as error:
                failures += 1
                print(f"== through the {mode.value} ==\n  FAILED after {time.perf_counter() - started:.1f} s: {error}")
                continue
            for kind, (result, cpu) in measured.items():
                report(mode, kind, blasts[kind][1], result, cpu)
                if result.received < result.sent:
                    failures += 1
                    print(f"  INCOMPLETE: {result.sent - result.received} messages did not arrive before the timeout")
            this_round[mode] = measured
        rounds.append(this_round)
    compare(rounds)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
