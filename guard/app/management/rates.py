"""
The live chart's numbers: the stanza counter the metrics serve on /metrics
(``xmpp_guard_stanzas_total{direction, kind, verdict}``), summed over kinds,
read from the same prometheus_client registry.  The page's script turns two
readings into stanzas per second.
"""

from __future__ import annotations

STANZA_COUNTER = "xmpp_guard_stanzas"
STANZA_SAMPLE = "xmpp_guard_stanzas_total"


def stanza_counts(registry) -> dict[str, float]:
    """{"DIRECTION VERDICT": stanzas so far} from ``registry`` (nothing when it has no stanza counter)."""
    counts: dict[str, float] = {}
    if registry is None:
        return counts
    for family in registry.collect():
        if family.name != STANZA_COUNTER:
            continue
        for sample in family.samples:
            if sample.name != STANZA_SAMPLE:
                continue
            series = f"{sample.labels.get('direction', '?')} {sample.labels.get('verdict', '?')}"
            counts[series] = counts.get(series, 0.0) + sample.value
    return counts
