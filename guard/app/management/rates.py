"""
The live chart's numbers: the stanza counter the metrics serve on /metrics
(``xmpp_guard_stanzas_total{direction, kind, verdict}``, counted by the
process's GuardMetrics, guard.app.metrics), summed over kinds.  The page's
script turns two readings into stanzas per second.
"""

from __future__ import annotations


def stanza_counts(totals: dict[tuple[str, str, str], float]) -> dict[str, float]:
    """{"DIRECTION VERDICT": stanzas so far} from {(direction, kind, verdict): stanzas so far}."""
    counts: dict[str, float] = {}
    for (direction, _, verdict), count in totals.items():
        series = f"{direction} {verdict}"
        counts[series] = counts.get(series, 0) + count
    return counts


def process_stanza_counts(process) -> dict[str, float]:
    """The counts of ``process``'s metrics (none before its metrics exist)."""
    metrics = getattr(process, "metrics", None)
    return stanza_counts(metrics.stanza_totals()) if metrics is not None else {}
